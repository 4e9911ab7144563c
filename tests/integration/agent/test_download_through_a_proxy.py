"""`agent.download` through the proxy the environment names (`wire.proxies`), against a real forward proxy.

Aspects: an http URL is asked of the proxy as an absolute URL, an https one through a CONNECT tunnel with
the release server's certificate still checked (TLS end to end: a certificate for another name fails even
through the proxy); NO_PROXY sends a URL, and each redirect anew, around the proxy; credentials in the
proxy URL are sent, and a proxy that refuses the agent is named in the error; an https:// proxy is refused
without a connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from agent import download as download_module
from agent.download import DownloadError, download
from tests.integration.forward_proxy import ForwardProxy, Seen

DATA = os.urandom(3 * 1024 * 1024 + 17)
SHA = hashlib.sha256(DATA).hexdigest()
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_outside(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    yield


async def _site(app: web.Application, tls: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _release_app(saw: list[str | None] | None = None) -> web.Application:
    """Serves DATA at /k3s; records each request's Proxy-Authorization header in `saw`."""
    app = web.Application()

    async def artifact(request: web.Request) -> web.Response:
        if saw is not None:
            saw.append(request.headers.get("Proxy-Authorization"))
        return web.Response(body=DATA)

    app.router.add_get("/k3s", artifact)
    return app


@pytest.fixture
async def origin() -> AsyncIterator[int]:
    async for port in _site(_release_app()):
        yield port


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[ForwardProxy, str]]:
    server = ForwardProxy()
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


async def test_an_http_url_is_asked_of_the_proxy(
    origin: int, proxy: tuple[ForwardProxy, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # not for http URLs
    await download(f"http://localhost:{origin}/k3s", SHA, tmp_path / "k3s.part", attempts=1)
    assert (tmp_path / "k3s.part").read_bytes() == DATA
    assert server.seen == [Seen("GET", f"http://localhost:{origin}/k3s", None)]


async def test_an_https_url_goes_through_a_tunnel_and_its_certificate_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the proxy's credentials on the CONNECT only: the release server never sees them."""
    server = ForwardProxy(credentials="agent:pw")
    url = await server.start()
    ca = trustme.CA()
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    servers = []
    for name in ("localhost", "release.example"):
        servers.append(ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
        ca.issue_cert(name).configure_cert(servers[-1])
    monkeypatch.setattr(download_module.ssl, "create_default_context", lambda: client_tls)  # (the module's)
    monkeypatch.setenv("https_proxy", url.replace("http://", "http://agent:pw@"))
    trials = (("localhost", True), ("release.example", False))
    origin_saw: list[str | None] = []
    try:
        for (name, ok), server_tls in zip(trials, servers, strict=True):
            async for port in _site(_release_app(origin_saw), server_tls):
                server.seen.clear()
                part = tmp_path / f"{name}.part"
                if ok:
                    await download(f"https://localhost:{port}/k3s", SHA, part, attempts=1)
                    assert part.read_bytes() == DATA
                else:  # the proxy cannot stand in for the release server: its name is checked in the tunnel
                    refused = f"through proxy {url}.*CERTIFICATE_VERIFY_FAILED"
                    with pytest.raises(DownloadError, match=refused):
                        await download(f"https://localhost:{port}/k3s", SHA, part, attempts=1)
                assert server.seen == [Seen("CONNECT", f"localhost:{port}", server.expected)]
        assert origin_saw == [None], "the proxy's credentials never reach the release server"
    finally:
        await server.stop()


async def test_no_proxy_sends_a_url_and_each_redirect_around_the_proxy(
    origin: int, proxy: tuple[ForwardProxy, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, url = proxy
    monkeypatch.setenv("HTTP_PROXY", url)
    monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.0/8")
    await download(f"http://127.0.0.1:{origin}/k3s", SHA, tmp_path / "direct.part", attempts=1)
    assert server.seen == [], "exempt by its CIDR range"

    app = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{origin}/k3s")

    app.router.add_get("/k3s", moved)
    async for port in _site(app):
        await download(f"http://localhost:{port}/k3s", SHA, tmp_path / "redirected.part", attempts=1)
    assert (tmp_path / "redirected.part").read_bytes() == DATA
    assert server.seen == [Seen("GET", f"http://localhost:{port}/k3s", None)], "the redirect went around it"


async def test_credentials_are_sent_and_a_refusing_proxy_is_named(
    origin: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = ForwardProxy(credentials="agent:s3cr@t")
    url = await server.start()
    try:
        port = url.rsplit(":", 1)[1]
        monkeypatch.setenv("HTTP_PROXY", f"http://agent:s3cr%40t@127.0.0.1:{port}")
        await download(f"http://localhost:{origin}/k3s", SHA, tmp_path / "k3s.part", attempts=1)
        assert (tmp_path / "k3s.part").read_bytes() == DATA
        assert server.seen == [Seen("GET", f"http://localhost:{origin}/k3s", server.expected)]

        monkeypatch.setenv("HTTP_PROXY", url)
        refused = re.escape(f"localhost:{origin}/k3s through proxy {url} answered 407")
        with pytest.raises(DownloadError, match=refused):
            await download(f"http://localhost:{origin}/k3s", SHA, tmp_path / "refused.part", attempts=1)
    finally:
        await server.stop()


async def test_a_proxy_it_cannot_use_is_an_error_naming_the_variable(
    origin: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.example:3128")
    unusable = re.escape("HTTP_PROXY='https://proxy.example:3128': only http:// proxies")
    with pytest.raises(DownloadError, match=unusable):
        await download(f"http://localhost:{origin}/k3s", SHA, tmp_path / "k3s.part", attempts=1)


async def test_an_ipv6_release_host_through_a_proxy_is_refused_with_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with pytest.raises(DownloadError, match=r"an IPv6 address as the release host is not supported"):
        await download("https://[fd00::7]/k3s", SHA, tmp_path / "k3s.part", attempts=1)


async def test_a_cancel_is_not_held_up_by_a_proxy_that_never_answers_the_connect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    connected = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        await reader.read()  # until the agent goes away
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        task = asyncio.create_task(download("https://release.example/k3s", SHA, tmp_path / "k3s.part",
                                            attempts=1, read_timeout=20))
        async with asyncio.timeout(10):
            await connected.wait()
        await asyncio.sleep(0.1)  # the CONNECT is sent: the agent waits for its answer
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 5, "the cancel waited for the proxy's answer"
    finally:
        server.close()
        await server.wait_closed()
