"""The agent's coordinator client against a real aiohttp server on loopback (what the coordinator runs).

Aspects: a poll posts the state as JSON with the bearer token (re-read from its file), the `wait` query
and a base-URL path prefix, and returns the validated instruction, also from a chunked answer; 5xx, 401
and 429 are temporary (`CoordinatorUnavailable`), other 4xx permanent (`Rejected`); a refused connection,
an answer that never comes, a truncated or oversized answer, an answer that is not an `Instruction` and a
token file holding several lines are all temporary, and so are a token file and a CA file that cannot be
read (the client is made all the same: nothing is read before the first request, and the CA file is read
again until it loads); a cancelled long-poll returns at once and closes its connection; the agent process
never imports aiohttp, idle or downloading. Keep-alive: exchanges in a row share one connection; one the
server closed while idle is replaced and the request sent again once (never on a new connection); an
answer with `Connection: close` or in HTTP/1.0 ends its connection, and so does a 5xx; an idle one is
closed after `KEEP_IDLE`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from agent.client import MAX_ANSWER_BYTES, MAX_HEAD_BYTES, CoordinatorClient, CoordinatorUnavailable, Rejected
from tests.integration.agent.conftest import ScriptedCoordinator, make_lease
from wire.messages import Action, AgentPhase, AgentState, Instruction

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE = AgentState(node="n1", agent_version="0.1.0", arch="amd64", k3s_version="v1.30.3+k3s1")
STAGE = Instruction(action=Action.STAGE, reason="go", poll_after_seconds=0.5)


class Server:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], str]] = []
        self.handler: Handler | None = None
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _any(self, request: web.Request) -> web.StreamResponse:
        body = await request.text()
        self.requests.append((request.path, request.query_string, dict(request.headers), body))
        if self.handler is not None:
            return await self.handler(request)
        return web.json_response(text=STAGE.model_dump_json())

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self._any)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    await s.start()
    try:
        yield s
    finally:
        assert s.runner is not None
        await s.runner.cleanup()


Clients = Callable[..., CoordinatorClient]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Makes clients, closed (their kept connections with them) at the end of the test."""
    made: list[CoordinatorClient] = []

    def make(url: str, *args: Any, **kwargs: Any) -> CoordinatorClient:
        made.append(CoordinatorClient(url, *args, **kwargs))
        return made[-1]

    yield make
    for c in made:
        await c.close()


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok-1\n")
    return path


async def test_poll_posts_state_with_token_and_wait(clients: Clients, server: Server, token: Path) -> None:
    client = clients(server.url + "/prefix/", "n1", token, timeout=2)
    assert await client.poll(STATE, 0.5) == STAGE
    await asyncio.to_thread(token.write_text, "tok-2")
    await client.poll(STATE, 0)
    (path, query, headers, body), second = server.requests
    assert path == "/prefix/v1/agents/n1/poll" and query == "wait=0.5"
    assert headers["Authorization"] == "Bearer tok-1" and headers["Content-Type"] == "application/json"
    assert AgentState.model_validate_json(body) == STATE
    assert second[1] == "wait=0" and second[2]["Authorization"] == "Bearer tok-2"
    await client.close()


async def test_chunked_answer_is_parsed(clients: Clients, server: Server, token: Path) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        response.content_type = "application/json"
        await response.prepare(request)
        text = STAGE.model_dump_json().encode()
        await response.write(text[:10])
        await asyncio.sleep(0.05)
        await response.write(text[10:])
        await response.write_eof()
        return response

    server.handler = chunked
    assert await clients(server.url, "n1", token).poll(STATE, 0) == STAGE


@pytest.mark.parametrize(("status", "error"), [(500, CoordinatorUnavailable), (503, CoordinatorUnavailable),
                                               (401, CoordinatorUnavailable), (429, CoordinatorUnavailable),
                                               (400, Rejected), (403, Rejected), (404, Rejected)])
async def test_status_classes(
    clients: Clients, server: Server, token: Path, status: int, error: type[Exception]
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "no", "status": status}, status=status)

    server.handler = answer
    with pytest.raises(error, match=f"answered {status}"):
        await clients(server.url, "n1", token).poll(STATE, 0)


@pytest.mark.parametrize("answer", [b'{"action": "explode"}', b"not json", b'{"action": "idle", "x": 1}'])
async def test_an_answer_that_is_no_instruction_is_temporary(clients: Clients, server: Server, token: Path,
                                                             answer: bytes) -> None:
    async def bad(request: web.Request) -> web.StreamResponse:
        return web.Response(body=answer, content_type="application/json")

    server.handler = bad
    with pytest.raises(CoordinatorUnavailable, match="bad instruction"):
        await clients(server.url, "n1", token).poll(STATE, 0)


