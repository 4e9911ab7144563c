"""A local k3s release server: the GitHub release layout, serving stand-in k3s builds.

Layout (like `https://github.com/k3s-io/k3s/releases/download`): `<base>/<tag>/<asset>` where `<tag>` may
spell `+` as `%2B`; assets `k3s` (amd64), `k3s-arm64`, `k3s-armhf` and the checksum files
`sha256sum-amd64.txt`, `sha256sum-arm64.txt`, `sha256sum-arm.txt` (`<64 hex>  <asset>` lines). Builds are
made on demand with `build_standin` for the versions the server was given. `Range` (206/416) and HEAD work.

Fault switches for tests: `corrupt(tag, asset)` serves altered bytes (the checksum file keeps the true
sum), `cut_after(tag, asset, n)` drops the connection after `n` bytes once, `throttle(bps)` slows every
download, `set_behaviour(tag, behaviour)` rebuilds a version as `crash` / `never-ready`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from sandbox.standin import Behaviour, build_standin

ASSET_ARCH = {"k3s": "amd64", "k3s-arm64": "arm64", "k3s-armhf": "arm"}
CHECKSUM_FILES = {f"sha256sum-{arch}.txt": asset for asset, arch in ASSET_ARCH.items()}
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 64 * 1024


@dataclass
class Faults:
    corrupt: set[tuple[str, str]] = field(default_factory=set)
    cut_after: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes_per_second: float | None = None
    behaviours: dict[str, Behaviour] = field(default_factory=dict)


class ReleaseServer:
    """Serves stand-in k3s releases on 127.0.0.1:<free port>. Use `await start()` / `await stop()`
    (or `start_in_thread()` / `stop_in_thread()` from synchronous code)."""

    def __init__(self, versions: Iterable[str], workdir: Path, *, host: str = "127.0.0.1",
                 startup_seconds: float = 0.5) -> None:
        self.versions = set(versions)
        self.workdir = workdir
        self.host = host
        self.startup_seconds = startup_seconds
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []
        """(method, path, Range header) of every request, for tests."""
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- faults -------------------------------------------------------------------------------------
    def add_version(self, version: str) -> None:
        self.versions.add(version)

    def corrupt(self, tag: str, asset: str = "k3s") -> None:
        self.faults.corrupt.add((tag, asset))

    def cut_after(self, tag: str, asset: str, nbytes: int) -> None:
        self.faults.cut_after[(tag, asset)] = nbytes

    def throttle(self, bytes_per_second: float | None) -> None:
        self.faults.bytes_per_second = bytes_per_second

    def set_behaviour(self, tag: str, behaviour: Behaviour) -> None:
        self.faults.behaviours[tag] = behaviour
        for asset in ASSET_ARCH:
            self._path(tag, asset).unlink(missing_ok=True)

    # -- content ------------------------------------------------------------------------------------
    def _path(self, tag: str, asset: str) -> Path:
        return self.workdir / tag / asset

    def binary(self, tag: str, asset: str = "k3s") -> bytes:
        """The true bytes of a release asset (built on first use)."""
        path = self._path(tag, asset)
        if not path.exists():
            build_standin(path, tag, arch=ASSET_ARCH[asset], behaviour=self.faults.behaviours.get(tag, "ok"),
                          startup_seconds=self.startup_seconds)
        return path.read_bytes()

    def sha256(self, tag: str, asset: str = "k3s") -> str:
        return hashlib.sha256(self.binary(tag, asset)).hexdigest()

    def url(self, tag: str, asset: str = "k3s") -> str:
        return f"{self.base_url}/{tag.replace('+', '%2B')}/{asset}"

    def _content(self, tag: str, asset: str) -> bytes | None:
        if tag not in self.versions:
            return None
        if asset in ASSET_ARCH:
            data = self.binary(tag, asset)
            if (tag, asset) in self.faults.corrupt:
                data = data.replace(b"k3s stand-in", b"k3s tampered", 1) + b"# corrupted\n"
            return data
        if asset in CHECKSUM_FILES:
            binary = CHECKSUM_FILES[asset]
            return f"{self.sha256(tag, binary)}  {binary}\n".encode()
        return None

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _serve(self, request: web.Request) -> web.StreamResponse:
        tag, asset = request.match_info["tag"], request.match_info["asset"]
        self.requests.append((request.method, request.path, request.headers.get("Range")))
        data = await asyncio.to_thread(self._content, tag, asset)
        if data is None:
            raise web.HTTPNotFound(text=f"no release asset {asset!r} for tag {tag!r}\n")
        start, end, status = 0, len(data), 200
        header = request.headers.get("Range")
        if header:
            match = _RANGE.match(header.strip())
            if not match or int(match.group(1)) >= len(data):
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{len(data)}"})
            start = int(match.group(1))
            end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            status = 206
        headers = {"Content-Length": str(end - start), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        cut = self.faults.cut_after.pop((tag, asset), None)
        body = data[start:end]
        limit = len(body) if cut is None else min(cut, len(body))
        size = 64 if self.faults.bytes_per_second else _CHUNK
        for offset in range(0, limit, size):
            chunk = body[offset:min(limit, offset + size)]
            await response.write(chunk)
            if self.faults.bytes_per_second:
                await asyncio.sleep(len(chunk) / self.faults.bytes_per_second)
        if cut is not None and request.transport is not None:
            request.transport.close()
            return response
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("GET", "/{tag}/{asset}", self._serve)
        return app

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("release server is not started")
        return f"http://{self.host}:{self._port}"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.base_events.Server)
        self._port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> None:
        """Run the server on its own event loop in a daemon thread (for synchronous callers)."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="release-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("release server did not start within 30 s")

    def stop_in_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None
            self._loop = None
