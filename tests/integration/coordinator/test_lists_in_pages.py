"""`KubeCluster.list_objects` reads a list in pages, transforms each page as it comes, and falls back to one
whole list when a continue token has expired, as client-go's pager; the Node informer builds on it.

Against the API server emulator, in process on the test's loop (its store is written while a list is read).

Aspects covered:
- an informer over 1,234 Nodes lists them in 3 requests of limit=500 (the later two continuing), caches
  all 1,234 slimmed, and watches from the list's resourceVersion: a change made between two pages and one
  made after the list both reach the cache;
- the transform sees each page before the next is asked for (500, 500, then 234 objects);
- a continue token older than the emulator's history (compacted while the list was read) answers 410
  Expired, and the list is read again whole, in one request without limit; the pages read before are
  dropped (no object twice).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from coordinator.kube.client import LIST_PAGE, KubeCluster
from coordinator.kube.informer import Informer
from coordinator.kube.protocol import Obj
from coordinator.kube.resources import NODES
from coordinator.reconciler import slim_node
from sandbox.apiserver import ApiServer

pytestmark = pytest.mark.no_leaks

NODE_COUNT = 1234


def full_node(i: int) -> Obj:
    """A Node with some of what a real one carries beyond what the coordinator reads (its image list)."""
    name = f"node-{i:04d}"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": "amd64", "kubernetes.io/hostname": name}},
        "spec": {"podCIDR": "10.42.0.0/24"},
        "status": {
            "nodeInfo": {"kubeletVersion": "v1.29.4+k3s1", "architecture": "amd64", "osImage": "Ubuntu"},
            "conditions": [{"type": "Ready", "status": "True", "message": "kubelet is posting ready status"}],
            "images": [{"names": [f"registry.example/img-{k}:v1"], "sizeBytes": 1000 + k} for k in range(5)],
        },
    }


class Emulator:
    """The emulator with 1,234 Nodes; writes go to its store directly (same loop, between requests)."""

    def __init__(self, server: ApiServer, kubeconfig: Path) -> None:
        assert server.store is not None
        nodes = server.store.registry.lookup("", "v1", "nodes")
        assert nodes is not None
        self.server, self.store, self.kubeconfig, self.nodes = server, server.store, kubeconfig, nodes
        self.add_nodes(0, NODE_COUNT)

    def add_nodes(self, first: int, count: int) -> None:
        for i in range(first, first + count):
            self.store.create(self.nodes, None, full_node(i))

    def node(self, name: str) -> Obj:
        return self.store.get(self.nodes, None, name)

    def label(self, name: str, value: str) -> None:
        obj = copy.deepcopy(self.node(name))
        obj["metadata"]["labels"]["test"] = value
        self.store.update(self.nodes, None, name, obj)

    def node_lists(self) -> list[tuple[dict[str, list[str]], int]]:
        """The Node list requests answered so far (not watches): their query and status."""
        return [
            (parse_qs(r.query), r.status)
            for r in self.server.request_log
            if r.method == "GET" and r.path == "/api/v1/nodes" and "watch" not in parse_qs(r.query)
        ]

    @asynccontextmanager
    async def cluster(self) -> AsyncIterator[KubeCluster]:
        kube = KubeCluster.connect(str(self.kubeconfig))
        try:
            yield kube
        finally:
            await kube.aclose()


@asynccontextmanager
async def emulator_keeping(tmp_path: Path, history_limit: int) -> AsyncIterator[Emulator]:
    server = ApiServer(history_limit=history_limit)
    await server.start()
    try:
        yield Emulator(server, server.write_kubeconfig(tmp_path / "kubeconfig"))
    finally:
        await server.stop()


def after_first_call(action: Callable[[], None], inner: Callable[[Obj], Obj]) -> Callable[[Obj], Obj]:
    """A transform doing `inner`, that runs `action` once, on the first object (of the first page)."""
    done = False

    def transform(obj: Obj) -> Obj:
        nonlocal done
        if not done:
            done = True
            action()
        return inner(obj)

    return transform


async def test_informer_lists_nodes_in_pages_and_watches_from_the_list(tmp_path: Path) -> None:
    assert LIST_PAGE == 500
    async with emulator_keeping(tmp_path, 10_000) as emu, emu.cluster() as cluster:
        watched = {("MODIFIED", "node-0000"), ("MODIFIED", "node-1233")}
        seen: set[tuple[str, str]] = set()
        both_watched = asyncio.Event()

        def on_event(typ: str, obj: Obj) -> None:
            seen.add((typ, obj["metadata"]["name"]))
            if watched <= seen:
                both_watched.set()

        informer = Informer(
            cluster,
            NODES,
            None,
            on_event,
            transform=after_first_call(lambda: emu.label("node-0000", "between-pages"), slim_node),
        )
        task = asyncio.create_task(informer.run())
        try:
            async with asyncio.timeout(30):
                await informer.synced.wait()
            lists = emu.node_lists()
            assert [(q["limit"], "continue" in q, status) for q, status in lists] == [
                (["500"], False, 200),
                (["500"], True, 200),
                (["500"], True, 200),
            ]
            assert len(informer.cache) == NODE_COUNT
            assert informer.cache["node-0999"] == slim_node(emu.node("node-0999"))
            assert "images" not in informer.cache["node-0999"]["status"]

            emu.label("node-1233", "after-the-list")
            async with asyncio.timeout(30):
                await both_watched.wait()
            assert informer.cache["node-0000"]["metadata"]["labels"]["test"] == "between-pages"
            assert informer.cache["node-1233"]["metadata"]["labels"]["test"] == "after-the-list"
            assert informer.cache["node-0000"] == slim_node(emu.node("node-0000"))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_each_page_is_transformed_before_the_next_is_asked_for(tmp_path: Path) -> None:
    async with emulator_keeping(tmp_path, 10_000) as emu, emu.cluster() as cluster:
        lists_when_transformed: list[int] = []

        def spy(obj: Obj) -> Obj:
            lists_when_transformed.append(len(emu.node_lists()))
            return {"metadata": {"name": obj["metadata"]["name"]}, "slim": True}

        items, rv = await cluster.list_objects(NODES, transform=spy)
        assert Counter(lists_when_transformed) == {1: 500, 2: 500, 3: 234}
        assert len(items) == NODE_COUNT and all(o["slim"] for o in items)
        assert rv == str(emu.store.rv)


async def test_an_expired_continue_token_falls_back_to_one_whole_list(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The emulator keeps the last 50 changes: 60 Nodes created while the first page is transformed
    # compact the version the list reads at.
    async with emulator_keeping(tmp_path, 50) as emu, emu.cluster() as cluster:
        transform = after_first_call(lambda: emu.add_nodes(NODE_COUNT, 60), lambda o: {**o, "slim": True})
        with caplog.at_level(logging.WARNING, logger="coordinator.kube.client"):
            items, rv = await cluster.list_objects(NODES, transform=transform)
        lists = emu.node_lists()
        assert [(q.get("limit"), "continue" in q, status) for q, status in lists] == [
            (["500"], False, 200),
            (["500"], True, 410),
            (None, False, 200),
        ]
        names = [o["metadata"]["name"] for o in items]
        assert len(names) == len(set(names)) == NODE_COUNT + 60
        assert all(o["slim"] for o in items)
        assert rv == str(emu.store.rv)
        assert "continue token expired after 500 objects" in caplog.text
