"""The resolver's HTTP side against the sandbox's channel and release servers (real loopback HTTP).

Aspects covered:
- a channel is fetched without following the redirect; the 302's Location is kept;
- moving the channel is noticed on the next pass and wakes the runtime; an unchanged answer does not;
- an unknown channel (404) and an unreachable server both yield a message naming the URL and the cause;
- checksum files are fetched from `<base>/<tag>/sha256sum-<arch>.txt` (`+` escaped, armhf -> arm) and
  hold the binary's real SHA-256.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from coordinator.resolver import Resolver, channel_error, checksum_url
from sandbox.channels import ChannelServer
from sandbox.releases import ReleaseServer

V1, V2 = "v1.30.4+k3s1", "v1.30.5+k3s1"


@pytest.fixture
async def channels() -> AsyncIterator[ChannelServer]:
    server = ChannelServer({"stable": V1})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_channel_moves_are_noticed_and_errors_are_named(channels: ChannelServer) -> None:
    wakes: list[int] = []
    dead = f"http://127.0.0.1:{free_port()}/v1-release/channels/stable"
    r = Resolver("http://unused", interval=3600, timeout=2, on_change=lambda: wakes.append(1))
    stable, missing = channels.url("stable"), channels.url("nope")
    r.want({stable, missing, dead})
    try:
        await r.resolve_all()
        assert r.channels[stable].status == 302
        assert r.channels[stable].location == channels.location(V1)
        assert channel_error(r.channels[stable]) is None
        assert "answered 404" in (channel_error(r.channels[missing]) or "")
        assert dead in (channel_error(r.channels[dead]) or "")
        assert len(wakes) == 1
        await r.resolve_all()
        assert len(wakes) == 1, "an unchanged answer does not wake the runtime"
        channels.set_channel("stable", V2)
        await r.resolve_all()
        assert len(wakes) == 2 and r.channels[stable].location == channels.location(V2)
    finally:
        await r.close()


async def test_checksums_come_from_the_release(tmp_path: Path) -> None:
    releases = ReleaseServer([V1], tmp_path / "rel")
    await releases.start()
    done = asyncio.Event()
    r = Resolver(releases.base_url, interval=3600, timeout=5, on_change=done.set)
    task = asyncio.create_task(r.run())
    try:
        assert checksum_url("http://x/dl", V1, "armhf") == "http://x/dl/v1.30.4%2Bk3s1/sha256sum-arm.txt"
        r.want_checksums(V1, "amd64")
        await asyncio.wait_for(done.wait(), timeout=10)
        got = r.checksums[(V1, "amd64")]
        assert got.status == 200, got
        assert f"{releases.sha256(V1, 'k3s')}  k3s" in got.body
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await releases.stop()
