"""Prometheus metrics of the coordinator, on a registry of its own (one per process or test).

SUC has none; people asked for exactly these: leases by plan and phase, how long each phase takes,
failures, nodes done / total per plan, plus what it costs the API server (writes by kind) and how long
those writes take (a rollout's pace is bound by them: each node waits on a few of them in sequence).
Rendered by `GET /metrics` in coordinator.web.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Seconds, for the API write and reconcile pass histograms: from a loopback write to a stalled server."""
HANDOFF_BUCKETS = (0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 5)
"""Seconds, for the hand-off histogram: finer where a hand-off on a healthy cluster lands (tens of ms)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.leases = Gauge(
            "k3s_upgrade_leases", "Upgrade leases held, by plan and phase", ["plan", "phase"], registry=r
        )
        self.phase_seconds = Histogram(
            "k3s_upgrade_phase_duration_seconds",
            "Time a lease spent in a phase before moving on",
            ["plan", "phase"],
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.failures = Counter(
            "k3s_upgrade_failures", "Failed node upgrades (incl. rollbacks), by plan", ["plan"], registry=r
        )
        self.nodes_done = Gauge(
            "k3s_upgrade_nodes_done",
            "Selected nodes labelled with the plan's current hash",
            ["plan"],
            registry=r,
        )
        self.nodes_total = Gauge(
            "k3s_upgrade_nodes_total", "Nodes selected by the plan", ["plan"], registry=r
        )
        self.api_writes = Counter(
            "k3s_upgrade_api_writes", "Writes to the Kubernetes API, by kind", ["kind"], registry=r
        )
        self.api_write_seconds = Histogram(
            "k3s_upgrade_api_write_duration_seconds",
            "Time one write to the Kubernetes API took as the coordinator saw it, by kind (failed ones too)",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.write_conflicts = Counter(
            "k3s_upgrade_write_conflicts", "Conditional writes that lost a race (409)", ["kind"], registry=r
        )
        self.is_leader = Gauge("k3s_upgrade_leader", "1 while this replica is the leader", registry=r)
        self._lease_labels: set[tuple[str, str]] = set()
        self.reconciles = Counter("k3s_upgrade_reconciles", "Reconcile passes run", registry=r)
        self.reconcile_seconds = Histogram(
            "k3s_upgrade_reconcile_duration_seconds",
            "Time one reconcile pass took, its writes included but for the Plan statuses and Events written "
            "after it (a report that arrives during a pass waits for the next one)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.decide_seconds = Histogram(
            "k3s_upgrade_decide_duration_seconds",
            "Time a reconcile pass took before its first write: the table read, the reports applied, the "
            "decision made",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.report_wait_seconds = Histogram(
            "k3s_upgrade_report_wait_seconds",
            "Time an agent's report waited for a reconcile pass to take it up (from its arrival to the "
            "start of that pass)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.handoff_seconds = Histogram(
            "k3s_upgrade_handoff_seconds",
            "Time a plan's slot stood empty: from the last evidence that a node was upgraded (its agent's "
            "restarted report or its Node Ready on the target, whichever arrived later) to the storing of "
            "the lease granted in its place (coordinator.handoffs)",
            ["plan"],
            buckets=HANDOFF_BUCKETS,
            registry=r,
        )

        self.polls_held = Gauge(
            "k3s_upgrade_agent_polls_held",
            "Agents whose idle long-poll is held now (see --max-held-polls)",
            registry=r,
        )
        self.polls_paced = Counter(
            "k3s_upgrade_agent_polls_paced",
            "Idle agent polls answered at once with a time to come back, beyond --max-held-polls",
            registry=r,
        )

    @contextmanager
    def api_write(self, kind: str) -> Iterator[None]:
        """Count one write of `kind` (node, lease_table, plan_status, event) and time it."""
        self.api_writes.labels(kind).inc()
        with self.api_write_seconds.labels(kind).time():
            yield

    def set_leases(self, counts: dict[tuple[str, str], int]) -> None:
        """Replace the lease gauge with `counts` keyed by (plan, phase); absent pairs drop to 0."""
        for labels in list(self._lease_labels):
            if labels not in counts:
                self.leases.labels(*labels).set(0)
        for labels, n in counts.items():
            self.leases.labels(*labels).set(n)
        self._lease_labels = set(counts) | self._lease_labels

    def render(self) -> bytes:
        out: bytes = generate_latest(self.registry)
        return out
