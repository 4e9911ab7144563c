"""The lease table's agent-facing logic: `apply_report`, `instruction_for`, and its JSON form.

Aspects: each reported phase moves the lease only from the phases it may follow; repeated and outdated
reports change nothing (idempotent retries); a report that cannot fit is StaleReport (409); an unknown
lease or another node's lease is UnknownLease (404); failure causes name the node and keep the first
cause; each lease phase maps to one instruction carrying the lease; an agent that missed `finish` gets
it; the table survives a JSON round trip and garbage is a TableFormatError naming the annotation.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from coordinator.leasing import (
    Lease,
    LeasePhase,
    LeaseTable,
    StaleReport,
    TableFormatError,
    UnknownLease,
    apply_report,
    instruction_for,
)
from wire.messages import Action, AgentPhase, AgentState, Artifact, Report

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ART = Artifact(url="http://r/k3s", sha256="b" * 64, name="k3s")


def lease(phase: LeasePhase, **kw: object) -> Lease:
    base = Lease(lease_id="L1", plan="p", node="n1", plan_hash="h", target_version="v1.30.2+k3s1",
                 artifact=ART, phase=phase, granted_at=NOW, updated_at=NOW)
    return replace(base, **kw)  # type: ignore[arg-type]


def table(phase: LeasePhase, **kw: object) -> LeaseTable:
    return LeaseTable(leases=(lease(phase, **kw),))


P = LeasePhase
A = AgentPhase


@pytest.mark.parametrize(
    ("current", "reported", "after"),
    [
        (P.GRANTED, A.STAGED, P.STAGED),
        (P.STAGED, A.STAGED, P.STAGED),
        (P.DRAINING, A.STAGED, P.DRAINING),
        (P.APPLYING, A.STAGED, P.APPLYING),
        (P.APPLYING, A.RESTARTED, P.RESTARTED),
        (P.RESTARTED, A.RESTARTED, P.RESTARTED),
        (P.VERIFIED, A.RESTARTED, P.VERIFIED),
        (P.ROLLING_BACK, A.RESTARTED, P.ROLLING_BACK),
        (P.APPLYING, A.ROLLING_BACK, P.ROLLING_BACK),
        (P.RESTARTED, A.ROLLED_BACK, P.ROLLED_BACK),
        (P.ROLLING_BACK, A.ROLLED_BACK, P.ROLLED_BACK),
        (P.GRANTED, A.FAILED, P.FAILED),
        (P.APPLYING, A.FAILED, P.FAILED),
        (P.FAILED, A.FAILED, P.FAILED),
        (P.ROLLED_BACK, A.FAILED, P.ROLLED_BACK),
        (P.GRANTED, A.DOWNLOADING, P.GRANTED),
        (P.APPLYING, A.APPLYING, P.APPLYING),
        (P.GRANTED, A.IDLE, P.GRANTED),
    ],
)
def test_report_moves(current: LeasePhase, reported: AgentPhase, after: LeasePhase) -> None:
    before = table(current)
    out = apply_report(before, Report(node="n1", lease_id="L1", phase=reported, error="boom"), NOW)
    assert out.leases[0].phase is after
    if after is current:
        assert out == before


@pytest.mark.parametrize(
    ("current", "reported"),
    [(P.GRANTED, A.RESTARTED), (P.STAGED, A.RESTARTED), (P.DRAINING, A.RESTARTED),
     (P.GRANTED, A.ROLLING_BACK), (P.VERIFIED, A.FAILED), (P.VERIFIED, A.ROLLING_BACK)],
)
def test_reports_that_do_not_fit_are_stale(current: LeasePhase, reported: AgentPhase) -> None:
    with pytest.raises(StaleReport, match="L1") as err:
        apply_report(table(current), Report(node="n1", lease_id="L1", phase=reported), NOW)
    assert err.value.status == 409


@pytest.mark.parametrize(("node", "lease_id"), [("n1", "L2"), ("n2", "L1")])
def test_unknown_or_foreign_lease(node: str, lease_id: str) -> None:
    with pytest.raises(UnknownLease) as err:
        apply_report(table(P.GRANTED), Report(node=node, lease_id=lease_id, phase=A.STAGED), NOW)
    assert err.value.status == 404


def test_failure_cause_names_node_and_first_cause_wins() -> None:
    t = apply_report(table(P.APPLYING), Report(node="n1", lease_id="L1", phase=A.ROLLING_BACK,
                                               error="k3s exited 1"), NOW)
    t = apply_report(t, Report(node="n1", lease_id="L1", phase=A.ROLLED_BACK, error="other"), NOW)
    assert t.leases[0].phase is P.ROLLED_BACK and t.leases[0].cause == "node n1: k3s exited 1"


def state(lease_id: str | None = None, phase: AgentPhase = A.IDLE) -> AgentState:
    return AgentState(node="n1", agent_version="t", arch="amd64", lease_id=lease_id, phase=phase)


@pytest.mark.parametrize(
    ("phase", "action"),
    [(P.GRANTED, Action.STAGE), (P.STAGED, Action.STAGE), (P.DRAINING, Action.STAGE),
     (P.APPLYING, Action.APPLY), (P.RESTARTED, Action.APPLY), (P.VERIFIED, Action.FINISH),
     (P.ROLLING_BACK, Action.ROLLBACK), (P.FAILED, Action.IDLE), (P.ROLLED_BACK, Action.IDLE)],
)
def test_instruction_per_phase(phase: LeasePhase, action: Action) -> None:
    ins = instruction_for("n1", table(phase, cause="node n1: x"), state("L1", A.STAGED), NOW)
    assert ins.action is action
    if action is not Action.IDLE:
        assert ins.lease is not None and ins.lease.lease_id == "L1" and ins.lease.artifact == ART
    else:
        assert ins.reason == "node n1: x"


def test_no_lease_is_idle_and_missed_finish_is_repeated() -> None:
    assert instruction_for("n1", LeaseTable(), state(), NOW).action is Action.IDLE
    done = LeaseTable(leases=(lease(P.VERIFIED),)).remove("L1", finished=True)
    assert instruction_for("n1", done, state("L1", A.RESTARTED), NOW).action is Action.FINISH
    newer = done.put(lease(P.GRANTED, lease_id="L2"))
    assert instruction_for("n1", newer, state("L1", A.RESTARTED), NOW).action is Action.FINISH
    assert instruction_for("n1", newer, state(None, A.IDLE), NOW).action is Action.STAGE


def test_json_round_trip_and_garbage() -> None:
    t = LeaseTable(leases=(lease(P.RESTARTED, cordoned_by_us=True, verified_at=NOW, cause="c"),
                           lease(P.FAILED, lease_id="L0", node="n2")))
    t = t.put(lease(P.VERIFIED, lease_id="L9", node="n3")).remove("L9", finished=True)
    assert LeaseTable.from_json(t.to_json()) == t
    # Put together from each lease's cached text, it is exactly what json.dumps of the whole would give.
    whole = {"leases": [le.to_json() for le in t.leases],
             "finished": {n: le.to_json() for n, le in t.finished.items()}}
    assert t.to_json() == json.dumps(whole, sort_keys=True)
    assert LeaseTable().to_json() == json.dumps({"leases": [], "finished": {}}, sort_keys=True)
    assert LeaseTable.from_json(None) == LeaseTable() == LeaseTable.from_annotations({})
    with pytest.raises(TableFormatError, match=r"upgrade\.cattle\.io/lease-table"):
        LeaseTable.from_json('{"leases": [{"leaseId": 1}]}')
    with pytest.raises(TableFormatError):
        LeaseTable.from_json("not json")


def test_finished_entries_are_kept_only_while_an_agent_may_still_need_them() -> None:
    """The table stays the size of the work in flight: a node's finished lease is dropped once its agent
    is idle or on another lease, or the node is gone; kept while the agent is unknown or still on it."""
    from coordinator.engine import AgentView, prune_finished

    done = LeaseTable()
    for n in ("n1", "n2", "n3", "n4", "n5"):
        done = done.put(lease(P.VERIFIED, lease_id=f"L-{n}", node=n)).remove(f"L-{n}", finished=True)
    agents = {
        "n1": AgentView(state(None, A.IDLE), NOW),  # acknowledged finish
        "n2": AgentView(state("L-n2", A.RESTARTED), NOW),  # missed finish: still needs it
        "n3": AgentView(state("L-n3", A.RESTARTED), NOW),  # ...but its node was deleted
        "n5": AgentView(state("L-other", A.STAGED), NOW),  # moved on to another lease
    }
    pruned = prune_finished(done, agents, {"n1", "n2", "n4", "n5"})
    assert sorted(pruned.finished) == ["n2", "n4"]
    assert instruction_for("n2", pruned, state("L-n2", A.RESTARTED), NOW).action is Action.FINISH
    assert prune_finished(pruned, agents, {"n1", "n2", "n4", "n5"}) is pruned  # nothing more to drop


def test_a_finished_entry_outlives_an_idle_poll_older_than_its_lease() -> None:
    """The agent's last poll was the one that got it `stage` (idle then); it staged, applied and reported
    `restarted` (reports do not update the agent's view), and the lease was released before it polled
    again: that old idle poll must not drop the entry, or its next poll (restarted) would get `idle`
    instead of `finish` and the agent would wait for `finish` for ever (seen once in a 5,000-node bench)."""
    from coordinator.engine import AgentView, prune_finished

    done = LeaseTable().put(lease(P.VERIFIED, lease_id="L-n1", node="n1")).remove("L-n1", finished=True)
    granted = done.finished["n1"].granted_at
    before = {"n1": AgentView(state(None, A.IDLE), granted - timedelta(seconds=1))}
    kept = prune_finished(done, before, {"n1"})
    assert "n1" in kept.finished
    assert instruction_for("n1", kept, state("L-n1", A.RESTARTED), NOW).action is Action.FINISH
    after = {"n1": AgentView(state(None, A.IDLE), granted + timedelta(seconds=5))}  # it polled idle since
    assert "n1" not in prune_finished(done, after, {"n1"}).finished


def test_a_large_table_is_stored_compressed_and_fits_the_annotation_limit() -> None:
    """MAX_ACTIVE_LEASES leases in flight plus as many finished records fit the API server's 256 KiB."""
    import hashlib
    from datetime import timedelta

    from coordinator.leasing import GZIP_PREFIX, MAX_ACTIVE_LEASES, TABLE_ANNOTATION

    release = "https://github.com/k3s-io/k3s/releases/download/v1.30.4%2Bk3s1/"
    arts = [Artifact(url=release + f"k3s{a}", sha256=hashlib.sha256(a.encode()).hexdigest(), name=f"k3s{a}")
            for a in ("", "-arm64", "-armhf")]

    def record(i: int, phase: LeasePhase) -> Lease:
        at = NOW + timedelta(seconds=i * 0.731)
        digest = hashlib.sha256(str(i).encode()).hexdigest()
        return lease(phase, lease_id=f"plan-{i % 7}.worker-{i:05d}.{digest[:12]}", node=f"worker-{i:05d}",
                     plan=f"plan-{i % 7}", plan_hash=hashlib.sha224(str(i % 7).encode()).hexdigest(),
                     artifact=arts[i % 3],
                     granted_at=at, updated_at=at + timedelta(seconds=i % 97), cordoned_by_us=i % 2 == 0)

    small = table(P.GRANTED)
    assert small.to_annotation() == small.to_json()  # small tables stay readable
    big = LeaseTable(
        leases=tuple(record(i, list(P)[i % 6]) for i in range(MAX_ACTIVE_LEASES)),
        finished={f"done-{i:05d}": record(10**6 + i, P.VERIFIED) for i in range(MAX_ACTIVE_LEASES)},
    )
    stored = big.to_annotation()
    assert stored.startswith(GZIP_PREFIX)
    assert len(TABLE_ANNOTATION) + len(stored) < 256 * 1024 < len(big.to_json())
    assert LeaseTable.from_annotations({TABLE_ANNOTATION: stored}) == big
    with pytest.raises(TableFormatError, match="compressed"):
        LeaseTable.from_json(GZIP_PREFIX + "bm90IGd6aXA=")  # base64 of "not gzip"

