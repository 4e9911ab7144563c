"""The agent's crash journal: what it was doing, on disk, so a SIGKILL at any instant can be resumed.

One JSON file, replaced atomically (temporary file, fsync, rename(2), fsync of the directory), written
*before* each step that changes the host. After a restart the agent reads it and, together with the
checksums of the files on disk and the start time of the running k3s, finishes or undoes the step.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from wire.messages import AgentPhase, LeaseAssignment


class JournalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease: LeaseAssignment
    phase: AgentPhase
    binary: str
    """The live k3s binary, as the agent sees it (under the host root)."""
    old_sha256: str | None = None
    old_version: str | None = None
    swap_started_at: float | None = None
    """`process_clock()` just before the new binary was renamed into place: a k3s started before it is old."""
    rollback_started_at: float | None = None
    old_process: tuple[int, float] | None = None
    """(pid, start time) of the k3s that ran the old binary when the swap began: never "the new one"."""
    error: str | None = None
    observed_version: str | None = None


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as handle:
            handle.write(entry.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()
            fsync_dir(self.path.parent)
