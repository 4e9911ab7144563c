"""One supervisord per simulated node, restarting its stand-in k3s forever like systemd's Restart=always.

The generated config runs program `k3s` = `<host-root>/usr/local/bin/k3s server|agent [args]`
(autorestart, startsecs=0, SIGTERM, whole process group), with an optional restart delay emulating
systemd's `RestartSec` (a `sleep` before the exec; the PID stays the same across the exec). Logs go to the
node directory. `NodeSupervisor.k3s_pid()` answers "which PID runs k3s now" over supervisord's XML-RPC
socket. `stop()` stops k3s and supervisord and leaves no process behind.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any, Literal

from supervisor.xmlrpc import SupervisorTransport  # type: ignore[import-untyped]

Role = Literal["server", "agent"]


class SupervisorError(RuntimeError):
    """supervisord did not start, answer, or stop as expected."""


class NodeSupervisor:
    def __init__(self, host_root: Path, role: Role, *, args: tuple[str, ...] = (),
                 restart_delay: float = 0.2, log_dir: Path | None = None) -> None:
        self.host_root = host_root
        self.role = role
        self.args = args
        self.restart_delay = restart_delay
        self.log_dir = log_dir or host_root / "var/log"
        self.binary = host_root / "usr/local/bin/k3s"
        self._sockdir: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        if self._sockdir is None:
            raise SupervisorError("supervisor is not started")
        return Path(self._sockdir) / "s.sock"

    def config_text(self) -> str:
        command = shlex.join([str(self.binary), self.role, *self.args])
        if self.restart_delay > 0:
            command = f"/bin/sh -c {shlex.quote(f'sleep {self.restart_delay}; exec {command}')}"
        return f"""[unix_http_server]
file={self.socket}

[supervisord]
nodaemon=true
logfile={self.log_dir / "supervisord.log"}
pidfile={Path(self._sockdir or "") / "supervisord.pid"}
childlogdir={self.log_dir}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.socket}

[program:k3s]
command={command}
autostart=true
autorestart=true
startsecs=0
startretries=1000000
stopsignal=TERM
stopwaitsecs=10
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile={self.log_dir / "k3s.log"}
stdout_logfile_maxbytes=10MB
"""

    def _call(self, method: str, *args: Any) -> Any:
        """One XML-RPC call over the unix socket (the connection is closed again)."""
        transport = SupervisorTransport(None, None, f"unix://{self.socket}")
        try:
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            return getattr(proxy.supervisor, method)(*args)
        finally:
            transport.close()

    def start(self, timeout: float = 20.0) -> None:
        self._sockdir = tempfile.mkdtemp(prefix="k3s-sup-")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        conf = Path(self._sockdir) / "supervisord.conf"
        conf.write_text(self.config_text())
        self._process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                raise SupervisorError(f"supervisord for {self.host_root} exited with {code}")
            try:
                if self._call("getState")["statename"] == "RUNNING":
                    return
            except (OSError, xmlrpc.client.Fault):
                pass
            time.sleep(0.05)
        self.stop()
        raise SupervisorError(f"supervisord for {self.host_root} did not answer within {timeout} s")

    def k3s_pid(self) -> int | None:
        """The PID of the k3s program now, or None while it is not running."""
        info = self._call("getProcessInfo", "k3s")
        pid = int(info["pid"])
        return pid if pid > 0 and info["statename"] in {"RUNNING", "STARTING"} else None

    def wait_pid(self, timeout: float = 10.0, *, other_than: int | None = None) -> int:
        """Wait for k3s to run (with a PID other than `other_than`, if given) and return its PID."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.k3s_pid()
            if pid is not None and pid != other_than:
                return pid
            time.sleep(0.05)
        raise SupervisorError(f"k3s of {self.host_root} did not run within {timeout} s")

    def stop(self, timeout: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None

    def __enter__(self) -> NodeSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
