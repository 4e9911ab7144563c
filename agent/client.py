"""The coordinator client: long-poll for instructions, post reports, with the node's ServiceAccount token.

The token file is read on every request, so a rotated projected token is picked up without a restart.
Errors: `CoordinatorUnavailable` (temporary: connection refused, timeouts, 5xx, 401 while the token
rotates, a token file or CA file that cannot be read; retry later) and `Rejected` (permanent for this
message: the coordinator answered 4xx). Nothing is read when the client is made: a file problem must not
end the agent before it resumed an upgrade from its journal, which needs no coordinator.

Why not aiohttp here: an idle agent does nothing but this one exchange, and importing aiohttp costs about
11 MiB of resident memory (issue #6 wants an idle agent under 40 MiB; with aiohttp and pydantic both
loaded the interpreter alone is at ~43 MiB). Each exchange is one small JSON POST over asyncio streams
(TLS through `ssl` when the URL is https). The answer's end is found from its framing (Content-Length,
chunks, or the connection's end; at most `MAX_ANSWER_BYTES`), and it is parsed by the standard library's
`http.client`, which handles the status line, headers and bodies.

Connections are kept for the next exchange (HTTP/1.1 keep-alive), as an agent polls again as soon as it
is answered: a TLS handshake, and an accept and a close on the coordinator, per exchange cost more than
the exchange. An idle connection is closed after `KEEP_IDLE` seconds (the coordinator's server keeps one
75 s), and so is one that brought a 5xx answer; a replica that is not the leader closes each one itself,
so that the next exchange goes through the Service again. One the coordinator closed while idle fails at
the next request before any answer: that request is sent once more on a new connection (polls and
reports are idempotent). Downloads use `http.client` (`agent.download`).
"""

from __future__ import annotations

import asyncio
import http.client
import io
import logging
import socket
import ssl
from contextlib import suppress
from pathlib import Path
from typing import cast
from urllib.parse import quote, urlencode, urlsplit

from pydantic import BaseModel, ValidationError

from wire.messages import API_VERSION, AgentState, Instruction, Report, to_wire

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 1024 * 1024
"""An instruction is a few hundred bytes; anything past this is not our coordinator talking."""
MAX_HEAD_BYTES = 64 * 1024
"""The status line and headers of an answer (asyncio's stream limit)."""
KEEP_IDLE = 15.0
"""Seconds an unused connection is kept for the next exchange (aiohttp's client keeps one as long)."""
_READ = 64 * 1024


class CoordinatorUnavailable(Exception):
    """The coordinator could not be reached or answered with a temporary error."""


class Rejected(Exception):
    """The coordinator refused the message (4xx)."""


