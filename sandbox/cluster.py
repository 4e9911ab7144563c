"""Start and stop a whole simulated k3s cluster on one machine (what `python -m sandbox up` runs).

Pieces, in start order (stopped in reverse, every one of them, also after a failed start):

1. the API server emulator (`python -m sandbox.apiserver`, state in `<state-dir>/apiserver.json`), or an
   API server already running (`kubeconfig=`); the CRD and the namespace / ServiceAccount / RBAC objects
   of `deploy/` applied with kubectl;
2. the release server (stand-in builds of `versions`) and the channel server, in threads of this process
   (so tests can flip their fault switches);
3. per node: a host root (`<state-dir>/nodes/<name>/root`) with `usr/local/bin/k3s` = `from_version` and
   `etc/rancher/k3s/config.yaml`, a supervisord running it (Restart=always), a Pod object for its agent
   (`spec.nodeName`) and a Pod-bound TokenRequest token in a file, and a real agent process (inside its own
   network namespace with `netns=True`);
4. the coordinator process, on a port chosen once so it can be killed and restarted at the same URL.

Every child process runs in its own session and is stopped by process group; logs go to
`<state-dir>/logs/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from sandbox import netns
from sandbox.channels import ChannelServer, default_channels
from sandbox.releases import ReleaseServer
from sandbox.standin import build_standin
from sandbox.supervision import NodeSupervisor
from wire.messages import TOKEN_AUDIENCE

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
NAMESPACE = "system-upgrade"
AGENT_SERVICE_ACCOUNT = "k3s-upgrade-agent"
AGENT_IMAGE = "k3s-upgrader:sandbox"
_SETUP_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
                "CustomResourceDefinition"}


class SandboxError(RuntimeError):
    """A sandbox piece did not start or answer; the message names the piece and points at its log."""


class ProcessDied(SandboxError):
    """A sandbox process exited while we waited for it (not worth waiting any longer)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.1) -> Any:
    """Poll `check()` until it returns a truthy value (returned) or `timeout` passes (SandboxError)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except ProcessDied:
            raise
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, SandboxError) as exc:
            last_error = exc
        time.sleep(interval)
    cause = f" (last error: {last_error})" if last_error else ""
    raise SandboxError(f"{what} within {timeout:g} s{cause}")


PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "no_proxy", "all_proxy"})
"""What `wire.proxies` (and curl) read, in lowercase: the agents and coordinator get none of them."""


class Proc:
    """A child process in its own session, output to a log file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log = name, argv, log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True, env=env)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the whole process group (SIGKILL by default: a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)
        if sig == signal.SIGKILL:
            self.popen.wait(10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group may hold children that outlived the leader
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(timeout)
        wait_for(f"process group of {self.name} ({self.popen.pid}) did not end",
                 lambda: not group_members(self.popen.pid), timeout, 0.02)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


class Kubectl:
    """kubectl against the sandbox's API server: the real client a user would run."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    def run(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 30) -> str:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), "--request-timeout", "10s",
                                 *args], input=input,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise SandboxError(f"kubectl {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
        return result.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json"))

    def apply(self, manifest: str) -> str:
        return self.run("apply", "-f", "-", input=manifest)


@dataclass
class NodeHandle:
    name: str
    role: str
    index: int
    root: Path
    supervisor: NodeSupervisor
    token_file: Path
    agent: Proc | None = None


@dataclass
class SandboxConfig:
    servers: int = 1
    agents: int = 0
    from_version: str = "v1.24.4+k3s1"
    versions: tuple[str, ...] = ("v1.24.4+k3s1", "v1.24.6+k3s1")
    stable: str | None = None
    """Version of the `stable` channel (default: the newest final release)."""
    state_dir: Path | None = None
    """Kept when given; a temporary directory (deleted at stop) otherwise."""
    kubeconfig: Path | None = None
    """Use this already-running API server instead of starting the emulator."""
    netns: bool = False
    standin_startup_seconds: float = 0.5
    coordinator_args: tuple[str, ...] = (
        "--restart-stable", "1", "--verify-timeout", "30", "--polling-interval", "2s",
        "--agent-heartbeat-timeout", "10", "--resync-interval", "2", "--restart-timeout", "15",
        "--poll-wait-max", "5",
    )
    agent_args: tuple[str, ...] = ("--poll-wait", "2", "--retry-backoff", "0.2", "--max-backoff", "1")
    node_names: tuple[str, ...] = ()
    """Names for the nodes, servers first (default server-1.., agent-1..)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    api_on_server: bool | None = None
    """The API server restarts with the (single) server node's k3s; default: when there is one server
    and no external kubeconfig."""


class Sandbox:
    """One simulated cluster. `start()` / `stop()`, or use as a context manager."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self._own_state = config.state_dir is None
        self.state_dir = config.state_dir or Path(tempfile.mkdtemp(prefix="k3s-sandbox-"))
        self.logs = self.state_dir / "logs"
        self.apiserver: Proc | None = None
        self.kubeconfig = config.kubeconfig or self.state_dir / "kubeconfig"
        self.kubectl = Kubectl(self.kubeconfig)
        self.api_url = ""
        self.api_token: str | None = None
        self.releases: ReleaseServer | None = None
        self.channels: ChannelServer | None = None
        self.fabric: netns.NetnsFabric | None = None
        self.nodes: dict[str, NodeHandle] = {}
        self.coordinator: Proc | None = None
        self.coordinator_url = ""
        self._coordinator_port = 0
        self._listen_host = "127.0.0.1"
        self._agent_owner: dict[str, Any] | None = None
        self._api_port = 0
        self._stopping = threading.Event()
        self._follower: threading.Thread | None = None
        self.api_restarts = 0
        """How often the API server was restarted with the single server node (api_on_server)."""

    @property
    def api_on_server(self) -> bool:
        wanted = self.config.api_on_server
        if wanted is None:
            wanted = self.config.servers == 1
        return bool(wanted) and self.config.kubeconfig is None and self.config.servers >= 1

    # -- lifecycle ----------------------------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            if self.config.netns:
                if not netns.available():
                    raise SandboxError("--netns needs root and the `ip` tool")
                self.fabric = netns.NetnsFabric()
                self.fabric.open()
                self._listen_host = self.fabric.hub
            self._start_apiserver()
            self._apply_setup()
            self.releases = ReleaseServer(self.config.versions, self.state_dir / "releases",
                                          host=self._listen_host,
                                          startup_seconds=self.config.standin_startup_seconds)
            self.releases.start_in_thread()
            self.channels = ChannelServer(default_channels(self.config.versions, stable=self.config.stable),
                                          host=self._listen_host)
            self.channels.start_in_thread()
            self._coordinator_port = free_port(self._listen_host)
            self.coordinator_url = f"http://{self._listen_host}:{self._coordinator_port}"
            names = self._node_names()
            for index, (name, role) in enumerate(names):
                self._start_node(index, name, role)
            self.wait_nodes_ready(self.config.from_version)
            if self.api_on_server:
                server = next(n for n in self.nodes.values() if n.role == "server")
                self._follower = threading.Thread(target=self._follow_server_node, args=(server,),
                                                  name="api-follows-server", daemon=True)
                self._follower.start()
            for node in self.nodes.values():
                self.start_agent(node.name)
            self.start_coordinator()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything that was started, in reverse order; raises after cleanup if a step failed."""
        errors: list[str] = []

        def attempt(what: str, action: Any) -> None:
            try:
                action()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        self._stopping.set()
        if self._follower is not None:
            self._follower.join(40)
            self._follower = None
        if self.coordinator is not None:
            attempt("coordinator", self.coordinator.stop)
            self.coordinator = None
        for node in self.nodes.values():
            if node.agent is not None:
                attempt(f"agent of {node.name}", node.agent.stop)
                node.agent = None
        for node in self.nodes.values():
            attempt(f"supervisor of {node.name}", node.supervisor.stop)
        self.nodes.clear()
        if self.channels is not None:
            attempt("channel server", self.channels.stop_in_thread)
            self.channels = None
        if self.releases is not None:
            attempt("release server", self.releases.stop_in_thread)
            self.releases = None
        if self.apiserver is not None:
            attempt("API server", self.apiserver.stop)
            self.apiserver = None
        if self.fabric is not None:
            attempt("network namespaces", self.fabric.close)
            self.fabric = None
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if errors:
            raise SandboxError("sandbox teardown incomplete: " + "; ".join(errors))

    # -- API server ---------------------------------------------------------------------------------
    def _start_apiserver(self) -> None:
        if self.config.kubeconfig is None:
            self._api_port = free_port()
            self._launch_apiserver()
        raw = yaml.safe_load(self.kubeconfig.read_text())
        self.api_url = str(raw["clusters"][0]["cluster"]["server"])
        user = raw["users"][0].get("user") or {}
        self.api_token = user.get("token")
        wait_for("the API server did not answer kubectl",
                 lambda: self.kubectl.run("get", "--raw", "/version"), 30)

    def _launch_apiserver(self, timeout: float = 30) -> None:
        """Start the emulator on the sandbox's API port (the same one after a restart) with its state file."""
        log = self.logs / "apiserver.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = Proc("apiserver", [
            sys.executable, "-m", "sandbox.apiserver", "--host", "127.0.0.1", "--port", str(self._api_port),
            "--state", str(self.state_dir / "apiserver.json"), "--kubeconfig-out", str(self.kubeconfig),
        ], log)
        self.apiserver = proc

        def listening() -> bool:
            if not proc.alive():
                raise ProcessDied(f"API server exited with {proc.popen.returncode}:\n{proc.tail()}")
            with log.open("rb") as f:
                f.seek(offset)
                return b"listening on http" in f.read() and self.kubeconfig.exists()

        wait_for(f"the API server did not listen on port {self._api_port}", listening, timeout, 0.05)

    def _follow_server_node(self, server: NodeHandle) -> None:
        """Single-server sandbox: the API server lives and dies with the server node's k3s, as on a real
        single-server k3s. When k3s stops the API server is stopped (its state saved); when the new k3s
        runs the API server is started again on the same port with that state."""
        last = server.supervisor.k3s_pid()
        while not self._stopping.wait(0.05):
            try:
                pid = server.supervisor.k3s_pid()
            except (OSError, SandboxError, xmlrpc.client.Error):
                continue
            if pid == last:
                continue
            api = self.apiserver
            if api is not None and api.alive():
                api.stop()
            if pid is not None:
                try:
                    self._launch_apiserver()
                    self.api_restarts += 1
                except SandboxError as exc:
                    print(f"sandbox: API server did not come back after {server.name} restarted: {exc}",
                          file=sys.stderr)
            last = pid

    def _apply_setup(self) -> None:
        """The CRD, then namespace / ServiceAccount / RBAC from deploy/, then the agents' ServiceAccount."""
        crd = DEPLOY / "crd.yaml"
        if crd.exists():
            self.kubectl.run("apply", "-f", str(crd))
            wait_for("the Plan CRD was not served",
                     lambda: self.kubectl.run("get", "plans", "-A") is not None, 20)
        docs: list[dict[str, Any]] = []
        for path in sorted(DEPLOY.glob("*.yaml")):
            if path.name == "crd.yaml":
                continue
            docs += [d for d in yaml.safe_load_all(path.read_text())
                     if isinstance(d, dict) and d.get("kind") in _SETUP_KINDS]
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
        docs = [d for d in docs if not (d.get("kind") == "Namespace")]
        self.kubectl.apply(yaml.safe_dump(namespace))
        if docs:
            self.kubectl.apply(yaml.safe_dump_all(docs))
        for sa in (AGENT_SERVICE_ACCOUNT, "system-upgrade"):
            self.kubectl.apply(yaml.safe_dump({"apiVersion": "v1", "kind": "ServiceAccount",
                                               "metadata": {"name": sa, "namespace": NAMESPACE}}))
        self._agent_owner = self._agent_daemonset()

    def _agent_daemonset(self) -> dict[str, Any] | None:
        """A DaemonSet object owning the agent Pods, as in a real deployment, so that drains skip them
        (`ignoreDaemonSets`). None when the API server does not serve DaemonSets."""
        labels = {"app": "k3s-upgrade-agent"}
        body = {"apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "k3s-upgrade-agent", "namespace": NAMESPACE},
                "spec": {"selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels},
                                      "spec": {"serviceAccountName": AGENT_SERVICE_ACCOUNT,
                                               "containers": [{"name": "agent", "image": AGENT_IMAGE}]}}}}
        try:
            self.kubectl.apply(yaml.safe_dump(body))
            made = self.kubectl.json("get", "daemonset", "k3s-upgrade-agent", "-n", NAMESPACE)
            uid = made["metadata"]["uid"]
        except (SandboxError, KeyError) as exc:
            print(f"sandbox: agent Pods get no DaemonSet owner ({exc})", file=sys.stderr)
            return None
        return {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "k3s-upgrade-agent", "uid": uid,
                "controller": True, "blockOwnerDeletion": True}

    # -- nodes --------------------------------------------------------------------------------------
    def _node_names(self) -> list[tuple[str, str]]:
        roles = ["server"] * self.config.servers + ["agent"] * self.config.agents
        if self.config.node_names:
            if len(self.config.node_names) != len(roles):
                raise SandboxError(f"{len(self.config.node_names)} node names for {len(roles)} nodes")
            return list(zip(self.config.node_names, roles, strict=True))
        counters = {"server": 0, "agent": 0}
        names = []
        for role in roles:
            counters[role] += 1
            names.append((f"{role}-{counters[role]}", role))
        return names

    def _start_node(self, index: int, name: str, role: str) -> None:
        base = self.state_dir / "nodes" / name
        root = base / "root"
        build_standin(root / "usr/local/bin/k3s", self.config.from_version,
                      startup_seconds=self.config.standin_startup_seconds)
        config: dict[str, Any] = {"node-name": name, "sandbox-api-url": self.api_url, "sandbox-arch": "amd64"}
        if self.api_token:
            config["sandbox-api-token"] = self.api_token
        cfg_path = root / "etc/rancher/k3s/config.yaml"
        cfg_path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(config))
        supervisor = NodeSupervisor(root, "server" if role == "server" else "agent", log_dir=self.logs / name)
        node = NodeHandle(name=name, role=role, index=index, root=root, supervisor=supervisor,
                          token_file=base / "token")
        self.nodes[name] = node
        supervisor.start()
        if self.fabric is not None:
            self.fabric.add_node(index)

    def wait_nodes_ready(self, version: str, names: list[str] | None = None, timeout: float = 60) -> None:
        want = set(names or self.nodes)

        def ready() -> bool:
            got = {
                item["metadata"]["name"] for item in self.kubectl.json("get", "nodes")["items"]
                if node_ready(item) and item["status"]["nodeInfo"]["kubeletVersion"] == version
            }
            return want <= got

        wait_for(f"nodes {sorted(want)} were not Ready on {version}", ready, timeout, 0.3)

    def issue_token(self, name: str) -> None:
        """(Re)create the agent Pod of node `name` and write a Pod-bound token for it."""
        node = self.nodes[name]
        pod = f"k3s-upgrade-agent-{name}"
        meta: dict[str, Any] = {"name": pod, "namespace": NAMESPACE, "labels": {"app": "k3s-upgrade-agent"}}
        if self._agent_owner is not None:
            meta["ownerReferences"] = [self._agent_owner]
        self.kubectl.apply(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": name, "serviceAccountName": AGENT_SERVICE_ACCOUNT,
                     "containers": [{"name": "agent", "image": AGENT_IMAGE}]},
        }))
        # The TokenRequest API as `kubectl create token` calls it, but with a JSON body (the emulator
        # does not read protobuf bodies).
        uid = self.kubectl.json("get", "pod", pod, "-n", NAMESPACE)["metadata"].get("uid")
        ref: dict[str, Any] = {"kind": "Pod", "apiVersion": "v1", "name": pod}
        if uid:
            ref["uid"] = uid
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"audiences": [TOKEN_AUDIENCE], "expirationSeconds": 86400,
                            "boundObjectRef": ref}}
        path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{AGENT_SERVICE_ACCOUNT}/token"
        answer = json.loads(self.kubectl.run("create", "--raw", path, "-f", "-", input=json.dumps(request)))
        token = str(answer["status"]["token"])
        node.token_file.write_text(token + "\n")
        node.token_file.chmod(0o600)

    def start_agent(self, name: str) -> Proc:
        node = self.nodes[name]
        if not node.token_file.exists():
            self.issue_token(name)
        url = self.coordinator_url
        argv = [sys.executable, "-m", "agent", "--node", name, "--coordinator", url,
                "--host-root", str(node.root), "--token-file", str(node.token_file),
                "--state-dir", str(node.root.parent / "agent-state"), "--arch", "amd64",
                *self.config.agent_args]
        if self.fabric is not None:
            argv = self.fabric.command(node.index, argv)
        node.agent = Proc(f"agent {name}", argv, self.logs / name / "agent.log", env=self._env())
        return node.agent

    def kill_agent(self, name: str) -> None:
        node = self.nodes[name]
        if node.agent is not None:
            node.agent.kill()
            node.agent = None

    # -- coordinator --------------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        """The environment of the agents and the coordinator: this one's, without a proxy (every server of
        the sandbox is on this machine: a proxy set here for the outside must not be asked for them), plus
        the config's `extra_env` (which may set one, to rehearse with a proxy)."""
        env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARIABLES}
        env.update(self.config.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_coordinator(self, timeout: float = 30) -> Proc:
        releases = self.releases
        if releases is None:
            raise SandboxError("the release server is not running")
        argv = [sys.executable, "-m", "coordinator", "--kubeconfig", str(self.kubeconfig),
                "--namespace", NAMESPACE, "--listen", f"{self._listen_host}:{self._coordinator_port}",
                "--release-base-url", releases.base_url, *self.config.coordinator_args]
        proc = Proc("coordinator", argv, self.logs / "coordinator.log", env=self._env())
        self.coordinator = proc

        def listening() -> bool:
            if not proc.alive():
                raise ProcessDied(f"the coordinator exited with {proc.popen.returncode}:\n{proc.tail()}")
            with socket.create_connection((self._listen_host, self._coordinator_port), timeout=1):
                return True

        wait_for(f"the coordinator did not listen on {self.coordinator_url}", listening, timeout)
        return proc

    def kill_coordinator(self) -> None:
        """SIGKILL the coordinator (a crash); `start_coordinator()` brings it back at the same URL."""
        if self.coordinator is not None:
            self.coordinator.kill()
            self.coordinator = None

    @property
    def status_url(self) -> str:
        return f"{self.coordinator_url}/status"

    def processes(self) -> list[int]:
        """PIDs of the sandbox's own child processes (for leak checks)."""
        pids = [p.pid for p in [self.apiserver, self.coordinator] if p is not None and p.alive()]
        pids += [n.agent.pid for n in self.nodes.values() if n.agent is not None and n.agent.alive()]
        return pids


def node_ready(node: dict[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False
