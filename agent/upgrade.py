"""The upgrade of this node, step by step, resumable from the crash journal.

    stage     discover k3s -> room to unpack in its data directory (`agent.datadir`) -> download +
              verify (nothing on the host changes) -> `--version` -> staged
    apply     journal(applying) -> journal(swap time, the k3s running now) -> rename new into place ->
              SIGTERM -> a NEW stable process running the new binary -> restarted
              (or, if it does not come up: roll back)
    rollback  journal(rolling_back) -> journal(restore time) -> restore the old binary -> restart ->
              old version runs -> rolled_back
    finish    drop the rollback copy (and a staged file never used), clear the journal

Every step first writes the journal, then acts, and on resume looks at the disk (checksum of the live
file) and at the running process (started before or after the swap?) to know what is left to do. A
binary is reported `restarted` only when a process started after the swap runs it; the swap time is
taken just before the rename, each time the rename is (re)done, since k3s may restart on its own in
between. A `failed` or `rolled_back` the coordinator did not hear is said again when it asks for a step
of that lease.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from agent import __version__
from agent.client import CoordinatorClient, CoordinatorUnavailable, Rejected
from agent.config import AgentConfig
from agent.datadir import find_data_dir
from agent.discovery import (
    DiscoveryError,
    K3sProcess,
    binary_version,
    boot_id,
    find_k3s,
    process_clock,
    resolve_binary,
    same_binary,
    wall_clock_boot_time,
)
from agent.download import DownloadError, download
from agent.install import (
    check_unpack_space,
    discard,
    finalize_staged,
    restore,
    rollback_path,
    sha256_of,
    staging_paths,
    swap_in,
)
from agent.journal import Journal, JournalEntry, RunningK3s, RunningRecord, on_this_boot
from agent.prefetch import Prefetcher
from agent.restart import AUTO_UNIT, TICK, RestartFailed, restart, unit_of, wait_for_new_process
from wire.messages import Action, AgentPhase, AgentState, Instruction, LeaseAssignment, Report

log = logging.getLogger(__name__)

DISCOVERY_GRACE_SECONDS = 10.0
"""How long staging waits for a k3s process to appear before reporting that none runs."""


def same_file(a: Path, b: Path) -> bool:
    """Whether both names are one file (False when either is missing). A rollback copy that is not the
    live file is kept: after a failed restore it is the only good binary on the node."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sha256_or_none(path: Path) -> str | None:
    try:
        return sha256_of(path)
    except OSError:
        return None