class _Answer:
    """What `http.client.HTTPResponse` reads from in place of a socket: the whole answer, already received."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self._data)


class _Stale(Exception):
    """A kept connection turned out closed before any byte of the answer came: send again on a new one."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.expiry: asyncio.TimerHandle | None = None
        """While idle: the timer that closes it."""

    def close(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        self.writer.close()

    @property
    def usable(self) -> bool:
        """Still open both ways as far as is known without I/O (the peer's close seen as EOF), and nothing
        came on it since its last answer (it would be read as the next one)."""
        return not self.writer.is_closing() and not self.reader.at_eof() and not _buffered(self.reader)


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """One whole HTTP/1.x answer as received, and whether the connection may carry another exchange.

    `NoAnswer` when the connection ends before a byte of it, `asyncio.IncompleteReadError` when it ends
    during it, `CoordinatorUnavailable` past `MAX_ANSWER_BYTES` or for a line past the stream's limit,
    `http.client.HTTPException` for bad framing."""
    try:
        return await _read_answer(reader)
    except asyncio.LimitOverrunError as exc:  # a line longer than the stream's limit: not our coordinator
        raise CoordinatorUnavailable(f"answer has a line longer than {MAX_HEAD_BYTES} bytes") from exc


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Whether bytes have come that nothing read yet (the stream has no public look at its buffer)."""
    return bool(getattr(reader, "_buffer", b""))


class NoAnswer(Exception):
    """The connection ended before a single byte of the answer came."""


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise NoAnswer() from exc
        raise
    except (ConnectionResetError, BrokenPipeError) as exc:
        if not _buffered(reader):
            raise NoAnswer() from exc
        raise
    status_line, _, fields = head.partition(b"\r\n")
    headers = http.client.parse_headers(io.BytesIO(fields))
    keep = status_line.startswith(b"HTTP/1.1 ") and "close" not in headers.get("Connection", "").lower()
    code = status_line.split(b" ", 2)[1:2]
    if code in ([b"204"], [b"304"]):  # no body, whatever the headers say (RFC 9112, 6.3)
        return head, keep
    parts = [head]
    size = 0

    def take(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise CoordinatorUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        parts.append(chunk)

    if "chunked" in headers.get("Transfer-Encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            take(line)
            size_field = line.split(b";", 1)[0].strip()
            try:
                n = int(size_field, 16)
            except ValueError:
                n = -1
            if n < 0:
                raise http.client.HTTPException(f"bad chunk size {size_field[:20]!r}")
            if n == 0:
                while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                    take(trailer)
                take(trailer)
                break
            if n > MAX_ANSWER_BYTES:
                raise CoordinatorUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            take(await reader.readexactly(n + 2))
    elif (declared := headers.get("Content-Length")) is not None:
        if not (declared.strip().isascii() and declared.strip().isdigit()):
            raise http.client.HTTPException(f"bad Content-Length {declared[:20]!r}")
        n = int(declared)
        if n > MAX_ANSWER_BYTES:
            raise CoordinatorUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        take(await reader.readexactly(n))
    else:  # delimited by the connection's end
        keep = False
        while chunk := await reader.read(_READ):
            take(chunk)
    return b"".join(parts), keep


def parse_answer(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a complete HTTP/1.x answer; `http.client.HTTPException` if it is not one."""
    response = http.client.HTTPResponse(cast(socket.socket, _Answer(raw)), method="POST")
    response.begin()
    return response.status, response.read()


class CoordinatorClient:
    def __init__(self, base_url: str, node: str, token_file: Path, *, timeout: float = 10.0,
                 ca_file: Path | None = None) -> None:
        """`ca_file`: PEM CA certificate(s) that sign an https:// coordinator's certificate (default: the
        system's CAs)."""
        self.base_url = base_url.rstrip("/")
        self.node = node
        self.token_file = token_file
        self.timeout = timeout
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"coordinator URL {base_url!r} is not an http:// or https:// URL with a host")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._host_header = parts.netloc.rpartition("@")[2]
        self._prefix = parts.path.rstrip("/")
        self._https = parts.scheme == "https"
        self._ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        """Made at the first request, then kept."""
        self._file_problem: str | None = None
        """The token or CA file problem last logged (logged again only when it changes)."""
        self._idle: list[_Connection] = []
        """Connections kept for the next exchange (a heartbeat may run beside a step's report)."""

    def _misconfigured(self, message: str) -> CoordinatorUnavailable:
        """A token or CA file problem: retried like an unreachable coordinator (the agent must go on with
        its journal), but logged as an ERROR when it first appears, as the misconfiguration it likely is
        (the pod stays Running: its log is where it shows)."""
        if message != self._file_problem:
            log.error("%s; every request fails until it is mended", message)
            self._file_problem = message
        return CoordinatorUnavailable(message)

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._https and self._tls is None:
            try:
                self._tls = ssl.create_default_context(cafile=str(self._ca_file) if self._ca_file else None)
            except OSError as exc:  # ssl.SSLError too: no PEM certificate in the file
                raise self._misconfigured(f"coordinator CA file {self._ca_file} cannot be loaded: "
                                          f"{str(exc) or type(exc).__name__}") from exc
        return self._tls

    def _token(self) -> str | None:
        try:
            token = self.token_file.read_text().strip() or None
        except FileNotFoundError:  # not projected yet: the coordinator answers 401, retried
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._misconfigured(f"token file {self.token_file} cannot be read: {exc}") from exc
        if token and (not token.isascii() or "\r" in token or "\n" in token):
            raise self._misconfigured(f"token file {self.token_file} holds no single-line ASCII token")
        return token

    async def close(self) -> None:
        """Close the kept connections."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        for conn in idle:
            with suppress(OSError):
                await conn.writer.wait_closed()

    def _kept(self) -> _Connection | None:
        """The connection used last, if it is still open."""
        while self._idle:
            conn = self._idle.pop()
            if conn.expiry is not None:
                conn.expiry.cancel()
                conn.expiry = None
            if conn.usable:
                return conn
            conn.close()
        return None

    def _keep(self, conn: _Connection) -> None:
        def expire() -> None:
            conn.expiry = None
            if conn in self._idle:
                self._idle.remove(conn)
            conn.close()

        conn.expiry = asyncio.get_running_loop().call_later(KEEP_IDLE, expire)
        self._idle.append(conn)

    async def _exchange(self, target: str, payload: bytes, token: str | None,
                        tls: ssl.SSLContext | None) -> tuple[int, bytes]:
        head = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}", "Accept: application/json",
                "Content-Type: application/json", f"Content-Length: {len(payload)}"]
        if token:
            head.append(f"Authorization: Bearer {token}")
        request = "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + payload
        conn = self._kept()
        if conn is not None:
            try:
                return await self._on(conn, request, kept=True)
            except _Stale:
                log.debug("kept connection to the coordinator was closed; sending again on a new one")
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=tls, limit=MAX_HEAD_BYTES)
        return await self._on(_Connection(reader, writer), request, kept=False)

    async def _on(self, conn: _Connection, request: bytes, *, kept: bool) -> tuple[int, bytes]:
        """`request` on `conn`; the connection is kept afterwards when the answer allows it, else closed
        (on any error or cancellation too). `_Stale` when a kept one proves closed before any answer."""
        keep = False
        try:
            try:
                conn.writer.write(request)
                await conn.writer.drain()
            except (ConnectionResetError, BrokenPipeError) as exc:
                if kept:
                    raise _Stale() from exc
                raise
            try:
                raw, keep = await read_answer(conn.reader)
            except NoAnswer as exc:
                if kept:
                    raise _Stale() from exc
                raise http.client.IncompleteRead(b"") from exc
            except asyncio.IncompleteReadError as exc:
                raise http.client.IncompleteRead(exc.partial, exc.expected) from exc
            kept_for_next, keep = keep, False
            status, body = parse_answer(raw)
            # Kept when the answer parsed, and not after a 5xx (a replica in trouble: the next connection
            # may reach another); bytes past the answer are `usable`'s to catch.
            keep = kept_for_next and status < 500
            return status, body
        finally:
            if keep and conn.usable:
                self._keep(conn)
            else:
                conn.close()

    async def _post(self, path: str, body: BaseModel, wait: float, params: dict[str, str]) -> Instruction:
        target = f"{self._prefix}/{API_VERSION}/agents/{quote(self.node, safe='')}/{path}"
        if params:
            target += "?" + urlencode(params)
        url = f"{self.base_url}/{API_VERSION}/agents/{self.node}/{path}"
        token = self._token()
        tls = self._tls_context()
        self._file_problem = None  # (both files read: a problem coming back is logged again)
        try:
            async with asyncio.timeout(wait + self.timeout):
                status, answer = await self._exchange(target, to_wire(body).encode(), token, tls)
        except TimeoutError as exc:
            raise CoordinatorUnavailable(f"POST {url}: no answer within {wait + self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise CoordinatorUnavailable(f"POST {url} failed: {str(exc) or type(exc).__name__}") from exc
        text = answer[:300].decode(errors="replace")
        if status >= 500 or status in (401, 429):
            raise CoordinatorUnavailable(f"POST {url} answered {status}: {text}")
        if status >= 400:
            raise Rejected(f"POST {url} answered {status}: {text}")
        try:
            return Instruction.model_validate_json(answer)
        except ValidationError as exc:
            raise CoordinatorUnavailable(f"POST {url} answered a bad instruction: {exc}") from exc

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        return await self._post("poll", state, wait, {"wait": f"{wait:g}"})

    async def report(self, report: Report) -> Instruction:
        return await self._post("report", report, 0.0, {})
