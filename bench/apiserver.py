"""Benchmark of the API server emulator: `python -m bench.apiserver` prints one JSON object.

Figures: requests/s for GET of one node, LIST of 1,000 nodes, merge-PATCH of a node, and watch fan-out
(one write delivered to 100 watchers, events/s and the time until all 100 saw it). The client is aiohttp
on the same loop as an in-process server; total run time stays well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from sandbox.apiserver import ApiServer

NODES = 1000
WATCHERS = 100


async def _rate(n: int, call: Any) -> float:
    start = time.perf_counter()
    for i in range(n):
        await call(i)
    return n / (time.perf_counter() - start)


async def run() -> dict[str, Any]:
    server = ApiServer()
    await server.start()
    url = server.url
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": "Bearer admin-token"}, connector=aiohttp.TCPConnector(limit=0)
        ) as http:
            for i in range(NODES):
                body = {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": f"node-{i:04d}", "labels": {"pool": str(i % 10)}},
                    "status": {"nodeInfo": {"kubeletVersion": "v1.30.1+k3s1"}},
                }
                async with http.post(f"{url}/api/v1/nodes", json=body) as r:
                    assert r.status == 201, await r.text()

            async def get(i: int) -> None:
                async with http.get(f"{url}/api/v1/nodes/node-{i % NODES:04d}") as r:
                    await r.read()

            async def lst(_: int) -> None:
                async with http.get(f"{url}/api/v1/nodes") as r:
                    assert len((await r.json())["items"]) == NODES

            async def patch(i: int) -> None:
                async with http.patch(
                    f"{url}/api/v1/nodes/node-{i % NODES:04d}",
                    data=json.dumps({"metadata": {"labels": {"n": str(i)}}}),
                    headers={"Content-Type": "application/merge-patch+json"},
                ) as r:
                    assert r.status == 200

            out: dict[str, Any] = {"nodes": NODES}
            out["get_per_s"] = round(await _rate(2000, get))
            out["list_1000_nodes_per_s"] = round(await _rate(20, lst), 1)
            out["merge_patch_per_s"] = round(await _rate(2000, patch))

            rv = server.store.rv if server.store else 0
            ready = 0
            done = asyncio.Event()
            latencies: list[float] = []
            sent_at = 0.0

            async def watcher() -> None:
                nonlocal ready
                params = {
                    "watch": "true",
                    "resourceVersion": str(rv),
                    "fieldSelector": "metadata.name=node-0000",
                    "timeoutSeconds": "30",
                }
                async with http.get(f"{url}/api/v1/nodes", params=params) as r:
                    ready += 1
                    async for _line in r.content:
                        latencies.append(time.perf_counter() - sent_at)
                        if len(latencies) >= WATCHERS * 10:
                            done.set()
                        if done.is_set():
                            return

            tasks = [asyncio.create_task(watcher()) for _ in range(WATCHERS)]
            while ready < WATCHERS or (server.store and server.store.hub.count() < WATCHERS):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            start = time.perf_counter()
            for i in range(10):
                sent_at = time.perf_counter()
                await patch(i * NODES)
            await asyncio.wait_for(done.wait(), 30)
            elapsed = time.perf_counter() - start
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            out["watchers"] = WATCHERS
            out["watch_events_delivered_per_s"] = round(WATCHERS * 10 / elapsed)
            out["watch_fanout_max_latency_ms"] = round(max(latencies) * 1000, 1)
            return out
    finally:
        await server.stop()


def main() -> None:
    print(json.dumps(asyncio.run(run())), flush=True)


if __name__ == "__main__":
    main()
