"""What a rollout looks like from outside: snapshots of Plans and Nodes, a timeline, and terminal output.

Everything here reads what a user could read with kubectl (Plans, Nodes) plus the coordinator's `/status`
(optional: per-node phases, shown when present). The pure part (`select`, `build_snapshot`,
`timeline_events`, `render`, `failure_of`) works on plain JSON and is shared by the demo and the e2e tests;
`NodeWatch` is the one piece with I/O: a `kubectl get nodes --watch` stream recorded with timestamps.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLAN_LABEL = "plan.upgrade.cattle.io/"
MASTER = "node-role.kubernetes.io/master"
FAILED_REASONS = {"JobFailed", "Failed", "Error", "RolledBack", "Halted", "UpgradeFailed"}


# -- label selectors -------------------------------------------------------------------------------
def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Does a Kubernetes LabelSelector match `labels`? (an empty or missing selector matches all)"""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# -- snapshots ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeView:
    name: str
    server: bool
    version: str
    ready: bool
    cordoned: bool
    labels: dict[str, str]


@dataclass(frozen=True)
class PlanView:
    name: str
    concurrency: int
    target: str
    hash: str
    complete: str
    """Status of the Complete condition: True, False or Unknown."""
    reason: str
    message: str
    applying: tuple[str, ...]
    nodes: tuple[str, ...]
    done: tuple[str, ...]
    conditions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    nodes: dict[str, NodeView]
    plans: dict[str, PlanView]
    phases: dict[tuple[str, str], str] = field(default_factory=dict)
    """(plan, node) -> phase from the coordinator's /status, when it says; ("*", node): the agent's."""


def node_view(obj: dict[str, Any]) -> NodeView:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    labels = dict(meta.get("labels") or {})
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return NodeView(
        name=meta.get("name", "?"), server=labels.get(MASTER) == "true",
        version=(status.get("nodeInfo") or {}).get("kubeletVersion", "?"), ready=ready,
        cordoned=bool(spec.get("unschedulable")), labels=labels,
    )


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def plan_view(obj: dict[str, Any], nodes: dict[str, NodeView]) -> PlanView:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = meta.get("name", "?")
    latest_hash = status.get("latestHash", "")
    selected = tuple(sorted(n.name for n in nodes.values()
                            if selects(spec.get("nodeSelector"), n.labels)
                            and n.labels.get(PLAN_LABEL + name) != "disabled"))
    done = tuple(n for n in selected if latest_hash and nodes[n].labels.get(PLAN_LABEL + name) == latest_hash)
    complete = condition(obj, "Complete")
    return PlanView(
        name=name, concurrency=int(spec.get("concurrency") or 1),
        target=status.get("latestVersion") or spec.get("version") or "?", hash=latest_hash,
        complete=complete.get("status", "Unknown"), reason=complete.get("reason", ""),
        message=complete.get("message", ""), applying=tuple(status.get("applying") or ()),
        nodes=selected, done=done, conditions=tuple(status.get("conditions") or ()),
    )


def phases_from_status(status: Any) -> dict[tuple[str, str], str]:
    """(plan, node) -> phase from the coordinator's /status; tolerant of lists or maps of plans/nodes."""
    found: dict[tuple[str, str], str] = {}
    if not isinstance(status, dict):
        return found
    plans = status.get("plans") or []
    items = plans.items() if isinstance(plans, dict) else [
        (p.get("name"), p) for p in plans if isinstance(p, dict)]
    for plan_name, plan in items:
        if not isinstance(plan, dict):
            continue
        nodes = plan.get("nodes") or []
        node_items = nodes.items() if isinstance(nodes, dict) else [
            (n.get("name") or n.get("node"), n) for n in nodes if isinstance(n, dict)]
        for node_name, node in node_items:
            if isinstance(node, dict) and node.get("phase") and plan_name and node_name:
                found[(str(plan_name), str(node_name))] = str(node["phase"])
            elif isinstance(node, str) and plan_name and node_name:
                found[(str(plan_name), str(node_name))] = node
    agents = status.get("agents") or {}
    if isinstance(agents, dict):
        for node_name, agent in agents.items():
            if isinstance(agent, dict) and agent.get("phase"):
                found.setdefault(("*", str(node_name)), str(agent["phase"]))
    return found


def build_snapshot(plans: list[dict[str, Any]], nodes: list[dict[str, Any]], status: Any = None) -> Snapshot:
    views = {v.name: v for v in map(node_view, nodes)}
    return Snapshot(nodes=views, plans={p.name: p for p in (plan_view(o, views) for o in plans)},
                    phases=phases_from_status(status))


def failure_of(snapshot: Snapshot) -> str | None:
    """The cause, when a plan halted or cannot proceed; None while it is fine or in progress."""
    for plan in snapshot.plans.values():
        for cond in plan.conditions:
            kind, status, reason = cond.get("type"), cond.get("status"), cond.get("reason", "")
            if kind in {"Validated", "LatestResolved"} and status == "False":
                return f"plan {plan.name}: {kind}={status} ({reason}): {cond.get('message', '')}"
            if kind == "Complete" and status == "False" and reason in FAILED_REASONS:
                return f"plan {plan.name}: {reason}: {cond.get('message', '')}"
    return None


