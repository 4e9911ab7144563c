"""Channel re-resolution and checksum fetching: the HTTP side of versions and artifacts.

SUC resolves a channel by a GET that does not follow redirects: the 302's `Location` basename is the
version. We do the same GET here, on a timer per channel URL (every `--polling-interval`,
SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL, default 15m) and on demand when a Plan appears or changes; the
parsing and judging of what came back (is it a k3s version?) is pure and lives with the engine's
helpers. Checksum files (`sha256sum-<arch>.txt`) are fetched once per version and kept: releases are
immutable. Every failure becomes a `Fetched` with an error message naming the URL and the cause; nothing
here raises into the reconcile loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp

log = logging.getLogger("coordinator.resolver")

MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Fetched:
    """What one HTTP request brought back (or why it did not)."""

    url: str
    status: int | None
    location: str | None
    body: str
    error: str | None
    at: datetime


async def fetch(session: aiohttp.ClientSession, url: str, limit_s: float, *, follow: bool) -> Fetched:
    now = datetime.now(UTC)
    try:
        async with session.get(
            url, allow_redirects=follow, timeout=aiohttp.ClientTimeout(total=limit_s)
        ) as resp:
            body = (await resp.content.read(MAX_BODY)).decode("utf-8", errors="replace")
            return Fetched(url, resp.status, resp.headers.get("Location"), body, None, now)
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        return Fetched(
            url, None, None, "", f"GET {url} failed: {type(exc).__name__}: {exc}".rstrip(": "), now
        )


def channel_error(f: Fetched) -> str | None:
    """Why a channel answer cannot name a version (None when it is a redirect with a Location)."""
    if f.error:
        return f.error
    if f.status not in (301, 302, 303, 307, 308):
        return f"channel {f.url} answered {f.status}, expected a redirect to a release"
    if not f.location:
        return f"channel {f.url} answered {f.status} without a Location header"
    return None


def checksum_url(base: str, version: str, arch: str) -> str:
    """`<base>/<tag>/sha256sum-<arch>.txt`, `+` escaped; the armhf checksums are named `arm`."""
    suffix = {"arm": "arm", "armhf": "arm"}.get(arch, arch)
    return f"{base.rstrip('/')}/{quote(version, safe='')}/sha256sum-{suffix}.txt"


class Resolver:
    """Keeps the latest answer per channel URL and per (version, arch) checksum file.

    `channels` and `checksums` are read by the runtime when it builds a World; `on_change` wakes it
    whenever an answer differs from the previous one.
    """

    def __init__(self, base_url: str, interval: float, timeout: float, on_change: Callable[[], None]) -> None:
        self.base_url = base_url
        self.interval = interval
        self.timeout = timeout
        self._on_change = on_change
        self.channels: dict[str, Fetched] = {}
        self.checksums: dict[tuple[str, str], Fetched] = {}
        self._wanted: set[str] = set()
        self._kick = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._inflight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def want(self, urls: set[str]) -> None:
        """The channel URLs Plans use now; new ones are resolved at once."""
        if urls - set(self.channels):
            self._kick.set()
        self._wanted = set(urls)

    def want_checksums(self, version: str, arch: str) -> None:
        key = (version, arch)
        hit = self.checksums.get(key)
        if (hit is None or (hit.error or hit.status != 200)) and key not in self._inflight:
            self._inflight.add(key)
            task = asyncio.get_running_loop().create_task(self._fetch_checksums(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _fetch_checksums(self, key: tuple[str, str]) -> None:
        try:
            f = await fetch(
                await self._session_(), checksum_url(self.base_url, *key), self.timeout, follow=True
            )
            self.checksums[key] = f
            self._on_change()
        finally:
            self._inflight.discard(key)

    async def resolve_all(self) -> None:
        session = await self._session_()
        urls = sorted(self._wanted)
        results = await asyncio.gather(*(fetch(session, u, self.timeout, follow=False) for u in urls))
        changed = False
        for url, f in zip(urls, results, strict=True):
            old = self.channels.get(url)
            if old is None or (old.status, old.location, old.error) != (f.status, f.location, f.error):
                changed = True
                log.info(
                    "channel answer",
                    extra={"channel": url, "status": f.status, "location": f.location, "error": f.error},
                )
            self.channels[url] = f
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
