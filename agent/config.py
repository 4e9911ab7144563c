"""The agent's settings: flags with environment-variable fallbacks, each with a documented default."""

from __future__ import annotations

import argparse
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_TOKEN_FILE = "/var/run/secrets/tokens/k3s-upgrade/token"
_POSITIVE = "a positive number of seconds"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
         "armv6l": "arm"}


@dataclass(frozen=True)
class AgentConfig:
    node: str
    coordinator_url: str
    host_root: Path = Path("/host")
    token_file: Path = Path(DEFAULT_TOKEN_FILE)
    state_dir: Path = Path("/host/var/lib/k3s-upgrader")
    arch: str = "amd64"
    poll_wait: float = 30.0
    heartbeat_seconds: float = 5.0
    request_timeout: float = 10.0
    retry_backoff: float = 1.0
    max_backoff: float = 30.0
    download_attempts: int = 5
    space_margin: int = 16 * 1024 * 1024
    systemd_unit: str | None = None
    log_level: str = "INFO"
    coordinator_ca_file: Path | None = None
    """PEM CA certificate(s) to verify an https:// coordinator with; None: the system's CAs."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _number(env: str, kind: Callable[[str], float], least: float, what: str,
            equal: bool = True) -> Callable[[str], float]:
    """argparse's `type` for a number flag whose default comes from `env` (argparse converts a string
    default too, so a bad environment value is a usage error like a bad flag): finite, at least `least`
    (more than it unless `equal`). 0 or less seconds between retries or heartbeats is a busy loop."""
    def convert(text: str) -> float:
        try:
            value = kind(text)
            finite = math.isfinite(value)
        except (ValueError, OverflowError):  # (an int of hundreds of digits overflows isfinite)
            value, finite = math.nan, False
        if not finite or value < least or (value == least and not equal):
            raise argparse.ArgumentTypeError(f"{text!r} (the flag or {env}) is not {what}")
        return value
    return convert


def parse_args(argv: Sequence[str] | None = None) -> AgentConfig:
    p = argparse.ArgumentParser(prog="k3s-upgrade-agent",
                                description="Upgrades this node's k3s binary as the coordinator says.")
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node's name (env NODE_NAME)")
    p.add_argument("--coordinator", default=os.environ.get("COORDINATOR_URL"),
                   help="coordinator base URL (env COORDINATOR_URL)")
    p.add_argument("--host-root", default=_env("HOST_ROOT", "/host"),
                   help="where the host's / is mounted (env HOST_ROOT; default /host)")
    p.add_argument("--token-file", default=_env("TOKEN_FILE", DEFAULT_TOKEN_FILE),
                   help=f"projected ServiceAccount token, re-read per request (default {DEFAULT_TOKEN_FILE})")
    p.add_argument("--state-dir", default=os.environ.get("STATE_DIR"),
                   help="crash journal directory (env STATE_DIR; default <host-root>/var/lib/k3s-upgrader)")
    p.add_argument("--arch", default=_env("NODE_ARCH", _ARCH.get(platform.machine(), platform.machine())),
                   help="GOARCH of this node (env NODE_ARCH; default from the machine)")
    p.add_argument("--poll-wait", default=_env("POLL_WAIT_SECONDS", "30"),
                   type=_number("POLL_WAIT_SECONDS", float, 0, "a number of seconds >= 0"),
                   help="long-poll wait in seconds (env POLL_WAIT_SECONDS; default 30)")
    p.add_argument("--heartbeat", default=_env("HEARTBEAT_SECONDS", "5"),
                   type=_number("HEARTBEAT_SECONDS", float, 0, _POSITIVE, equal=False),
                   help="state posts while a step runs, in seconds (env HEARTBEAT_SECONDS; default 5)")
    p.add_argument("--request-timeout", default=_env("REQUEST_TIMEOUT_SECONDS", "10"),
                   type=_number("REQUEST_TIMEOUT_SECONDS", float, 0, _POSITIVE, equal=False),
                   help="HTTP timeout beyond the long-poll wait (default 10)")
    p.add_argument("--retry-backoff", default=_env("RETRY_BACKOFF_SECONDS", "1"),
                   type=_number("RETRY_BACKOFF_SECONDS", float, 0, _POSITIVE, equal=False),
                   help="first retry delay, doubled up to --max-backoff (default 1)")
    p.add_argument("--max-backoff", default=_env("MAX_BACKOFF_SECONDS", "30"),
                   type=_number("MAX_BACKOFF_SECONDS", float, 0, _POSITIVE, equal=False),
                   help="longest retry delay (default 30)")
    p.add_argument("--download-attempts", default=_env("DOWNLOAD_ATTEMPTS", "5"),
                   type=_number("DOWNLOAD_ATTEMPTS", int, 1, "a whole number >= 1"),
                   help="download attempts before giving up (default 5)")
    p.add_argument("--space-margin", default=_env("SPACE_MARGIN_BYTES", str(16 * 1024 * 1024)),
                   type=_number("SPACE_MARGIN_BYTES", int, 0, "a whole number of bytes >= 0"),
                   help="free bytes to keep beyond the new binary (default 16 MiB)")
    p.add_argument("--systemd-unit", default=os.environ.get("SYSTEMD_UNIT") or None,
                   help="restart by `systemctl restart UNIT` via nsenter; `auto`: the unit k3s runs in "
                        "(env SYSTEMD_UNIT; default: SIGTERM the process)")
    p.add_argument("--coordinator-ca-file", default=os.environ.get("COORDINATOR_CA_FILE") or None,
                   help="PEM CA certificate(s) that sign an https:// coordinator's certificate "
                        "(env COORDINATOR_CA_FILE; default: the system's CAs)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), type=str.upper, choices=_LEVELS,
                   help="env LOG_LEVEL; default INFO")
    ns = p.parse_args(argv)
    if ns.log_level not in _LEVELS:  # (argparse checks `choices` on the command line, not on a default)
        p.error(f"--log-level (or LOG_LEVEL) {ns.log_level!r} is not one of {', '.join(_LEVELS)}")
    if not ns.node:
        p.error("--node (or NODE_NAME) is required")
    if not ns.coordinator:
        p.error("--coordinator (or COORDINATOR_URL) is required")
    url = urlsplit(ns.coordinator)
    if url.scheme not in ("http", "https") or not url.hostname:
        p.error(f"--coordinator {ns.coordinator!r} is not an http:// or https:// URL with a host")
    if ns.coordinator_ca_file and url.scheme != "https":
        p.error(f"--coordinator-ca-file is for an https:// coordinator, not {ns.coordinator!r}")
    host_root = Path(os.path.abspath(ns.host_root))
    return AgentConfig(
        node=ns.node, coordinator_url=ns.coordinator, host_root=host_root, token_file=Path(ns.token_file),
        state_dir=Path(ns.state_dir) if ns.state_dir else host_root / "var/lib/k3s-upgrader",
        arch=ns.arch, poll_wait=ns.poll_wait, heartbeat_seconds=ns.heartbeat,
        request_timeout=ns.request_timeout,
        retry_backoff=ns.retry_backoff, max_backoff=ns.max_backoff, download_attempts=ns.download_attempts,
        space_margin=ns.space_margin, systemd_unit=ns.systemd_unit, log_level=ns.log_level.upper(),
        coordinator_ca_file=Path(ns.coordinator_ca_file) if ns.coordinator_ca_file else None,
    )
