"""Prefetch: download and verify the binary of a lease this node will soon get, while it waits its turn.

The coordinator names the binary in its `idle` answers (`Instruction.prefetch`) to the nodes next in a
plan's order. The agent downloads it to the staging path next to the live binary, the very file a lease's
`stage` step writes (`install.staging_paths`), checks its checksum and its `--version`, and says it holds
it in its polls (`AgentState.prefetched`). The coordinator then grants that node its lease as `staged`,
and the lease takes the file over (`Upgrader.stage`): no download between the grant and the cordon, and
a slot a node frees goes to one that is ready at once.

Nothing on the host changes but a file next to the binary. A record (`prefetch.json` in the state dir),
written before the download starts, names that file, so one left by an agent killed meanwhile, or held
when the agent restarts, is found again: kept if it still verifies, else removed (`recover`). The
file is dropped when the coordinator names another binary, when it has not named it for `KEEP_SECONDS`
(the plan changed or went away, or this node is no longer next), and when a lease of another binary
begins. A failed prefetch is said in the agent's `error` and not tried again for `RETRY_SECONDS`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from agent.config import AgentConfig
from agent.discovery import binary_version, same_binary
from agent.download import DownloadError, download
from agent.install import discard, finalize_staged, sha256_of, staging_paths
from agent.journal import remove_durably, write_durably
from wire.messages import Prefetch

log = logging.getLogger(__name__)

KEEP_SECONDS = 600.0
"""How long a prefetched binary is kept once the coordinator stopped naming it. The leader names it in
every answer to an idle poll (at least once per long-poll, 30 s), so only a change of plan drops it;
a replica that is not the leader, answering in between, does not."""
RETRY_SECONDS = 30.0
"""How long after a failed prefetch the agent tries the same binary again."""


class PrefetchRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    binary: str
    """The live k3s binary the file lies next to (under the host root)."""
    sha256: str
    target_version: str
    verified: bool = False
    """Written again once the file is complete and ran `--version` with the target's answer: a file
    found again unverified (the agent was killed before) is removed, not trusted on its checksum alone."""

    @property
    def staged(self) -> Path:
        return self.paths()[1]

    def paths(self) -> tuple[Path, Path]:
        return staging_paths(Path(self.binary), self.sha256)


class Prefetcher:
    """The binary this idle agent holds ahead of its lease, at most one at a time."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.path = config.state_dir / "prefetch.json"
        self.held: PrefetchRecord | None = None
        """The binary downloaded and verified (None while a download runs)."""
        self._named_at = 0.0
        self._failed: tuple[str, float, str] | None = None
        """(the binary's SHA-256, when, why) of the last prefetch that failed."""

    @property
    def prefetched(self) -> str | None:
        """The SHA-256 of the binary held, for the agent's polls."""
        return self.held.sha256 if self.held is not None else None

    @property
    def failed_lately(self) -> bool:
        return self._failed is not None and time.monotonic() - self._failed[1] < RETRY_SECONDS

    @property
    def error(self) -> str | None:
        """Why the last prefetch failed, while it is not tried again (the coordinator then holds the
        agent's poll instead of naming the binary again at once)."""
        return self._failed[2] if self._failed is not None and self.failed_lately else None

    def _load(self) -> PrefetchRecord | None:
        try:
            return PrefetchRecord.model_validate_json(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError) as exc:
            log.error("prefetch record %s is unreadable, removing it: %s", self.path, exc)
            self._forget_record()
            return None

    def _forget_record(self) -> None:
        try:
            remove_durably(self.path)
        except OSError as exc:
            log.error("removing prefetch record %s: %s", self.path, exc)

    async def recover(self, lease_sha256: str | None) -> None:
        """After a start: keep the binary the record names if it verifies and no lease took another one
        over (a lease of the same binary owns the file now, through its journal)."""
        record = self._load()
        if record is None:
            return
        if record.sha256 == lease_sha256:
            self._forget_record()
            return
        staged = record.staged
        try:
            intact = record.verified and staged.exists() and (
                await asyncio.to_thread(sha256_of, staged) == record.sha256)
        except OSError as exc:
            log.error("checking prefetched %s at %s: %s", record.target_version, staged, exc)
            intact = False
        if lease_sha256 is None and intact:
            self.held, self._named_at = record, time.monotonic()
            log.info("holding prefetched %s at %s", record.target_version, staged)
            return
        self._discard(record)

    def _discard(self, record: PrefetchRecord) -> None:
        """Remove the record's files, then the record; an error is logged (what is left is found again by
        `recover` after the agent's next start)."""
        if self.held is not None and self.held.sha256 == record.sha256:
            self.held = None
        try:
            discard(*record.paths())
            remove_durably(self.path)
        except OSError as exc:
            log.error("removing prefetched %s at %s: %s", record.target_version, record.staged, exc)

    def drop(self) -> None:
        """Remove the binary held (a lease of another binary begins, or it is not wanted any more). A file
        that cannot be removed is logged and forgotten (its record, if left, is dealt with by `recover`)."""
        held, self.held = self.held, None
        if held is not None:
            log.info("dropping prefetched %s", held.target_version)
            self._discard(held)

    def hand_over(self, binary: Path, sha256: str) -> bool:
        """Whether the binary held is the staged file of a lease of `sha256` on `binary`. If so, the lease
        owns it from now on (its journal entry must be saved before this call)."""
        held = self.held
        staged = staging_paths(binary, sha256)[1]
        if held is None or held.sha256 != sha256 or not same_binary(held.staged, staged):
            return False
        self.held = None
        self._forget_record()  # the lease's journal names the file from now on
        return _exists(held.staged)

    async def follow(self, hint: Prefetch | None, binary: Path | None, discovery_error: str | None) -> None:
        """Do what an idle answer asks: hold the binary it names (`hint`), or, named nothing for
        `KEEP_SECONDS`, none. `binary` is the live k3s binary (None: none found, for `discovery_error`)."""
        now = time.monotonic()
        if hint is None:
            if self.held is not None and now - self._named_at > KEEP_SECONDS:
                self.drop()
            return
        sha = hint.artifact.sha256
        if self.held is not None and self.held.sha256 == sha and _exists(self.held.staged):
            self._named_at = now
            return
        if self._failed is not None and self._failed[0] == sha and self.failed_lately:
            return  # (its error is still said: the coordinator holds the poll meanwhile)
        self.drop()
        left = self._load()  # a record whose files could not be removed before: try again, not orphan them
        if left is not None:
            self._discard(left)
        if binary is None:
            self._fail(sha, f"cannot prefetch {hint.target_version}: {discovery_error or 'no k3s runs'}")
            return
        record = PrefetchRecord(binary=str(binary), sha256=sha, target_version=hint.target_version)
        part, staged = record.paths()
        log.info("prefetching %s from %s", hint.target_version, hint.artifact.url)
        try:
            write_durably(self.path, record.model_dump_json())
            await download(hint.artifact.url, sha, part, attempts=self.config.download_attempts,
                           backoff=self.config.retry_backoff, max_backoff=self.config.max_backoff,
                           space_margin=self.config.space_margin)
            await asyncio.to_thread(finalize_staged, part, staged)
            version = await binary_version(staged)
            if version != hint.target_version:
                raise ValueError(f"the binary reports {version}, expected {hint.target_version}")
            record = record.model_copy(update={"verified": True})
            write_durably(self.path, record.model_dump_json())
        except (DownloadError, ValueError, OSError) as exc:
            self._discard(record)
            self._fail(sha, f"prefetching {hint.artifact.name} {hint.target_version} failed: {exc}")
            return
        self.held, self._named_at, self._failed = record, time.monotonic(), None
        log.info("prefetched %s at %s", hint.target_version, staged)

    def _fail(self, sha: str, message: str) -> None:
        log.error("%s", message)
        self._failed = (sha, time.monotonic(), message)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # (on Python 3.11, e.g. EACCES on the directory)
        log.error("cannot look at %s: %s", path, exc)
        return False