async def test_oversized_answer_is_refused(clients: Clients, server: Server, token: Path) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b" " * (MAX_ANSWER_BYTES + 1), content_type="application/json")

    server.handler = huge
    with pytest.raises(CoordinatorUnavailable, match="larger than"):
        await clients(server.url, "n1", token).poll(STATE, 0)


async def test_truncated_answer_is_temporary(clients: Clients, token: Path) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"action\":")
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(half, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        with pytest.raises(CoordinatorUnavailable, match="failed"):
            await clients(f"http://127.0.0.1:{port}", "n1", token).poll(STATE, 0)
    finally:
        raw.close()
        await raw.wait_closed()


async def test_refused_connection_and_silence_are_temporary(
    clients: Clients, server: Server, token: Path
) -> None:
    assert server.runner is not None
    port = server.runner.addresses[0][1]
    await server.runner.cleanup()
    with pytest.raises(CoordinatorUnavailable, match="failed"):
        await clients(f"http://127.0.0.1:{port}", "n1", token).poll(STATE, 0)
    server.runner = None
    await server.start()

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    server.handler = silent
    started = time.monotonic()
    with pytest.raises(CoordinatorUnavailable, match=r"no answer within 0\.5 s"):
        await clients(server.url, "n1", token, timeout=0.3).poll(STATE, 0.2)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("content", ["tok\r\nX-Injected: 1", "tok\u20ac"])
async def test_a_token_that_is_no_single_line_ascii_is_not_sent(
    clients: Clients, server: Server, token: Path, content: str
) -> None:
    await asyncio.to_thread(token.write_text, content)  # (a non-latin-1 one ended the agent's poll loop)
    with pytest.raises(CoordinatorUnavailable, match="holds no single-line ASCII token"):
        await clients(server.url, "n1", token).poll(STATE, 0)
    assert server.requests == []


async def test_an_unreadable_token_file_is_temporary(
    clients: Clients, server: Server, tmp_path: Path
) -> None:
    token = tmp_path / "tokens"
    token.mkdir()  # the projected volume's directory given in place of its file
    client = clients(server.url, "n1", token)
    cause = rf"token file {re.escape(str(token))} cannot be read: .*Is a directory"
    with pytest.raises(CoordinatorUnavailable, match=cause):
        await client.poll(STATE, 0)
    assert server.requests == []


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
async def test_a_ca_file_that_does_not_load_is_temporary(clients: Clients, tmp_path: Path, token: Path,
                                                         content: str | None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    client = clients("https://127.0.0.1:9", "n1", token, ca_file=ca)  # made all the same
    cause = rf"coordinator CA file {re.escape(str(ca))} cannot be loaded: \S"
    with caplog.at_level(logging.ERROR, logger="agent.client"):
        for _ in range(3):
            with pytest.raises(CoordinatorUnavailable, match=cause):
                await client.poll(STATE, 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and re.search(cause, errors[0].getMessage()), "logged as an ERROR, once"
    trustme.CA().cert_pem.write_to_path(str(ca))  # fixed: read again, now a connection error (port 9)
    with pytest.raises(CoordinatorUnavailable, match=r"POST https://127\.0\.0\.1:9/v1/agents/n1/poll failed"):
        await client.poll(STATE, 0)


async def test_cancelled_long_poll_returns_at_once(clients: Clients, server: Server, token: Path) -> None:
    held = asyncio.Event()

    async def hold(request: web.Request) -> web.StreamResponse:
        held.set()
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    server.handler = hold
    task = asyncio.create_task(clients(server.url, "n1", token).poll(STATE, 30))
    await asyncio.wait_for(held.wait(), 5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1


class RawServer:
    """A bare HTTP/1.1 server over asyncio streams that numbers its connections and answers each request
    with what `answer(connection, request)` returns (None: close the connection without answering)."""

    def __init__(self, answer: Callable[[int, int], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[int] = []
        """The connection number of each request, in order."""
        self.closed: list[int] = []
        """Connections whose client closed them."""
        self.writers: list[asyncio.StreamWriter] = []
        """Each connection's writer, in order."""
        self.close_after: set[int] = set()
        """Request numbers after whose reply the server closes the connection."""
        self.server: asyncio.Server | None = None
        self.url = ""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        self.writers.append(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.closed.append(conn)
                    return
                length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                self.requests.append(conn)
                reply = self.answer(conn, len(self.requests))
                if reply is None:
                    return
                writer.write(reply)
                await writer.drain()
                if len(self.requests) in self.close_after:
                    return
        finally:
            writer.close()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def ok(*headers: str) -> bytes:
    body = STAGE.model_dump_json().encode()
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_one_connection_carries_exchange_after_exchange(server: Server, token: Path) -> None:
    """The coordinator's own server (aiohttp): polls and reports in a row go over one connection, and the
    client asks for no `Connection: close`."""
    peers: list[object] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response(text=STAGE.model_dump_json())

    server.handler = answer
    client = CoordinatorClient(server.url, "n1", token)
    try:
        for _ in range(5):
            assert await client.poll(STATE, 0) == STAGE
    finally:
        await client.close()
    assert len(peers) == 5 and len(set(peers)) == 1, peers
    assert all("close" not in r[2].get("Connection", "").lower() for r in server.requests)


async def test_a_connection_closed_while_idle_is_replaced_without_an_error(token: Path) -> None:
    """The server drops the kept connection on the next request without a byte of answer (as when its
    keep-alive ran out as the request went out): the request is sent once more, on a new connection."""
    async with RawServer(lambda conn, n: None if n == 2 else ok()) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            assert await client.poll(STATE, 0) == STAGE
            assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 1, 2]


async def test_an_aiohttp_server_closing_idle_connections(token: Path) -> None:
    """aiohttp closes a connection idle past its keep-alive timeout: the next poll opens another."""
    peers: list[object] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        return web.json_response(text=STAGE.model_dump_json())

    app = web.Application()
    app.router.add_post("/v1/agents/n1/poll", answer)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.2, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    client = CoordinatorClient(f"http://127.0.0.1:{runner.addresses[0][1]}", "n1", token)
    try:
        assert await client.poll(STATE, 0) == STAGE
        await asyncio.sleep(0.6)
        assert await client.poll(STATE, 0) == STAGE
    finally:
        await client.close()
        await runner.cleanup()
    assert len(peers) == 2 and peers[0] != peers[1]


async def test_no_second_try_on_a_new_connection(token: Path) -> None:
    """A new connection that ends without an answer is the coordinator's failure, not a stale connection:
    reported at once, the request not sent again."""
    async with RawServer(lambda conn, n: None) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            with pytest.raises(CoordinatorUnavailable, match="failed"):
                await client.poll(STATE, 0)
        finally:
            await client.close()
    assert raw.requests == [1]


@pytest.mark.parametrize("header", ["Connection: close", None])
async def test_an_answer_that_ends_its_connection_is_not_reused(token: Path, header: str | None) -> None:
    def answer(conn: int, n: int) -> bytes:
        if header is not None:
            return ok(header)
        return ok().replace(b"HTTP/1.1", b"HTTP/1.0", 1)

    async with RawServer(answer) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            for _ in range(3):
                assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 2, 3]


async def test_a_server_error_ends_its_connection(token: Path) -> None:
    """A 5xx answer (a replica starting, stopping or unable to reach the API server): the next exchange
    takes a new connection, which a Service may send to another replica."""
    def answer(conn: int, n: int) -> bytes:
        if n == 2:
            body = b'{"error": "not ready", "status": 503}'
            return b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        return ok()

    async with RawServer(answer) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            assert await client.poll(STATE, 0) == STAGE
            with pytest.raises(CoordinatorUnavailable, match="answered 503"):
                await client.poll(STATE, 0)
            assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 1, 2]


async def test_a_line_longer_than_the_stream_limit_is_a_temporary_error(token: Path) -> None:
    """A chunk-size line past 64 KiB (not our coordinator talking): CoordinatorUnavailable, not an exception
    that ends the agent's loop."""
    long_line = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * (MAX_HEAD_BYTES + 10)
    async with RawServer(lambda conn, n: long_line) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            with pytest.raises(CoordinatorUnavailable, match="longer than"):
                await client.poll(STATE, 0)
        finally:
            await client.close()


async def test_bytes_after_an_answer_are_not_read_as_the_next(token: Path) -> None:
    def answer(conn: int, n: int) -> bytes:
        return ok() + b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nleftover" if n == 1 else ok()

    async with RawServer(answer) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            assert await client.poll(STATE, 0) == STAGE
            await asyncio.sleep(0.1)  # (the extra bytes are in)
            assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 2], "the second poll was answered with the first one's leftovers"


async def test_bytes_on_an_idle_connection_are_not_read_as_the_next_answer(token: Path) -> None:
    async with RawServer(lambda conn, n: ok()) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            assert await client.poll(STATE, 0) == STAGE
            assert raw.writers, "no connection"
            raw.writers[0].write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nunasked!")  # while idle
            await asyncio.sleep(0.1)
            assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 2]


async def test_an_answer_that_does_not_parse_ends_its_connection(token: Path) -> None:
    def answer(conn: int, n: int) -> bytes:
        return b"HTTP/1.1 2x0 Fine\r\nContent-Length: 2\r\n\r\n{}" if n == 1 else ok()

    async with RawServer(answer) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            with pytest.raises(CoordinatorUnavailable):
                await client.poll(STATE, 0)
            assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 2]


async def test_an_answer_cut_after_its_head_is_not_sent_again(token: Path) -> None:
    """Part of an answer came: the request reached the coordinator, so it is not sent again on a new
    connection (only a kept connection that ends before a byte of answer is)."""
    def answer(conn: int, n: int) -> bytes:
        return ok() if n == 1 else b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n"

    async with RawServer(answer) as raw:
        raw.close_after = {2}
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            assert await client.poll(STATE, 0) == STAGE
            with pytest.raises(CoordinatorUnavailable, match="failed"):
                await client.poll(STATE, 0)
        finally:
            await client.close()
    assert raw.requests == [1, 1]


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
async def test_answers_without_a_body_are_not_waited_for(token: Path, status: bytes) -> None:
    async with RawServer(lambda conn, n: b"HTTP/1.1 " + status + b"\r\n\r\n") as raw:
        client = CoordinatorClient(raw.url, "n1", token, timeout=5)
        started = time.monotonic()
        try:
            with pytest.raises(CoordinatorUnavailable, match="bad instruction"):
                await client.poll(STATE, 0)
        finally:
            await client.close()
        assert time.monotonic() - started < 1, "the client waited for a body that never comes"


async def test_an_idle_connection_is_closed_after_keep_idle(
    token: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.client.KEEP_IDLE", 0.2)
    async with RawServer(lambda conn, n: ok()) as raw:
        client = CoordinatorClient(raw.url, "n1", token)
        try:
            assert await client.poll(STATE, 0) == STAGE
            assert raw.closed == []
            await asyncio.sleep(0.6)
            assert raw.closed == [1], "the idle connection was kept past KEEP_IDLE"
            assert await client.poll(STATE, 0) == STAGE
        finally:
            await client.close()
    assert raw.requests == [1, 2]


def test_bad_base_url_is_refused(token: Path) -> None:
    with pytest.raises(ValueError, match="not an http"):
        CoordinatorClient("coordinator:8080", "n1", token)


def logged(log: Path, text: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while text not in log.read_text():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def aiohttp_mapped(pid: int) -> bool:
    """Whether a process has aiohttp's compiled modules mapped (it imported aiohttp)."""
    return "/aiohttp/" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not list(Path(aiohttp.__file__ or "").parent.glob("*.so")),
                    reason="aiohttp was installed without its C extensions (a pure-Python build): "
                           "/proc/PID/maps cannot tell whether the agent imported it")
async def test_the_agent_never_loads_aiohttp_not_even_to_download(
        node, releases, coordinator: ScriptedCoordinator, agent_factory) -> None:
    agent = agent_factory(coordinator.url)
    agent.start()
    await asyncio.sleep(2.0)  # started and polling
    assert agent.process is not None
    pid = agent.process.pid
    assert not aiohttp_mapped(pid)
    coordinator.instruct(Action.STAGE, make_lease(releases))
    await coordinator.wait_report(AgentPhase.STAGED)  # downloaded and verified
    assert not aiohttp_mapped(pid)
    await coordinator.wait_report(AgentPhase.RESTARTED)  # the coordinator then says finish, then idle
    assert await asyncio.to_thread(logged, agent.log, "finished", 20)
    coordinator.instruct(Action.IDLE, None)
    await asyncio.sleep(1.5)
    assert agent.process.poll() is None and agent.process.pid == pid
    assert not aiohttp_mapped(pid)
    assert agent.journal_phase() is None
    assert coordinator.polls[-1].phase == AgentPhase.IDLE and coordinator.polls[-1].k3s_version is not None
