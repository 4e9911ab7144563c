"""An agent's token names its node on every Kubernetes the coordinator can upgrade from, 1.28 included.

From 1.30 a TokenReview of a Pod-bound token names the Pod's node (`authentication.kubernetes.io/node-name`,
feature gate ServiceAccountTokenPodNodeInfo); 1.28 and 1.29 name only the Pod (name and uid). The API
server emulator answers either way (`token_node_name`); the coordinator's adapter (`KubeCluster`) is
driven over real HTTP.

Aspects: with a 1.30 review the node comes from the review and no Pod is read; with a 1.28/1.29 review it
comes from the bound Pod's `spec.nodeName` (one GET of that Pod); a token of a Pod replaced since (a new
uid under the same name) is refused by the review itself, and one bound to no Pod names no node (the agent
API answers 401 to both, `test_agent_api_auth`; a review that names a Pod whose uid is no longer that
Pod's names no node either, `test_kube_adapter_requests`). A token of another ServiceAccount than the
agents' is refused with 403 by its name, its Pod not read: while Pod GETs fail it is still 403, where the
agents' own token gets 503 (retry later).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.api import AuthError, NodeAuthenticator
from coordinator.kube.client import KubeCluster
from sandbox.apiserver import ThreadedApiServer
from wire.messages import TOKEN_AUDIENCE

NS = "system-upgrade"
AGENTS = f"system:serviceaccount:{NS}:k3s-upgrade-agent"


class Cluster:
    def __init__(self, server: ThreadedApiServer, kube: KubeCluster) -> None:
        self.server, self.kube = server, kube

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": "Bearer admin-token", "Content-Type": "application/json"}
        data = json.dumps(body) if body else None
        async with aiohttp.ClientSession() as s, s.request(method, self.server.url + path, headers=headers,
                                                           data=data) as r:
            text = await r.text()
            assert r.status < 300, f"{method} {path}: {r.status} {text}"
            return json.loads(text) if text else None

    async def agent_pod(self, node: str, name: str = "agent", sa: str = "k3s-upgrade-agent"
                        ) -> dict[str, Any]:
        return dict(await self.call("POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": {"nodeName": node, "serviceAccountName": sa,
                     "containers": [{"name": "agent", "image": "k3s-upgrader"}]},
        }))

    async def token(self, pod: dict[str, Any] | None, sa: str = "k3s-upgrade-agent") -> str:
        spec: dict[str, Any] = {"audiences": [TOKEN_AUDIENCE], "expirationSeconds": 3600}
        if pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod["metadata"]["name"],
                                      "uid": pod["metadata"]["uid"]}
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        out = await self.call("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/{sa}/token", request)
        return str(out["status"]["token"])

    def pod_reads(self, name: str = "agent") -> int:
        return sum(1 for r in self.server.server.request_log
                   if r.method == "GET" and r.path == f"/api/v1/namespaces/{NS}/pods/{name}")


async def _cluster(tmp_path: Path, token_node_name: bool) -> AsyncIterator[Cluster]:
    with ThreadedApiServer(token_node_name=token_node_name) as server:
        kube = KubeCluster.connect(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        cluster = Cluster(server, kube)
        try:
            await cluster.call("POST", "/api/v1/namespaces",
                               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
            for sa in ("k3s-upgrade-agent", "web"):
                await cluster.call("POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {
                    "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
            yield cluster
        finally:
            await kube.aclose()


@pytest.fixture
async def before_1_30(tmp_path: Path) -> AsyncIterator[Cluster]:
    async for cluster in _cluster(tmp_path, token_node_name=False):
        yield cluster


@pytest.fixture
async def since_1_30(tmp_path: Path) -> AsyncIterator[Cluster]:
    async for cluster in _cluster(tmp_path, token_node_name=True):
        yield cluster


async def test_since_1_30_the_review_names_the_node(since_1_30: Cluster) -> None:
    token = await since_1_30.token(await since_1_30.agent_pod("node-1"))
    ident = await since_1_30.kube.review_token(token, TOKEN_AUDIENCE)
    assert ident is not None and ident.node == "node-1"
    assert ident.username == f"system:serviceaccount:{NS}:k3s-upgrade-agent"
    assert since_1_30.pod_reads() == 0


async def test_before_1_30_the_node_is_the_bound_pods(before_1_30: Cluster) -> None:
    token = await before_1_30.token(await before_1_30.agent_pod("node-1"))
    ident = await before_1_30.kube.review_token(token, TOKEN_AUDIENCE)
    assert ident is not None and ident.node == "node-1"
    assert before_1_30.pod_reads() == 1


async def test_before_1_30_a_replaced_pod_or_no_pod_names_no_node(before_1_30: Cluster) -> None:
    token = await before_1_30.token(await before_1_30.agent_pod("node-1"))
    await before_1_30.call("DELETE", f"/api/v1/namespaces/{NS}/pods/agent")
    await before_1_30.agent_pod("node-2")  # the same name, a new uid, on another node
    assert await before_1_30.kube.review_token(token, TOKEN_AUDIENCE) is None  # (the review refuses it)
    unbound = await before_1_30.kube.review_token(await before_1_30.token(None), TOKEN_AUDIENCE)
    assert unbound is not None and unbound.node is None


async def test_before_1_30_another_service_accounts_token_is_refused_without_reading_its_pod(
        before_1_30: Cluster) -> None:
    intruder = await before_1_30.token(await before_1_30.agent_pod("node-1", name="web", sa="web"), sa="web")
    agent = await before_1_30.token(await before_1_30.agent_pod("node-1"))
    before_1_30.server.faults.fail_next(10, "GET", f"^/api/v1/namespaces/{NS}/pods/", 500, "etcd is down")
    auth = NodeAuthenticator(before_1_30.kube, username=AGENTS)
    with pytest.raises(AuthError) as refused:
        await auth.authorize(f"Bearer {intruder}", "node-1")
    assert refused.value.status == 403 and f"system:serviceaccount:{NS}:web" in str(refused.value)
    assert before_1_30.pod_reads("web") == 0
    with pytest.raises(AuthError) as unavailable:  # the agents' own token: its node is unknown for now
        await auth.authorize(f"Bearer {agent}", "node-1")
    assert unavailable.value.status == 503 and "etcd is down" in str(unavailable.value)
    assert before_1_30.pod_reads() == 1
    before_1_30.server.faults.clear()
    assert (await auth.authorize(f"Bearer {agent}", "node-1")).username == AGENTS
