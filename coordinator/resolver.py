"""Channel re-resolution and checksum fetching on a timer: the I/O side of versions and artifacts.

SUC re-resolves a Plan's channel every SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL (default 15m); we do the same
per channel URL (`--polling-interval`) and at once when a Plan names a new channel. The request and
its judgement (a 30x whose Location basename is a k3s version, else a `ChannelError`) are
`coordinator.channels.resolve_channel`; the checksum files and the Artifact built from them are
`coordinator.artifacts.ArtifactFetcher` (cached per version and arch: releases do not change). This
module only schedules those calls, keeps the latest answer for the runtime to read when it builds a
World, and wakes the runtime when an answer changes. Nothing here raises into the reconcile loop:
every failure is kept as a message naming the URL and the cause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from coordinator.artifacts import ArtifactError, ArtifactFetcher
from coordinator.channels import ChannelError, resolve_channel
from wire.messages import Artifact

log = logging.getLogger("coordinator.resolver")


@dataclass(frozen=True)
class Resolved:
    """The latest answer of one channel: a version, or why there is none."""

    url: str
    version: str | None
    error: str | None
    at: datetime


class Resolver:
    """Keeps `channels[url]` and `artifacts[(version, arch)]` fresh; `on_change` wakes the runtime."""

    def __init__(self, base_url: str, interval: float, timeout: float, on_change: Callable[[], None]) -> None:
        self.base_url = base_url
        self.interval = interval
        self.timeout = timeout
        self._on_change = on_change
        self.channels: dict[str, Resolved] = {}
        self.artifacts: dict[tuple[str, str], Artifact | str] = {}
        """(version, arch) -> the Artifact, or the error message of the last attempt."""
        self._wanted: set[str] = set()
        self._kick = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._fetcher: ArtifactFetcher | None = None
        self._inflight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def want(self, urls: set[str]) -> None:
        """The channel URLs Plans use now; new ones are resolved at once."""
        if urls - set(self.channels):
            self._kick.set()
        self._wanted = set(urls)

    def want_artifact(self, version: str, arch: str) -> None:
        """Fetch the checksum of `version` for `arch` unless it is known or being fetched (retries errors)."""
        key = (version, arch)
        if isinstance(self.artifacts.get(key), Artifact) or key in self._inflight:
            return
        self._inflight.add(key)
        task = asyncio.get_running_loop().create_task(self._fetch_artifact(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _fetch_artifact(self, key: tuple[str, str]) -> None:
        try:
            if self._fetcher is None:
                self._fetcher = ArtifactFetcher(self._session_(), self.base_url, self.timeout)
            try:
                result: Artifact | str = await self._fetcher.get(*key)
            except ArtifactError as exc:
                result = str(exc)
            if self.artifacts.get(key) != result:
                self.artifacts[key] = result
                self._on_change()
        finally:
            self._inflight.discard(key)

    async def _resolve(self, url: str) -> Resolved:
        try:
            version = await resolve_channel(self._session_(), url, self.timeout)
        except ChannelError as exc:
            return Resolved(url, None, str(exc), datetime.now(UTC))
        return Resolved(url, version, None, datetime.now(UTC))

    async def resolve_all(self) -> None:
        urls = sorted(self._wanted)
        results = await asyncio.gather(*(self._resolve(u) for u in urls))
        changed = False
        for url, got in zip(urls, results, strict=True):
            old = self.channels.get(url)
            if old is None or (old.version, old.error) != (got.version, got.error):
                changed = True
                log.info("channel answer", extra={"channel": url, "version": got.version, "error": got.error})
            self.channels[url] = got
        for gone in set(self.channels) - set(urls):
            del self.channels[gone]
        if changed:
            self._on_change()

    async def run(self) -> None:
        """Re-resolve every `interval`, or at once when a new channel URL is wanted."""
        try:
            while True:
                self._kick.clear()
                await self.resolve_all()
                try:
                    async with asyncio.timeout(self.interval):  # not wait_for: it can swallow a cancel (3.11)
                        await self._kick.wait()
                except TimeoutError:
                    pass
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._fetcher = None
