"""`python -m coordinator` (`k3s-upgrade-coordinator`): settings, adapter, HTTP server, election, runtime.

Startup: parse flags + environment (exit 2 with a message on a bad value), JSON logs on stderr, connect
to the API server (kubeconfig or in-cluster), serve HTTP (agent API, /status, /metrics, /healthz,
/readyz) and print `coordinator listening on http://HOST:PORT`. Without `--leader-elect` this replica
acts at once; with it, only while it holds the Lease `k3s-upgrade-coordinator` (otherwise agents are
answered "idle" and nothing is written). SIGTERM/SIGINT: stop acting, close the server, exit 0.

The event loop is uvloop's (libuv's): the coordinator's one thread answers every agent and makes every API
request. In 3 alternated runs of `bench.rollout` (1,000 nodes, concurrency 50) the coordinator used
7.1-7.4 s of CPU on uvloop, 7.8-9.0 s on asyncio's own loop. The CPU of a wave of hand-offs, mostly
aiohttp's and our own Python, was not measurably lower.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from aiohttp import web

from coordinator import config, gc_tuning
from coordinator.api import BrokerSlot, IdleBroker, NodeAuthenticator, add_agent_routes
from coordinator.election import LeaderElector, act_while_leading
from coordinator.kube.client import KubeCluster
from coordinator.metrics import Metrics
from coordinator.reconciler import Runtime
from coordinator.tls import ServingCertificate
from coordinator.web import add_status_routes

log = logging.getLogger("coordinator")

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, plus any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


async def freeze_once_synced(runtime: Runtime) -> None:
    """See coordinator.gc_tuning: what exists once the caches are synced lives as long as the process."""
    for inf in (runtime.plans, runtime.nodes, runtime.secrets):
        await inf.synced.wait()
    gc_tuning.freeze_long_lived()


async def serve(settings: config.Settings, tls: ServingCertificate | None = None) -> None:
    """Run the coordinator until SIGTERM or SIGINT; HTTPS with `tls`'s certificate when given."""
    gc_tuning.tune()
    cluster = KubeCluster.connect(settings.kubeconfig)
    metrics = Metrics()
    idle = IdleBroker(max_wait=1.0 if settings.leader_elect else None)
    slot = BrokerSlot(idle)
    runtime = Runtime(cluster, settings, metrics)
    app = web.Application()
    add_agent_routes(
        app,
        NodeAuthenticator(
            cluster,
            ttl=settings.timeouts.token_cache,
            max_waiting=settings.max_held_polls,
            username=settings.agent_username,
        ),
        slot,
        settings.timeouts.poll_wait_max,
    )
    add_status_routes(app, runtime.status, runtime.ready, metrics)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls.context if tls else None)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"coordinator listening on {'https' if tls else 'http'}://{host}:{port}", flush=True)
    log.info(
        "serving",
        extra={
            "host": host,
            "port": port,
            "namespace": settings.namespace,
            "leader_elect": settings.leader_elect,
            "identity": settings.identity,
        },
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task[None]] = [asyncio.create_task(runtime.run_caches(), name="caches")]
    tasks.append(asyncio.create_task(freeze_once_synced(runtime), name="gc-freeze"))
    if tls is not None:
        tasks.append(asyncio.create_task(tls.keep_current(), name="tls-reload"))
    acting: asyncio.Task[None] | None = None
    elector: LeaderElector | None = None
    if settings.leader_elect:
        elector = LeaderElector(
            cluster,
            settings.namespace,
            config.LEADER_LEASE_NAME,
            settings.identity,
            settings.timeouts.leader_lease,
        )
        tasks.append(asyncio.create_task(elector.run(), name="election"))

    def start_acting() -> None:
        nonlocal acting
        if acting is None:
            metrics.is_leader.set(1)
            acting = asyncio.create_task(runtime.run(), name="reconciler")
            slot.broker = runtime.broker
            idle.wake.set()

    async def stop_acting() -> None:
        nonlocal acting
        slot.broker = idle
        idle.wake.clear()
        metrics.is_leader.set(0)
        if acting is not None:
            acting.cancel()
            await asyncio.gather(acting, return_exceptions=True)
            acting = None

    def background_failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped: %r; exiting", task.get_name(), task.exception())
            stop.set()

    for task in tasks:
        task.add_done_callback(background_failed)
    try:
        if elector is None:
            start_acting()
            await stop.wait()
        else:
            await act_while_leading(elector, start_acting, stop_acting, stop)
        for task in tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                raise RuntimeError(f"{task.get_name()} stopped") from exc
    finally:
        log.info("shutting down")
        await stop_acting()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if elector is not None:  # every write has stopped: the next replica need not wait for the expiry
            await elector.release()
        await runner.cleanup()
        await cluster.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.load(argv)
    except config.ConfigError as exc:
        print(f"k3s-upgrade-coordinator: {exc}", file=sys.stderr)
        return 2
    tls = None
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        try:
            tls = ServingCertificate(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            print(f"k3s-upgrade-coordinator: --tls-cert-file {settings.tls_cert_file} with "
                  f"--tls-private-key-file {settings.tls_key_file}: cannot serve TLS: {exc}", file=sys.stderr)
            return 2
    setup_logging(settings.log_level)
    try:
        uvloop.run(serve(settings, tls))
    except Exception:
        log.exception("coordinator stopped on an error")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
