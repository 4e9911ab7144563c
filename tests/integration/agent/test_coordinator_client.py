"""The agent's coordinator client against a real aiohttp server on loopback (what the coordinator runs).

Aspects: a poll posts the state as JSON with the bearer token (re-read from its file), the `wait` query
and a base-URL path prefix, and returns the validated instruction, also from a chunked answer; 5xx, 401
and 429 are temporary (`CoordinatorUnavailable`), other 4xx permanent (`Rejected`); a refused connection,
an answer that never comes, a truncated or oversized answer, an answer that is not an `Instruction` and a
token file holding several lines are all temporary, and so are a token file and a CA file that cannot be
read (the client is made all the same: nothing is read before the first request, and the CA file is read
again until it loads); a cancelled long-poll returns at once and closes its connection; the agent process
never imports aiohttp, idle or downloading.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from agent.client import MAX_ANSWER_BYTES, CoordinatorClient, CoordinatorUnavailable, Rejected
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


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok-1\n")
    return path


async def test_poll_posts_state_with_token_and_wait(server: Server, token: Path) -> None:
    client = CoordinatorClient(server.url + "/prefix/", "n1", token, timeout=2)
    assert await client.poll(STATE, 0.5) == STAGE
    await asyncio.to_thread(token.write_text, "tok-2")
    await client.poll(STATE, 0)
    (path, query, headers, body), second = server.requests
    assert path == "/prefix/v1/agents/n1/poll" and query == "wait=0.5"
    assert headers["Authorization"] == "Bearer tok-1" and headers["Content-Type"] == "application/json"
    assert AgentState.model_validate_json(body) == STATE
    assert second[1] == "wait=0" and second[2]["Authorization"] == "Bearer tok-2"
    await client.close()


async def test_chunked_answer_is_parsed(server: Server, token: Path) -> None:
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
    assert await CoordinatorClient(server.url, "n1", token).poll(STATE, 0) == STAGE


@pytest.mark.parametrize(("status", "error"), [(500, CoordinatorUnavailable), (503, CoordinatorUnavailable),
                                               (401, CoordinatorUnavailable), (429, CoordinatorUnavailable),
                                               (400, Rejected), (403, Rejected), (404, Rejected)])
async def test_status_classes(server: Server, token: Path, status: int, error: type[Exception]) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "no", "status": status}, status=status)

    server.handler = answer
    with pytest.raises(error, match=f"answered {status}"):
        await CoordinatorClient(server.url, "n1", token).poll(STATE, 0)


@pytest.mark.parametrize("answer", [b'{"action": "explode"}', b"not json", b'{"action": "idle", "x": 1}'])
async def test_an_answer_that_is_no_instruction_is_temporary(server: Server, token: Path,
                                                             answer: bytes) -> None:
    async def bad(request: web.Request) -> web.StreamResponse:
        return web.Response(body=answer, content_type="application/json")

    server.handler = bad
    with pytest.raises(CoordinatorUnavailable, match="bad instruction"):
        await CoordinatorClient(server.url, "n1", token).poll(STATE, 0)


async def test_oversized_answer_is_refused(server: Server, token: Path) -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b" " * (MAX_ANSWER_BYTES + 1), content_type="application/json")

    server.handler = huge
    with pytest.raises(CoordinatorUnavailable, match="larger than"):
        await CoordinatorClient(server.url, "n1", token).poll(STATE, 0)


async def test_truncated_answer_is_temporary(token: Path) -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"action\":")
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(half, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        with pytest.raises(CoordinatorUnavailable, match="failed"):
            await CoordinatorClient(f"http://127.0.0.1:{port}", "n1", token).poll(STATE, 0)
    finally:
        raw.close()
        await raw.wait_closed()


async def test_refused_connection_and_silence_are_temporary(server: Server, token: Path) -> None:
    assert server.runner is not None
    port = server.runner.addresses[0][1]
    await server.runner.cleanup()
    with pytest.raises(CoordinatorUnavailable, match="failed"):
        await CoordinatorClient(f"http://127.0.0.1:{port}", "n1", token).poll(STATE, 0)
    server.runner = None
    await server.start()

    async def silent(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    server.handler = silent
    started = time.monotonic()
    with pytest.raises(CoordinatorUnavailable, match=r"no answer within 0\.5 s"):
        await CoordinatorClient(server.url, "n1", token, timeout=0.3).poll(STATE, 0.2)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("content", ["tok\r\nX-Injected: 1", "tok\u20ac"])
async def test_a_token_that_is_no_single_line_ascii_is_not_sent(
    server: Server, token: Path, content: str
) -> None:
    await asyncio.to_thread(token.write_text, content)  # (a non-latin-1 one ended the agent's poll loop)
    with pytest.raises(CoordinatorUnavailable, match="holds no single-line ASCII token"):
        await CoordinatorClient(server.url, "n1", token).poll(STATE, 0)
    assert server.requests == []


async def test_an_unreadable_token_file_is_temporary(server: Server, tmp_path: Path) -> None:
    token = tmp_path / "tokens"
    token.mkdir()  # the projected volume's directory given in place of its file
    client = CoordinatorClient(server.url, "n1", token)
    cause = rf"token file {re.escape(str(token))} cannot be read: .*Is a directory"
    with pytest.raises(CoordinatorUnavailable, match=cause):
        await client.poll(STATE, 0)
    assert server.requests == []


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
async def test_a_ca_file_that_does_not_load_is_temporary(tmp_path: Path, token: Path, content: str | None,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_text(content)
    client = CoordinatorClient("https://127.0.0.1:9", "n1", token, ca_file=ca)  # made all the same
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


async def test_cancelled_long_poll_returns_at_once(server: Server, token: Path) -> None:
    held = asyncio.Event()

    async def hold(request: web.Request) -> web.StreamResponse:
        held.set()
        await asyncio.sleep(30)
        raise AssertionError("not reached")

    server.handler = hold
    task = asyncio.create_task(CoordinatorClient(server.url, "n1", token).poll(STATE, 30))
    await asyncio.wait_for(held.wait(), 5)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 1


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
