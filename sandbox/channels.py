"""A local k3s channel server: `GET /v1-release/channels/<name>` answers 302 to the release page.

Like `update.k3s.io`, each channel (`stable`, `latest`, `testing`, one per minor such as `v1.30`) redirects
to `<release_base>/k3s-io/k3s/releases/tag/<version>`; the coordinator takes the basename of `Location` as
the version. An unknown channel answers 404. Channels move at run time, either from Python
(`set_channel`) or over HTTP (`PUT /admin/channels/<name>` with the version as the body, text or JSON
`{"version": ...}`; `DELETE` removes a channel), so a test or a person can "publish" a release.
`GET /v1-release/channels` lists every channel as JSON (`{"data": [{"id", "name", "latest"}]}`).

`default_channels(versions)` derives the usual channels from a list of versions (pure).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterable, Mapping

from aiohttp import web

_VERSION = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.]+))?(?:\+k3s(\d+))?$")
DEFAULT_RELEASE_BASE = "https://github.com"


def version_key(version: str) -> tuple[int, int, int, int, str, int]:
    """Sort key of a k3s version: major.minor.patch, then a release sorts after its pre-releases
    (`-rc1` < final), then the k3s revision (`+k3s1` < `+k3s2`). Raises ValueError on other strings."""
    match = _VERSION.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a k3s version like v1.30.4+k3s1")
    major, minor, patch, pre, rev = match.groups()
    return (int(major), int(minor), int(patch), 0 if pre else 1, pre or "", int(rev or 0))


def minor_of(version: str) -> str:
    """`v1.30.4+k3s1` -> `v1.30`."""
    key = version_key(version)
    return f"v{key[0]}.{key[1]}"


def default_channels(versions: Iterable[str], stable: str | None = None) -> dict[str, str]:
    """The channels a release set implies: `latest` and `testing` = newest, `stable` = `stable` (default:
    newest final release), and `v1.NN` = newest release of each minor (finals preferred)."""
    ordered = sorted(set(versions), key=version_key)
    if not ordered:
        return {}
    finals = [v for v in ordered if version_key(v)[3] == 1]
    channels = {"latest": ordered[-1], "testing": ordered[-1], "stable": stable or (finals or ordered)[-1]}
    for version in ordered:
        if version_key(version)[3] == 1 or minor_of(version) not in channels:
            channels[minor_of(version)] = version
    return channels


class ChannelServer:
    """Serves k3s release channels on `host`:<free port>. `await start()` / `await stop()`, or
    `start_in_thread()` / `stop_in_thread()` from synchronous code."""

    def __init__(self, channels: Mapping[str, str] | None = None, *, host: str = "127.0.0.1",
                 release_base: str = DEFAULT_RELEASE_BASE) -> None:
        self._channels: dict[str, str] = {}
        self._lock = threading.Lock()
        for name, version in (channels or {}).items():
            self.set_channel(name, version)
        self.host = host
        self.release_base = release_base.rstrip("/")
        self.requests: list[str] = []
        """Names of the channels asked for, in order (for tests)."""
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- channels -----------------------------------------------------------------------------------
    def set_channel(self, name: str, version: str) -> None:
        """Point channel `name` at `version` (validated); the next request sees it."""
        version_key(version)
        if not name or "/" in name:
            raise ValueError(f"channel name {name!r} must be a non-empty path segment")
        with self._lock:
            self._channels[name] = version

    def remove_channel(self, name: str) -> None:
        with self._lock:
            self._channels.pop(name, None)

    def channels(self) -> dict[str, str]:
        with self._lock:
            return dict(self._channels)

    def url(self, name: str) -> str:
        """The URL a Plan's `channel` field uses for channel `name`."""
        return f"{self.base_url}/v1-release/channels/{name}"

    def location(self, version: str) -> str:
        return f"{self.release_base}/k3s-io/k3s/releases/tag/{version}"

    # -- HTTP ---------------------------------------------------------------------------------------
    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append(name)
        version = self.channels().get(name)
        if version is None:
            raise web.HTTPNotFound(text=f"channel {name!r} not found\n")
        raise web.HTTPFound(self.location(version))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        items = sorted(self.channels().items())
        data = [{"id": name, "name": name, "latest": version} for name, version in items]
        return web.json_response({"data": data})

    async def _admin_put(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        raw = (await request.text()).strip()
        version = raw
        if raw.startswith("{"):
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise web.HTTPBadRequest(text=f"body is not JSON: {exc}\n") from exc
            version = str(body.get("version", "")) if isinstance(body, dict) else ""
        try:
            self.set_channel(name, version)
        except ValueError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from exc
        return web.json_response({"name": name, "latest": version})

    async def _admin_delete(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self.channels():
            raise web.HTTPNotFound(text=f"channel {name!r} not found\n")
        self.remove_channel(name)
        return web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1-release/channels", self._list)
        app.router.add_get("/v1-release/channels/{name}", self._resolve)
        app.router.add_put("/admin/channels/{name}", self._admin_put)
        app.router.add_delete("/admin/channels/{name}", self._admin_delete)
        return app

    @property
    def base_url(self) -> str:
        if not self._port:
            raise RuntimeError("channel server is not started")
        return f"http://{self.host}:{self._port}"

    async def start(self, port: int = 0) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self._port = int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def start_in_thread(self) -> None:
        """Run the server on its own event loop in a daemon thread."""
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, name="channel-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("channel server did not start within 30 s")
        if failure:
            raise RuntimeError(f"channel server failed to start: {failure[0]}") from failure[0]

    def stop_in_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._thread = None
            self._loop = None
