"""deploy/crd.yaml takes every Plan field system-upgrade-controller v0.20 takes, with the types it takes.

An API server prunes what a CRD's structural schema does not name, and `kubectl apply` (strict field
validation, its default) refuses the Plan instead; a value of another type is refused by both. The
emulator is lenient here, so this walks the schema itself, as the API server's validation would.

Aspects: a Plan that sets every field of SUC's `PlanSpec` (pkg/apis/upgrade.cattle.io/v1/types.go at
v0.20: secrets' `defaultMode`, drain `timeout` as a duration string and as an int of nanoseconds,
tolerations, window, imagePullSecrets, priorityClassName, postCompleteLabels, ...) matches the schema;
the walker finds a field the schema does not name and a value of the wrong type (so it can fail); every
node of the schema has a type or an int-or-string / preserve-unknown-fields marker (structural).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

FULL_PLAN: dict[str, Any] = {
    "apiVersion": "upgrade.cattle.io/v1",
    "kind": "Plan",
    "metadata": {"name": "server-plan", "namespace": "system-upgrade"},
    "spec": {
        "concurrency": 1,
        "jobActiveDeadlineSecs": 900,
        "nodeSelector": {
            "matchLabels": {"node-role.kubernetes.io/control-plane": "true"},
            "matchExpressions": [{"key": "k3s-upgrade", "operator": "NotIn", "values": ["disabled"]}],
        },
        "serviceAccountName": "system-upgrade",
        "version": "v1.30.4+k3s1",
        "secrets": [{"name": "proxy", "path": "/host/etc/proxy", "ignoreUpdates": True, "defaultMode": 420}],
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 60}],
        "exclusive": True,
        "window": {"days": ["monday", "tuesday"], "startTime": "01:00", "endTime": "04:00",
                   "timeZone": "UTC"},
        "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "other-plan"]},
        "upgrade": {
            "image": "rancher/k3s-upgrade",
            "command": ["/bin/sh"],
            "args": ["-c", "upgrade"],
            "envs": [{"name": "A", "value": "b"}],
            "envFrom": [{"secretRef": {"name": "proxy"}}],
            "volumes": [{"name": "data", "source": "/var/lib", "destination": "/host/var/lib"}],
            "securityContext": {"privileged": True, "capabilities": {"add": ["CAP_SYS_BOOT"]}},
        },
        "cordon": True,
        "drain": {
            "timeout": "5m",
            "gracePeriod": 30,
            "deleteEmptydirData": True,
            "ignoreDaemonSets": True,
            "force": True,
            "disableEviction": False,
            "skipWaitForDeleteTimeout": 60,
            "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
        },
        "imagePullSecrets": [{"name": "registry"}],
        "postCompleteDelay": "2m",
        "priorityClassName": "system-node-critical",
        "postCompleteLabels": {"upgraded": "true"},
    },
}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float)}


def schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "deploy" / "crd.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    return dict(version["schema"]["openAPIV3Schema"])


def problems(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """Where `value` does not match the structural schema `node`: a field it does not name (pruned, or
    refused by strict validation) or a value of another type."""
    if node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node:
        return []
    if node.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, str | int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: {value!r} is neither an int nor a string"]
    kind = node.get("type")
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        wanted = _TYPES.get(str(kind))
        ok = wanted is not None and isinstance(value, wanted) and not (kind != "boolean" and value is True)
    if not ok:
        return [f"{path}: {value!r} is not of type {kind}"]
    found: list[str] = []
    if kind == "array":
        for i, item in enumerate(value):
            found += problems(item, node.get("items") or {}, f"{path}[{i}]")
    elif kind == "object":
        props, extra = node.get("properties") or {}, node.get("additionalProperties")
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if sub == "metadata":  # the API server's own, whatever the schema says
                continue
            if key in props:
                found += problems(item, props[key], sub)
            elif isinstance(extra, dict):
                found += problems(item, extra, sub)
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                found.append(f"{sub}: not in the schema")
    return found


@pytest.mark.parametrize("timeout", ["5m", 300_000_000_000])
def test_a_plan_with_every_suc_field_matches_the_schema(timeout: str | int) -> None:
    plan = yaml.safe_load(yaml.safe_dump(FULL_PLAN))
    plan["spec"]["drain"]["timeout"] = timeout
    assert problems(plan, schema()) == []


def test_the_walker_finds_an_unknown_field_and_a_wrong_type() -> None:
    plan = yaml.safe_load(yaml.safe_dump(FULL_PLAN))
    plan["spec"]["secrets"][0]["mode"] = 420
    plan["spec"]["concurrency"] = "one"
    plan["spec"]["drain"]["timeout"] = 1.5
    assert sorted(problems(plan, schema())) == [
        "spec.concurrency: 'one' is not of type integer",
        "spec.drain.timeout: 1.5 is neither an int nor a string",
        "spec.secrets[0].mode: not in the schema",
    ]


def test_every_schema_node_is_structural() -> None:
    untyped: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        marked = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        if "type" not in node and not marked:
            untyped.append(path or "<root>")
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{path}{{}}")
        assert not ("properties" in node and isinstance(node.get("additionalProperties"), dict)), path

    walk(schema(), "")
    assert untyped == []
