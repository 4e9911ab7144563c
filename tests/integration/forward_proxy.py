"""A real HTTP forward proxy on loopback, for the tests of what goes through `HTTPS_PROXY` / `HTTP_PROXY`.

It does what a squid or tinyproxy does for these clients: `CONNECT host:port` opens a tunnel to the origin
(bytes relayed both ways, so TLS stays between client and origin), and a request for an absolute URL is
sent on to that URL's origin in origin form, its answer relayed back. Every request is recorded (method,
target, the `Proxy-Authorization` header); given `credentials` ("user:password") it answers 407 to a
request without them, as a proxy that wants a login does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    authorization: str | None


class ForwardProxy:
    def __init__(self, credentials: str | None = None) -> None:
        self.expected = None
        if credentials is not None:
            self.expected = f"Basic {base64.b64encode(credentials.encode()).decode()}"
        self.seen: list[Seen] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        """Listen on a free loopback port; returns the proxy's URL (`http://127.0.0.1:PORT`)."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections
        for writer in list(self._open):  # the relays see their connections end, as when a proxy stops
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()  # (from 3.12 it waits for the connections: all closed above)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._open.add(writer)
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            self._open.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *lines = head.split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers = [line.split(":", 1) for line in lines if ":" in line]
        authorization = next((v.strip() for k, v in headers if k.lower() == "proxy-authorization"), None)
        self.seen.append(Seen(method, target, authorization))
        if self.expected is not None and authorization != self.expected:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                         b"Proxy-Authenticate: Basic realm=t\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = urlsplit(target)
            assert url.scheme == "http" and url.hostname, f"not an absolute http URL: {target}"
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = "".join(f"{k}:{v}\r\n" for k, v in headers
                           if k.lower() not in ("proxy-authorization", "proxy-connection", "connection"))
            up_writer.write(f"{method} {path} {version}\r\n{kept}Connection: close\r\n\r\n".encode("latin-1"))
        self._open.add(up_writer)
        try:
            await asyncio.gather(_relay(reader, up_writer), _relay(up_reader, writer))
        finally:
            self._open.discard(up_writer)
            up_writer.close()


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
