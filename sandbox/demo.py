"""`python -m sandbox demo` (`make demo`): the k3s docs' two Plans upgrade a simulated cluster, live.

3 servers and 5 agents start on `v1.24.4+k3s1`; the seed's Plans (`sandbox/seed_plans.yaml`, verbatim:
both target `v1.24.6+k3s1`, the agent plan waits for the server plan) are applied with kubectl; the
terminal shows per plan a progress bar and per node its phase (redrawn on a TTY, one line per change
otherwise); at the end a per-node timeline and the total time. Exit 0 when every node runs the target and
carries its plan's hash label, 1 with the cause when a plan halts or the deadline passes.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sandbox.cluster import NAMESPACE, Kubectl, Sandbox, SandboxConfig, SandboxError
from sandbox.progress import Snapshot, build_snapshot, failure_of, finished, render, timeline_events

SEED_PLANS = Path(__file__).with_name("seed_plans.yaml")
SEED_PLAN_NAMES = ["server-plan", "agent-plan"]
DEMO_FROM = "v1.24.4+k3s1"
DEMO_TO = "v1.24.6+k3s1"


def fetch_status(url: str) -> Any:
    """The coordinator's /status JSON, or None when it does not answer (it may be restarting)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def observe(kubectl: Kubectl, status_url: str | None) -> Snapshot:
    plans = kubectl.json("get", "plans", "-n", NAMESPACE)["items"]
    nodes = kubectl.json("get", "nodes")["items"]
    return build_snapshot(plans, nodes, fetch_status(status_url) if status_url else None)


@dataclass
class Outcome:
    ok: bool
    cause: str
    seconds: float
    timeline: dict[str, list[tuple[float, str]]]
    last: Snapshot | None


def follow(kubectl: Kubectl, status_url: str | None, plans: list[str], *, timeout: float,
           out: TextIO, tty: bool, interval: float = 0.5,
           clock: Callable[[], float] = time.monotonic) -> Outcome:
    """Watch until `plans` are finished, one of them fails, or `timeout` passes; print as it goes."""
    start = clock()
    previous: Snapshot | None = None
    timeline: dict[str, list[tuple[float, str]]] = {}
    while True:
        elapsed = clock() - start
        try:
            snapshot = observe(kubectl, status_url)
        except SandboxError:
            # the API server may be down for a moment (single server restarting): try again
            if elapsed > timeout:
                raise
            time.sleep(interval)
            continue
        for name, view in snapshot.nodes.items():
            before = previous.nodes.get(name) if previous else None
            for event in timeline_events(before, view):
                timeline.setdefault(name, []).append((elapsed, event))
                if not tty:
                    print(f"{elapsed:6.1f}s {name:<12} {event}", file=out, flush=True)
        if tty:
            out.write("\x1b[H\x1b[J" + render(snapshot, elapsed) + "\n")
            out.flush()
        previous = snapshot
        if finished(snapshot, plans):
            return Outcome(True, "", elapsed, timeline, snapshot)
        cause = failure_of(snapshot)
        if cause:
            return Outcome(False, cause, elapsed, timeline, snapshot)
        if elapsed > timeout:
            return Outcome(False, f"rollout not finished after {timeout:g} s", elapsed, timeline, snapshot)
        time.sleep(interval)


def summary(outcome: Outcome) -> str:
    lines = ["", "timeline (seconds since the Plans were applied):"]
    for node in sorted(outcome.timeline):
        events = [f"{t:5.1f} {e}" for t, e in outcome.timeline[node] if not e.startswith("registered")]
        lines.append(f"  {node:<12} " + ("; ".join(events) if events else "(no change)"))
    if outcome.last is not None:
        lines.append("")
        lines.append(render(outcome.last, outcome.seconds))
    verdict = "rollout complete" if outcome.ok else f"rollout FAILED: {outcome.cause}"
    lines.append("")
    lines.append(f"{verdict} in {outcome.seconds:.1f} s")
    return "\n".join(lines)


def run_demo(*, servers: int = 3, agents: int = 5, timeout: float = 110.0, state_dir: Path | None = None,
             kubeconfig: Path | None = None, out: TextIO = sys.stdout) -> int:
    tty = out.isatty()
    config = SandboxConfig(servers=servers, agents=agents, from_version=DEMO_FROM,
                           versions=(DEMO_FROM, DEMO_TO), state_dir=state_dir, kubeconfig=kubeconfig)
    print(f"starting a sandbox cluster: {servers} servers + {agents} agents on {DEMO_FROM} ...", file=out,
          flush=True)
    sandbox = Sandbox(config)
    try:
        sandbox.start()
        print(f"kubeconfig: {sandbox.kubeconfig}\ncoordinator status: {sandbox.status_url}", file=out)
        print(f"applying the k3s docs' Plans ({SEED_PLANS.name}) with kubectl", file=out, flush=True)
        print(sandbox.kubectl.run("apply", "-f", str(SEED_PLANS)).rstrip(), file=out, flush=True)
        outcome = follow(sandbox.kubectl, sandbox.status_url, SEED_PLAN_NAMES, timeout=timeout, out=out,
                         tty=tty)
        print(summary(outcome), file=out, flush=True)
        if not outcome.ok:
            print(f"logs: {sandbox.logs}", file=out)
    finally:
        # a second Ctrl-C / SIGTERM must not cut the teardown short and leave processes behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sandbox.stop()
    return 0 if outcome.ok else 1
