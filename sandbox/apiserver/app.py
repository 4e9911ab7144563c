"""The HTTP layer: aiohttp routes that parse a Kubernetes REST request, call the store, serialise.

URL grammar handled here (legacy discovery, trailing slashes accepted):

    /version /healthz /livez /readyz            /openapi/v2  /openapi/v3[/api/v1|/apis/G/V]
    /api  /api/v1  /apis  /apis/G  /apis/G/V    (discovery)
    {prefix}[/namespaces/NS]/PLURAL[/NAME[/SUB]]  prefix = /api/v1 | /apis/G/V

Every request is accepted as the admin (kubectl sends no bearer token over plain HTTP); authorization
is not modelled, RBAC objects are only stored.
Middleware records every request in the request log and answers injected faults first.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

from sandbox.apiserver import eviction, openapi, protobuf, resources, tables
from sandbox.apiserver.errors import ApiError, bad_request, status_body
from sandbox.apiserver.patching import apply_patch
from sandbox.apiserver.resources import CRDS, ResourceType
from sandbox.apiserver.selectors import matcher, parse_field_selector, parse_label_selector
from sandbox.apiserver.store import Store
from sandbox.apiserver.tokens import TokenAuthority

log = logging.getLogger("sandbox.apiserver")

MAX_BODY = 3 * 1024 * 1024
DEFAULT_WATCH_TIMEOUT = 1800
VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.4+k3s1",
    "gitCommit": "sandbox",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}

Obj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoggedRequest(NamedTuple):
    method: str
    path: str
    query: str
    status: int


@dataclass
class _Fault:
    remaining: int
    method: str
    path: re.Pattern[str]
    status: int
    message: str


@dataclass
class Faults:
    """Injected failures: the next N requests matching a method and a path regex get a status; and a
    latency for every request."""

    latency: float = 0.0
    """Seconds every request but a watch waits before it is handled: the round trip to an API server
    across a network (the events of a watch come without it)."""
    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, n: int, method: str, path_regex: str, status: int, message: str = "injected") -> None:
        with self._lock:
            self._faults.append(_Fault(n, method.upper(), re.compile(path_regex), status, message))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            for f in self._faults:
                if f.remaining > 0 and f.method in (method, "*") and f.path.search(path):
                    f.remaining -= 1
                    if f.remaining == 0:
                        self._faults.remove(f)
                    return f.status, f.message
        return None


REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(), status=status, content_type="application/json"
    )


def _status_response(err: ApiError) -> web.Response:
    return _json(err.status(), err.code)


@dataclass
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    sub: str | None


class Api:
    """Request handling over one Store; `app()` builds the aiohttp application."""

    def __init__(
        self,
        store: Store,
        tokens: TokenAuthority,
        faults: Faults,
        request_log: list[LoggedRequest],
        bookmark_interval: float = 1.0,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.faults = faults
        self.request_log = request_log
        self.bookmark_interval = bookmark_interval
        self.stopping = asyncio.Event()
        self._logged: set[int] = set()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            if self.faults.latency and request.query.get("watch") not in ("true", "1"):
                await asyncio.sleep(self.faults.latency)
            fault = self.faults.take(request.method, request.path)
            if fault is not None:
                code, message = fault
                status = code
                return _json(status_body(code, REASONS.get(code, "InternalError"), message), code)
            resp = await handler(request)
            status = resp.status
            return resp
        except ApiError as exc:
            status = exc.code
            return _status_response(exc)
        except web.HTTPRequestEntityTooLarge:
            status = 413
            return _json(
                status_body(
                    413,
                    "RequestEntityTooLarge",
                    f"the request body is larger than the limit of {MAX_BODY} bytes",
                ),
                413,
            )
        except (ConnectionResetError, asyncio.CancelledError):
            status = 499
            raise
        except Exception as exc:
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            status = 500
            return _json(
                status_body(500, "InternalError", f"internal error: {type(exc).__name__}: {exc}"), 500
            )
        finally:
            if id(request) in self._logged:
                self._logged.discard(id(request))
            else:
                self.request_log.append(
                    LoggedRequest(request.method, request.path, request.query_string, status)
                )

    # ---- dispatch ------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/version":
            return _json(VERSION)
        if path.startswith("/openapi/v3"):
            return self._openapi(path)
        if path.startswith("/openapi"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        reg = self.store.registry
        parts = [p for p in path.split("/") if p]
        if path == "/api":
            return _json(resources.api_versions())
        if path == "/apis":
            return _json(resources.api_group_list(reg))
        if parts[0] == "api" and len(parts) == 2:
            doc = resources.resource_list(reg, "", parts[1])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(doc)
        if parts[0] == "apis" and len(parts) == 2:
            group = resources.api_group(reg, parts[1])
            if group is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(group)
        if parts[0] == "apis" and len(parts) == 3:
            doc = resources.resource_list(reg, parts[1], parts[2])
            if doc is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(doc)
        target = self._target(parts)
        return await self._resource(request, target)

    def _target(self, parts: list[str]) -> Target:
        nf = ApiError(404, "NotFound", "the server could not find the requested resource")
        if parts[0] == "api" and len(parts) >= 3:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise nf
        ns: str | None = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            ns, rest = rest[1], rest[2:]
        rt = self.store.registry.lookup(group, version, rest[0])
        if rt is None or len(rest) > 3:
            raise nf
        if ns is not None and not rt.namespaced:
            raise nf
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rt.status) and sub not in rt.subresources:
            raise nf
        return Target(rt, ns, name, sub)

    def _openapi(self, path: str) -> web.Response:
        reg = self.store.registry
        crds = {k[1]: v for k, v in self.store.objects.get(CRDS.key, {}).items()}
        if path == "/openapi/v2":
            return _json(openapi.v2_document(reg, crds))
        if path == "/openapi/v3":
            return _json(openapi.v3_root(reg))
        rest = path.removeprefix("/openapi/v3/").split("/")
        doc = None
        if rest[0] == "api" and len(rest) == 2:
            doc = openapi.v3_document(reg, "", rest[1], crds)
        elif rest[0] == "apis" and len(rest) == 3:
            doc = openapi.v3_document(reg, rest[1], rest[2], crds)
        if doc is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return _json(doc)

    # ---- resources -----------------------------------------------------------------------------------

    async def _body(self, request: web.Request) -> Any:
        ctype = request.headers.get("Content-Type", "application/json")
        if request.method == "POST" and ctype.startswith(protobuf.PROTOBUF):
            return protobuf.decode(await request.read())
        if request.method in ("POST", "PUT") and "json" not in ctype and "yaml" not in ctype:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - "
                f'accepted media types include: application/json (got "{ctype}")',
            )
        raw = await request.read()
        if not raw:
            raise bad_request("the request body is empty")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}") from exc

    async def _resource(self, request: web.Request, t: Target) -> web.StreamResponse:
        m = request.method
        q = request.query
        dry = q.get("dryRun") == "All"
        rt = t.rt
        if rt.plural == "tokenreviews":
            if m != "POST" or t.name:
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            return _json(self.tokens.review(await self._body(request)), 201)
        if t.sub == "eviction":
            if m != "POST":
                raise ApiError(405, "MethodNotAllowed", "only POST is allowed on pods/eviction")
            body = await self._body(request)
            return _json(eviction.evict(self.store, t.namespace or "", t.name or "", body), 201)
        if t.sub == "token":
            if m != "POST":
                raise ApiError(405, "MethodNotAllowed", "only POST is allowed on serviceaccounts/token")
            body = await self._body(request)
            return _json(self.tokens.request(t.namespace or "", t.name or "", body), 201)
        if t.name is None:
            if m == "GET":
                if q.get("watch") in ("true", "1"):
                    return await self._watch(request, t)
                return self._list(request, t)
            if m == "POST":
                body = await self._body(request)
                return _json(
                    self._present(rt, self.store.create(rt, t.namespace, self._defaults(rt, body), dry)), 201
                )
            if m == "DELETE":
                return self._delete_collection(request, t, dry)
        else:
            if m == "GET":
                obj = self._present(rt, self.store.get(rt, t.namespace, t.name))
                if tables.wants_table(request.headers.get("Accept", "")):
                    return _json(
                        tables.table(
                            rt, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata")
                        )
                    )
                return _json(obj)
            if m == "PUT":
                body = await self._body(request)
                return _json(self._present(rt, self.store.update(rt, t.namespace, t.name, body, t.sub, dry)))
            if m == "PATCH":
                body = await self._body(request)
                current = self.store.get(rt, t.namespace, t.name)
                patched = apply_patch(
                    request.headers.get("Content-Type", ""), copy.deepcopy(current), body, rt.custom
                )
                if not isinstance(patched, dict):
                    raise bad_request("the patched object is not a JSON object")
                return _json(
                    self._present(rt, self.store.update(rt, t.namespace, t.name, patched, t.sub, dry))
                )
            if m == "DELETE":
                opts: Obj = {}
                raw = await request.read()
                if raw:
                    try:
                        opts = json.loads(raw) or {}
                    except ValueError as exc:
                        raise bad_request(f"the DeleteOptions body is not valid JSON: {exc}") from exc
                dry = dry or "All" in (opts.get("dryRun") or [])
                return _json(
                    self._present(
                        rt, self.store.delete(rt, t.namespace, t.name, opts.get("preconditions"), dry)
                    )
                )
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow {m} on the requested resource")

    @staticmethod
    def _defaults(rt: ResourceType, body: Any) -> Any:
        if rt.plural == "pods" and rt.group == "" and isinstance(body, dict):
            body = dict(body)
            body.setdefault("status", {"phase": "Pending"})
        return body

    def _present(self, rt: ResourceType, obj: Obj) -> Obj:
        if rt.plural == "poddisruptionbudgets":
            return eviction.refresh_status(self.store, obj)
        return obj

    def _selectors(self, request: web.Request, rt: ResourceType) -> Callable[[Obj], bool]:
        labels = parse_label_selector(request.query.get("labelSelector"))
        fields = parse_field_selector(request.query.get("fieldSelector"), rt.fields, rt.kind)
        return matcher(labels, fields)

    def _list(self, request: web.Request, t: Target) -> web.Response:
        q = request.query
        try:
            limit = int(q.get("limit") or 0)
        except ValueError as exc:
            raise bad_request(f'invalid limit "{q.get("limit")}"') from exc
        items, rv, cont = self.store.list_objects(
            t.rt, t.namespace, self._selectors(request, t.rt), limit, q.get("continue")
        )
        items = [self._present(t.rt, o) for o in items]
        if tables.wants_table(request.headers.get("Accept", "")):
            return _json(tables.table(t.rt, items, rv, q.get("includeObject", "Metadata"), cont))
        meta: Obj = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        return _json(
            {"kind": t.rt.list_kind, "apiVersion": t.rt.api_version, "metadata": meta, "items": items}
        )

    def _delete_collection(self, request: web.Request, t: Target, dry: bool) -> web.Response:
        items, _rv, _ = self.store.list_objects(t.rt, t.namespace, self._selectors(request, t.rt))
        gone = [
            self.store.delete(t.rt, o["metadata"].get("namespace"), o["metadata"]["name"], None, dry)
            for o in items
        ]
        return _json(
            {
                "kind": t.rt.list_kind,
                "apiVersion": t.rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": gone,
            }
        )

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        match = self._selectors(request, t.rt)
        try:
            timeout = float(q.get("timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        except ValueError as exc:
            raise bad_request(f'invalid timeoutSeconds "{q.get("timeoutSeconds")}"') from exc
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        as_table = tables.wants_table(request.headers.get("Accept", ""))
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        try:
            watcher = self.store.watch(t.rt, t.namespace, match, q.get("resourceVersion"))
        except ApiError as exc:
            if exc.code != 410:
                raise
            await resp.prepare(request)
            await self._send(resp, {"type": "ERROR", "object": exc.status()})
            await resp.write_eof()
            return resp
        await resp.prepare(request)
        # A watch is logged once it streams (not when it ends), so tests can wait for a client to watch.
        self._logged.add(id(request))
        self.request_log.append(LoggedRequest(request.method, request.path, request.query_string, 200))
        deadline = time.monotonic() + timeout
        try:
            while not self.stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watcher.queue.get(), min(left, self.bookmark_interval))
                except TimeoutError:
                    if bookmarks:
                        await self._send(
                            resp,
                            {
                                "type": "BOOKMARK",
                                "object": {
                                    "kind": t.rt.kind,
                                    "apiVersion": t.rt.api_version,
                                    "metadata": {"resourceVersion": str(self.store.rv)},
                                },
                            },
                        )
                    continue
                if item is None:
                    break
                typ, obj = item
                obj = self.store.present(t.rt, obj)
                if as_table:
                    obj = tables.table(
                        t.rt, [obj], obj["metadata"]["resourceVersion"], q.get("includeObject", "Metadata")
                    )
                await self._send(resp, {"type": typ, "object": obj})
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away: nothing to answer, the watcher is dropped below
        finally:
            self.store.hub.remove(watcher)
        return resp

    @staticmethod
    async def _send(resp: web.StreamResponse, event: Obj) -> None:
        await resp.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
