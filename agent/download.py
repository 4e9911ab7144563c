"""Fetching a release binary: streamed, hashed in the same pass, resumed with Range, retried with backoff.

The bytes received are written and hashed in a thread beside the event loop that receives them.

Errors: `DownloadError` (temporary: network trouble after every retry), `ChecksumMismatch` and
`NoSpace` (permanent: retrying cannot help; the partial file is removed).

aiohttp is imported when a download starts, not with this module: an idle agent never needs it, and it is
about 11 MiB of the agent's resident memory (see `agent.client`).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024
"""Bytes handed to the writer thread at a time (fewer, larger hand-offs: with 1 MiB the benchmark's 73.4 MB
took 68.0-77.7 ms, with 256 KiB 80.6-91.3 ms)."""
_PENDING = 4
"""Chunks received and not yet written (4 MiB at most)."""
_WRITEBACK_EVERY = 16 * 1024 * 1024
"""Bytes written between two requests to the kernel to start writing the staged file back to disk."""


class DownloadError(Exception):
    """The artifact could not be fetched (after retries)."""


class ChecksumMismatch(DownloadError):
    """The bytes received do not have the expected SHA-256."""


class NoSpace(DownloadError):
    """The binary's file system has not enough free space for the new binary."""


def check_free_space(directory: Path, needed: int, margin: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + margin:
        raise NoSpace(
            f"not enough free space in {directory}: {free} bytes free, {needed} needed for the new k3s "
            f"binary plus a {margin}-byte margin"
        )


async def download(
    url: str,
    sha256: str,
    part: Path,
    *,
    attempts: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    read_timeout: float = 60.0,
    space_margin: int = 16 * 1024 * 1024,
    progress: Callable[[float], None] | None = None,
) -> None:
    """Download `url` into `part` (resuming what is there) and verify it; the file is fsynced."""
    import aiohttp

    got = _Received(hashlib.sha256())
    if await asyncio.to_thread(part.exists):  # resume after a restart: hash what we already have once
        got.offset = await asyncio.to_thread(_hash_prefix, part, got.hasher)
    delay = backoff
    last: Exception | None = None
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=read_timeout, sock_read=read_timeout)
    for attempt in range(1, attempts + 1):
        try:
            async with aiohttp.ClientSession(timeout=client_timeout) as session:
                await _fetch(session, url, part, got, space_margin, progress)
            break
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            last = exc
            log.warning("download of %s interrupted at byte %d (attempt %d/%d): %s",
                        url, got.offset, attempt, attempts, exc)
            if attempt == attempts:
                raise DownloadError(f"download of {url} failed after {attempts} attempts: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(max_backoff, delay * 2)
    else:  # pragma: no cover - the loop either breaks or raises
        raise DownloadError(f"download of {url} failed: {last}")
    digest = got.hasher.hexdigest()
    if digest != sha256:
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise ChecksumMismatch(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}")


def _hash_prefix(part: Path, hasher: hashlib._Hash) -> int:
    size = 0
    with open(part, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size


class _Sink:
    """Writes and hashes the chunks received, in order, in a thread of its own, while the event loop
    receives the next ones (hashlib and file writes release the GIL, so the SHA-256 and the copy to the page
    cache overlap the transfer). Every `_WRITEBACK_EVERY` bytes the kernel is asked to start writing them
    back (`POSIX_FADV_DONTNEED` starts the writeback of dirty pages and does not wait for it), so the
    fsync at the end has little left to wait for.

    At most `_PENDING` chunks wait for the thread (the download's memory stays bounded); the first error
    of a write is raised by the next `put` or by `close`."""

    def __init__(self, handle: IO[Any], got: _Received) -> None:
        self._handle = handle
        self._got = got
        self._written_back = got.offset  # the file's bytes before this offset: writeback started or done
        self._loop = asyncio.get_running_loop()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download-sink")
        self._pending: deque[asyncio.Future[None]] = deque()

    async def put(self, chunk: bytes) -> None:
        self._pending.append(self._loop.run_in_executor(self._thread, self._write, chunk))
        while len(self._pending) > _PENDING or (self._pending and self._pending[0].done()):
            await self._pending.popleft()

    async def close(self) -> None:
        """Wait for every chunk put so far and fsync the file; raise the first write error, if any."""
        try:
            while self._pending:
                await self._pending.popleft()
            await self._loop.run_in_executor(self._thread, os.fsync, self._handle.fileno())
        finally:  # after an error: the thread finishes the rest, then the file closes
            await asyncio.gather(*self._pending, return_exceptions=True)
            self._pending.clear()
            self._thread.shutdown(wait=True)

    def _write(self, chunk: bytes) -> None:
        self._handle.write(chunk)
        self._got.hasher.update(chunk)
        self._got.offset += len(chunk)
        start = self._written_back
        if self._got.offset - start >= _WRITEBACK_EVERY and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._handle.fileno(), start, self._got.offset - start, os.POSIX_FADV_DONTNEED)
            self._written_back = self._got.offset


@dataclass
class _Received:
    """Bytes on disk so far and their running hash (kept across attempts)."""

    hasher: hashlib._Hash
    offset: int = 0


async def _fetch(session: aiohttp.ClientSession, url: str, part: Path, got: _Received, margin: int,
                 progress: Callable[[float], None] | None) -> None:
    import aiohttp

    offset = got.offset
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    async with session.get(url, headers=headers) as response:
        if response.status == 416 and offset:
            return  # we already have every byte
        if response.status not in (200, 206):
            text = (await response.text(errors="replace"))[:200]
            if response.status >= 500:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status,
                                                  message=text)
            raise DownloadError(f"GET {url} answered {response.status}: {text}")
        if response.status == 200 and offset:
            log.info("server ignored Range for %s; starting over", url)
            offset, got.offset, got.hasher = 0, 0, hashlib.sha256()
        total = offset + (response.content_length or 0)
        if response.content_length is not None:
            check_free_space(part.parent, response.content_length, margin)
        mode = "ab" if offset else "wb"
        try:
            with open(part, mode, buffering=0) as handle:  # noqa: ASYNC230 - only the sink's thread uses it
                sink = _Sink(handle, got)
                try:
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        await sink.put(chunk)
                        offset += len(chunk)
                        if progress and total:
                            progress(min(1.0, offset / total))
                finally:
                    await sink.close()  # every chunk received is on disk (or failed) before the file closes
                offset = got.offset
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                part.unlink(missing_ok=True)  # noqa: ASYNC240
                raise NoSpace(f"file system of {part.parent} is full writing the new k3s: {exc}") from exc
            raise
        if response.content_length is not None and offset < total:
            raise aiohttp.ClientPayloadError(f"connection closed at byte {offset} of {total}")
