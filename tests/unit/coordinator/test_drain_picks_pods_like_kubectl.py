"""Which pods a drain removes (kubectl drain semantics, with SUC's defaults).

Aspects: DaemonSet pods skipped by default and with ignoreDaemonSets=true, a problem with false; mirror
pods skipped, finished or not; the coordinator's own pod and the agents' pods never touched (not even a
problem with ignoreDaemonSets=false); finished pods removed, a finished DaemonSet pod too; unmanaged pods
need force; emptyDir pods go unless deleteEmptydirData or deleteLocalData is false (SUC's
--delete-emptydir-data); a pod terminating for longer than skipWaitForDeleteTimeout (> 0) is skipped
before any problem it would raise; podSelector restricts the set; problems name the pod and the setting.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from coordinator.draining import pods_to_evict
from coordinator.plans import Drain


def pod(name: str, *, owner: str | None = "ReplicaSet", phase: str = "Running", mirror: bool = False,
        empty_dir: bool = False, labels: dict[str, str] | None = None, ns: str = "default",
        deleted: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if deleted:
        meta["deletionTimestamp"] = deleted
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    spec = {"volumes": [{"name": "scratch", "emptyDir": {}}]} if empty_dir else {}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
AGENT = {"app.kubernetes.io/name": "k3s-upgrade-agent"}


def drain(**kw: Any) -> Drain:
    return Drain.model_validate(kw)


@pytest.mark.parametrize(
    ("p", "d", "evicted", "problem"),
    [
        (pod("web"), drain(), True, None),
        (pod("ds", owner="DaemonSet"), drain(), False, None),
        (pod("ds", owner="DaemonSet"), drain(ignoreDaemonSets=True), False, None),
        (pod("ds", owner="DaemonSet"), drain(ignoreDaemonSets=False), False, "ignoreDaemonSets"),
        (pod("static", owner=None, mirror=True), drain(), False, None),
        (pod("bare", owner=None), drain(), False, "drain.force"),
        (pod("bare", owner=None), drain(force=True), True, None),
        (pod("done", owner=None, phase="Succeeded"), drain(), True, None),
        (pod("cache", empty_dir=True), drain(), True, None),
        (pod("cache", empty_dir=True), drain(deleteEmptydirData=True), True, None),
        (pod("cache", empty_dir=True), drain(deleteLocalData=True), True, None),
        (pod("cache", empty_dir=True), drain(deleteEmptydirData=False), False,
         "drain.deleteEmptydirData is false"),
        (pod("cache", empty_dir=True), drain(deleteLocalData=False), False, "drain.deleteLocalData is false"),
        (pod("static", owner=None, mirror=True, phase="Succeeded"), drain(), False, None),
        (pod("ds-done", owner="DaemonSet", phase="Failed"), drain(), True, None),
        (pod("agent-x", owner="DaemonSet", ns="system-upgrade", labels=AGENT),
         drain(ignoreDaemonSets=False), False, None),
        (pod("stuck", owner=None, deleted="2026-11-28T09:59:00Z"), drain(skipWaitForDeleteTimeout=30), False,
         None),
        (pod("stuck", owner=None, deleted="2026-11-28T09:59:50Z"), drain(skipWaitForDeleteTimeout=30), False,
         "drain.force"),
        (pod("stuck", owner=None, deleted="2026-11-28T09:00:00Z"), drain(skipWaitForDeleteTimeout=-5), False,
         "drain.force"),
        (pod("going", deleted="2026-11-28T09:00:00Z"), drain(skipWaitForDeleteTimeout=30), False, None),
        (pod("going", deleted="2026-11-28T09:00:00Z"), drain(), True, None),
        (pod("web", labels={"app": "web"}), drain(podSelector={"matchLabels": {"app": "db"}}), False, None),
        (pod("db", labels={"app": "db"}), drain(podSelector={"matchLabels": {"app": "db"}}), True, None),
        (pod("coordinator-0", ns="system-upgrade", owner=None), drain(), False, None),
    ],
)
def test_pick(p: dict[str, Any], d: Drain, evicted: bool, problem: str | None) -> None:
    out, problems = pods_to_evict([p], d, own_name="coordinator-0", own_namespace="system-upgrade", now=NOW)
    assert (p in out) is evicted
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and p["metadata"]["name"] in problems[0]
