"""Channel resolution and release artifacts, against a real aiohttp server on loopback.

Aspects: a 302 to `.../releases/tag/<version>` resolves (also with `+` escaped); no redirect is followed;
a 200, a redirect without Location, a Location that is not a version, and a closed port raise ChannelError
naming the URL. Artifacts: asset/checksum names per arch (armhf's file is `arm`), `+` as `%2B` under a
configurable base; checksum parsing; the fetcher caches per version and arch and reports 404 / missing
asset / unsupported arch as ArtifactError.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from coordinator.artifacts import (
    ArtifactError,
    ArtifactFetcher,
    artifact_for,
    asset_name,
    asset_url,
    checksum_url,
    parse_checksums,
)
from coordinator.channels import ChannelError, resolve_channel, version_from_location

SUMS = "\n".join([f"{'1' * 64}  k3s", f"{'2' * 64}  k3s-arm64", "garbage line",
                  f"{'3' * 64}  k3s-airgap.tar"])
hits: list[str] = []


async def handler(request: web.Request) -> web.StreamResponse:
    hits.append(request.path)
    name = request.match_info["name"]
    if name == "stable":
        raise web.HTTPFound("https://github.com/k3s-io/k3s/releases/tag/v1.30.1%2Bk3s1")
    if name == "latest":
        raise web.HTTPFound("/target-must-not-be-followed/v1.31.0+k3s1")
    if name == "lying":
        raise web.HTTPFound("https://example.invalid/releases/tag/not-a-version")
    if name == "nolocation":
        return web.Response(status=302)
    return web.Response(text="a page, not a redirect")


async def releases(request: web.Request) -> web.StreamResponse:
    hits.append(request.raw_path)
    if request.match_info["tag"] == "v1.30.1+k3s1" and request.match_info["file"] == "sha256sum-amd64.txt":
        return web.Response(text=SUMS)
    if request.match_info["file"] == "sha256sum-arm.txt":
        return web.Response(text=SUMS)
    return web.Response(status=404)


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/channels/{name}", handler)
    app.router.add_get("/download/{tag}/{file}", releases)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hits.clear()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_channel_redirect_names_the_version(server: str) -> None:
    async with aiohttp.ClientSession() as s:
        assert await resolve_channel(s, f"{server}/channels/stable", 5) == "v1.30.1+k3s1"
        assert await resolve_channel(s, f"{server}/channels/latest", 5) == "v1.31.0+k3s1"
    assert not any(h.startswith("/target") for h in hits), "redirects must not be followed"


@pytest.mark.parametrize(("name", "fragment"), [("lying", "does not end in a k3s version"),
                                                ("nolocation", "without a Location"),
                                                ("page", "answered 200")])
async def test_bad_channel_answers(server: str, name: str, fragment: str) -> None:
    url = f"{server}/channels/{name}"
    async with aiohttp.ClientSession() as s:
        with pytest.raises(ChannelError, match=fragment) as err:
            await resolve_channel(s, url, 5)
    assert url in str(err.value)


async def test_unreachable_channel() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with aiohttp.ClientSession() as s:
        with pytest.raises(ChannelError, match=str(port)):
            await resolve_channel(s, f"http://127.0.0.1:{port}/channels/stable", 2)


def test_version_from_location_pure() -> None:
    assert version_from_location("u", "https://x/releases/tag/v1.29.3+k3s1/") == "v1.29.3+k3s1"
    with pytest.raises(ChannelError):
        version_from_location("u", "https://x/releases/tag/")


@pytest.mark.parametrize(("arch", "asset", "sums"), [("amd64", "k3s", "sha256sum-amd64.txt"),
                                                      ("arm64", "k3s-arm64", "sha256sum-arm64.txt"),
                                                      ("arm", "k3s-armhf", "sha256sum-arm.txt"),
                                                      ("armhf", "k3s-armhf", "sha256sum-arm.txt"),
                                                      ("s390x", "k3s-s390x", "sha256sum-s390x.txt")])
def test_names_and_urls(arch: str, asset: str, sums: str) -> None:
    assert asset_name(arch) == asset
    assert asset_url("https://b/dl/", "v1.30.1+k3s1", arch) == f"https://b/dl/v1.30.1%2Bk3s1/{asset}"
    assert checksum_url("https://b/dl", "v1.30.1+k3s1", arch) == f"https://b/dl/v1.30.1%2Bk3s1/{sums}"


def test_parse_checksums() -> None:
    assert parse_checksums(SUMS) == {"k3s": "1" * 64, "k3s-arm64": "2" * 64, "k3s-airgap.tar": "3" * 64}
    assert parse_checksums(f"{'A' * 64} *k3s\n{'a' * 64}  k3s\n") == {"k3s": "a" * 64}, "the same sum twice"
    with pytest.raises(ArtifactError, match="lists k3s twice with different sums"):
        parse_checksums(f"{'a' * 64}  k3s\n{'b' * 64}  k3s\n")
    with pytest.raises(ArtifactError, match=r"^https://b/v1\.30\.1%2Bk3s1/sha256sum-amd64\.txt: .* twice"):
        artifact_for("https://b", "v1.30.1+k3s1", "amd64", f"{'a' * 64}  k3s\n{'b' * 64}  k3s\n")


async def test_fetcher_caches_and_reports_errors(server: str) -> None:
    async with aiohttp.ClientSession() as s:
        f = ArtifactFetcher(s, f"{server}/download", timeout=5)
        art = await f.get("v1.30.1+k3s1", "amd64")
        assert art.sha256 == "1" * 64 and art.name == "k3s" and art.url.endswith("/v1.30.1%2Bk3s1/k3s")
        await f.get("v1.30.1+k3s1", "amd64")
        assert hits.count("/download/v1.30.1%2Bk3s1/sha256sum-amd64.txt") == 1
        with pytest.raises(ArtifactError, match="404"):
            await f.get("v9.9.9+k3s1", "amd64")
        with pytest.raises(ArtifactError, match="no checksum for k3s-armhf"):
            await f.get("v1.30.1+k3s1", "arm")
        with pytest.raises(ArtifactError, match="unsupported architecture"):
            await f.get("v1.30.1+k3s1", "riscv64")
