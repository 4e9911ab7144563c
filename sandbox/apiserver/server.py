"""Running the emulator: `ApiServer` on the caller's event loop, `ThreadedApiServer` on its own thread.

The threaded form serves synchronous callers (the official `kubernetes` client, kubectl subprocesses) in
tests: entering the context starts the server and waits until it listens; leaving it stops the server,
closes every watch, joins the thread and closes the state file.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType

from aiohttp import web

from sandbox.apiserver.app import Api, Faults, LoggedRequest
from sandbox.apiserver.kubeconfig import write_kubeconfig
from sandbox.apiserver.persistence import HISTORY_LIMIT, Database
from sandbox.apiserver.store import Store
from sandbox.apiserver.tokens import TokenAuthority


class ApiServer:
    """The API server emulator, in memory or persisted to `state_path` (SQLite)."""

    def __init__(self, state_path: Path | None = None, bookmark_interval: float = 1.0,
                 token_node_name: bool = True, history_limit: int = HISTORY_LIMIT) -> None:
        """`token_node_name=False`: TokenReviews name a token's Pod but not its node, as before 1.30.
        `history_limit`: changes kept for watches and paged lists (older ones get 410 Expired)."""
        self.state_path = state_path
        self.token_node_name = token_node_name
        self.history_limit = history_limit
        self.faults = Faults()
        self.request_log: list[LoggedRequest] = []
        self._bookmark_interval = bookmark_interval
        self._runner: web.AppRunner | None = None
        self._db: Database | None = None
        self.store: Store | None = None
        self.api: Api | None = None
        self.url = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._db = Database(self.state_path) if self.state_path is not None else None
        self.store = Store(self._db, self.history_limit)
        self.api = Api(
            self.store,
            TokenAuthority(self.store, self._db, self.token_node_name),
            self.faults,
            self.request_log,
            self._bookmark_interval,
        )
        self._runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        bound = server.sockets[0].getsockname()[1]
        self.url = f"http://{host}:{bound}"

    async def stop(self) -> None:
        if self.api is not None:
            self.api.stopping.set()
        if self.store is not None:
            self.store.hub.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def write_kubeconfig(self, path: Path, token: str = "admin-token") -> Path:
        return write_kubeconfig(path, self.url, token)


class ThreadedApiServer:
    """An ApiServer on a private event loop in a background thread; use as a context manager."""

    def __init__(self, state_path: Path | None = None, bookmark_interval: float = 1.0,
                 token_node_name: bool = True, history_limit: int = HISTORY_LIMIT) -> None:
        self.server = ApiServer(state_path, bookmark_interval, token_node_name, history_limit)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def faults(self) -> Faults:
        return self.server.faults

    @property
    def request_log(self) -> list[LoggedRequest]:
        return self.server.request_log

    @property
    def store(self) -> Store:
        assert self.server.store is not None
        return self.server.store

    def write_kubeconfig(self, path: Path, token: str = "admin-token") -> Path:
        return self.server.write_kubeconfig(path, token)

    def start(self, host: str = "127.0.0.1", port: int = 0) -> ThreadedApiServer:
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start(host, port))
            except BaseException as exc:  # handed to the starting thread, which raises it
                self._error = exc
                self._started.set()
                loop.close()
                return
            self._started.set()
            loop.run_forever()
            loop.run_until_complete(self.server.stop())
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="apiserver", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            self._thread.join()
            raise RuntimeError(f"the API server emulator failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._thread = None

    def __enter__(self) -> ThreadedApiServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
