"""The sandbox's channel server answers like update.k3s.io and moves at run time.

Aspects covered:
- `stable`, `latest` and a minor channel answer 302 with `Location: .../k3s-io/k3s/releases/tag/<version>`;
- an unknown channel answers 404;
- `set_channel` moves a channel and the next request sees the new version;
- the admin endpoint (`PUT /admin/channels/<name>`, text or JSON body; `DELETE`) moves, adds and removes
  channels, and rejects a body that is not a k3s version with 400 without changing anything;
- the channel list is served as JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from sandbox.channels import ChannelServer, default_channels


@pytest.fixture
async def channels() -> AsyncIterator[ChannelServer]:
    server = ChannelServer(default_channels(["v1.24.4+k3s1", "v1.24.6+k3s1", "v1.25.2+k3s1"],
                                            stable="v1.24.6+k3s1"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def location(session: aiohttp.ClientSession, url: str) -> tuple[int, str | None]:
    async with session.get(url, allow_redirects=False) as response:
        return response.status, response.headers.get("Location")


async def test_channels_redirect_to_the_release_page(channels: ChannelServer) -> None:
    async with aiohttp.ClientSession() as session:
        for name, version in [("stable", "v1.24.6+k3s1"), ("latest", "v1.25.2+k3s1"),
                              ("v1.24", "v1.24.6+k3s1"), ("v1.25", "v1.25.2+k3s1")]:
            status, where = await location(session, channels.url(name))
            assert (status, where) == (302, f"https://github.com/k3s-io/k3s/releases/tag/{version}"), name
        assert (await location(session, channels.url("nonesuch")))[0] == 404
    assert channels.requests[-1] == "nonesuch"


async def test_set_channel_moves_it_at_run_time(channels: ChannelServer) -> None:
    async with aiohttp.ClientSession() as session:
        channels.set_channel("stable", "v1.25.2+k3s1")
        _, where = await location(session, channels.url("stable"))
        assert where is not None and where.endswith("/tag/v1.25.2+k3s1")
    with pytest.raises(ValueError, match="not a k3s version"):
        channels.set_channel("stable", "banana")
    assert channels.channels()["stable"] == "v1.25.2+k3s1"


async def test_admin_endpoint_moves_adds_and_removes_channels(channels: ChannelServer) -> None:
    admin = f"{channels.base_url}/admin/channels"
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{admin}/stable", data="v1.25.2+k3s1") as response:
            assert response.status == 200
        async with session.put(f"{admin}/edge", json={"version": "v1.26.0-rc1+k3s1"}) as response:
            assert response.status == 200
        async with session.put(f"{admin}/stable", data="not-a-version") as response:
            assert response.status == 400
            assert "not a k3s version" in await response.text()
        assert (await location(session, channels.url("stable")))[1] == (
            "https://github.com/k3s-io/k3s/releases/tag/v1.25.2+k3s1")
        assert (await location(session, channels.url("edge")))[1] == (
            "https://github.com/k3s-io/k3s/releases/tag/v1.26.0-rc1+k3s1")
        async with session.delete(f"{admin}/edge") as response:
            assert response.status == 204
        assert (await location(session, channels.url("edge")))[0] == 404
        async with session.get(f"{channels.base_url}/v1-release/channels") as response:
            listed = {item["name"]: item["latest"] for item in (await response.json())["data"]}
        assert listed == channels.channels()


def test_thread_mode_serves_and_stops() -> None:
    import urllib.error
    import urllib.request

    server = ChannelServer({"stable": "v1.24.6+k3s1"}, release_base="http://releases.invalid")

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    server.start_in_thread()
    try:
        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as caught:
            opener.open(server.url("stable"), timeout=5)
        assert caught.value.code == 302
        assert caught.value.headers["Location"] == "http://releases.invalid/k3s-io/k3s/releases/tag/v1.24.6+k3s1"
        caught.value.close()
    finally:
        server.stop_in_thread()
