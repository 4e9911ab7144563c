"""Which pods a drain removes (kubectl drain semantics).

Aspects: DaemonSet pods skipped by default and with ignoreDaemonSets=true, a problem with false; mirror
pods skipped; the coordinator's own pod never touched; finished pods always removed; unmanaged pods need
force; emptyDir needs deleteEmptydirData or deleteLocalData; podSelector restricts the set; problems name
the pod and the setting.
"""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.draining import pods_to_evict
from coordinator.plans import Drain


def pod(name: str, *, owner: str | None = "ReplicaSet", phase: str = "Running", mirror: bool = False,
        empty_dir: bool = False, labels: dict[str, str] | None = None, ns: str = "default") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    spec = {"volumes": [{"name": "scratch", "emptyDir": {}}]} if empty_dir else {}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


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
        (pod("cache", empty_dir=True), drain(), False, "deleteEmptydirData"),
        (pod("cache", empty_dir=True), drain(deleteEmptydirData=True), True, None),
        (pod("cache", empty_dir=True), drain(deleteLocalData=True), True, None),
        (pod("web", labels={"app": "web"}), drain(podSelector={"matchLabels": {"app": "db"}}), False, None),
        (pod("db", labels={"app": "db"}), drain(podSelector={"matchLabels": {"app": "db"}}), True, None),
        (pod("coordinator-0", ns="system-upgrade", owner=None), drain(), False, None),
    ],
)
def test_pick(p: dict[str, Any], d: Drain, evicted: bool, problem: str | None) -> None:
    out, problems = pods_to_evict([p], d, own_name="coordinator-0", own_namespace="system-upgrade")
    assert (p in out) is evicted
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and p["metadata"]["name"] in problems[0]
