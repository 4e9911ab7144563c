"""`agent.download` against a real HTTP server: what its writer thread must keep true.

Aspects: a large artifact arriving in uneven pieces lands byte for byte and verified, and the kernel is
asked to start its writeback piece by piece over contiguous ranges (so the final fsync has little left);
a download cancelled mid-stream leaves on disk exactly the bytes received, with the writer thread gone,
and the next call resumes from there with `Range`, over https too (the file never holds TLS records);
a slow body reaches the file while it arrives;
redirects are followed (relative ones too, the `Range` kept), and endless ones are an error; a 5xx answer
is tried again and a 4xx is not; a write that the kernel takes only in part is finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from agent import download as download_module
from agent.download import DownloadError, download

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


async def serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_slow_body_reaches_the_file_while_it_arrives(tmp_path: Path) -> None:
    data = os.urandom(4096)
    done = asyncio.Event()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(data)
        await response.prepare(request)
        for at in range(0, len(data), 128):  # 32 pieces, 1.6 s in all
            await response.write(data[at:at + 128])
            await asyncio.sleep(0.05)
        await done.wait()
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/k3s", trickle)
    part = tmp_path / "k3s.part"
    async for base in serve(app):
        task = asyncio.create_task(download(f"{base}/k3s", hashlib.sha256(data).hexdigest(), part))
        await asyncio.sleep(1.0)
        landed = part.stat().st_size if part.exists() else 0
        assert 0 < landed < len(data), "bytes received 0.2 s ago or more are in the file"
        assert part.read_bytes() == data[:landed]
        done.set()
        await asyncio.wait_for(task, 10)
    assert part.read_bytes() == data


async def test_redirects_are_followed_with_the_range(tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 17)
    seen: list[tuple[str, str | None]] = []

    async def moved(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("Range")))
        raise web.HTTPFound("../../storage/k3s-blob")  # relative, as some servers answer

    async def blob(request: web.Request) -> web.StreamResponse:
        header = request.headers.get("Range")
        seen.append((request.path, header))
        start = int(header.removeprefix("bytes=").rstrip("-")) if header else 0
        return web.Response(body=data[start:], status=206 if start else 200)

    app = web.Application()
    app.router.add_get("/download/v1/k3s", moved)
    app.router.add_get("/storage/k3s-blob", blob)
    part = tmp_path / "k3s.part"
    part.write_bytes(data[:MIB + 5])  # left by an earlier attempt
    async for base in serve(app):
        await download(f"{base}/download/v1/k3s", hashlib.sha256(data).hexdigest(), part)
    assert part.read_bytes() == data
    assert seen == [("/download/v1/k3s", f"bytes={MIB + 5}-"), ("/storage/k3s-blob", f"bytes={MIB + 5}-")]


async def test_endless_redirects_are_an_error(tmp_path: Path) -> None:
    hops = 0

    async def again(request: web.Request) -> web.StreamResponse:
        nonlocal hops
        hops += 1
        raise web.HTTPFound(f"/k3s/{hops}")

    app = web.Application()
    app.router.add_get("/k3s", again)
    app.router.add_get("/k3s/{n}", again)
    async for base in serve(app):
        with pytest.raises(DownloadError, match="more than 10 redirects"):
            await download(f"{base}/k3s", "0" * 64, tmp_path / "k3s.part", attempts=1)
    assert hops == 11


async def test_a_5xx_is_tried_again_and_a_4xx_is_not(tmp_path: Path) -> None:
    data = os.urandom(1000)
    answers = [503, 502]
    asked: list[str] = []

    async def flaky(request: web.Request) -> web.StreamResponse:
        asked.append(request.path)
        if request.path == "/missing":
            raise web.HTTPNotFound(text="no such release asset")
        if answers:
            return web.Response(status=answers.pop(0), text="busy")
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/k3s", flaky)
    app.router.add_get("/missing", flaky)
    async for base in serve(app):
        await download(f"{base}/k3s", hashlib.sha256(data).hexdigest(), tmp_path / "k3s.part", backoff=0.01)
        with pytest.raises(DownloadError, match="answered 404: no such release asset"):
            await download(f"{base}/missing", "0" * 64, tmp_path / "other.part", backoff=0.01)
    assert (tmp_path / "k3s.part").read_bytes() == data
    assert asked == ["/k3s"] * 3 + ["/missing"]


def test_a_short_write_is_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(download_module.os, "write", lambda fd, data: real(fd, bytes(data)[:1000]))
    data = os.urandom(10_000)
    with open(tmp_path / "out", "wb", buffering=0) as handle:
        download_module._write_all(handle.fileno(), memoryview(data))
    assert (tmp_path / "out").read_bytes() == data


async def test_a_cancelled_https_download_keeps_only_the_body(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while TLS records are still queued on its socket: the file holds a prefix of the body,
    never the records' raw bytes."""
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    monkeypatch.setattr(download_module.ssl, "create_default_context", lambda: client_tls)
    block, blocks = os.urandom(MIB), 512
    listener = socket.create_server(("127.0.0.1", 0))
    handlers: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:  # sends as fast as the socket takes it, until the client goes
        with conn:
            conn.settimeout(10)
            try:
                with server_tls.wrap_socket(conn, server_side=True) as tls:
                    request = b""
                    while b"\r\n\r\n" not in request:
                        request += tls.recv(4096)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(block) * blocks))
                    for _ in range(blocks):
                        tls.sendall(block)
            except OSError:
                pass  # the client went away: what the test does

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            handlers.append(threading.Thread(target=handle, args=(conn,)))
            handlers[-1].start()

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    url = f"https://localhost:{listener.getsockname()[1]}/k3s"
    try:
        for trial in range(8):
            part = tmp_path / f"k3s-{trial}.part"
            task = asyncio.create_task(download(url, "0" * 64, part))
            while not part.exists() or part.stat().st_size < (trial + 1) * MIB:
                await asyncio.sleep(0.001)
                assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            kept = part.read_bytes()
            assert len(kept) < len(block) * blocks
            assert kept == (block * (len(kept) // MIB + 1))[:len(kept)], f"trial {trial}: not a prefix"
            assert sink_threads() == []
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # the blocked accept returns
        listener.close()
        acceptor.join(10)
        for handler in handlers:
            handler.join(10)


async def test_a_5xx_whose_body_breaks_is_tried_again(tmp_path: Path) -> None:
    data = os.urandom(1000)
    broken = [True]

    async def flaky(request: web.Request) -> web.StreamResponse:
        if broken.pop() if broken else False:
            response = web.StreamResponse(status=503)  # chunked: cut short, reading it fails
            await response.prepare(request)
            await response.write(b"overloaded")
            assert request.transport is not None
            request.transport.close()  # the rest of the error page never comes
            return response
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/k3s", flaky)
    async for base in serve(app):
        await download(f"{base}/k3s", hashlib.sha256(data).hexdigest(), tmp_path / "k3s.part", backoff=0.01)
    assert (tmp_path / "k3s.part").read_bytes() == data


@pytest.mark.parametrize(("url", "host", "port", "target"), [
    ("http://[::1]/k3s", "::1", 80, "/k3s"),
    ("https://[2001:db8::7]/a/k3s?x=1", "2001:db8::7", 443, "/a/k3s?x=1"),
    ("http://releases.example:8080/v1.30.1%2Bk3s1/k3s", "releases.example", 8080, "/v1.30.1%2Bk3s1/k3s"),
    ("http://h/a b/k\u00e9", "h", 80, "/a%20b/k%C3%A9"),
    ("https://b\u00fccher.example/k3s", "xn--bcher-kva.example", 443, "/k3s"),
])
def test_the_connection_is_to_the_urls_host_and_port(url: str, host: str, port: int, target: str) -> None:
    conn, path, proxy, _ = download_module._connection(url, 5.0)
    assert proxy is None
    assert (conn.host, conn.port, path) == (host, port, target)
