"""Plan parsing and validation (SUC v0.20 shape), and the plan hash.

Aspects: the docs' two Plans are valid and `prepare` names the awaited plan; every rule yields a message
naming the field (version xor channel, unsupported image, unsupported prepare, self-prepare, drain
deleteLocalData+deleteEmptydirData, negative postCompleteDelay, bad durations (a drain timeout negative or
neither a duration string nor an int of nanoseconds, SUC's IntOrString), bad window, bad selector
operator, bad failure budget, schema type errors); k3s-upgrade image detection with registry/tag/digest.
Hash: SHA-224 hex, changes with version, serviceAccountName, digest-annotation fields and secret contents,
not with secrets marked ignoreUpdates.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pytest

from coordinator.hashing import plan_hash, secret_hash
from coordinator.plans import drain_timeout, is_k3s_upgrade_image, parse_duration, parse_plan

SERVER: dict[str, Any] = {
    "metadata": {"name": "server-plan", "namespace": "system-upgrade", "uid": "u1"},
    "spec": {"concurrency": 1, "cordon": True, "serviceAccountName": "system-upgrade",
             "nodeSelector": {"matchExpressions": [{"key": "node-role.kubernetes.io/master", "operator": "In",
                                                    "values": ["true"]}]},
             "upgrade": {"image": "rancher/k3s-upgrade"}, "version": "v1.24.6+k3s1"},
}


def edited(**spec: Any) -> dict[str, Any]:
    p = copy.deepcopy(SERVER)
    for k, v in spec.items():
        if v is None:
            p["spec"].pop(k, None)
        else:
            p["spec"][k] = v
    return p


def test_seed_plan_is_valid_and_prepare_names_the_plan() -> None:
    plan, errors = parse_plan(SERVER)
    assert errors == [] and plan is not None and plan.prepare_plan is None
    agent = edited(prepare={"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]})
    agent["metadata"]["name"] = "agent-plan"
    plan, errors = parse_plan(agent)
    assert errors == [] and plan is not None and plan.prepare_plan == "server-plan"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"version": None}, "spec.version/spec.channel: exactly one"),
        ({"channel": "https://update.k3s.io/v1-release/channels/stable"}, "exactly one"),
        ({"version": "latest"}, "spec.version"),
        ({"upgrade": {"image": "rancher/system-agent:v1"}}, "spec.upgrade.image"),
        ({"upgrade": None}, "spec.upgrade"),
        ({"prepare": {"image": "busybox", "args": ["prepare", "x"]}}, "spec.prepare"),
        ({"prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]}},
         "wait for itself"),
        ({"drain": {"deleteLocalData": True, "deleteEmptydirData": True}}, "mutually exclusive"),
        ({"drain": {"timeout": "soon"}}, "spec.drain.timeout"),
        ({"drain": {"timeout": -1}}, "spec.drain.timeout"),
        ({"drain": {"timeout": 1.5}}, "spec.drain.timeout"),
        ({"postCompleteDelay": "-5s"}, "spec.postCompleteDelay"),
        ({"postCompleteDelay": "later"}, "spec.postCompleteDelay"),
        ({"window": {"days": ["someday"]}}, "spec.window.days[0]"),
        ({"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
         "spec.nodeSelector.matchExpressions[0].operator"),
        ({"drain": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}},
         "spec.drain.podSelector.matchExpressions[0].operator: unknown operator 'Bogus'"),
        ({"drain": {"podSelector": {"matchLabels": ["a"]}}},
         "spec.drain.podSelector.matchLabels must be a map"),
        ({"concurrency": "many"}, "spec.concurrency"),
        ({"concurrency": -1}, "spec.concurrency"),
    ],
)
def test_invalid_plans_name_field_and_problem(spec: dict[str, Any], fragment: str) -> None:
    plan, errors = parse_plan(edited(**spec))
    assert plan is None
    assert any(fragment in e for e in errors), errors


def test_failure_budget_annotation() -> None:
    p = edited()
    p["metadata"]["annotations"] = {"upgrade.k3s.io/failure-budget": "2"}
    plan, _ = parse_plan(p)
    assert plan is not None and plan.failure_budget == 2
    p["metadata"]["annotations"] = {"upgrade.k3s.io/failure-budget": "lots"}
    plan, errors = parse_plan(p)
    assert plan is None and "failure-budget" in errors[0]


@pytest.mark.parametrize(
    ("image", "ok"),
    [("rancher/k3s-upgrade", True), ("rancher/k3s-upgrade:v1.30.1-k3s1", True),
     ("docker.io/rancher/k3s-upgrade:latest", True), ("registry.local:5000/rancher/k3s-upgrade", True),
     ("rancher/k3s-upgrade@sha256:" + "0" * 64, True), ("rancher/k3s-upgrader", False),
     ("evil/rancher/k3s-upgrade", False), ("busybox", False)],
)
def test_k3s_upgrade_image_detection(image: str, ok: bool) -> None:
    assert is_k3s_upgrade_image(image) is ok


@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("30s", 30), ("5m", 300), ("1h30m", 5400),
                                               ("1.5s", 1.5), ("-2m", -120)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_hash_is_sha224_of_its_inputs() -> None:
    base = plan_hash("v1.30.1+k3s1", "sa", SERVER, [], {})
    assert base == hashlib.sha224(b"v1.30.1+k3s1sa").hexdigest()
    assert plan_hash("v1.30.2+k3s1", "sa", SERVER, [], {}) != base
    assert plan_hash("v1.30.1+k3s1", "other", SERVER, [], {}) != base
    digest = copy.deepcopy(SERVER)
    digest["metadata"]["annotations"] = {"upgrade.cattle.io/digest": "spec.upgrade.image"}
    assert plan_hash("v1.30.1+k3s1", "sa", digest, [], {}) == hashlib.sha224(
        b"v1.30.1+k3s1sarancher/k3s-upgrade").hexdigest()
    s1 = plan_hash("v1.30.1+k3s1", "sa", SERVER, [("s", False)], {"s": {"k": b"1"}})
    s2 = plan_hash("v1.30.1+k3s1", "sa", SERVER, [("s", False)], {"s": {"k": b"2"}})
    assert s1 != s2 != base
    # kubectl's short secret hash: sha256 of the Secret's JSON, 10 hex digits with 0/1/3/a/e remapped.
    raw = b'{"data":{"k":"MQ=="},"kind":"Secret","name":"s","type":"Opaque"}'
    short = hashlib.sha256(raw).hexdigest()[:10].translate(str.maketrans("013ae", "ghkmt"))
    assert secret_hash("s", {"k": b"1"}) == short
    assert s1 == hashlib.sha224(b"v1.30.1+k3s1sa" + short.encode()).hexdigest()
    ignored = plan_hash("v1.30.1+k3s1", "sa", SERVER, [("s", True)], {"s": {"k": b"2"}})
    assert ignored == base


@pytest.mark.parametrize(("timeout", "seconds"), [(None, 0.0), ("", 0.0), ("0", 0.0), ("5m", 300.0),
                                                  (300_000_000_000, 300.0), (1_500_000_000, 1.5), (0, 0.0)])
def test_drain_timeout_is_a_duration_string_or_nanoseconds(timeout: str | int | None, seconds: float) -> None:
    assert drain_timeout(timeout) == seconds
    if timeout is not None:
        plan, errors = parse_plan(edited(drain={"timeout": timeout}))
        assert plan is not None and plan.spec.drain is not None, errors
        assert drain_timeout(plan.spec.drain.timeout) == seconds
