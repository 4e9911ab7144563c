"""`agent.download` against a real HTTP server: what its writer thread must keep true.

Aspects: a large artifact arriving in uneven pieces lands byte for byte and verified, and the kernel is
asked to start its writeback piece by piece over contiguous ranges (so the final fsync has little left);
a download cancelled mid-stream leaves on disk exactly the bytes received, with the writer thread gone,
and the next call resumes from there with `Range`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from agent import download as download_module
from agent.download import download

MIB = 1024 * 1024


class Artifact:
    """Serves `data` at /k3s in uneven pieces; honours `Range`; can stall after `stall_after` bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[str | None] = []
        self.stall_after: int | None = None
        self.stalled = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Range")
        self.ranges.append(header)
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(self.data) - start
        await response.prepare(request)
        sizes = [7 * 1024, 300 * 1024, 1 * MIB + 3, 64 * 1024 + 1]  # not a multiple of the agent's chunk
        at, i = start, 0
        while at < len(self.data):
            if self.stall_after is not None and at >= self.stall_after:
                self.stalled.set()
                await asyncio.sleep(3600)
            end = min(len(self.data), at + sizes[i % len(sizes)])
            if self.stall_after is not None and at < self.stall_after < end:
                end = self.stall_after
            await response.write(self.data[at:end])
            at, i = end, i + 1
        await response.write_eof()
        return response


@pytest.fixture
async def served() -> AsyncIterator[tuple[Artifact, str]]:
    artifact = Artifact(os.urandom(40 * MIB + 12345))
    app = web.Application()
    app.router.add_get("/k3s", artifact.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield artifact, f"http://127.0.0.1:{port}/k3s"
    finally:
        await runner.cleanup()


def sink_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("download-sink")]


async def test_a_large_artifact_lands_verified_with_writeback_started_piece_by_piece(
    served: tuple[Artifact, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact, url = served
    advised: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def recording(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append((offset, length, advice))
        real(fd, offset, length, advice)

    monkeypatch.setattr(download_module.os, "posix_fadvise", recording)
    part = tmp_path / "k3s.part"
    await download(url, hashlib.sha256(artifact.data).hexdigest(), part)

    assert part.read_bytes() == artifact.data
    assert len(advised) == len(artifact.data) // download_module._WRITEBACK_EVERY  # 40 MiB: twice
    assert all(advice == os.POSIX_FADV_DONTNEED for _, _, advice in advised)
    ends = 0
    for offset, length, _ in advised:  # contiguous, from the start, each at least the interval
        assert offset == ends and length >= download_module._WRITEBACK_EVERY
        ends = offset + length
    assert ends <= len(artifact.data)
    assert sink_threads() == []


async def test_a_cancelled_download_keeps_what_it_received_and_resumes(
    served: tuple[Artifact, str], tmp_path: Path
) -> None:
    artifact, url = served
    artifact.stall_after = 10 * MIB  # a multiple of the chunk the agent reads: every byte sent is handed over
    part = tmp_path / "k3s.part"
    digest = hashlib.sha256(artifact.data).hexdigest()
    task = asyncio.create_task(download(url, digest, part))
    await asyncio.wait_for(artifact.stalled.wait(), 30)
    while not part.exists() or part.stat().st_size < artifact.stall_after:  # the last pieces reach the disk
        await asyncio.sleep(0.01)
        assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert part.read_bytes() == artifact.data[: artifact.stall_after]
    assert sink_threads() == []

    artifact.stall_after = None
    await download(url, digest, part)
    assert part.read_bytes() == artifact.data
    assert artifact.ranges == [None, f"bytes={10 * MIB}-"]