def finished(snapshot: Snapshot, plans: list[str]) -> bool:
    """Every named plan is Complete, with every selected node labelled and running the target."""
    for name in plans:
        plan = snapshot.plans.get(name)
        if plan is None or plan.complete != "True" or not plan.nodes or plan.done != plan.nodes:
            return False
        if any(snapshot.nodes[n].version != plan.target for n in plan.nodes):
            return False
    return True


def node_phase(snapshot: Snapshot, plan: PlanView, node: str) -> str:
    view = snapshot.nodes[node]
    if node in plan.done and view.version == plan.target:
        return "done"
    reported = snapshot.phases.get((plan.name, node)) or snapshot.phases.get(("*", node))
    if reported and reported not in {"idle", "done", "waiting"}:
        return reported
    if node in plan.applying or view.cordoned:
        return "upgrading" if view.ready else "restarting"
    return "waiting"


# -- timeline -------------------------------------------------------------------------------------
def timeline_events(before: NodeView | None, after: NodeView) -> list[str]:
    """What changed on one Node, in words (pure)."""
    events: list[str] = []
    if before is None:
        return [f"registered on {after.version}"]
    if after.cordoned != before.cordoned:
        events.append("cordoned" if after.cordoned else "uncordoned")
    if after.ready != before.ready:
        events.append("Ready" if after.ready else "NotReady")
    if after.version != before.version:
        events.append(f"running {after.version}")
    for key, value in sorted(after.labels.items()):
        if key.startswith(PLAN_LABEL) and before.labels.get(key) != value:
            events.append(f"labelled {key.removeprefix(PLAN_LABEL)}={value[:12]}")
    return events


# -- rendering ------------------------------------------------------------------------------------
def bar(done: int, total: int, width: int = 24) -> str:
    filled = width * done // total if total else width
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def render(snapshot: Snapshot, elapsed: float) -> str:
    """The live view: per plan a progress bar and per node its phase and version."""
    lines = [f"k3s upgrade sandbox: {elapsed:5.1f}s"]
    for plan in snapshot.plans.values():
        lines.append("")
        lines.append(f"plan {plan.name} -> {plan.target}  {bar(len(plan.done), len(plan.nodes))}  "
                     f"Complete={plan.complete}{' (' + plan.reason + ')' if plan.reason else ''}")
        if plan.message and plan.complete != "True":
            lines.append(f"  {plan.message[:100]}")
        for node in plan.nodes:
            view = snapshot.nodes[node]
            flags = ("cordoned " if view.cordoned else "") + ("" if view.ready else "NotReady")
            lines.append(f"  {node:<12} {node_phase(snapshot, plan, node):<12} {view.version:<16} {flags}")
    return "\n".join(lines)


# -- I/O: a kubectl watch ---------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchEvent:
    at: float
    """time.monotonic() when the event was read."""
    type: str
    node: NodeView


class NodeWatch:
    """Runs `kubectl get nodes --watch -o json --output-watch-events` and records every event.

    The watch is restarted when kubectl exits (the server may end a watch); `stop()` ends it.
    """

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.events: list[WatchEvent] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._run, name="node-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        decoder = json.JSONDecoder()
        while not self._stop.is_set():
            self._proc = subprocess.Popen(
                ["kubectl", "--kubeconfig", str(self.kubeconfig), "get", "nodes", "--watch", "-o", "json",
                 "--output-watch-events"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            buffer = ""
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                buffer += line
                while buffer.strip():
                    try:
                        obj, end = decoder.raw_decode(buffer.lstrip())
                    except json.JSONDecodeError:
                        break
                    buffer = buffer.lstrip()[end:]
                    if isinstance(obj, dict) and isinstance(obj.get("object"), dict):
                        event = WatchEvent(time.monotonic(), str(obj.get("type")), node_view(obj["object"]))
                        with self._lock:
                            self.events.append(event)
            self._proc.wait()
            if self._proc.stderr is not None:
                err = self._proc.stderr.read().strip()
                if err and not self._stop.is_set():
                    self.errors.append(err)
                self._proc.stderr.close()
            self._proc.stdout.close()
            if not self._stop.wait(0.2):
                continue

    def wait_listed(self, nodes: int, timeout: float = 30.0) -> None:
        """Until the watch has listed `nodes` Nodes (kubectl's first events). A change made before that
        may be missed: kubectl starts its watch from the state it lists, which may already be later."""
        deadline = time.monotonic() + timeout
        while len({e.node.name for e in self.snapshot()}) < nodes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"kubectl watch listed fewer than {nodes} Nodes within {timeout:g}s "
                                   f"(errors: {self.errors[-1:]})")
            time.sleep(0.05)

    def snapshot(self) -> list[WatchEvent]:
        with self._lock:
            return list(self.events)

    def stop(self) -> None:
        self._stop.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
        self._thread.join(15)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(5)

    def history(self) -> dict[str, list[tuple[float, NodeView]]]:
        """Per node, the states seen in order (consecutive duplicates dropped)."""
        per: dict[str, list[tuple[float, NodeView]]] = {}
        for event in self.snapshot():
            seq = per.setdefault(event.node.name, [])
            if not seq or seq[-1][1] != event.node:
                seq.append((event.at, event.node))
        return per
