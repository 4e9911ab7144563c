"""Invalid Plans each get Validated=False with a message naming the field, and change nothing, while a
valid Plan beside them completes.

Aspects covered: 16 kinds of bad Plan (missing upgrade, both/neither version and channel, a version that
is not a k3s version, negative concurrency, wrong types, an unsupported upgrade image, a bad prepare,
prepare naming itself, deleteLocalData with deleteEmptydirData, bad drain timeout, negative
postCompleteDelay, a bad window, a bad selector operator, a bad failure budget, unknown fields kept out);
none of them labels, cordons or leases a node; the valid Plan completes on every node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from coordinator.kube.resources import PLANS
from tests.integration.coordinator.harness import condition, coordinator, drive

OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
NODES = ["node-1", "node-2", "node-3"]
GOOD = {
    "concurrency": 1,
    "version": NEW,
    "upgrade": {"image": "rancher/k3s-upgrade"},
    "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "Exists"}]},
}

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "no-upgrade": ({"version": NEW}, "spec.upgrade"),
    "both-version-channel": ({**GOOD, "channel": "http://127.0.0.1:1/x"}, "spec.version/spec.channel"),
    "neither-version-channel": (
        {k: v for k, v in GOOD.items() if k != "version"},
        "spec.version/spec.channel",
    ),
    "not-a-version": ({**GOOD, "version": "latest"}, "spec.version"),
    "negative-concurrency": ({**GOOD, "concurrency": -1}, "spec.concurrency"),
    "concurrency-not-int": ({**GOOD, "concurrency": "many"}, "spec.concurrency"),
    "other-image": ({**GOOD, "upgrade": {"image": "busybox"}}, "spec.upgrade.image"),
    "bad-prepare": ({**GOOD, "prepare": {"image": "busybox", "args": ["sleep"]}}, "spec.prepare"),
    "prepare-self": (
        {**GOOD, "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "prepare-self"]}},
        "spec.prepare",
    ),
    "drain-both-deletes": (
        {**GOOD, "drain": {"deleteLocalData": True, "deleteEmptydirData": True}},
        "spec.drain",
    ),
    "drain-timeout": ({**GOOD, "drain": {"timeout": "soon"}}, "spec.drain.timeout"),
    "negative-delay": ({**GOOD, "postCompleteDelay": "-5m"}, "spec.postCompleteDelay"),
    "bad-window": (
        {**GOOD, "window": {"days": ["funday"], "startTime": "01:00", "endTime": "02:00"}},
        "window",
    ),
    "bad-selector": (
        {**GOOD, "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
        "nodeSelector",
    ),
    "secrets-not-list": ({**GOOD, "secrets": "all"}, "spec.secrets"),
    "cordon-not-bool": ({**GOOD, "cordon": "perhaps"}, "spec.cordon"),
}


def plan(name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": name, "namespace": "system-upgrade", "annotations": annotations or {}},
        "spec": spec,
    }


async def test_invalid_plans_are_reported_and_a_valid_plan_completes(tmp_path: Path) -> None:
    async with coordinator(tmp_path, [NEW], [(n, False, OLD) for n in NODES]) as rig:
        for name, (spec, _) in BAD.items():
            rig.cluster.put(PLANS, plan(name, spec))
        rig.cluster.put(PLANS, plan("bad-budget", GOOD, {"upgrade.k3s.io/failure-budget": "lots"}))
        rig.cluster.put(PLANS, plan("good", GOOD))
        plans = rig.cluster.objects["plans"]

        def settled() -> bool:
            good = condition(plans["system-upgrade/good"], "Complete").get("status") == "True"
            return good and all(condition(p, "Validated") for p in plans.values())

        await drive(rig, rig.agents(NODES, OLD), settled, 30, "the valid Plan did not complete")
        expected = {**{n: f for n, (_, f) in BAD.items()}, "bad-budget": "failure-budget"}
        assert len(expected) >= 15
        for name, fragment in expected.items():
            cond = condition(plans[f"system-upgrade/{name}"], "Validated")
            assert cond["status"] == "False" and cond["reason"] == "Error", (name, cond)
            assert fragment in cond["message"], (name, cond["message"])
            for n in NODES:
                assert (
                    f"plan.upgrade.cattle.io/{name}"
                    not in rig.cluster.objects["nodes"][n]["metadata"]["labels"]
                )
        assert all(le.plan == "good" for t in rig.cluster.table_history for le in t.leases)
