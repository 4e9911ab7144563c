"""The emulator's REST semantics, seen through the official `kubernetes` client over loopback HTTP.

Aspects covered:
- 201 on create, server-set uid/creationTimestamp/resourceVersion, 409 AlreadyExists, 404 NotFound Status;
- update with a stale resourceVersion -> 409 Conflict (Leases), no-op writes keep the resourceVersion;
- status subresource isolation and `generation` bumped on spec changes only (custom resource);
- merge patch, JSON patch, strategic merge patch (415 on custom resources), list `kind`;
- label (set-based) and field selectors (`spec.nodeName`, `status.phase`), unsupported field -> 400;
- watch: replay from a resourceVersion, selector transitions as ADDED/DELETED, timeoutSeconds ends it;
- bad input: malformed JSON -> 400, unknown resource -> 404, body over the limit -> 413, annotations over
  256 KiB -> 422 (as a real API server);
- fault injection and the request log; an injected latency delays every request but a watch's events;
- TokenRequest bound to a Pod and TokenReview (user, extra, audiences, deleted pod).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.no_leaks

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                },
            }
        ],
    },
}


def _status(exc: ApiException) -> dict[str, Any]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    return body


def _raw(api: Any, method: str, path: str, body: Any, ctype: str = "application/json") -> tuple[int, Any]:
    """A raw request (bodies the typed client cannot send); returns (status, decoded JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(
        api.configuration.host + path,
        data=data,
        method=method,
        headers={"Content-Type": ctype, "Authorization": "Bearer admin-token"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _node(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels or {}}}


def test_create_get_conflicts_and_noop_writes(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    coord = client.CoordinationV1Api(kube_api)
    created = core.create_node(_node("n1"), _preload_content=False)
    assert created.status == 201
    body = json.loads(created.data)
    assert (
        body["metadata"]["uid"]
        and body["metadata"]["creationTimestamp"]
        and body["metadata"]["resourceVersion"]
    )
    with pytest.raises(ApiException) as exc:
        core.create_node(_node("n1"))
    assert exc.value.status == 409 and _status(exc.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as exc:
        core.read_node("nope")
    assert exc.value.status == 404 and _status(exc.value)["details"]["name"] == "nope"

    lease = coord.create_namespaced_lease(
        "default", {"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}}
    )
    rv = lease.metadata.resource_version
    lease.spec.holder_identity = "b"
    updated = coord.replace_namespaced_lease("l", "default", lease)
    assert int(updated.metadata.resource_version) > int(rv)
    lease.metadata.resource_version = rv
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("l", "default", lease)
    assert exc.value.status == 409 and _status(exc.value)["reason"] == "Conflict"
    same = coord.replace_namespaced_lease("l", "default", updated)
    assert same.metadata.resource_version == updated.metadata.resource_version
    listed = core.list_node(_preload_content=False)
    assert json.loads(listed.data)["kind"] == "NodeList"


def test_status_subresource_generation_and_patch_types(kube_api: Any) -> None:
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(CRD)
    co = client.CustomObjectsApi(kube_api)
    w = co.create_namespaced_custom_object(
        "example.com",
        "v1",
        "default",
        "widgets",
        {
            "apiVersion": "example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w"},
            "spec": {"size": 1},
            "status": {"x": 1},
        },
    )
    assert "status" not in w and w["metadata"]["generation"] == 1
    s = co.patch_namespaced_custom_object_status(
        "example.com", "v1", "default", "widgets", "w", {"status": {"ready": True}, "spec": {"size": 9}}
    )
    assert s["status"] == {"ready": True} and s["spec"]["size"] == 1 and s["metadata"]["generation"] == 1
    m = co.patch_namespaced_custom_object(
        "example.com", "v1", "default", "widgets", "w", {"spec": {"size": 2}, "status": {"ready": False}}
    )
    assert m["spec"]["size"] == 2 and m["status"] == {"ready": True} and m["metadata"]["generation"] == 2
    lab = co.patch_namespaced_custom_object(
        "example.com", "v1", "default", "widgets", "w", {"metadata": {"labels": {"a": "b"}}}
    )
    assert lab["metadata"]["generation"] == 2
    path = "/apis/example.com/v1/namespaces/default/widgets/w"
    code, body = _raw(
        kube_api, "PATCH", path, {"spec": {"size": 3}}, "application/strategic-merge-patch+json"
    )
    assert code == 415 and body["reason"] == "UnsupportedMediaType"
    code, body = _raw(
        kube_api,
        "PATCH",
        path,
        [{"op": "replace", "path": "/spec/size", "value": 7}],
        "application/json-patch+json",
    )
    assert code == 200 and body["spec"]["size"] == 7

    core = client.CoreV1Api(kube_api)
    core.create_node({**_node("n"), "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}})
    n = core.patch_node(
        "n", {"spec": {"unschedulable": True, "taints": [{"key": "b", "effect": "NoSchedule"}]}}
    )
    assert n.spec.unschedulable and sorted(t.key for t in n.spec.taints) == ["a", "b"]


def test_selectors(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_node(_node("s1", {"node-role.kubernetes.io/master": "true", "zone": "a"}))
    core.create_node(_node("a1", {"zone": "b"}))
    core.create_node(_node("a2", {}))
    names = lambda sel: sorted(n.metadata.name for n in core.list_node(label_selector=sel).items)  # noqa: E731
    assert names("node-role.kubernetes.io/master=true") == ["s1"]
    assert names("!node-role.kubernetes.io/master") == ["a1", "a2"]
    assert names("zone in (a,b),zone notin (a)") == ["a1"]
    assert names("zone") == ["a1", "s1"]
    for name, node, phase in [("p1", "s1", "Running"), ("p2", "a1", "Running"), ("p3", "s1", "Succeeded")]:
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": name},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": phase},
            },
        )
    pods = core.list_namespaced_pod("default", field_selector="spec.nodeName=s1,status.phase!=Succeeded")
    assert [p.metadata.name for p in pods.items] == ["p1"]
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_pod("default", field_selector="spec.bogus=1")
    assert exc.value.status == 400


def test_watch_replay_transitions_and_timeout(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_node(_node("w1", {"pool": "x"}))
    rv = core.list_node().metadata.resource_version
    core.create_node(_node("w2", {"pool": "x"}))
    core.patch_node("w1", {"metadata": {"labels": {"pool": "y"}}})
    core.patch_node("w2", {"metadata": {"labels": {"extra": "1"}}})
    seen = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_node, label_selector="pool=x", resource_version=rv, timeout_seconds=1
        )
    ]
    assert seen == [("ADDED", "w2"), ("DELETED", "w1"), ("MODIFIED", "w2")]


def test_bad_input_faults_and_request_log(apiserver: Any, kube_api: Any) -> None:
    api = kube_api
    code, body = _raw(api, "POST", "/api/v1/nodes", b"{not json")
    assert code == 400 and body["reason"] == "BadRequest"
    code, body = _raw(api, "POST", "/api/v1/gizmos", {})
    assert code == 404 and body["kind"] == "Status"
    big = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big"},
        "data": {"x": "a" * 4_000_000},
    }
    with pytest.raises(ApiException) as exc:
        client.CoreV1Api(api).create_namespaced_config_map("default", big)
    assert exc.value.status == 413
    apiserver.request_log.clear()
    apiserver.faults.fail_next(2, "GET", r"^/api/v1/nodes$", 503, "try later")
    core = client.CoreV1Api(api)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            core.list_node()
        assert exc.value.status == 503 and _status(exc.value)["message"] == "try later"
    core.list_node()
    assert [(e.method, e.path, e.status) for e in apiserver.request_log] == [
        ("GET", "/api/v1/nodes", 503)
    ] * 2 + [("GET", "/api/v1/nodes", 200)]


def test_injected_latency_delays_requests_but_not_watch_events(apiserver: Any, kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_node(_node("l1", {}))
    rv = core.list_node().metadata.resource_version
    apiserver.faults.latency = 0.4
    started = time.monotonic()
    core.patch_node("l1", {"metadata": {"labels": {"step": "1"}}})
    patched = time.monotonic() - started
    started = time.monotonic()
    events = watch.Watch().stream(core.list_node, resource_version=rv, timeout_seconds=2)
    first = next(iter(events))
    replayed = time.monotonic() - started
    events.close()
    assert first["type"] == "MODIFIED" and first["object"].metadata.labels == {"step": "1"}
    assert 0.4 <= patched < 1.5
    assert replayed < 0.3


def test_token_request_and_review(kube_api: Any) -> None:
    core = client.CoreV1Api(kube_api)
    auth = client.AuthenticationV1Api(kube_api)
    core.create_namespaced_service_account("default", {"metadata": {"name": "agent"}})
    pod = core.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "agent-x"},
            "spec": {"nodeName": "node-7", "containers": [{"name": "c", "image": "i"}]},
        },
    )
    tr = core.create_namespaced_service_account_token(
        "agent",
        "default",
        {
            "spec": {
                "audiences": ["coord"],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": "agent-x",
                    "uid": pod.metadata.uid,
                },
            }
        },
    )
    token = tr.status.token
    review = auth.create_token_review({"spec": {"token": token, "audiences": ["coord"]}})
    assert review.status.authenticated
    assert review.status.user.username == "system:serviceaccount:default:agent"
    assert review.status.user.extra["authentication.kubernetes.io/node-name"] == ["node-7"]
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == ["agent-x"]
    assert review.status.audiences == ["coord"]
    assert not auth.create_token_review(
        {"spec": {"token": token, "audiences": ["other"]}}
    ).status.authenticated
    assert not auth.create_token_review(
        {"spec": {"token": "garbage", "audiences": ["coord"]}}
    ).status.authenticated
    core.delete_namespaced_pod("agent-x", "default")
    assert not auth.create_token_review(
        {"spec": {"token": token, "audiences": ["coord"]}}
    ).status.authenticated


def test_annotations_over_256_kib_are_refused_like_a_real_api_server(kube_api: Any) -> None:
    """Total annotation bytes (keys + values) above 262144 -> 422 Invalid on create and on update."""
    coord = client.CoordinationV1Api(kube_api)
    fits = {"a": "x" * (256 * 1024 - 1)}
    lease = coord.create_namespaced_lease("default", {"metadata": {"name": "big", "annotations": fits}})
    status, body = _raw(
        kube_api,
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases",
        {"metadata": {"name": "too-big", "annotations": {"a": "x" * (256 * 1024)}}},
    )
    assert status == 422 and body["reason"] == "Invalid"
    assert "metadata.annotations: Too long: must have at most 262144 bytes" in body["message"]
    lease.metadata.annotations = {"a": "x" * (256 * 1024 - 1), "b": "y"}
    with pytest.raises(ApiException) as exc:
        coord.replace_namespaced_lease("big", "default", lease)
    assert exc.value.status == 422 and _status(exc.value)["reason"] == "Invalid"
