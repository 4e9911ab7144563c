"""What a stand-in k3s does when it runs (imported by the script `build_standin` writes).

Kept light on purpose (the demo runs many at once): the standard library, PyYAML and setproctitle only.
The Node is written with plain HTTP to the sandbox's API server: created once (409 means it exists, then
its labels are merge-patched), then its status is merge-patched about every second (a heartbeat).
API errors are printed and retried on the next beat: the API server may be the node that is restarting.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

GO_VERSION = "go1.22.5"
BINARY_SUFFIX = Path("usr/local/bin/k3s")
HEARTBEAT_SECONDS = 1.0


def commit_of(version: str) -> str:
    """The 8-hex "git commit" a build of `version` prints (stable per version)."""
    return hashlib.sha256(version.encode()).hexdigest()[:8]


def version_output(version: str) -> str:
    return f"k3s version {version} ({commit_of(version)})\ngo version {GO_VERSION}\n"


def host_root_of(binary: str) -> Path | None:
    """The simulated node's root: the binary's path minus `usr/local/bin/k3s` (None if it is elsewhere)."""
    path = Path(os.path.abspath(binary))
    depth = len(BINARY_SUFFIX.parts)
    if path.parts[-depth:] != BINARY_SUFFIX.parts:
        return None
    return path.parents[depth - 1]


@dataclass
class NodeConfig:
    node_name: str
    api_url: str | None = None
    api_token: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    arch: str | None = None


def load_config(host_root: Path | None) -> NodeConfig:
    path = (host_root or Path("/")) / "etc/rancher/k3s/config.yaml"
    raw: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text())
        if isinstance(loaded, dict):
            raw = loaded
    labels: dict[str, str] = {}
    for item in raw.get("node-labels") or []:
        key, _, value = str(item).partition("=")
        labels[key] = value
    return NodeConfig(
        node_name=str(raw.get("node-name") or os.uname().nodename),
        api_url=raw.get("sandbox-api-url"),
        api_token=raw.get("sandbox-api-token"),
        labels=labels,
        arch=raw.get("sandbox-arch"),
    )


class Api:
    """A minimal JSON client for the few Node calls a kubelet makes."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.context = ssl._create_unverified_context() if url.startswith("https") else None

    def call(self, method: str, path: str, body: Any, content_type: str = "application/json") -> int:
        request = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode())
        request.add_header("Content-Type", content_type)
        request.add_header("Accept", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=3, context=self.context) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_body(cfg: NodeConfig, role: str, arch: str) -> dict[str, Any]:
    labels = {
        "kubernetes.io/arch": cfg.arch or arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": cfg.node_name,
        **cfg.labels,
    }
    if role == "server":
        labels["node-role.kubernetes.io/master"] = "true"
        labels["node-role.kubernetes.io/control-plane"] = "true"
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": cfg.node_name, "labels": labels}}


def status_body(version: str, arch: str, ready: bool, reason: str, message: str) -> dict[str, Any]:
    now = _now()
    return {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": reason,
                    "message": message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "architecture": arch,
                "operatingSystem": "linux",
                "osImage": "k3s sandbox stand-in",
                "containerRuntimeVersion": "containerd://1.7.20-k3s1",
            },
        }
    }


def _log(message: str) -> None:
    print(f"{_now()} k3s-standin[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def run_node(binary: str, role: str, args: list[str], version: str, arch: str, behaviour: str,
             startup_seconds: float) -> int:
    import setproctitle

    setproctitle.setproctitle(" ".join([binary, role, *args]))
    if behaviour == "crash":
        _log(f"fatal: {version} failed to start (stand-in behaviour 'crash')")
        return 1
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    cfg = load_config(host_root_of(binary))
    arch = cfg.arch or arch
    api = Api(cfg.api_url, cfg.api_token) if cfg.api_url else None
    started = time.monotonic()
    registered = False
    _log(f"{role} {version} starting as node {cfg.node_name}")
    while not stop.is_set():
        ready = behaviour == "ok" and time.monotonic() - started >= startup_seconds
        if api is not None:
            try:
                if not registered:
                    body = node_body(cfg, role, arch)
                    code = api.call("POST", "/api/v1/nodes", body)
                    if code == 409:
                        code = api.call("PATCH", f"/api/v1/nodes/{cfg.node_name}",
                                        {"metadata": {"labels": body["metadata"]["labels"]}},
                                        "application/merge-patch+json")
                    registered = code < 300
                if registered:
                    reason = "KubeletReady" if ready else "KubeletNotReady"
                    message = "kubelet is posting ready status" if ready else "k3s is starting"
                    api.call("PATCH", f"/api/v1/nodes/{cfg.node_name}/status",
                             status_body(version, arch, ready, reason, message),
                             "application/merge-patch+json")
            except OSError as exc:
                _log(f"API server {cfg.api_url} unreachable: {exc}")
        starting = behaviour == "ok" and not ready
        stop.wait(min(HEARTBEAT_SECONDS, startup_seconds) if starting else HEARTBEAT_SECONDS)
    if api is not None and registered:
        try:
            api.call("PATCH", f"/api/v1/nodes/{cfg.node_name}/status",
                     status_body(version, arch, False, "KubeletNotReady", "k3s stopped"),
                     "application/merge-patch+json")
        except OSError as exc:
            _log(f"could not mark node NotReady: {exc}")
    _log(f"{role} {version} stopped")
    return 0


def main(argv: list[str], *, version: str, arch: str, behaviour: str, startup_seconds: float) -> int:
    args = argv[1:]
    if not args or args[0] in {"--version", "-v", "version"}:
        sys.stdout.write(version_output(version))
        return 0
    if args[0] in {"server", "agent"}:
        return run_node(argv[0], args[0], args[1:], version, arch, behaviour, startup_seconds)
    print(f"k3s stand-in: unsupported command {args[0]!r}", file=sys.stderr)
    return 2
