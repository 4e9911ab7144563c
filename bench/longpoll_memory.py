"""What the coordinator's memory is made of at scale: its imports, and N agents each holding a long-poll.

The rollout benchmark's 5,000-node figure is the coordinator's peak RSS with 5,000 agents connected. Two
parts of it do not depend on our code, and this measures them apart, each in a fresh process:

- `import_mib`: RSS of a Python that has imported the coordinator (aiohttp, the kubernetes client,
  pydantic, prometheus-client, ...) and nothing else;
- `per_longpoll_kib`: RSS a bare aiohttp server (no coordinator code) gains per long-poll it holds, with
  N clients posting an agent-sized body and a ~900-byte bearer token, as our agents do.

Prints JSON.

    python -m bench.longpoll_memory [--clients 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from typing import Any

import aiohttp
from aiohttp import web

BODY = (
    b'{"node":"node-%05d","agent_version":"0.1.0","arch":"amd64","k3s_version":"v1.30.3+k3s1",'
    b'"lease_id":null,"phase":"idle"}'
)
TOKEN = "Bearer " + "x" * 900


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def clients(port: int, n: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:

        async def one(i: int) -> None:
            headers = {"Authorization": TOKEN, "Content-Type": "application/json"}
            async with s.post(f"http://127.0.0.1:{port}/poll", data=BODY % i, headers=headers) as r:
                await r.read()

        await asyncio.gather(*(one(i) for i in range(n)))


async def serve(n: int) -> dict[str, Any]:
    held = 0
    all_held = asyncio.Event()
    release = asyncio.Event()

    async def poll(req: web.Request) -> web.Response:
        nonlocal held
        body = await req.json()
        held += 1
        if held >= n:
            all_held.set()
        await release.wait()
        return web.json_response({"action": "idle", "node": body["node"]})

    app = web.Application()
    app.router.add_post("/poll", poll)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await asyncio.sleep(0.2)
    before = rss_mib()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.longpoll_memory", "--connect", str(port), "--clients", str(n)
    )
    try:
        async with asyncio.timeout(120):
            await all_held.wait()
        await asyncio.sleep(1.0)
        during = rss_mib()
    finally:
        release.set()
        await proc.wait()
        await runner.cleanup()
    return {"clients": n, "rss_before_mib": round(before, 1), "rss_holding_mib": round(during, 1),
            "per_longpoll_kib": round((during - before) * 1024 / n, 1)}


def import_mib() -> float:
    code = "import coordinator.__main__, bench.longpoll_memory as m; print(m.rss_mib())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip()), 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.longpoll_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=2000)
    p.add_argument("--connect", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.connect is not None:
        asyncio.run(clients(args.connect, args.clients))
        return {}
    figures = asyncio.run(serve(args.clients))
    return {"benchmark": "longpoll_memory", "coordinator_import_mib": import_mib(), **figures}


if __name__ == "__main__":
    figures = main()
    if figures:
        print(json.dumps(figures))
