"""Replacing the binary on a real file system keeps the live path complete and the old file recoverable.

Aspects: `swap_in` puts the new bytes at the live path with the old owner and mode, keeps the old bytes as
the rollback copy (a hard link, so it costs no space), and leaves no temporary file; `restore` brings the
old bytes back; both leave no temporary file when they run again after a crash that came after their
link (rename(2) of one file's two links does nothing); the SELinux label (`security.selinux`) is copied
where the file system supports it; `finalize_staged` makes the download executable; the crash journal
round-trips and refuses garbage.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.install import (
    SELINUX_XATTR,
    finalize_staged,
    restore,
    rollback_path,
    sha256_of,
    staging_paths,
    swap_in,
)
from agent.journal import Journal, JournalEntry
from wire.messages import AgentPhase, Artifact, LeaseAssignment


def test_swap_in_and_restore(tmp_path: Path) -> None:
    live = tmp_path / "k3s"
    live.write_bytes(b"old")
    live.chmod(0o750)
    os.chown(live, 1234, 1234)
    part, staged = staging_paths(live, "f" * 64)
    part.write_bytes(b"new")
    finalize_staged(part, staged)
    assert not part.exists() and staged.stat().st_mode & 0o777 == 0o755
    swap_in(staged, live)
    st = live.stat()
    assert live.read_bytes() == b"new" and (st.st_uid, st.st_gid) == (1234, 1234)
    assert st.st_mode & 0o777 == 0o755  # at least executable for all, as k3s needs
    assert rollback_path(live).read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k3s.rollback", "k3s"]
    restore(live)
    assert live.read_bytes() == b"old" and sha256_of(live) == sha256_of(rollback_path(live))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k3s.rollback", "k3s"]


def test_selinux_label_is_copied(tmp_path: Path) -> None:
    live, new = tmp_path / "k3s", tmp_path / ".k3s.new"
    live.write_bytes(b"old")
    new.write_bytes(b"new")
    label = b"system_u:object_r:container_runtime_exec_t:s0\x00"
    try:
        os.setxattr(live, SELINUX_XATTR, label)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL):
            pytest.skip(f"this file system/kernel does not store {SELINUX_XATTR}: {exc}")
        raise
    swap_in(new, live)
    assert os.getxattr(live, SELINUX_XATTR) == label


def test_journal_round_trip_and_garbage(tmp_path: Path) -> None:
    lease = LeaseAssignment(lease_id="l1", plan="p", node="n1", target_version="v1.30.4+k3s1", plan_hash="h",
                            artifact=Artifact(url="http://x/k3s", sha256="a" * 64, name="k3s"))
    journal = Journal(tmp_path)
    assert journal.load() is None
    entry = JournalEntry(lease=lease, phase=AgentPhase.APPLYING, binary="/host/usr/local/bin/k3s",
                         swap_started_at=12.5)
    journal.save(entry)
    assert journal.load() == entry
    journal.path.write_text("{not json")
    with pytest.raises(ValueError, match="crash journal"):
        journal.load()
    journal.clear()
    assert journal.load() is None


def test_swap_in_and_restore_resumed_after_their_link_leave_no_temporary_file(tmp_path: Path) -> None:
    """A crash after the rollback link but before the swap (or after a restore's rename) means the step
    runs again with the two names already linked to one file, where rename(2) does nothing."""
    live = tmp_path / "k3s"
    live.write_bytes(b"old")
    os.link(live, rollback_path(live))  # the first run's rollback link, then the crash
    _, staged = staging_paths(live, "f" * 64)
    staged.write_bytes(b"new")
    swap_in(staged, live)
    assert live.read_bytes() == b"new" and rollback_path(live).read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k3s.rollback", "k3s"]
    restore(live)
    restore(live)  # resumed after the rename: the live file already is the rollback copy
    assert live.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k3s.rollback", "k3s"]
