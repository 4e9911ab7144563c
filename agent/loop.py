"""The agent's main loop: resume what the journal says, then long-poll the coordinator and obey.

While a step runs, a heartbeat poll (wait=0) goes out every `--heartbeat` seconds with the progress.
Idle it sits in one long-poll at a time (the coordinator holds the request up to `--poll-wait`), so it
uses next to no CPU. An unreachable coordinator is retried with exponential backoff, forever.
"""

from __future__ import annotations

import asyncio
import logging

from agent.client import CoordinatorClient, CoordinatorUnavailable, Rejected
from agent.config import AgentConfig
from agent.upgrade import Upgrader
from wire.messages import Action

log = logging.getLogger(__name__)


async def run(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    client = CoordinatorClient(config.coordinator_url, config.node, config.token_file,
                               timeout=config.request_timeout)
    upgrader = Upgrader(config, client)
    try:
        await upgrader.observe()
        await upgrader.resume()
        delay = config.retry_backoff
        while not stop.is_set():
            try:
                if upgrader.entry is None:
                    await upgrader.observe()
                instruction = await client.poll(upgrader.state(), config.poll_wait)
                delay = config.retry_backoff
            except (CoordinatorUnavailable, Rejected) as exc:
                log.warning("poll failed, retrying in %.1f s: %s", delay, exc)
                await _sleep(stop, delay)
                delay = min(config.max_backoff, delay * 2)
                continue
            beat = asyncio.create_task(_heartbeat(client, upgrader, config.heartbeat_seconds))
            try:
                await upgrader.handle(instruction)
            finally:
                beat.cancel()
            if instruction.action == Action.IDLE:
                await _sleep(stop, instruction.poll_after_seconds)
    finally:
        await client.close()


async def _heartbeat(client: CoordinatorClient, upgrader: Upgrader, every: float) -> None:
    """While a step runs (a long download, a restart), keep posting the state (phase, progress) so the
    coordinator does not take the agent for dead. Answers are ignored: the main loop polls right after."""
    while True:
        await asyncio.sleep(every)
        try:
            await client.poll(upgrader.state(), 0)
        except (CoordinatorUnavailable, Rejected) as exc:
            log.debug("heartbeat not delivered: %s", exc)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            pass
