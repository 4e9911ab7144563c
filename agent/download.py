"""Fetching a release binary: streamed, hashed as it lands, resumed with Range, retried with backoff.

The transfer runs in a thread of its own over a blocking socket (`http.client`, which the agent's
coordinator client already loads): it reads the body straight into 1-MiB buffers, and a second thread
writes and hashes each buffer while the next one is received. Why not aiohttp, as before: receiving in the
event loop costs a wake-up, a parser call and a copy for every socket read, about 57 ms of CPU for a
73 MB artifact on the benchmark's machine against about 20 ms for blocking reads into a reused buffer
(`bench.agent_download`); on two cores that CPU is taken from the SHA-256 and the file writes. Redirects
are followed (release assets are redirected to their storage). A proxy named by `HTTPS_PROXY` /
`HTTP_PROXY` is used unless `NO_PROXY` exempts the URL (`wire.proxies`): an https URL through a CONNECT
tunnel (TLS still end to end, the certificate checked against the release server's name), an http one
by asking the proxy for the absolute URL. Each redirect's URL is looked at anew.

Errors: `DownloadError` (temporary: network trouble after every retry), `ChecksumMismatch` and
`NoSpace` (permanent: retrying cannot help; the partial file is removed). A 4xx answer is a
`DownloadError` at once; a 5xx, a broken connection, a timeout or a body cut short is retried.

Cancelled, `download` stops the transfer (its socket is shut down) and returns only once every byte
received is written and the file is closed, so the next call resumes from the file as it is.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urljoin, urlsplit

from wire.proxies import Proxy, ProxyError, proxy_for

log = logging.getLogger(__name__)
_CHUNK = 1024 * 1024
"""Bytes read from the socket into one buffer and handed to the writer thread at a time."""
_PENDING = 4
"""Buffers received and not yet written (4 MiB at most)."""
_WRITEBACK_EVERY = 16 * 1024 * 1024
"""Bytes written between two requests to the kernel to start writing the staged file back to disk."""
_HAND_OVER_AFTER = 0.2
"""Seconds after which a buffer still filling is handed to the writer thread with what it holds."""
_MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "k3s-upgrade-agent"


class DownloadError(Exception):
    """The artifact could not be fetched (after retries)."""


class ChecksumMismatch(DownloadError):
    """The bytes received do not have the expected SHA-256."""


class NoSpace(DownloadError):
    """The binary's file system has not enough free space for the new binary."""


