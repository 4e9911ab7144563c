"""The agent's crash journal: what it was doing, on disk, so a SIGKILL at any instant can be resumed.

One JSON file, replaced atomically (temporary file, fsync, rename(2), fsync of the directory), written
*before* each step that changes the host. After a restart the agent reads it and, together with the
checksums of the files on disk and the start time of the running k3s, finishes or undoes the step. Times
are seconds since boot, with the boot's id, so a step of the wall clock or a reboot cannot make an old
k3s look new (`on_this_boot`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from wire.messages import AgentPhase, LeaseAssignment

log = logging.getLogger(__name__)


class JournalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease: LeaseAssignment
    phase: AgentPhase
    binary: str
    """The live k3s binary, as the agent sees it (under the host root)."""
    old_sha256: str | None = None
    old_version: str | None = None
    boot_id: str | None = None
    """The boot the times below were taken in (seconds since it); None: by an agent that journalled the
    wall clock (psutil's start times) instead."""
    swap_started_at: float | None = None
    """`process_clock()` just before the new binary was renamed into place: a k3s started before it is old."""
    rollback_started_at: float | None = None
    old_process: tuple[int, float] | None = None
    """(pid, start time) of the k3s that ran the old binary when the swap began: never "the new one"."""
    error: str | None = None
    observed_version: str | None = None


def on_this_boot(entry: JournalEntry, boot: str, wall_clock_boot_time: float) -> JournalEntry:
    """`entry` with its times on this boot's clock (seconds since boot `boot`).

    A swap or restore journalled in an earlier boot happened before every process of this one started
    (the rename was on disk before the machine went down): its time becomes 0 and the old process is gone.
    Times an earlier agent journalled on the wall clock are moved to this boot's clock; if they are from an
    earlier boot they come out at 0 or less, which means the same.
    """
    if entry.boot_id == boot:
        return entry
    times = ("swap_started_at", "rollback_started_at")
    if entry.boot_id is None:
        update: dict[str, object] = {
            name: max(0.0, value - wall_clock_boot_time)
            for name in times if (value := getattr(entry, name)) is not None
        }
        if entry.old_process is not None:
            update["old_process"] = (entry.old_process[0], entry.old_process[1] - wall_clock_boot_time)
    else:
        update = {name: 0.0 for name in times if getattr(entry, name) is not None}
        update["old_process"] = None
    return entry.model_copy(update={**update, "boot_id": boot})


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "journal.json"

    def load(self) -> JournalEntry | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            return JournalEntry.model_validate(json.loads(text))
        except ValueError as exc:
            raise ValueError(f"crash journal {self.path} is unreadable: {exc}") from exc

    def save(self, entry: JournalEntry) -> None:
        write_durably(self.path, entry.model_dump_json())

    def clear(self) -> None:
        remove_durably(self.path)


class RunningK3s(BaseModel):
    """The k3s the agent last saw start from a binary it swapped in, and that binary's checksum.

    While this very process (pid and start time, on this boot) runs, k3s runs that binary: a lease whose
    target it is (a Plan changed, but not its version) needs no restart, as k3s-upgrade skips one when
    the binary in place is the new one already (`Upgrader.apply`). Any other process, even one started
    from the same file since, is restarted as for any lease: nothing else tells what it runs. Not even
    `/proc/PID/exe`: `k3s server` extracts its release's data to `<data-dir>/data/<hash>` and execs
    `bin/k3s-server` from there (k3s's cmd/k3s/main.go, `stageAndRun`), so no k3s process executes the
    binary in place."""

    model_config = ConfigDict(extra="forbid")

    binary: str
    sha256: str
    pid: int
    create_time: float
    """Seconds since boot `boot_id` when it started (`process_clock`)."""
    boot_id: str


class RunningRecord:
    """`RunningK3s` on disk, next to the journal. It is removed before every swap or restore begins."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "running.json"

    def load(self) -> RunningK3s | None:
        """The record; None when there is none, or when it is unreadable (logged: then k3s is restarted,
        the safe side)."""
        try:
            return RunningK3s.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("record of the running k3s %s is unreadable, ignored: %s", self.path, exc)
            return None

    def save(self, record: RunningK3s) -> None:
        write_durably(self.path, record.model_dump_json())

    def clear(self) -> None:
        remove_durably(self.path)


def write_durably(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (temporary file, fsync, rename(2), fsync of the directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_durably(path: Path) -> None:
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)
