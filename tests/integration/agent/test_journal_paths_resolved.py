"""A journal written by an agent that did not follow the binary's directory links within the host root
names k3s by a path the agent no longer finds it at (`/bin/k3s` where the host's `/bin -> usr/bin`): the
agent reads it resolved, so the new k3s it waits for after the swap is the one it finds; a journalled path
whose links loop is kept as written, and the agent still starts."""

from __future__ import annotations

import os
from pathlib import Path

from agent.client import CoordinatorClient
from agent.config import AgentConfig
from agent.journal import Journal, JournalEntry
from agent.upgrade import Upgrader
from wire.messages import AgentPhase, Artifact, LeaseAssignment

LEASE = LeaseAssignment(lease_id="l1", plan="p", node="n1", target_version="v1.30.4+k3s1", plan_hash="h",
                        artifact=Artifact(url="http://r/k3s", sha256="a" * 64, name="k3s"))


def upgrader_resuming(tmp_path: Path, root: Path, journalled: Path) -> Upgrader:
    """An agent started over a journal that says `applying` for the binary at `journalled`."""
    state = tmp_path / "state"
    Journal(state).save(JournalEntry(lease=LEASE, phase=AgentPhase.APPLYING, binary=str(journalled)))
    config = AgentConfig(node="n1", coordinator_url="http://coordinator:8080", host_root=root,
                         state_dir=state)
    return Upgrader(config, CoordinatorClient(config.coordinator_url, "n1", tmp_path / "token"))


def test_a_journalled_path_through_a_linked_directory_is_read_resolved(tmp_path: Path) -> None:
    root = tmp_path / "host"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/k3s").write_bytes(b"k3s")
    os.symlink("usr/bin", root / "bin")
    entry = upgrader_resuming(tmp_path, root, root / "bin/k3s").entry
    assert entry is not None and entry.binary == str(root / "usr/bin/k3s")
    assert entry.lease == LEASE and entry.phase is AgentPhase.APPLYING


def test_a_journalled_path_that_loops_is_kept_and_the_agent_starts(tmp_path: Path) -> None:
    root = tmp_path / "host"
    root.mkdir()
    os.symlink("/b", root / "a")
    os.symlink("a", root / "b")
    entry = upgrader_resuming(tmp_path, root, root / "a/k3s").entry
    assert entry is not None and entry.binary == str(root / "a/k3s")
