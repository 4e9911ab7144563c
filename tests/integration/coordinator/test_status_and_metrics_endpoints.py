"""`/status`, `/metrics`, `/healthz`, `/readyz` over real HTTP.

Aspects covered:
- `/status` serves the provider's view as JSON (sorted, datetimes as text);
- `/metrics` is Prometheus text with the lease, phase-duration, failure and nodes done/total families;
  the lease gauge drops a (plan, phase) pair to 0 when it disappears;
- `/healthz` is always 200; `/readyz` follows the readiness probe (503 with the reason until ready).
"""

from __future__ import annotations

from datetime import UTC, datetime

import aiohttp
from aiohttp import web

from coordinator.metrics import Metrics
from coordinator.web import add_status_routes


async def test_endpoints() -> None:
    ready = [False]
    m = Metrics()
    app = web.Application()
    add_status_routes(
        app,
        lambda: {"plans": {"server-plan": {"hash": "abc"}}, "at": datetime(2026, 1, 1, tzinfo=UTC)},
        lambda: (ready[0], "ready" if ready[0] else "waiting for caches: nodes"),
        m,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/status") as r:
                body = await r.json()
                assert body["plans"]["server-plan"]["hash"] == "abc" and body["at"].startswith("2026-01-01")
            async with s.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{base}/readyz") as r:
                assert r.status == 503 and "nodes" in await r.text()
            ready[0] = True
            async with s.get(f"{base}/readyz") as r:
                assert r.status == 200
            m.set_leases({("server-plan", "applying"): 1, ("agent-plan", "staged"): 2})
            m.phase_seconds.labels("server-plan", "applying").observe(3.0)
            m.failures.labels("agent-plan").inc()
            m.nodes_done.labels("server-plan").set(2)
            m.nodes_total.labels("server-plan").set(3)
            m.set_leases({("agent-plan", "staged"): 1})
            async with s.get(f"{base}/metrics") as r:
                text = await r.text()
                assert r.headers["Content-Type"].startswith("text/plain")
            assert 'k3s_upgrade_leases{phase="applying",plan="server-plan"} 0.0' in text
            assert 'k3s_upgrade_leases{phase="staged",plan="agent-plan"} 1.0' in text
            assert 'k3s_upgrade_phase_duration_seconds_count{phase="applying",plan="server-plan"} 1.0' in text
            assert 'k3s_upgrade_failures_total{plan="agent-plan"} 1.0' in text
            assert 'k3s_upgrade_nodes_done{plan="server-plan"} 2.0' in text
            assert 'k3s_upgrade_nodes_total{plan="server-plan"} 3.0' in text
    finally:
        await runner.cleanup()
