"""The k3s docs' two Plans, applied verbatim by `python -m sandbox demo` (what `make demo` runs).

Observed only through kubectl: a `kubectl get nodes --watch` stream recorded from before the Plans
are applied until the demo exits, and kubectl reads of the Plans.

Aspects covered:
- the demo exits 0 and says the rollout completed (3 servers + 5 agents, v1.24.4+k3s1 -> v1.24.6+k3s1);
- every node ends labelled `plan.upgrade.cattle.io/<plan>` with its plan's `latestHash` and runs the target;
- no agent node is cordoned, goes NotReady or changes version before the last server was labelled (verified);
- per plan, cordoned nodes never overlap (`concurrency: 1`);
- each node is cordoned exactly once, and restarts (NotReady / new version) only while it is cordoned;
- each node is labelled only after it reported the target version, and is uncordoned at the end;
- the demo's processes are all gone afterwards (the autouse leak check).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from sandbox.cluster import Kubectl, SandboxError
from sandbox.progress import PLAN_LABEL, NodeWatch
from tests.e2e.conftest import first_time, intervals, max_overlap, require_components

TARGET = "v1.24.6+k3s1"


def test_seed_plans_verbatim(tmp_path: Path) -> None:
    require_components()
    state = tmp_path / "state"
    demo = subprocess.Popen([sys.executable, "-m", "sandbox", "demo", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch: NodeWatch | None = None
    plans: dict[str, dict[str, str]] = {}
    try:
        deadline = time.monotonic() + 60
        while not (state / "kubeconfig").exists():
            assert demo.poll() is None, f"demo exited early: {demo.stdout.read() if demo.stdout else ''}"
            assert time.monotonic() < deadline, "demo wrote no kubeconfig within 60 s"
            time.sleep(0.1)
        watch = NodeWatch(state / "kubeconfig")
        watch.start()
        kubectl = Kubectl(state / "kubeconfig")
        done = threading.Event()

        def read_plans() -> None:  # the last Plan statuses seen before the demo tears the cluster down
            while not done.wait(0.5):
                try:
                    items = kubectl.json("get", "plans", "-n", "system-upgrade")["items"]
                except SandboxError:
                    continue
                plans.update({i["metadata"]["name"]: i.get("status") or {} for i in items})

        reader = threading.Thread(target=read_plans, daemon=True)
        reader.start()
        assert demo.stdout is not None
        output_lines: list[str] = []
        complete_at = float("inf")
        for line in demo.stdout:
            output_lines.append(line)
            if "rollout complete" in line:
                complete_at = time.monotonic()  # before the demo tears the cluster down
        code = demo.wait(150)
        done.set()
        reader.join(30)
        output = "".join(output_lines)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if watch is not None:
            watch.stop()
        if demo.stdout is not None:
            demo.stdout.close()
    assert code == 0, output
    assert "rollout complete" in output
    assert set(plans) == {"server-plan", "agent-plan"}

    # the cluster as it was when the demo declared the rollout complete (teardown stops the nodes after)
    history = {node: [(at, view) for at, view in seq if at <= complete_at]
               for node, seq in watch.history().items()}
    servers = sorted(n for n, seq in history.items() if seq[-1][1].server)
    agents = sorted(n for n, seq in history.items() if not seq[-1][1].server)
    assert len(servers) == 3 and len(agents) == 5, sorted(history)

    def plan_of(node: str) -> str:
        return "server-plan" if node in servers else "agent-plan"

    last_server_verified = 0.0
    for node, seq in history.items():
        plan = plan_of(node)
        want = plans[plan]["latestHash"]
        final = seq[-1][1]
        assert final.labels.get(PLAN_LABEL + plan) == want, f"{node} not labelled with {plan}'s hash"
        assert final.version == TARGET and final.ready and not final.cordoned, f"{node} ended as {final}"
        cordons = intervals(seq, "cordoned")
        assert len(cordons) == 1, f"{node} cordoned {len(cordons)} times: {cordons}"
        start, end = cordons[0]
        first_ready = first_time(seq, lambda v: v.ready)
        assert first_ready is not None, f"{node} never Ready"
        on_target = first_time(seq, lambda v: v.version == TARGET)
        restarts = [at for at, v in seq if at > first_ready and not v.ready] + [on_target or 0.0]
        for at in restarts:
            assert start <= at <= end, f"{node} restarted at {at} outside its cordon {cordons[0]}"
        labelled = first_time(seq, lambda v, p=plan, h=want: v.labels.get(PLAN_LABEL + p) == h)
        assert on_target is not None and labelled is not None and on_target <= labelled, node
        if node in servers:
            last_server_verified = max(last_server_verified, labelled)

    for node in agents:
        seq = history[node]
        ready_at = first_time(seq, lambda v: v.ready) or 0.0
        registered_as = next(v.version for at, v in seq if at >= ready_at)  # before: no status yet
        touched = [at for at, v in seq if at >= ready_at
                   and (v.cordoned or v.version != registered_as or not v.ready)]
        assert not touched or min(touched) > last_server_verified, (
            f"agent {node} touched at {min(touched)} before the last server was verified "
            f"at {last_server_verified}")

    for group in (servers, agents):
        spans = [span for node in group for span in intervals(history[node], "cordoned")]
        assert max_overlap(spans) <= 1, f"more than concurrency=1 nodes cordoned at once: {spans}"
