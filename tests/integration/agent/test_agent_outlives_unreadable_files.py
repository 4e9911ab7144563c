"""A CA file or token file the agent cannot read does not end it: it still resumes the upgrade it was in.

The journal resume needs no coordinator, and an agent restarted mid-upgrade is the only thing that can roll
the node back (nothing starts its pod again while k3s is down: its kubelet is k3s). So a file problem is a
temporary error of each request, logged and retried like an unreachable coordinator.

Aspects: with a `--coordinator-ca-file` holding no certificate, an agent restarted in the middle of a
rollback restores the old k3s and restarts it, keeps running, logs the CA file and the cause with each
report it cannot send, and delivers `rolled_back` once the file holds the CA; with its token file
unreadable (a directory) the agent keeps polling, logging the file, and sends the token once it is there.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from pathlib import Path

import trustme

from agent.discovery import boot_id, process_clock
from agent.install import staging_paths, swap_in
from agent.journal import Journal, JournalEntry
from sandbox.standin import build_standin
from tests.integration.agent.conftest import (
    NEW,
    OLD,
    STARTUP,
    TOKEN,
    Node,
    ScriptedCoordinator,
    make_lease,
    sha,
)
from wire.messages import Action, AgentPhase


def _logged(log: Path, pattern: str, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if log.exists() and re.search(pattern, log.read_text()):
            return True
        time.sleep(0.05)
    return False


async def test_a_bad_ca_file_does_not_keep_the_agent_from_rolling_back(node: Node, releases, tmp_path: Path,
                                                                       agent_factory) -> None:
    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(served)
    coordinator = ScriptedCoordinator(auto=False, tls=served)
    await coordinator.start()
    try:
        lease = make_lease(releases)
        old_sha = sha(node.binary)
        _, staged = staging_paths(node.binary, lease.artifact.sha256)
        build_standin(staged, NEW, startup_seconds=STARTUP)
        swap_in(staged, node.binary)
        Journal(tmp_path / "state").save(JournalEntry(
            lease=lease, phase=AgentPhase.ROLLING_BACK, binary=str(node.binary), old_sha256=old_sha,
            swap_started_at=process_clock(), rollback_started_at=process_clock(), error="did not verify",
            boot_id=boot_id(),
        ))  # the rollback was journalled, then the agent went down before the restore
        coordinator.instruct(Action.ROLLBACK, lease, reason="did not verify")
        ca_file = tmp_path / "coordinator-ca.pem"
        ca_file.write_text("not a certificate\n")  # a ConfigMap with the wrong key's value, say
        agent = agent_factory(coordinator.url)
        agent.start("--coordinator-ca-file", str(ca_file))
        log = tmp_path / "agent.log"
        pattern = rf"report rolled_back not delivered, .*coordinator CA file {re.escape(str(ca_file))} cannot"
        assert await asyncio.to_thread(_logged, log, pattern), log.read_text() if log.exists() else "no log"
        assert sha(node.binary) == old_sha and node.running_version() == OLD
        assert agent.process is not None and agent.process.poll() is None, log.read_text()
        assert coordinator.reports == []
        ca.cert_pem.write_to_path(str(ca_file))
        rolled = await coordinator.wait_report(AgentPhase.ROLLED_BACK)
        assert rolled.k3s_version == OLD and rolled.lease_id == lease.lease_id
    finally:
        await coordinator.stop()


async def test_an_unreadable_token_file_does_not_end_the_agent(node: Node, tmp_path: Path,
                                                               coordinator: ScriptedCoordinator,
                                                               agent_factory) -> None:
    agent = agent_factory(coordinator.url)
    agent.token_file = tmp_path / "projected"
    agent.token_file.mkdir()  # the volume's directory in place of its token file
    agent.start()
    log = tmp_path / "agent.log"
    pattern = rf"poll failed, .*token file {re.escape(str(agent.token_file))} cannot be read"
    assert await asyncio.to_thread(_logged, log, pattern), log.read_text() if log.exists() else "no log"
    await asyncio.sleep(0.5)
    assert agent.process is not None and agent.process.poll() is None, log.read_text()
    assert coordinator.polls == []
    agent.token_file.rmdir()
    agent.token_file.write_text(TOKEN)
    for _ in range(200):
        if coordinator.polls:
            break
        await asyncio.sleep(0.05)
    assert f"Bearer {TOKEN}" in coordinator.tokens
