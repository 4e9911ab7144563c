"""`python -m sandbox up --kubeconfig FILE` runs nodes, agents and the coordinator against an API server
that is already running, and leaves that server alone when it stops.

Aspects covered (kubectl only): the API server is its own process (`python -m sandbox.apiserver`);
`sandbox up --kubeconfig` registers 1 server + 1 agent that become Ready on the old version; the seed's two
Plans applied verbatim complete and label both nodes; Ctrl-C (SIGINT) tears the sandbox down and exits 0,
and the API server still answers afterwards with the upgraded nodes in it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NEW = "v1.24.6+k3s1"


def kubectl(kubeconfig: Path, *args: str, timeout: float = 30) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}\n{out.stderr}"
    return out.stdout


def stop(proc: subprocess.Popen[str], sig: int, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def test_up_against_an_existing_apiserver(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    api = subprocess.Popen([sys.executable, "-m", "sandbox.apiserver", "--port", "0", "--kubeconfig-out",
                            str(kubeconfig)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env=env, cwd=ROOT)
    up: subprocess.Popen[str] | None = None
    try:
        assert api.stdout is not None
        assert api.stdout.readline().startswith("listening on http://")
        log = (tmp_path / "up.log").open("w")
        up = subprocess.Popen([sys.executable, "-m", "sandbox", "up", "--kubeconfig", str(kubeconfig),
                               "--servers", "1", "--agents", "1"], stdout=log, stderr=subprocess.STDOUT,
                              text=True, env=env, cwd=ROOT)
        log.close()
        deadline = time.monotonic() + 90
        while "Ctrl-C stops everything" not in (output := (tmp_path / "up.log").read_text()):
            assert up.poll() is None, output
            assert time.monotonic() < deadline, "sandbox up did not come up: " + output
            time.sleep(0.3)
        kubectl(kubeconfig, "apply", "-f", str(ROOT / "sandbox" / "seed_plans.yaml"))
        kubectl(kubeconfig, "-n", "system-upgrade", "wait", "--for=condition=Complete", "plan/server-plan",
                "plan/agent-plan", "--timeout=90s", timeout=100)
        assert stop(up, signal.SIGINT, 60) == 0, (tmp_path / "up.log").read_text()
        up = None
        assert api.poll() is None, "sandbox up stopped the API server it did not start"
        nodes = json.loads(kubectl(kubeconfig, "get", "nodes", "-o", "json"))["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["agent-1", "server-1"]
        for n in nodes:
            assert n["status"]["nodeInfo"]["kubeletVersion"] == NEW
            plan = "server-plan" if n["metadata"]["name"] == "server-1" else "agent-plan"
            assert f"plan.upgrade.cattle.io/{plan}" in n["metadata"]["labels"]
    finally:
        if up is not None:
            stop(up, signal.SIGINT, 60)
        assert stop(api, signal.SIGTERM) == 0