class _Interrupted(Exception):
    """The transfer broke off (network error, timeout, 5xx, body cut short): another attempt may do."""


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
    got = _Received(hashlib.sha256())
    if await asyncio.to_thread(part.exists):  # resume after a restart: hash what we already have once
        got.offset = await asyncio.to_thread(_hash_prefix, part, got.hasher)
    loop = asyncio.get_running_loop()
    report: Callable[[float], None] | None = None
    if progress is not None:
        def report(value: float) -> None:  # called by the transfer's thread
            loop.call_soon_threadsafe(progress, value)
    delay = backoff
    for attempt in range(1, attempts + 1):
        try:
            await _run(_Transfer(url, part, got, read_timeout, space_margin, report))
            break
        except _Interrupted as exc:
            log.warning("download of %s interrupted at byte %d (attempt %d/%d): %s",
                        url, got.offset, attempt, attempts, exc)
            if attempt == attempts:
                raise DownloadError(f"download of {url} failed after {attempts} attempts: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(max_backoff, delay * 2)
    digest = got.hasher.hexdigest()
    if digest != sha256:
        await asyncio.to_thread(part.unlink, missing_ok=True)
        raise ChecksumMismatch(f"checksum mismatch for {url}: expected sha256 {sha256}, got {digest}")


async def _run(transfer: _Transfer) -> None:
    """Run `transfer` in a thread; cancelled, stop it and wait until its file is closed."""
    future = asyncio.get_running_loop().run_in_executor(None, transfer.run)
    try:
        await asyncio.shield(future)
    except asyncio.CancelledError:
        transfer.abort()
        while not future.done():  # the file must be closed before we return: wait, even if cancelled again
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                continue
            except Exception:  # taken from the future below
                break
        if not future.cancelled() and (exc := future.exception()) is not None:
            # what the abort broke (or what failed as it came); we are cancelled all the same
            log.info("download of %s stopped at byte %d: %r", transfer.url, transfer.got.offset, exc)
        raise


def _hash_prefix(part: Path, hasher: hashlib._Hash) -> int:
    size = 0
    with open(part, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
    return size


@dataclass
class _Received:
    """Bytes on disk so far and their running hash (kept across attempts)."""

    hasher: hashlib._Hash
    offset: int = 0


class _Transfer:
    """One attempt: a GET from `got.offset` on, its body written to `part`. `run` is blocking (it runs in a
    thread); `abort`, from any thread, makes it stop soon after."""

    def __init__(self, url: str, part: Path, got: _Received, timeout: float, margin: int,
                 progress: Callable[[float], None] | None) -> None:
        self.url = url
        self.got = got
        self._part = part
        self._timeout = timeout
        self._margin = margin
        self._progress = progress
        self._stopped = threading.Event()
        self._sock: socket.socket | None = None

    def abort(self) -> None:
        self._stopped.set()
        sock = self._sock
        if sock is not None:
            try:
                # A blocked read returns at once. The plain socket's shutdown, also under TLS: the
                # SSLSocket's own would first drop its TLS state, and the reads after it would return
                # the raw records queued on the socket as if they were the body.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError as exc:  # not connected (any more): nothing is blocked on it
                log.debug("download of %s: shutdown: %s", self.url, exc)

    def _create_connection(self, address: tuple[str, int], timeout: float | None = None,
                           source_address: tuple[str, int] | None = None) -> socket.socket:
        """`socket.create_connection`, the socket kept at once for `abort`: a proxy's CONNECT exchange
        happens before `connect` returns, and a proxy that stalls there must not hold up a cancel."""
        sock = socket.create_connection(address, timeout, source_address)
        self._sock = sock
        if self._stopped.is_set():  # aborted while connecting: it found no socket to shut down
            sock.close()
            raise _Interrupted("stopped")
        return sock

    def run(self) -> None:
        response, conn, url = self._open()
        try:
            self._take(response, url)
        finally:
            response.close()
            conn.close()

    def _open(self) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
        """GET the URL (following redirects) with a `Range` from the first byte we lack. Returns the answer,
        its connection, and what was asked for messages (its URL, and the proxy it went through)."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if self.got.offset:
            headers["Range"] = f"bytes={self.got.offset}-"
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            if self._stopped.is_set():
                raise _Interrupted("stopped")
            conn, path, proxy, extra = _connection(url, self._timeout)
            via = f" through proxy {proxy}" if proxy is not None else ""
            conn._create_connection = self._create_connection  # type: ignore[attr-defined]
            try:
                conn.connect()
                self._sock = conn.sock
                if self._stopped.is_set():
                    raise _Interrupted("stopped")
                conn.request("GET", path, headers={**headers, **extra})
                response = conn.getresponse()
            except http.client.InvalidURL as exc:
                conn.close()
                raise DownloadError(f"cannot download {url}: {exc}") from exc
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise _Interrupted(f"GET {url}{via}: {exc!r}") from exc
            except BaseException:
                conn.close()
                raise
            location = response.getheader("Location")
            if response.status not in _REDIRECTS or not location:
                return response, conn, url + via
            response.close()
            conn.close()
            url = urljoin(url, location)
        raise DownloadError(f"GET {self.url}: more than {_MAX_REDIRECTS} redirects")

    def _take(self, response: http.client.HTTPResponse, url: str) -> None:
        got = self.got
        if response.status == 416 and got.offset:
            return  # we already have every byte
        if response.status not in (200, 206):
            try:
                text = response.read(200).decode(errors="replace")
            except (OSError, http.client.HTTPException) as exc:
                text = f"(its body could not be read: {exc!r})"
            if response.status >= 500:
                raise _Interrupted(f"GET {url} answered {response.status}: {text}")
            raise DownloadError(f"GET {url} answered {response.status}: {text}")
        if response.status == 200 and got.offset:
            log.info("server ignored Range for %s; starting over", url)
            got.offset, got.hasher = 0, hashlib.sha256()
        length = response.length  # None: chunked, or until the connection closes
        if length is not None:
            check_free_space(self._part.parent, length, self._margin)
        end = None if length is None else got.offset + length
        try:
            with open(self._part, "ab" if got.offset else "wb", buffering=0) as handle:
                sink = _Sink(handle, got)
                try:
                    self._receive(response, sink, end)
                finally:
                    sink.close()  # every byte received is on disk (or failed) before the file closes
        except OSError as exc:  # the file's: the network's are `_Interrupted`
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._part.unlink(missing_ok=True)
                where = self._part.parent
                raise NoSpace(f"file system of {where} is full writing the new k3s: {exc}") from exc
            raise
        if end is not None and got.offset < end:
            raise _Interrupted(f"connection closed at byte {got.offset} of {end}")

    def _receive(self, response: http.client.HTTPResponse, sink: _Sink, end: int | None) -> None:
        """Read the body into the sink's buffers: a buffer is handed over full, or with what it holds once
        `_HAND_OVER_AFTER` seconds passed since its first byte (a slow link's bytes reach the file), or at
        the end of the body or of the connection."""
        read = _body_reader(response)
        received = self.got.offset
        while True:
            buffer = sink.buffer()
            view = memoryview(buffer)
            filled = n = 0
            first = time.monotonic()
            while filled < len(buffer):
                try:
                    n = read(view[filled:])
                except (OSError, http.client.HTTPException) as exc:
                    if filled:  # keep what arrived before the break
                        sink.put(buffer, filled)
                    raise _Interrupted(f"reading {self.url} at byte {received + filled}: {exc!r}") from exc
                filled += n
                if not n or self._stopped.is_set() or time.monotonic() - first >= _HAND_OVER_AFTER:
                    break
            if filled:
                sink.put(buffer, filled)
                received += filled
                if self._progress and end:
                    self._progress(min(1.0, received / end))
            if not n or self._stopped.is_set():
                return


def _body_reader(response: http.client.HTTPResponse) -> Callable[[memoryview], int]:
    """`read(view)` -> bytes of the body put into `view`, 0 at its end: one socket read at most (what has
    arrived), so a buffer can be handed over before it is full. A chunked body is read by `http.client`,
    which fills the view."""
    if response.chunked or response.fp is None:
        return response.readinto
    stream = response.fp  # a buffered reader over the socket, after the headers
    remaining = response.length  # None: the body ends when the connection closes

    def read(view: memoryview) -> int:
        nonlocal remaining
        if remaining is not None:
            if remaining <= 0:
                return 0
            view = view[:remaining]
        n = stream.readinto1(view)
        if remaining is not None:
            remaining -= n
        return n

    return read


def _connection(
    url: str, timeout: float
) -> tuple[http.client.HTTPConnection, str, Proxy | None, dict[str, str]]:
    """A connection (not yet opened) to the URL's host or to the proxy for it, the request target (path and
    query; the absolute URL when an http URL goes through a proxy), that proxy, and the headers the request
    needs for it (`Proxy-Authorization` when an http URL goes through a proxy that wants credentials)."""
    target = urlsplit(url)
    if target.scheme not in ("http", "https") or not target.hostname:
        raise DownloadError(f"cannot download {url}: not an http(s) URL")
    try:
        port = target.port or (443 if target.scheme == "https" else 80)  # (an IPv6 literal needs it given)
        hostname = target.hostname.encode("idna").decode("ascii")  # an IDN as its punycode, as curl sends it
        proxy = proxy_for(url)
    except (ValueError, ProxyError) as exc:  # (UnicodeError is a ValueError)
        raise DownloadError(f"cannot download {url}: {exc}") from exc
    if proxy is not None and target.scheme == "https" and ":" in hostname:
        # Python 3.11's CONNECT names an IPv6 host without brackets, which no proxy takes.
        raise DownloadError(f"cannot download {url} through proxy {proxy}: an IPv6 address as the release "
                            f"host is not supported through a proxy; name it, or exempt it in NO_PROXY")
    path = quote(target.path or "/", safe=_PATH_SAFE) + (f"?{quote(target.query, safe=_QUERY_SAFE)}"
                                                          if target.query else "")
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        context = ssl.create_default_context()
        if proxy is None:
            conn = http.client.HTTPSConnection(hostname, port, timeout=timeout, context=context)
        else:  # TLS with the release server inside a CONNECT tunnel through the proxy
            conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout, context=context)
            conn.set_tunnel(hostname, port, headers=proxy.headers)
    elif proxy is None:
        conn = http.client.HTTPConnection(hostname, port, timeout=timeout)
    else:  # the proxy fetches the absolute URL
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=timeout)
        host = f"[{hostname}]" if ":" in hostname else hostname
        return conn, f"http://{host}:{port}{path}", proxy, proxy.headers
    return conn, path, proxy, {}


_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
"""What a path may hold as it is: percent escapes are kept, anything else (spaces, non-ASCII) escaped."""
_QUERY_SAFE = _PATH_SAFE + "?"


class _Sink:
    """Writes and hashes the buffers received, in order, in a thread of its own, while the transfer's thread
    receives the next ones (hashlib and file writes release the GIL, so the SHA-256 and the copy to the page
    cache overlap the transfer). Every `_WRITEBACK_EVERY` bytes the kernel is asked to start writing them
    back (`POSIX_FADV_DONTNEED` starts the writeback of dirty pages and does not wait for it), so the
    fsync at the end has little left to wait for.

    At most `_PENDING` buffers wait for the thread (the download's memory stays bounded, and buffers are
    reused); the first error of a write is raised by the next `buffer` or by `close`, and no write is made
    after it (the file keeps only what precedes the failed write)."""

    def __init__(self, handle: IO[Any], got: _Received) -> None:
        self._handle = handle
        self._got = got
        self._written_back = got.offset  # the file's bytes before this offset: writeback started or done
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="download-sink")
        self._pending: deque[tuple[Future[None], bytearray]] = deque()
        self._free: list[bytearray] = []
        self._failed = False

    def buffer(self) -> bytearray:
        """A buffer to receive into: a written one, once fewer than `_PENDING` wait."""
        while self._pending and (len(self._pending) >= _PENDING or self._pending[0][0].done()):
            future, buffer = self._pending.popleft()
            future.result()
            self._free.append(buffer)
        return self._free.pop() if self._free else bytearray(_CHUNK)

    def put(self, buffer: bytearray, size: int) -> None:
        self._pending.append((self._thread.submit(self._write, memoryview(buffer)[:size]), buffer))

    def close(self) -> None:
        """Wait for every buffer put so far and fsync the file; raise the first write error, if any."""
        try:
            while self._pending:
                self._pending.popleft()[0].result()
            os.fsync(self._handle.fileno())
        finally:  # after an error: the thread finishes (skipping the rest), then the file closes
            wait([future for future, _ in self._pending])
            self._pending.clear()
            self._thread.shutdown(wait=True)

    def _write(self, data: memoryview) -> None:
        if self._failed:
            return
        try:
            _write_all(self._handle.fileno(), data)
        except BaseException:
            self._failed = True
            raise
        self._got.hasher.update(data)
        self._got.offset += len(data)
        start = self._written_back
        if self._got.offset - start >= _WRITEBACK_EVERY and hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._handle.fileno(), start, self._got.offset - start, os.POSIX_FADV_DONTNEED)
            self._written_back = self._got.offset


def _write_all(fd: int, data: memoryview) -> None:
    """Write every byte of `data` (a short write, as when the disk fills, is resumed: its next write
    then fails with ENOSPC)."""
    while data:
        data = data[os.write(fd, data):]
