"""`python -m coordinator` as a real process: it serves, reports not-ready without an API server, logs
JSON, and stops cleanly on SIGTERM.

Aspects covered:
- prints `coordinator listening on http://HOST:PORT` (port 0 picks a free port) and serves /healthz;
- /readyz answers 503 naming the caches it waits for while the API server is unreachable, and the
  agent API still refuses an unauthenticated poll with 401;
- log lines on stderr are JSON objects;
- SIGTERM ends the process with status 0 within a few seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{free_port()}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            "127.0.0.1:0",
            "--namespace",
            "system-upgrade",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("coordinator listening on http://127.0.0.1:"), line
        base = line.split(" on ", 1)[1].strip()
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:
            assert r.status == 200
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
            raise AssertionError("ready without an API server")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and "caches" in exc.read().decode()
        req = urllib.request.Request(f"{base}/v1/agents/n1/poll", data=b"{}", method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("unauthenticated poll accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
        _, err = proc.communicate(timeout=5)
        logs = [json.loads(x) for x in err.splitlines() if x.strip()]
        assert logs and all({"ts", "level", "logger", "msg"} <= set(x) for x in logs)
        assert any(x["msg"] == "shutting down" for x in logs)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
