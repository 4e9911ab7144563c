"""The endpoints for people and probes: `/status` (JSON), `/metrics` (Prometheus), `/healthz`, `/readyz`.

`/healthz` answers 200 while the process serves HTTP (a non-leader is healthy too); `/readyz` answers 200
once the caches are synced and the replica can answer agents (a non-leader is ready: it answers "idle").
`/status` is whatever the runtime's status provider returns: per plan its version, hash, conditions,
per-node phase, timings and last error (see docs/protocol.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from coordinator.metrics import CONTENT_TYPE, Metrics

StatusProvider = Callable[[], dict[str, Any]]
ReadyProbe = Callable[[], tuple[bool, str]]

STATUS: web.AppKey[StatusProvider] = web.AppKey("status_provider")
READY: web.AppKey[ReadyProbe] = web.AppKey("ready_probe")
METRICS = web.AppKey("metrics", Metrics)


async def status(request: web.Request) -> web.Response:
    body = request.app[STATUS]()
    return web.json_response(text=json.dumps(body, indent=2, sort_keys=True, default=str))


async def metrics(request: web.Request) -> web.Response:
    resp = web.Response(body=request.app[METRICS].render())
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    ok, why = request.app[READY]()
    return web.Response(text=f"{why}\n", status=200 if ok else 503)


def add_status_routes(app: web.Application, provider: StatusProvider, ready: ReadyProbe, m: Metrics) -> None:
    app[STATUS] = provider
    app[READY] = ready
    app[METRICS] = m
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
