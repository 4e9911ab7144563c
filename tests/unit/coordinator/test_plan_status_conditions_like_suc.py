"""Plan `.status` computation (conditions as SUC writes them).

Aspects: an unchanged condition keeps both timestamps (so the status dict is identical and nothing is
written); a changed message moves lastUpdateTime only; a status flip moves lastTransitionTime; conditions
not recomputed are kept; conditions sorted by type; latestVersion/latestHash/applying (sorted) present only
when set. The engine: an invalid plan gets Validated=False/Error naming the field and no lease; an
unresolved channel gets LatestResolved=False/Error; a missing arch binary blocks that node by name.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from coordinator.engine import (
    EngineSettings,
    NodeView,
    PlanStatusWrite,
    TableWrite,
    World,
    decide,
    plan_input,
)
from coordinator.leasing import LeaseTable
from coordinator.status import Cond, condition_of, plan_status
from wire.messages import Artifact

T = datetime(2026, 1, 1, tzinfo=UTC)


def test_timestamps_follow_changes() -> None:
    s1 = plan_status({}, [Cond("Complete", False, "SyncJob", "applying: a")], T,
                     latest_version="v1", latest_hash="h", applying=["b", "a"])
    assert s1["applying"] == ["a", "b"] and s1["latestHash"] == "h"
    same = plan_status(s1, [Cond("Complete", False, "SyncJob", "applying: a")], T + timedelta(hours=1),
                       latest_version="v1", latest_hash="h", applying=["a", "b"])
    assert same == s1
    msg = plan_status(s1, [Cond("Complete", False, "SyncJob", "applying: b")], T + timedelta(hours=1),
                      latest_version="v1", latest_hash="h", applying=["b"])
    c = condition_of(msg, "Complete")
    assert c is not None and c["lastUpdateTime"] == "2026-01-01T01:00:00Z"
    assert c["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    flip = plan_status(msg, [Cond("Complete", True, "", "")], T + timedelta(hours=2),
                       latest_version="v1", latest_hash="h", applying=[])
    c = condition_of(flip, "Complete")
    assert c is not None and c["lastTransitionTime"] == "2026-01-01T02:00:00Z" and "reason" not in c
    assert "applying" not in flip
    kept = plan_status(flip, [Cond("Validated", True, "PlanIsValid", "")], T, latest_version=None,
                       latest_hash=None, applying=[])
    assert [c["type"] for c in kept["conditions"]] == ["Validated", "Complete"]
    assert "latestVersion" not in kept


def world(plan: dict, **kw: object) -> World:  # type: ignore[type-arg]
    nodes = (NodeView(name="n1", uid="u1", ready=True, kubelet_version="v1.30.1+k3s1", arch="arm64"),)
    return World(now=T, namespace="ns", plans=(plan_input(plan, **kw),), nodes=nodes,  # type: ignore[arg-type]
                 table=LeaseTable(), started_at=T, settings=EngineSettings())


def status_of(w: World) -> dict:  # type: ignore[type-arg]
    (st,) = [x.status for x in decide(w).writes if isinstance(x, PlanStatusWrite)]
    return st


def test_invalid_plan_reports_and_grants_nothing() -> None:
    plan = {"metadata": {"name": "p", "uid": "u"},
            "spec": {"upgrade": {"image": "busybox"}, "version": "v1.30.2+k3s1"}}
    w = world(plan)
    assert not any(isinstance(x, TableWrite) for x in decide(w).writes)
    c = condition_of(status_of(w), "Validated")
    assert c is not None and (c["status"], c["reason"]) == ("False", "Error")
    assert "spec.upgrade.image" in c["message"]


def test_unresolved_channel_and_missing_arch() -> None:
    plan = {"metadata": {"name": "p", "uid": "u"},
            "spec": {"upgrade": {"image": "rancher/k3s-upgrade"}, "channel": "http://c/stable"}}
    st = status_of(world(plan, channel_error="channel http://c/stable: answered 404"))
    c = condition_of(st, "LatestResolved")
    assert c is not None and c["status"] == "False" and c["reason"] == "Error" and "404" in c["message"]
    amd = {"amd64": Artifact(url="http://r/k3s", sha256="c" * 64, name="k3s")}
    st = status_of(world(plan, channel_version="v1.30.2+k3s1", artifacts=amd))
    resolved = condition_of(st, "LatestResolved")
    complete = condition_of(st, "Complete")
    assert resolved is not None and resolved["reason"] == "Channel" and not resolved.get("message")  # as SUC
    assert complete is not None and "no v1.30.2+k3s1 binary for arch arm64" in complete["message"]
    assert st["latestVersion"] == "v1.30.2+k3s1"


def test_the_first_condition_with_a_message_is_the_first_thing_wrong() -> None:
    """SUC's Message column shows the first condition with a message. A Plan that failed and was then made
    invalid keeps its last Complete (nothing writes it without a hash): Validated must come before it."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    ran = [Cond("Validated", True, "PlanIsValid", ""), Cond("LatestResolved", True, "Version", ""),
           Cond("Complete", False, "JobFailed", "node n1: drain failed")]
    failed = plan_status({}, ran, now, latest_version="v1", latest_hash="h", applying=[])
    invalid = plan_status(failed, [Cond("Validated", False, "Error", "spec.concurrency: -1 is negative")],
                          now, latest_version=None, latest_hash=None, applying=[])
    assert [c["type"] for c in invalid["conditions"]] == ["Validated", "LatestResolved", "Complete"]
    assert next(c for c in invalid["conditions"] if c.get("message"))["type"] == "Validated"
    unresolved = plan_status(failed, [Cond("Validated", True, "PlanIsValid", ""),
                                      Cond("LatestResolved", False, "Error", "channel answered 404")],
                             now, latest_version=None, latest_hash=None, applying=[])
    assert next(c for c in unresolved["conditions"] if c.get("message"))["type"] == "LatestResolved"
    other = plan_status({"conditions": [{"type": "Applied", "status": "True"}]}, [], now,
                        latest_version=None, latest_hash=None, applying=[])
    assert [c["type"] for c in other["conditions"]] == ["Applied"]  # others kept, after SUC's three
