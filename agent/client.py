"""The coordinator client: long-poll for instructions, post reports, with the node's ServiceAccount token.

The token file is read on every request, so a rotated projected token is picked up without a restart.
Errors: `CoordinatorUnavailable` (temporary: connection refused, timeouts, 5xx, 401 while the token
rotates, a token file or CA file that cannot be read; retry later) and `Rejected` (permanent for this
message: the coordinator answered 4xx). Nothing is read when the client is made: a file problem must not
end the agent before it resumed an upgrade from its journal, which needs no coordinator.

Why not aiohttp here: an idle agent does nothing but this one exchange, and importing aiohttp costs about
11 MiB of resident memory (issue #6 wants an idle agent under 40 MiB; with aiohttp and pydantic both
loaded the interpreter alone is at ~43 MiB). Each exchange is one small JSON POST on its own connection
(`Connection: close`) over asyncio streams (TLS through `ssl` when the URL is https); the answer is read
to the end (at most `MAX_ANSWER_BYTES`) and parsed by the standard library's `http.client`, which handles
the status line, headers and chunked or length-delimited bodies. A long-poll costs one TCP connection per
`--poll-wait` seconds. Downloads use `http.client` too (`agent.download`).
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
        """Nothing to release: every exchange closes its own connection."""

    async def _exchange(self, target: str, payload: bytes, token: str | None,
                        tls: ssl.SSLContext | None) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(self._host, self._port, ssl=tls)
        try:
            head = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}", "Accept: application/json",
                    "Content-Type: application/json", f"Content-Length: {len(payload)}", "Connection: close"]
            if token:
                head.append(f"Authorization: Bearer {token}")
            writer.write("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + payload)
            await writer.drain()
            chunks: list[bytes] = []
            size = 0
            while chunk := await reader.read(_READ):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise CoordinatorUnavailable(f"answer larger than {MAX_ANSWER_BYTES} bytes")
                chunks.append(chunk)
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
        return parse_answer(b"".join(chunks))

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
