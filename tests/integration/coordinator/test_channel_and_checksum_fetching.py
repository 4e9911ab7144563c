"""The resolver's scheduling against the sandbox's channel and release servers (real loopback HTTP).

Aspects covered:
- a channel resolves to the version its 302 names; moving it is noticed on the next pass and wakes the
  runtime, an unchanged answer does not;
- an unknown channel (404) and an unreachable server each keep an error naming the URL;
- artifacts come from the release's checksum file (real SHA-256 of the binary), are kept once fetched,
  and an unknown version keeps an error while being retried on demand;
- both go through the proxy HTTP_PROXY names, with its credentials, unless NO_PROXY exempts the servers;
  a proxy that refuses them, or one that cannot be used, is named in the errors; an https channel goes
  through a CONNECT tunnel, the proxy's credentials with the CONNECT; a checksum file's redirects are
  followed hop by hop, each with its own proxy decision and credentials; https -> http and endless
  redirects are refused.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from coordinator.artifacts import ArtifactError, ArtifactFetcher
from coordinator.channels import resolve_channel
from coordinator.resolver import Resolver
from sandbox.channels import ChannelServer
from sandbox.releases import ReleaseServer
from tests.integration.forward_proxy import ForwardProxy
from wire.messages import Artifact

V1, V2 = "v1.30.4+k3s1", "v1.30.5+k3s1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_channel_moves_are_noticed_and_errors_are_named() -> None:
    channels = ChannelServer({"stable": V1})
    await channels.start()
    wakes: list[int] = []
    dead = f"http://127.0.0.1:{free_port()}/v1-release/channels/stable"
    r = Resolver("http://unused", interval=3600, timeout=2, on_change=lambda: wakes.append(1))
    stable, missing = channels.url("stable"), channels.url("nope")
    r.want({stable, missing, dead})
    try:
        await r.resolve_all()
        assert (r.channels[stable].version, r.channels[stable].error) == (V1, None)
        assert "404" in (r.channels[missing].error or "") and missing in (r.channels[missing].error or "")
        assert dead in (r.channels[dead].error or "")
        assert len(wakes) == 1
        await r.resolve_all()
        assert len(wakes) == 1, "an unchanged answer does not wake the runtime"
        channels.set_channel("stable", V2)
        await r.resolve_all()
        assert len(wakes) == 2 and r.channels[stable].version == V2
    finally:
        await r.close()
        await channels.stop()


async def test_artifacts_come_from_the_release(tmp_path: Path) -> None:
    releases = ReleaseServer([V1], tmp_path / "rel")
    await asyncio.to_thread(releases.start_in_thread)
    changed = asyncio.Event()
    r = Resolver(releases.base_url, interval=3600, timeout=5, on_change=changed.set)
    try:
        r.want_artifact(V1, "amd64")
        r.want_artifact("v9.9.9+k3s1", "amd64")
        async with asyncio.timeout(20):
            while len(r.artifacts) < 2:
                await changed.wait()
                changed.clear()
        art = r.artifacts[(V1, "amd64")]
        assert isinstance(art, Artifact) and art.sha256 == releases.sha256(V1, "k3s") and art.name == "k3s"
        assert art.url == f"{releases.base_url}/v1.30.4%2Bk3s1/k3s"
        missing = r.artifacts[("v9.9.9+k3s1", "amd64")]
        assert isinstance(missing, str) and "v9.9.9%2Bk3s1" in missing
    finally:
        await r.close()
        await asyncio.to_thread(releases.stop_in_thread)


async def test_channels_and_checksums_go_through_the_proxy_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    channels = ChannelServer({"stable": V1})
    await channels.start()
    releases = ReleaseServer([V1], tmp_path / "rel")
    await asyncio.to_thread(releases.start_in_thread)
    proxy = ForwardProxy(credentials="coordinator:pw")
    port = (await proxy.start()).rsplit(":", 1)[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://coordinator:pw@127.0.0.1:{port}")
    stable, checksums = channels.url("stable"), f"{releases.base_url}/v1.30.4%2Bk3s1/sha256sum-amd64.txt"

    async def resolve() -> tuple[str | None, Artifact | str]:
        changed = asyncio.Event()
        r = Resolver(releases.base_url, interval=3600, timeout=5, on_change=changed.set)
        try:
            r.want({stable})
            await r.resolve_all()
            r.want_artifact(V1, "amd64")
            async with asyncio.timeout(20):
                while (V1, "amd64") not in r.artifacts:
                    await changed.wait()
                    changed.clear()
            return r.channels[stable].version or r.channels[stable].error, r.artifacts[(V1, "amd64")]
        finally:
            await r.close()

    try:
        version, art = await resolve()
        assert version == V1 and isinstance(art, Artifact) and art.sha256 == releases.sha256(V1, "k3s")
        assert sorted(s.target for s in proxy.seen) == sorted([stable, checksums])
        assert {s.authorization for s in proxy.seen} == {proxy.expected}

        proxy.seen.clear()
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert (await resolve())[0] == V1 and proxy.seen == [], "exempt: straight to the servers"

        monkeypatch.delenv("NO_PROXY")
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")  # no credentials: 407
        error, missing = await resolve()
        assert error == (f"channel {stable} (through proxy http://127.0.0.1:{port}): answered 407, "
                         "expected a redirect to a release")
        assert missing == f"GET {checksums} (through proxy http://127.0.0.1:{port}): answered 407"

        monkeypatch.setenv("HTTP_PROXY", "socks5://127.0.0.1:1080")
        error, missing = await resolve()
        assert "HTTP_PROXY='socks5://127.0.0.1:1080': only http:// proxies" in str(error)
        assert "only http:// proxies" in str(missing)
    finally:
        await proxy.stop()
        await asyncio.to_thread(releases.stop_in_thread)
        await channels.stop()


async def test_an_https_channel_goes_through_a_tunnel_with_the_proxys_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server_tls, client_tls = tls_for_localhost()
    app = web.Application()

    async def stable(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"https://github.com/k3s-io/k3s/releases/tag/{V1}")

    app.router.add_get("/v1-release/channels/stable", stable)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls).start()
    url = f"https://localhost:{runner.addresses[0][1]}/v1-release/channels/stable"
    proxy = ForwardProxy(credentials="coordinator:pw")
    port = (await proxy.start()).rsplit(":", 1)[1]
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setenv("https_proxy", f"coordinator:pw@127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:
            assert await resolve_channel(session, url, 5) == V1
        assert [(s.method, s.authorization) for s in proxy.seen] == [("CONNECT", proxy.expected)]
    finally:
        await proxy.stop()
        await runner.cleanup()


def tls_for_localhost() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) TLS contexts: a throwaway CA's certificate for localhost, and trust in that CA."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    return server_tls, client_tls


async def _serve(app: web.Application, tls: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
    return runner, runner.addresses[0][1]


async def test_checksum_redirects_are_followed_hop_by_hop_each_with_its_own_proxy_decision(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mirror that sends the coordinator on to its storage: NO_PROXY and the proxy's credentials hold
    for each hop (aiohttp's own redirects keep the first hop's proxy, and drop its credentials)."""
    sums = f"{'7' * 64}  k3s\n"
    storage, mirror = web.Application(), web.Application()

    async def stored(request: web.Request) -> web.Response:
        return web.Response(text=sums)

    storage.router.add_get("/objects/sums", stored)
    storage_runner, storage_port = await _serve(storage)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{storage_port}/objects/sums")

    mirror.router.add_get("/dl/{tag}/{file}", moved)
    mirror_runner, mirror_port = await _serve(mirror)
    proxy = ForwardProxy(credentials="coordinator:pw")
    port = (await proxy.start()).rsplit(":", 1)[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://coordinator:pw@127.0.0.1:{port}")
    first = f"http://localhost:{mirror_port}/dl/v1.30.4%2Bk3s1/sha256sum-amd64.txt"
    second = f"http://127.0.0.1:{storage_port}/objects/sums"
    try:
        async with aiohttp.ClientSession() as session:
            for exempt, proxied in (("127.0.0.1", first), ("localhost", second)):
                monkeypatch.setenv("NO_PROXY", exempt)
                proxy.seen.clear()
                fetcher = ArtifactFetcher(session, f"http://localhost:{mirror_port}/dl", timeout=5)
                art = await fetcher.get(V1, "amd64")
                assert art.sha256 == "7" * 64
                assert [(s.target, s.authorization) for s in proxy.seen] == [(proxied, proxy.expected)]
    finally:
        await proxy.stop()
        await mirror_runner.cleanup()
        await storage_runner.cleanup()


async def test_a_checksum_redirect_from_https_to_http_is_refused() -> None:
    server_tls, client_tls = tls_for_localhost()
    mirror = web.Application()

    async def downgrade(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://localhost:1/objects/sums")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.url))

    mirror.router.add_get("/dl/{tag}/sha256sum-amd64.txt", downgrade)
    mirror.router.add_get("/dl/{tag}/sha256sum-arm64.txt", loop)
    runner, port = await _serve(mirror, server_tls)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_tls)) as session:
            fetcher = ArtifactFetcher(session, f"https://localhost:{port}/dl", timeout=5)
            with pytest.raises(ArtifactError, match=r"redirected to http://localhost:1/objects/sums, not"):
                await fetcher.get(V1, "amd64")
            with pytest.raises(ArtifactError, match="more than 10 redirects"):
                await fetcher.get(V1, "arm64")
    finally:
        await runner.cleanup()
