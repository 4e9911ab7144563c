"""The agent's main loop: resume what the journal says, then long-poll the coordinator and obey.

While a step runs, a heartbeat poll (wait=0) goes out every `--heartbeat` seconds with the progress.
Idle it sits in one long-poll at a time (the coordinator holds the request up to `--poll-wait`), so it
uses next to no CPU. An unreachable coordinator is retried with exponential backoff, forever. A report's
answer is the coordinator's next instruction once the report is stored: when it asks for the next step
(`staged` -> `apply`, `restarted` -> `finish`) the agent takes it at once instead of polling for it.

Once a lease is over (and no prefetched binary waits for one, `agent.prefetch`) and the coordinator has
no more work, `run` returns True when the download left modules loaded that an idle agent never needs
(`UPGRADE_ONLY_MODULES`: aiohttp, about 11 MiB resident). Python cannot unload them, so `agent.__main__`
then starts the agent afresh (re-executes it, same pid): the journal is empty at that point, so there is
nothing to resume, and the agent is back at its idle footprint (issue #6: under 40 MiB idle) instead of
carrying the download's imports until its next restart.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from agent.client import CoordinatorClient, CoordinatorUnavailable, Rejected
from agent.config import AgentConfig
from agent.upgrade import Upgrader
from wire.messages import Action, Instruction

log = logging.getLogger(__name__)

UPGRADE_ONLY_MODULES = ("aiohttp",)
"""Imported only when a binary is downloaded (`agent.download`); an idle agent never uses them."""


def upgrade_modules_loaded() -> bool:
    return any(name in sys.modules for name in UPGRADE_ONLY_MODULES)


async def run(config: AgentConfig, stop: asyncio.Event | None = None) -> bool:
    """Poll and obey until `stop` is set (False), or until the agent is idle again after a lease with
    `UPGRADE_ONLY_MODULES` loaded (True: the caller should start the agent afresh)."""
    stop = stop or asyncio.Event()
    # A fresh process only helps if it starts without them (else it would start afresh after every poll).
    can_shed = not upgrade_modules_loaded()
    client = CoordinatorClient(config.coordinator_url, config.node, config.token_file,
                               timeout=config.request_timeout)
    upgrader = Upgrader(config, client)
    try:
        await upgrader.observe()
        await upgrader.resume()
        delay = config.retry_backoff
        instruction: Instruction | None = None
        while not stop.is_set():
            if instruction is None:
                try:
                    if upgrader.entry is None:
                        await upgrader.observe()
                    instruction = await client.poll(upgrader.state(), config.poll_wait)
                    delay = config.retry_backoff
                except (CoordinatorUnavailable, Rejected) as exc:
                    log.warning("poll failed, retrying in %.1f s: %s", delay, exc)
                    if isinstance(exc, Rejected) and upgrader.prefetcher.held is not None:
                        # A coordinator of a version before prefetch refuses the field: poll without it.
                        upgrader.prefetcher.drop()
                    await _sleep(stop, delay)
                    delay = min(config.max_backoff, delay * 2)
                    continue
            before = upgrader.entry
            beat = asyncio.create_task(_heartbeat(client, upgrader, config.heartbeat_seconds))
            try:
                await upgrader.handle(instruction)
            finally:
                beat.cancel()
            answer = upgrader.take_answer()
            done, instruction = instruction, next_instruction(instruction, answer)
            if done.action == Action.IDLE:
                instruction = None
                # Not while a prefetched binary waits for its lease (due soon: the agent must not be
                # starting afresh then), nor after a failed prefetch (a fresh agent would not wait).
                if (can_shed and upgrader.entry is None and not upgrader.prefetcher.busy
                        and upgrade_modules_loaded()):
                    return True
                await _sleep(stop, done.poll_after_seconds)
            elif answer is None and upgrader.entry is before:
                # Nothing done and nothing said (an instruction this agent cannot take, a report refused):
                # the coordinator would answer the next poll at once with the same; do not spin on it.
                await _sleep(stop, done.poll_after_seconds)
    finally:
        await client.close()
    return False


def next_instruction(done: Instruction, answer: Instruction | None) -> Instruction | None:
    """What to do next without polling: the answer to the report `done` led to, when it asks for
    something else (`staged` answered with `apply`, `restarted` with `finish`). An answer that repeats
    `done` means "wait" (e.g. for the cordon), and the long-poll is where to wait: None."""
    if answer is None or answer.action == done.action:
        return None
    return answer


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
