"""An idle agent told to prefetch downloads the binary before its lease, and the lease takes it over.

Aspects: a binary named in an `idle` answer is downloaded once, verified, kept next to the live one (the
host unchanged) and said in the polls (`prefetched`); `apply` of a lease of that binary then runs with no
download and no `downloading` report, and leaves nothing behind; a prefetched binary is found again after
the agent is killed, and one that no longer verifies, or was never checked with `--version` (killed
before), is removed; naming another binary replaces it; one not named for `KEEP_SECONDS` is dropped; a
failed prefetch is said in `error` until it is tried again (an answer naming nothing meanwhile does not
clear it), leaves no file, and is not tried again at once; a state directory it cannot write is a failed
prefetch, not a dead agent; a coordinator of a version before prefetch, which refuses the field, makes
the agent drop the binary and poll without it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.install import staging_paths
from agent.prefetch import RETRY_SECONDS, Prefetcher, PrefetchRecord
from sandbox.releases import ReleaseServer
from tests.integration.agent.conftest import NEW, OLD, Node, ScriptedCoordinator, make_lease, sha
from wire.messages import Action, AgentPhase, AgentState, Artifact, Prefetch


def hint(releases: ReleaseServer, version: str = NEW, sha256: str | None = None) -> Prefetch:
    art = Artifact(url=releases.url(version), sha256=sha256 or releases.sha256(version), name="k3s")
    return Prefetch(artifact=art, target_version=version)


def downloads(releases: ReleaseServer, version: str) -> int:
    return sum(1 for method, path, _ in releases.requests if method == "GET" and f"/{version}/" in path)


async def wait_poll(coordinator: ScriptedCoordinator, check, within: float = 15.0) -> AgentState:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for state in reversed(coordinator.polls):
            if check(state):
                return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"no such poll within {within} s; last {coordinator.polls[-3:]}")


async def test_prefetched_binary_is_applied_without_a_download(node: Node, releases, agent_factory,
                                                               coordinator: ScriptedCoordinator) -> None:
    old_pid, old_sha = node.pid(), sha(node.binary)
    coordinator.instruct(Action.IDLE, None, prefetch=hint(releases))
    agent = agent_factory(coordinator.url)
    agent.start()
    new_sha = releases.sha256(NEW)
    await wait_poll(coordinator, lambda s: s.prefetched == new_sha)
    staged = staging_paths(node.binary, new_sha)[1]
    assert staged.exists() and sha(staged) == new_sha
    assert sha(node.binary) == old_sha and node.pid() == old_pid, "prefetching changed the host"
    assert (agent.state_dir / "prefetch.json").exists()
    seen = len(coordinator.polls)
    await wait_poll(coordinator, lambda s: len(coordinator.polls) >= seen + 2 and s.prefetched == new_sha)
    assert downloads(releases, NEW) == 1, releases.requests  # held, not fetched again

    coordinator.instruct(Action.APPLY, make_lease(releases))  # granted `staged`: the go-ahead comes first
    restarted = await coordinator.wait_report(AgentPhase.RESTARTED)
    assert restarted.k3s_version == NEW and node.running_version() == NEW
    assert downloads(releases, NEW) == 1
    phases = [r.phase for r in coordinator.reports]
    assert phases == [AgentPhase.RESTARTED], phases  # no `downloading`: nothing was downloaded
    deadline = time.monotonic() + 10
    while agent.journal_phase() is not None or node.stray_files():
        assert time.monotonic() < deadline, f"left {node.stray_files()}, journal {agent.journal_phase()}"
        await asyncio.sleep(0.05)
    assert not (agent.state_dir / "prefetch.json").exists()


async def test_found_again_after_a_kill_unless_it_changed(node: Node, releases, agent_factory,
                                                         coordinator: ScriptedCoordinator) -> None:
    coordinator.instruct(Action.IDLE, None, prefetch=hint(releases))
    agent = agent_factory(coordinator.url)
    agent.start()
    new_sha = releases.sha256(NEW)
    await wait_poll(coordinator, lambda s: s.prefetched == new_sha)
    agent.kill()
    coordinator.polls.clear()
    agent.start()
    await wait_poll(coordinator, lambda s: s.prefetched == new_sha)
    assert downloads(releases, NEW) == 1, "found again, not fetched again"

    agent.kill()
    staged = staging_paths(node.binary, new_sha)[1]
    staged.write_bytes(b"not k3s")  # changed while the agent was down
    coordinator.instruct(Action.IDLE, None)  # nothing named: the agent must not keep it
    coordinator.polls.clear()
    agent.start()
    await wait_poll(coordinator, lambda s: s.k3s_version == OLD)
    assert coordinator.polls[-1].prefetched is None
    assert node.stray_files() == [] and not (agent.state_dir / "prefetch.json").exists()


async def test_naming_another_binary_replaces_the_one_held(node: Node, releases, agent_factory,
                                                           coordinator: ScriptedCoordinator) -> None:
    coordinator.instruct(Action.IDLE, None, prefetch=hint(releases, NEW))
    agent = agent_factory(coordinator.url)
    agent.start()
    await wait_poll(coordinator, lambda s: s.prefetched == releases.sha256(NEW))
    coordinator.instruct(Action.IDLE, None, prefetch=hint(releases, OLD))
    await wait_poll(coordinator, lambda s: s.prefetched == releases.sha256(OLD))
    assert node.stray_files() == [staging_paths(node.binary, releases.sha256(OLD))[1].name]


async def test_a_failed_prefetch_says_why_and_is_not_tried_again_at_once(
    node: Node, releases, agent_factory, coordinator: ScriptedCoordinator
) -> None:
    coordinator.instruct(Action.IDLE, None, prefetch=hint(releases, NEW, sha256="0" * 64))
    agent = agent_factory(coordinator.url)
    agent.start()
    failed = await wait_poll(coordinator, lambda s: s.error is not None)
    assert "prefetching k3s v1.30.4+k3s1 failed" in (failed.error or "") and failed.prefetched is None
    tried = downloads(releases, NEW)
    await asyncio.sleep(2.0)
    assert downloads(releases, NEW) == tried, "tried again at once"
    assert node.stray_files() == [] and not (agent.state_dir / "prefetch.json").exists()
    assert agent.process is not None and agent.process.poll() is None


async def test_a_binary_not_named_for_a_while_is_dropped(node: Node, releases, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    prefetcher = make_prefetcher(node, tmp_path / "state")
    await prefetcher.follow(hint(releases), node.binary, None)
    assert prefetcher.prefetched == releases.sha256(NEW) and len(node.stray_files()) == 1
    await prefetcher.follow(None, node.binary, None)  # not named once: kept
    assert prefetcher.prefetched is not None
    monkeypatch.setattr("agent.prefetch.KEEP_SECONDS", 0.0)
    await asyncio.sleep(0.01)
    await prefetcher.follow(None, node.binary, None)
    assert prefetcher.prefetched is None and node.stray_files() == []
    assert not (tmp_path / "state" / "prefetch.json").exists()


async def test_a_prefetch_never_checked_with_version_is_not_trusted(node: Node, releases, agent_factory,
                                                                   coordinator: ScriptedCoordinator) -> None:
    new_sha = releases.sha256(NEW)
    staged = staging_paths(node.binary, new_sha)[1]
    staged.write_bytes(releases.binary(NEW))  # complete, intact, but the agent was killed before `--version`
    agent = agent_factory(coordinator.url)
    agent.state_dir.mkdir(parents=True, exist_ok=True)
    record = PrefetchRecord(binary=str(node.binary), sha256=new_sha, target_version=NEW)
    (agent.state_dir / "prefetch.json").write_text(record.model_dump_json())
    agent.start()
    await wait_poll(coordinator, lambda s: s.k3s_version == OLD)
    assert coordinator.polls[-1].prefetched is None
    assert not staged.exists() and not (agent.state_dir / "prefetch.json").exists()


def make_prefetcher(node: Node, state_dir: Path) -> Prefetcher:
    return Prefetcher(AgentConfig(node="n1", coordinator_url="http://127.0.0.1:9", host_root=node.root,
                                  state_dir=state_dir, retry_backoff=0.1, max_backoff=0.5, space_margin=0,
                                  download_attempts=1))


async def test_a_failure_is_said_until_it_is_tried_again(node: Node, releases, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    p = make_prefetcher(node, tmp_path / "state")
    bad = hint(releases, NEW, sha256="0" * 64)
    await p.follow(bad, node.binary, None)
    assert p.error is not None and "failed" in p.error and p.failed_lately
    tried = downloads(releases, NEW)
    await p.follow(None, node.binary, None)  # e.g. a replica that does not lead answered
    await p.follow(bad, node.binary, None)
    assert p.error is not None and downloads(releases, NEW) == tried  # still said; not tried again
    monkeypatch.setattr("agent.prefetch.RETRY_SECONDS", 0.0)
    assert RETRY_SECONDS > 0 and p.error is None  # its time is over: tried again at the next answer
    await p.follow(hint(releases, NEW), node.binary, None)
    assert p.prefetched == releases.sha256(NEW) and p.error is None


async def test_a_state_dir_it_cannot_write_is_a_failed_prefetch(node: Node, releases, tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the state directory should be")
    p = make_prefetcher(node, blocked)
    await p.follow(hint(releases), node.binary, None)  # does not raise
    assert p.prefetched is None and p.error is not None and "failed" in p.error
    assert node.stray_files() == []


async def test_a_coordinator_that_refuses_the_field_makes_the_agent_drop_the_binary(
    node: Node, releases, agent_factory, coordinator: ScriptedCoordinator
) -> None:
    coordinator.instruct(Action.IDLE, None, prefetch=hint(releases))
    agent = agent_factory(coordinator.url)
    agent.start()
    await wait_poll(coordinator, lambda s: s.prefetched == releases.sha256(NEW))
    coordinator.refuse_prefetched = True  # rolled back to a coordinator that knows no prefetch
    coordinator.instruct(Action.IDLE, None)
    seen = len(coordinator.polls)
    await wait_poll(coordinator, lambda s: len(coordinator.polls) > seen and s.prefetched is None)
    assert "poll refused" in coordinator.requests
    assert node.stray_files() == [] and not (agent.state_dir / "prefetch.json").exists()
