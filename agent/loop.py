"""The agent's main loop: resume what the journal says, then long-poll the coordinator and obey.

While a step runs, a heartbeat poll (wait=0) goes out every `--heartbeat` seconds with the progress.
Idle it sits in one long-poll at a time (the coordinator holds the request up to `--poll-wait`), so it
uses next to no CPU. An unreachable coordinator is retried with exponential backoff, forever, and so is a
step that failed unexpectedly (resumed from the journal: the agent never exits mid-upgrade). A report's
answer is the coordinator's next instruction once the report is stored: when it asks for the next step
(`staged` -> `apply`, `restarted` -> `finish`) the agent takes it at once instead of polling for it.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from agent.client import CoordinatorClient, CoordinatorUnavailable, Rejected
from agent.config import AgentConfig
from agent.upgrade import Upgrader
from wire.messages import Action, AgentPhase, Instruction

log = logging.getLogger(__name__)

UNSTOPPABLE = frozenset({AgentPhase.APPLYING, AgentPhase.ROLLING_BACK})
"""Journal phases in which k3s is being replaced or restored: a stop waits until they are over (`run`)."""


async def run(config: AgentConfig, stop: asyncio.Event | None = None) -> None:
    """Poll and obey until `stop` is set.

    A stop (SIGTERM: a DaemonSet rollout, a deleted pod) that comes while the journal says k3s is being
    replaced or restored (`UNSTOPPABLE`) waits until the new k3s is up (or the old one back), up to the
    restart timeouts: cut short there, the agent could not start again on a node whose new k3s does not
    come up (no kubelet starts its pod), and nothing would roll the node back. Any other stop is at once
    (the journal resumes the rest)."""
    stop = stop or asyncio.Event()
    client = CoordinatorClient(config.coordinator_url, config.node, config.token_file,
                               timeout=config.request_timeout, ca_file=config.coordinator_ca_file)
    upgrader = Upgrader(config, client)
    leave = asyncio.Event()
    body = asyncio.create_task(_obey(config, client, upgrader, leave))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((body, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not body.done():
            await _until_stoppable(upgrader, body)
            leave.set()
            body.cancel()
        with suppress(asyncio.CancelledError):
            await body
    finally:
        stopping.cancel()
        if not body.done():  # (run itself cancelled)
            body.cancel()
            with suppress(asyncio.CancelledError):
                await body
        await client.close()


async def _until_stoppable(upgrader: Upgrader, body: asyncio.Task[None]) -> None:
    entry = upgrader.entry
    if entry is None or entry.phase not in UNSTOPPABLE:
        return
    log.warning("asked to stop while lease %s is %s (k3s being replaced or restored): stopping once that is "
                "over", entry.lease.lease_id, entry.phase.value)
    def unstoppable() -> bool:
        return not body.done() and upgrader.entry is not None and upgrader.entry.phase in UNSTOPPABLE

    # The journal's phase changes inside the Upgrader, which signals nothing: looked at every STOP_CHECK
    # seconds, and only while a stop waits.
    while unstoppable():  # noqa: ASYNC110
        await asyncio.sleep(STOP_CHECK)
    now = upgrader.entry.phase.value if upgrader.entry is not None else "done"
    log.info("stopping: lease %s is %s", entry.lease.lease_id, now)


STOP_CHECK = 0.2
"""Seconds between two looks at the journal's phase while a stop waits."""


async def _obey(config: AgentConfig, client: CoordinatorClient, upgrader: Upgrader,
                stop: asyncio.Event) -> None:
    """Resume what the journal says, then poll and obey until `stop` is set."""
    await upgrader.observe()
    delay = config.retry_backoff
    while not stop.is_set() and not await _resumed(upgrader):
        await _sleep(stop, delay)
        delay = min(config.max_backoff, delay * 2)
    instruction: Instruction | None = None
    step_delay = config.retry_backoff  # after a step failed unexpectedly: grows until one does not
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
        except Exception:
            # Not the end of the agent: between the SIGTERM of k3s and a working new k3s nothing would
            # start this pod again (its kubelet is k3s), and only it can roll the node back.
            log.exception("%s failed unexpectedly; resuming from the journal in %.1f s",
                          instruction.action.value, step_delay)
            instruction = None
            while not stop.is_set():
                await _sleep(stop, step_delay)
                step_delay = min(config.max_backoff, step_delay * 2)
                if await _resumed(upgrader):
                    break
            continue
        finally:
            beat.cancel()
        step_delay = config.retry_backoff
        answer = upgrader.take_answer()
        done, instruction = instruction, next_instruction(instruction, answer)
        if done.action == Action.IDLE:
            instruction = None
            await _sleep(stop, done.poll_after_seconds)
        elif answer is None and upgrader.entry is before:
            # Nothing done and nothing said (an instruction this agent cannot take, a report refused):
            # the coordinator would answer the next poll at once with the same; do not spin on it.
            await _sleep(stop, done.poll_after_seconds)


async def _resumed(upgrader: Upgrader) -> bool:
    """Resume what the journal says; False (logged) when that failed unexpectedly, to be tried again."""
    try:
        await upgrader.resume()
    except Exception:
        log.exception("resuming from the journal failed; trying again")
        return False
    return True


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
