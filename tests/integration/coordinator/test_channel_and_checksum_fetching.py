"""The resolver's scheduling against the sandbox's channel and release servers (real loopback HTTP).

Aspects covered:
- a channel resolves to the version its 302 names; moving it is noticed on the next pass and wakes the
  runtime, an unchanged answer does not;
- an unknown channel (404) and an unreachable server each keep an error naming the URL;
- artifacts come from the release's checksum file (real SHA-256 of the binary), are kept once fetched,
  and an unknown version keeps an error while being retried on demand.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from coordinator.resolver import Resolver
from sandbox.channels import ChannelServer
from sandbox.releases import ReleaseServer
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
