"""`KubeCluster` (the client's config and auth, aiohttp requests, watches through the client on a thread)
sends the requests the API expects and maps errors.

A loopback HTTP server records what arrives and answers like the API server would. (Runs against the
API server emulator are the rollout tests' business; this pins the wire shape of our adapter.)

Aspects covered:
- list/get paths for core and custom resources (lists in pages of 500), the bearer token from the kubeconfig;
- Lease create (POST) vs conditional replace (PUT with metadata.resourceVersion); 409 -> LeaseTableConflict;
  a missing Lease -> None;
- Node patch as a JSON merge patch (null deletes a label), Plan status via the status subresource;
- eviction POST to pods/{name}/eviction; 429 -> EvictionBlocked;
- TokenReview: audience sent, node name read from user.extra, unauthenticated -> None; a review as
  before 1.30 (the Pod named, not its node): the node of that Pod, none when its uid differs now;
- watch: events streamed as they come; closing the stream early stops the reader thread at once;
- a refused connection -> KubeUnavailable (temporary).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from coordinator.kube import client as kube_client
from coordinator.kube import errors
from coordinator.kube.client import KubeCluster
from coordinator.kube.resources import NODES, PLANS

Seen = list[tuple[str, str, str | None, str | None, Any]]


def kubeconfig(path: Path, port: int) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: admin-token}}]\n"
        "contexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
    )
    return path


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[KubeCluster, Seen]]:
    seen: Seen = []

    async def handle(req: web.Request) -> web.StreamResponse:
        raw = await req.read()
        body = json.loads(raw) if raw else None
        seen.append(
            (
                req.method,
                str(req.rel_url),
                req.headers.get("Authorization"),
                req.headers.get("Content-Type"),
                body,
            )
        )
        path = req.path
        if req.query.get("watch"):
            resp = web.StreamResponse()
            await resp.prepare(req)
            for i in range(2):
                ev = {
                    "type": "ADDED",
                    "object": {"metadata": {"name": f"n{i}", "resourceVersion": str(10 + i)}},
                }
                await resp.write((json.dumps(ev) + "\n").encode())
            await asyncio.sleep(30)  # a long-lived watch: the client must be able to walk away
            return resp
        if path.endswith("/leases/missing"):
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        if req.method == "PUT" and path.endswith("/leases/stale"):
            return web.json_response(
                {"kind": "Status", "code": 409, "message": "the object has been modified"}, status=409
            )
        if path.endswith("/eviction") and "blocked" in path:
            return web.json_response(
                {"kind": "Status", "code": 429, "message": "disruption budget"}, status=429
            )
        if path.endswith("/tokenreviews"):
            token = body["spec"]["token"]
            # "pod-*": a review as before 1.30, the Pod named but not its node (a Pod now of uid "u1")
            bound_pod = {"authentication.kubernetes.io/pod-name": ["agent"],
                         "authentication.kubernetes.io/pod-uid": [token.removeprefix("pod-")]}
            status = (
                {
                    "authenticated": True,
                    "audiences": body["spec"]["audiences"],
                    "user": {"username": "sa", "extra": {"authentication.kubernetes.io/node-name": ["n1"]}},
                }
                if token == "good"
                else {
                    "authenticated": True,
                    "audiences": body["spec"]["audiences"],
                    "user": {"username": "system:serviceaccount:su:agent", "extra": bound_pod},
                }
                if token.startswith("pod-")
                else {"authenticated": False}
            )
            return web.json_response({**body, "status": status}, status=201)
        if path == "/api/v1/namespaces/su/pods/agent":
            return web.json_response({"metadata": {"name": "agent", "uid": "u1"}, "spec": {"nodeName": "n2"}})
        if req.method in ("POST", "PUT") and "/leases" in path:
            return web.json_response({**body, "metadata": {**body["metadata"], "resourceVersion": "42"}})
        return web.json_response(
            {"kind": "List", "items": [{"metadata": {"name": "a"}}], "metadata": {"resourceVersion": "7"}}
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    cluster = KubeCluster.connect(str(kubeconfig(tmp_path / "kc", runner.addresses[0][1])))
    try:
        yield cluster, seen
    finally:
        await cluster.aclose()
        await runner.cleanup()


async def test_request_shapes_and_error_mapping(api: tuple[KubeCluster, Seen]) -> None:
    cluster, seen = api
    items, rv = await cluster.list_objects(PLANS, "system-upgrade")
    assert (items, rv) == ([{"metadata": {"name": "a"}}], "7")
    assert seen[-1][:3] == (
        "GET",
        "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans?limit=500",
        "Bearer admin-token",
    )
    await cluster.list_objects(NODES)
    assert seen[-1][1] == "/api/v1/nodes?limit=500"

    assert await cluster.get_lease("ns", "missing") is None
    created = await cluster.write_lease("ns", "t", {"a": "b"}, {"holderIdentity": "x"}, None)
    assert created.resource_version == "42" and seen[-1][0] == "POST"
    await cluster.write_lease("ns", "t", {"a": "b"}, {}, "41")
    assert seen[-1][0] == "PUT" and seen[-1][4]["metadata"]["resourceVersion"] == "41"
    with pytest.raises(errors.LeaseTableConflict, match="Lease ns/stale"):
        await cluster.write_lease("ns", "stale", {}, {}, "1")

    await cluster.patch_node("n1", labels={"plan.upgrade.cattle.io/p": "h", "old": None}, unschedulable=False)
    method, url, _, ctype, body = seen[-1]
    assert (method, url, ctype) == ("PATCH", "/api/v1/nodes/n1", "application/merge-patch+json")
    assert body == {
        "metadata": {"labels": {"plan.upgrade.cattle.io/p": "h", "old": None}},
        "spec": {"unschedulable": None},
    }
    await cluster.patch_status(PLANS, "system-upgrade", "p", {"latestHash": "h"})
    assert seen[-1][1] == "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans/p/status"

    await cluster.evict_pod("apps", "web", 5)
    assert seen[-1][1] == "/api/v1/namespaces/apps/pods/web/eviction"
    assert seen[-1][4]["deleteOptions"] == {"gracePeriodSeconds": 5}
    with pytest.raises(errors.EvictionBlocked):
        await cluster.evict_pod("apps", "blocked", None)

    ident = await cluster.review_token("good", "k3s-upgrade-coordinator")
    assert ident is not None and ident.node == "n1"
    assert seen[-1][4]["spec"]["audiences"] == ["k3s-upgrade-coordinator"]
    assert await cluster.review_token("bad", "k3s-upgrade-coordinator") is None
    # Before 1.30: the node of the bound Pod, if it is still that Pod (its uid).
    ident = await cluster.review_token("pod-u1", "k3s-upgrade-coordinator")
    assert ident is not None and ident.node == "n2"
    assert seen[-1][:2] == ("GET", "/api/v1/namespaces/su/pods/agent")
    ident = await cluster.review_token("pod-u0", "k3s-upgrade-coordinator")
    assert ident is not None and ident.node is None


async def test_watch_streams_and_stops_promptly(api: tuple[KubeCluster, Seen]) -> None:
    cluster, _ = api
    got = []
    stream = cluster.watch(NODES, None, "7", 60)
    async for ev in stream:
        got.append((ev.type, ev.obj["metadata"]["name"]))
        if len(got) == 2:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert got == [("ADDED", "n0"), ("ADDED", "n1")]
    async with asyncio.timeout(5):
        while True:
            if not any(t.name == "watch-nodes" for t in threading.enumerate()):
                break
            await asyncio.sleep(0.02)


async def test_unreachable_api_server_is_temporary(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = KubeCluster.connect(str(kubeconfig(tmp_path / "kc", port)))
    try:
        with pytest.raises(errors.KubeUnavailable) as info:
            await cluster.list_objects(NODES)
        assert info.value.temporary
    finally:
        await cluster.aclose()


async def test_auth_headers_reused_for_a_moment_then_asked_again(
    api: tuple[KubeCluster, Seen], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's refresh hook (which, for a kubeconfig, rebuilds the configuration) runs at most once per
    `AUTH_REUSE_SECONDS`; a token it returns later (rotated) is sent once that time is over."""
    cluster, seen = api
    monkeypatch.setattr(kube_client, "AUTH_REUSE_SECONDS", 0.3)
    token = ["Bearer first"]
    asked: list[str] = []

    def hook(cfg: Any) -> None:
        asked.append(token[0])
        cfg.api_key["BearerToken"] = token[0]

    cluster._api.configuration.refresh_api_key_hook = hook
    await cluster.list_objects(PLANS, "system-upgrade")
    token[0] = "Bearer second"
    await cluster.list_objects(PLANS, "system-upgrade")
    await asyncio.sleep(0.35)
    await cluster.list_objects(PLANS, "system-upgrade")
    assert [s[2] for s in seen[-3:]] == ["Bearer first", "Bearer first", "Bearer second"]
    assert asked == ["Bearer first", "Bearer second"]