class Upgrader:
    def __init__(self, config: AgentConfig, client: CoordinatorClient) -> None:
        self.config = config
        self.client = client
        self.journal = Journal(config.state_dir)
        self.running = RunningRecord(config.state_dir)
        """The k3s this agent saw start from the binary it swapped in (`RunningK3s`)."""
        self.boot_id = boot_id()
        loaded = self.journal.load()
        if loaded is not None and loaded.binary:
            # The path as this agent resolves it (an older one did not follow the directories' links
            # within the host root: `discovery.resolve_in_root`), or the new k3s it waits for never matches.
            try:
                resolved = resolve_binary(loaded.binary, config.host_root)
                loaded = loaded.model_copy(update={"binary": str(resolved)})
            except DiscoveryError as exc:  # (a link loop): kept as journalled; compared by `same_binary`
                log.warning("journalled k3s path %s kept as it is: %s", loaded.binary, exc)
        self.entry: JournalEntry | None = (
            on_this_boot(loaded, self.boot_id, wall_clock_boot_time()) if loaded else None)
        self.progress: float | None = None
        self.discovery_error: str | None = None
        self.k3s_version: str | None = None
        self.k3s_binary: str | None = None
        self.k3s_unit: str | None = None
        """With `--systemd-unit auto`: the k3s service k3s was last seen running in (`restart.unit_of`)."""
        self._version_key: tuple[int, float, int, int, int] | None = None
        self.answer: Instruction | None = None
        """The coordinator's answer to the last report delivered (its next instruction for this node)."""
        self.prefetcher = Prefetcher(config)
        """The binary held ahead of a lease (`agent.prefetch`)."""

    # -- state ---------------------------------------------------------------------------------------
    def _save(self, entry: JournalEntry) -> None:
        if entry.boot_id != self.boot_id:  # its times are taken on this boot's clock
            entry = entry.model_copy(update={"boot_id": self.boot_id})
        self.journal.save(entry)
        self.entry = entry

    async def observe(self) -> K3sProcess | None:
        """Refresh what runs on the node (for the poll body); errors are kept for the coordinator."""
        try:
            proc = await asyncio.to_thread(find_k3s, self.config.host_root)
            if self.config.systemd_unit == AUTO_UNIT:
                self.k3s_unit = unit_of(proc.pid) or self.k3s_unit
            self.k3s_binary = "/" + str(proc.binary.relative_to(self.config.host_root)) \
                if proc.binary.is_relative_to(self.config.host_root) else str(proc.binary)
            st = proc.binary.stat()
            key = (proc.pid, proc.create_time, st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._version_key:  # idle polls do not re-run `k3s --version`
                self.k3s_version = await binary_version(proc.binary)
                self._version_key = key
            self.discovery_error = None
            return proc
        except (DiscoveryError, ValueError, OSError) as exc:
            self.discovery_error = str(exc)
            return None

    def state(self) -> AgentState:
        entry = self.entry
        return AgentState(
            node=self.config.node, agent_version=__version__, arch=self.config.arch,
            k3s_version=self.k3s_version, k3s_binary=self.k3s_binary,
            lease_id=entry.lease.lease_id if entry else None,
            phase=entry.phase if entry else AgentPhase.IDLE,
            progress=self.progress if entry and entry.phase == AgentPhase.DOWNLOADING else None,
            error=(entry.error if entry and entry.error else None) or self.discovery_error
            or (self.prefetcher.error if entry is None else None),
            prefetched=self.prefetcher.prefetched if entry is None else None,
        )

    async def report(self, phase: AgentPhase, *, error: str | None = None, detail: str = "",
                     version: str | None = None, best_effort: bool = False) -> None:
        """Send a report, retrying until the coordinator answers (never giving up on a temporary error).
        `best_effort` tries once: for progress notes that must not hold up a safety step."""
        assert self.entry is not None
        body = Report(node=self.config.node, lease_id=self.entry.lease.lease_id, phase=phase,
                      k3s_version=version, error=error, detail=detail)
        delay = self.config.retry_backoff
        while True:
            try:
                self.answer = await self.client.report(body)
                log.info("reported %s for lease %s", phase.value, body.lease_id,
                         extra={"phase": phase.value, "error": error})
                return
            except Rejected as exc:
                log.error("coordinator rejected report %s: %s", phase.value, exc)
                return
            except CoordinatorUnavailable as exc:
                if best_effort:
                    log.warning("report %s not delivered (not retried): %s", phase.value, exc)
                    return
                log.warning("report %s not delivered, retrying in %.1f s: %s", phase.value, delay, exc)
                await asyncio.sleep(delay)
                delay = min(self.config.max_backoff, delay * 2)

    # -- instructions ---------------------------------------------------------------------------------
    def take_answer(self) -> Instruction | None:
        """The answer to the last report `handle` sent, once (None when it sent none)."""
        answer, self.answer = self.answer, None
        return answer

    async def handle(self, instruction: Instruction) -> None:
        self.answer = None
        entry, lease = self.entry, instruction.lease
        action = instruction.action
        if action == Action.IDLE:
            if entry and entry.phase in (AgentPhase.DOWNLOADING, AgentPhase.STAGED, AgentPhase.ROLLED_BACK,
                                         AgentPhase.FAILED):
                self._drop(entry)
            if self.entry is None:
                await self._prefetch(instruction)
            return
        if lease is None:
            log.error("instruction %s without a lease ignored", action.value)
            return
        if entry and entry.lease.lease_id != lease.lease_id:
            if entry.phase in (AgentPhase.APPLYING, AgentPhase.RESTARTED, AgentPhase.ROLLING_BACK):
                log.error("instruction %s for lease %s while lease %s is %s: ignored", action.value,
                          lease.lease_id, entry.lease.lease_id, entry.phase.value)
                return
            self._drop(entry)
            entry = None
        if entry and entry.phase in (AgentPhase.FAILED, AgentPhase.ROLLED_BACK) and action != Action.FINISH:
            # The coordinator still asks for a step of this lease: the end was not heard (the agent was
            # killed before its report went out). Say it again; nothing else is left to do for this lease.
            await self.report(entry.phase, error=entry.error, detail="again",
                              version=entry.observed_version or self.k3s_version)
            return
        if action == Action.STAGE:
            if entry and entry.phase == AgentPhase.STAGED:
                await self.report(AgentPhase.STAGED, detail="already staged")
            elif entry is None or entry.phase == AgentPhase.DOWNLOADING:
                await self.stage(lease)
        elif action == Action.APPLY:
            if entry is None or entry.phase == AgentPhase.DOWNLOADING:
                if not await self.stage(lease, report=False):
                    return
                entry = self.entry
            assert entry is not None
            if entry.phase in (AgentPhase.STAGED, AgentPhase.APPLYING):
                await self.apply()
            elif entry.phase == AgentPhase.RESTARTED:
                await self.report(AgentPhase.RESTARTED, version=entry.observed_version, detail="again")
        elif action == Action.ROLLBACK:
            if entry is None or entry.phase in (AgentPhase.DOWNLOADING, AgentPhase.STAGED):
                await self._nothing_to_roll_back(entry, lease)
            elif entry.phase in (AgentPhase.APPLYING, AgentPhase.RESTARTED, AgentPhase.ROLLING_BACK):
                await self.rollback(instruction.reason or "the coordinator asked for a rollback")
        elif action == Action.FINISH:
            if entry and entry.phase == AgentPhase.RESTARTED:
                binary = Path(entry.binary)  # the staged file is left when the target was live already
                discard(rollback_path(binary), *staging_paths(binary, entry.lease.artifact.sha256))
                self.journal.clear()
                self.entry = None
                log.info("lease %s finished", lease.lease_id)

    async def _prefetch(self, instruction: Instruction) -> None:
        hint = instruction.prefetch
        proc = None
        if hint is not None and self.prefetcher.prefetched != hint.artifact.sha256:
            proc = await self.observe()
        await self.prefetcher.follow(hint, proc.binary if proc else None, self.discovery_error)

    async def _nothing_to_roll_back(self, entry: JournalEntry | None, lease: LeaseAssignment) -> None:
        """`rollback` before the host changed: the lease was staged at most, or this agent keeps no record
        of it (it dropped the lease for this rollback and was killed before its report went out)."""
        phase, error = AgentPhase.ROLLED_BACK, None
        if entry is not None:
            self._drop(entry)
        else:
            proc = await self.observe()
            live = await asyncio.to_thread(sha256_of, proc.binary) if proc else None
            if live is None or live == lease.artifact.sha256:
                found = "no k3s runs" if live is None else "the live binary is its target"
                phase = AgentPhase.FAILED
                error = (f"asked to roll back lease {lease.lease_id}, of which this agent keeps no record, "
                         f"and {found}: not touching anything")
        self.entry = JournalEntry(lease=lease, phase=phase, binary="")
        await self.report(phase, error=error, detail="" if error else "nothing had changed on the host")
        self.entry = None

    def _drop(self, entry: JournalEntry) -> None:
        if entry.binary:
            binary = Path(entry.binary)
            discard(*staging_paths(binary, entry.lease.artifact.sha256))
            backup = rollback_path(binary)
            if same_file(backup, binary):  # rolled back: the copy is the live file again, under a second
                discard(backup)            # name that would keep the old binary once k3s is reinstalled
        self.journal.clear()
        self.entry = None

    async def resume(self) -> None:
        """After a restart: finish the host-changing step the journal says was in flight."""
        entry = self.entry
        await self.prefetcher.recover(entry.lease.artifact.sha256 if entry else None)
        if entry is None:
            return
        log.info("resuming lease %s in phase %s", entry.lease.lease_id, entry.phase.value)
        if entry.phase == AgentPhase.APPLYING:
            await self.apply()
        elif entry.phase == AgentPhase.ROLLING_BACK:
            await self.rollback(entry.error or "resumed rollback")

    # -- steps ------------------------------------------------------------------------------------------
    async def _fail(self, entry: JournalEntry, message: str) -> None:
        log.error("lease %s failed: %s", entry.lease.lease_id, message)
        self._save(entry.model_copy(update={"phase": AgentPhase.FAILED, "error": message}))
        await self.report(AgentPhase.FAILED, error=message, version=self.k3s_version)

    async def stage(self, lease: LeaseAssignment, *, report: bool = True) -> bool:
        proc = await self.observe()
        deadline = time.monotonic() + DISCOVERY_GRACE_SECONDS
        while proc is None and time.monotonic() < deadline:  # k3s may be between two runs right now
            await asyncio.sleep(0.2)
            proc = await self.observe()
        current = self.entry
        if proc is None:
            # A stage resumed for this lease keeps its entry: it knows where a partial download lies.
            if current is not None and current.lease.lease_id == lease.lease_id:
                entry = current
            else:
                entry = JournalEntry(lease=lease, phase=AgentPhase.DOWNLOADING, binary="")
            self.entry = entry
            await self._fail(entry, f"cannot stage: {self.discovery_error}")
            return False
        binary = proc.binary
        prefetched = False
        if current is not None and current.lease.lease_id == lease.lease_id and current.binary:
            entry = current
        else:
            entry = JournalEntry(lease=lease, phase=AgentPhase.DOWNLOADING, binary=str(binary),
                                 old_version=self.k3s_version)
            self._save(entry)  # before the hand-over: the file always has an owner on disk
            prefetched = self.prefetcher.hand_over(binary, lease.artifact.sha256)
            if not prefetched:
                self.prefetcher.drop()
                await self.report(AgentPhase.DOWNLOADING, version=self.k3s_version, best_effort=True)
        part, staged = staging_paths(binary, lease.artifact.sha256)
        self.progress = 0.0

        def progress(value: float) -> None:
            self.progress = value

        try:
            data_dir = await asyncio.to_thread(find_data_dir, self.config.host_root, proc.pid)
            await asyncio.to_thread(check_unpack_space, data_dir, binary, self.config.space_margin,
                                    not prefetched)
            if prefetched and await asyncio.to_thread(_sha256_or_none, staged) == lease.artifact.sha256:
                version = lease.target_version  # ran `--version` when it was prefetched
            else:  # (a prefetched file changed or gone since: fetched again)
                if not (staged.exists()
                        and await asyncio.to_thread(sha256_of, staged) == lease.artifact.sha256):
                    await download(lease.artifact.url, lease.artifact.sha256, part,
                                   attempts=self.config.download_attempts, backoff=self.config.retry_backoff,
                                   max_backoff=self.config.max_backoff, space_margin=self.config.space_margin,
                                   progress=progress)
                    await asyncio.to_thread(finalize_staged, part, staged)
                version = await binary_version(staged)
        except (DownloadError, ValueError, OSError) as exc:
            discard(staged)
            await self._fail(entry, f"staging {lease.artifact.name} {lease.target_version} failed: {exc}")
            return False
        if version != lease.target_version:
            discard(staged)
            await self._fail(entry, f"downloaded binary reports {version}, expected {lease.target_version}")
            return False
        self._save(entry.model_copy(update={"phase": AgentPhase.STAGED}))
        log.info("staged %s at %s", lease.target_version, staged)
        if report:
            await self.report(AgentPhase.STAGED, version=self.k3s_version)
        return True

    async def _mark_swap(self, entry: JournalEntry) -> JournalEntry:
        """Journal the time of the swap, taken now, just before the rename, with the k3s running now.

        A k3s started after this time and not the one running now runs the new file. The time journalled
        with the go-ahead would not do: a k3s that restarted on its own since then (while a report was
        retried, or while the agent was down before a resume) started after it and still runs the old file.
        """
        running = await self.observe()
        self.running.clear()  # (before the binary in place changes)
        entry = entry.model_copy(update={
            "swap_started_at": process_clock(),
            "old_process": (running.pid, running.create_time) if running else None,
        })
        self._save(entry)
        return entry

    async def apply(self) -> None:
        entry = self.entry
        assert entry is not None
        lease, binary = entry.lease, Path(entry.binary)
        _, staged = staging_paths(binary, lease.artifact.sha256)
        if entry.phase == AgentPhase.STAGED:
            if not staged.exists() or await asyncio.to_thread(sha256_of, staged) != lease.artifact.sha256:
                await self._fail(entry, f"staged binary {staged} is missing or changed; nothing was replaced")
                return
            live = await asyncio.to_thread(sha256_of, binary)
            entry = entry.model_copy(update={"phase": AgentPhase.APPLYING, "old_sha256": live})
            self._save(entry)
            # No report: the coordinator stored `applying` before it said `apply`, and the polls say it.
        else:  # resumed: the swap may have happened
            live = await asyncio.to_thread(sha256_of, binary)
        if live == entry.old_sha256 and live != lease.artifact.sha256:
            if not staged.exists():
                await self._fail(entry, f"staged binary {staged} vanished before the swap; nothing replaced")
                return
            entry = await self._mark_swap(entry)
            try:
                await asyncio.to_thread(swap_in, staged, binary)
            except OSError as exc:
                if await asyncio.to_thread(sha256_of, binary) == entry.old_sha256:
                    await self._fail(entry, f"replacing {binary} failed, nothing replaced: {exc}")
                else:
                    await self.rollback(f"replacing {binary} failed after the rename: {exc}")
                return
            log.info("replaced %s with %s", binary, lease.target_version)
            # The time again, now that the rename is on disk: a k3s that started between the time taken
            # before it and the rename ran the old file (the journal, metadata and link writes between can
            # take long on a slow disk). Counted as old, it gets one more restart: the safe side.
            entry = entry.model_copy(update={"swap_started_at": process_clock()})
            self._save(entry)
        elif live != lease.artifact.sha256:
            await self._fail(entry, f"{binary} has an unexpected checksum {live}; not touching it")
            return
        elif entry.swap_started_at is None:  # the target was live already
            if await self._runs_target(entry):
                return
            entry = await self._mark_swap(entry)  # a k3s started from now runs it
        assert entry.swap_started_at is not None
        proc = await self.observe()
        if proc is None or proc.create_time < entry.swap_started_at - TICK or (
                (proc.pid, proc.create_time) == entry.old_process):
            try:
                await restart(proc, self.config.systemd_unit, self.k3s_unit)
            except RestartFailed as exc:
                await self.rollback(str(exc))
                return
        try:
            new = await wait_for_new_process(
                self.config.host_root, binary, entry.swap_started_at,
                limit=lease.restart_timeout_seconds, stable=lease.restart_stable_seconds,
                not_process=entry.old_process,
            )
            version = await binary_version(binary)
        except (RestartFailed, ValueError, OSError) as exc:
            await self.rollback(f"new k3s {lease.target_version} did not come up: {exc}")
            return
        if version != lease.target_version:
            await self.rollback(f"{binary} reports {version} after the swap, expected {lease.target_version}")
            return
        self.k3s_version = version
        if not new.wrapper:  # (a wrapper seen before its k3s child runs no binary of its own)
            try:
                self.running.save(RunningK3s(binary=str(binary), sha256=lease.artifact.sha256, pid=new.pid,
                                             create_time=new.create_time, boot_id=self.boot_id))
            except OSError as exc:  # only the next lease to this binary's skip of a restart is lost
                log.warning("recording the running k3s in %s failed: %s", self.running.path, exc)
        self._save(entry.model_copy(update={"phase": AgentPhase.RESTARTED, "observed_version": version}))
        log.info("k3s %s runs as pid %d", version, new.pid)
        await self.report(AgentPhase.RESTARTED, version=version, detail=f"pid {new.pid}")

    async def _runs_target(self, entry: JournalEntry) -> bool:
        """When the binary in place is the lease's target already: if the k3s running is the one this agent
        saw start from it (`RunningK3s`), report `restarted` without a restart and say True."""
        lease, binary = entry.lease, Path(entry.binary)
        record, proc = self.running.load(), await self.observe()
        if record is None or proc is None or proc.wrapper or not (
                record.boot_id == self.boot_id and record.sha256 == lease.artifact.sha256
                and same_binary(Path(record.binary), binary) and record.pid == proc.pid
                and abs(record.create_time - proc.create_time) < TICK):
            return False
        try:
            version = await binary_version(binary)
        except (ValueError, OSError) as exc:
            log.warning("%s --version failed, restarting k3s as for any lease: %s", binary, exc)
            return False
        if version != lease.target_version:
            return False
        self.k3s_version = version
        self._save(entry.model_copy(update={"phase": AgentPhase.RESTARTED, "observed_version": version}))
        detail = f"k3s {version} already runs as pid {proc.pid}, started from this binary: not restarted"
        log.info("lease %s: %s", lease.lease_id, detail)
        await self.report(AgentPhase.RESTARTED, version=version, detail=detail)
        return True

    async def rollback(self, cause: str) -> None:
        entry = self.entry
        assert entry is not None
        self.running.clear()  # (before the binary in place changes, or k3s is restarted)
        binary = Path(entry.binary)
        if entry.phase != AgentPhase.ROLLING_BACK:
            entry = entry.model_copy(update={"phase": AgentPhase.ROLLING_BACK, "error": cause,
                                             "rollback_started_at": process_clock()})
            self._save(entry)
            await self.report(AgentPhase.ROLLING_BACK, error=cause, best_effort=True)
        log.warning("rolling back %s: %s", binary, cause)
        backup = rollback_path(binary)
        live = await asyncio.to_thread(_sha256_or_none, binary)  # (None: the live path is gone: restore it)
        if entry.old_sha256 and live != entry.old_sha256:
            if not backup.exists() or await asyncio.to_thread(sha256_of, backup) != entry.old_sha256:
                await self._fail(entry, f"{cause}; rollback impossible: copy {backup} missing or changed")
                return
            # As for the swap: a k3s started after the time journalled earlier may still run the new file.
            entry = entry.model_copy(update={"rollback_started_at": process_clock()})
            self._save(entry)
            try:
                await asyncio.to_thread(restore, binary)
            except OSError as exc:
                await self._fail(entry, f"{cause}; restoring {binary} from {backup} failed: {exc}")
                return
            entry = entry.model_copy(update={"rollback_started_at": process_clock()})  # as after the swap
            self._save(entry)
        assert entry.rollback_started_at is not None
        proc = await self.observe()
        if proc is None or proc.create_time < entry.rollback_started_at - TICK:
            try:
                await restart(proc, self.config.systemd_unit, self.k3s_unit)
            except RestartFailed as exc:
                await self._fail(entry, f"{cause}; restart after rollback failed: {exc}")
                return
        try:
            await wait_for_new_process(self.config.host_root, binary, entry.rollback_started_at,
                                       limit=entry.lease.restart_timeout_seconds,
                                       stable=entry.lease.restart_stable_seconds)
            version = await binary_version(binary)
        except (RestartFailed, ValueError, OSError) as exc:
            await self._fail(entry, f"{cause}; the old k3s did not come back: {exc}")
            return
        self.k3s_version = version
        self._save(entry.model_copy(update={"phase": AgentPhase.ROLLED_BACK, "observed_version": version}))
        await self.report(AgentPhase.ROLLED_BACK, error=cause, version=version)
