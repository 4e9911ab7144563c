"""`Cluster` over the official kubernetes client's configuration and auth, with aiohttp as the transport.

The client loads the kubeconfig or the in-cluster ServiceAccount (server, CA, client certificate, token
and its refresh) and gives the auth headers (`auth_settings`, asked again after `AUTH_REUSE_SECONDS`);
requests go out on an aiohttp session, on the event loop (`_acall`). The client's own synchronous
transport (urllib3) costs about 0.45 ms of CPU per request on this path, several times aiohttp's, and a
pass that labels, cordons and reports on dozens of nodes at once waits for all of it. Watches still go
through the client (`_open_watch`), each streamed by a thread of its own. We talk JSON dicts at the REST
level, so that custom resources, merge patches and watches all go through one small path and the engine
never sees client models. Library exceptions become `coordinator.kube.errors`.

Lists come in pages of `LIST_PAGE` objects, each transformed before the next is read (`list_objects`), as
client-go's pager: a whole list of a large cluster's Nodes, parsed at once, is larger than our memory limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from coordinator.kube import errors
from coordinator.kube.protocol import Obj, StoredLease, TokenIdentity, WatchEvent
from coordinator.kube.resources import EVENTS, LEASES, NODES, PODS, TOKEN_REVIEWS, Resource

log = logging.getLogger("coordinator.kube.client")

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
MERGE_PATCH = "application/merge-patch+json"
KUBE_CONNECTIONS = 32
"""Concurrent API requests (pooled connections) of one coordinator."""
AUTH_REUSE_SECONDS = 1.0
"""How long the auth headers the client gave are reused. The client's refresh hook re-reads the in-cluster
token at most once a minute anyway, but for a kubeconfig it rebuilds the configuration on every call: a
fifth of the CPU a Node patch costs the coordinator, which patches dozens of Nodes at once in a pass."""
LIST_PAGE = 500
"""Objects asked for per list request (`limit`), client-go's pager default. A real cluster's Node is ~11.6 KB
of JSON (its image list, managedFields, annotations), ~55 KiB once parsed: 5,000 of them in one list took
274 MiB at once (tracemalloc), above the coordinator's memory limit; in pages, each slimmed by the Node
informer before the next is read, 45 MiB, 19 of them the slimmed Nodes kept. Every page of a list carries
the first page's resourceVersion: a paged list is one snapshot, watched from that version."""


def _error(status: int, what: str, detail: str) -> errors.KubeError:
    msg = f"{what}: {status} {detail}".strip()
    if status == 404:
        return errors.NotFound(msg, status)
    if status == 409:
        return errors.Conflict(msg, status)
    if status == 410:
        return errors.Expired(msg, status)
    if status in (401, 403):
        return errors.Forbidden(msg, status)
    if status in (400, 415, 422):
        return errors.Invalid(msg, status)
    return errors.KubeUnavailable(msg, status)


def _detail(body: bytes | str | None) -> str:
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return str(body)[:300]
    return str(data.get("message", data)) if isinstance(data, dict) else str(data)[:300]


def _first(extra: Any, key: str) -> str | None:
    """The first value of `user.extra[key]` in a TokenReview, if any."""
    values = extra.get(key) if isinstance(extra, dict) else None
    return str(values[0]) if isinstance(values, list) and values and values[0] else None


class KubeCluster:
    """The production `Cluster`. Build with `KubeCluster.from_settings(kubeconfig)`."""

    def __init__(self, api: k8s.ApiClient, request_timeout: float = 30.0) -> None:
        self._api = api
        self._timeout = request_timeout
        cfg = api.configuration
        self._base = str(cfg.host).rstrip("/")
        self._ssl = _ssl_context(cfg) if self._base.startswith("https:") else None
        self._server_name: str | None = getattr(cfg, "tls_server_name", None) or None
        self._session: aiohttp.ClientSession | None = None
        self._auth: tuple[float, dict[str, str]] | None = None
        """(when, the auth headers the client gave then): see `AUTH_REUSE_SECONDS`."""

    @classmethod
    def connect(cls, kubeconfig: str | None) -> KubeCluster:
        """From a kubeconfig file, or the in-cluster ServiceAccount when `kubeconfig` is None."""
        cfg = k8s.Configuration()
        try:
            if kubeconfig:
                k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
            else:
                k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException as exc:
            raise errors.Invalid(f"kubeconfig {kubeconfig or '(in-cluster)'}: {exc}") from exc
        return cls(k8s.ApiClient(cfg))

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close the aiohttp session (on the loop it was used on), then the client."""
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.close()

    # -- the two request paths -----------------------------------------------------------------
    def _open_watch(self, path: str, what: str, query: list[tuple[str, str]], timeout: float) -> Any:
        """GET a watch through the client, unread (a thread streams it): the urllib3 response."""
        try:
            _m, url, hdrs, data, _ = self._api.param_serialize(
                "GET",
                path,
                query_params=query,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            resp = self._api.call_api(_m, url, header_params=hdrs, body=data, _request_timeout=timeout)
        except ApiException as exc:
            raise _error(exc.status or 0, what, _detail(exc.body) or str(exc.reason)) from exc
        except Exception as exc:  # urllib3/socket errors: the API server is unreachable
            raise errors.KubeUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= resp.status < 300:
            raise _error(resp.status, what, _detail(resp.read()))  # type: ignore[no-untyped-call]
        return resp.response

    async def _acall(
        self,
        method: str,
        path: str,
        what: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
    ) -> Any:
        """One request on the aiohttp session: the JSON answer, or the `errors` class of its status."""
        headers = {**self._api.default_headers, "Accept": "application/json", **self._auth_headers(what)}
        if body is not None:
            headers["Content-Type"] = content_type
        url = self._base + path + (f"?{urlencode(query)}" if query else "")
        payload = json.dumps(body).encode() if body is not None else None
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=KUBE_CONNECTIONS, ssl=self._ssl if self._ssl else True)
            )
        try:
            async with self._session.request(
                method,
                url,
                data=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=request_timeout or self._timeout),
                server_hostname=self._server_name,
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # the API server is unreachable
            raise errors.KubeUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        if not 200 <= status < 300:
            raise _error(status, what, _detail(raw))
        return json.loads(raw) if raw else {}

    def _auth_headers(self, what: str) -> dict[str, str]:
        """The auth headers as the client sends them (for the in-cluster token, its refresh hook re-reads
        the file), reused for `AUTH_REUSE_SECONDS`."""
        now = time.monotonic()
        if self._auth is not None and now - self._auth[0] < AUTH_REUSE_SECONDS:
            return self._auth[1]
        try:
            headers = {
                auth["key"]: auth["value"]
                for auth in self._api.configuration.auth_settings().values()
                if auth["in"] == "header" and auth["value"]
            }
        except Exception as exc:
            raise errors.Invalid(f"{what}: cannot build the request's credentials: {exc}") from exc
        self._auth = (now, headers)
        return headers

    # -- Cluster ------------------------------------------------------------------------------
    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        out = await self._acall("POST", TOKEN_REVIEWS.path(), "TokenReview", body=body)
        status = out.get("status") or {}
        if not status.get("authenticated"):
            return None
        if audience not in (status.get("audiences") or [audience]):
            return None
        user = status.get("user") or {}
        extra = user.get("extra") or {}
        username = str(user.get("username", ""))
        node = _first(extra, NODE_NAME_EXTRA)
        if node is None and (only_user is None or username == only_user):
            pod, uid = _first(extra, POD_NAME_EXTRA), _first(extra, POD_UID_EXTRA)
            node = await self._node_of_bound_pod(username, pod, uid)
        return TokenIdentity(username=username, node=node)

    async def _node_of_bound_pod(self, username: str, pod: str | None, uid: str | None) -> str | None:
        """The node of the Pod a token is bound to, when the review did not name it: before Kubernetes 1.30
        (feature gate ServiceAccountTokenPodNodeInfo) a TokenReview names the Pod (name and uid) but not
        its node. The Pod's `spec.nodeName`, if it is still that Pod (the same uid, not being deleted)."""
        parts = username.split(":")
        if pod is None or uid is None or len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return None
        namespace = parts[2]
        try:
            obj = await self._acall("GET", PODS.path(namespace, pod), f"get Pod {namespace}/{pod}")
        except errors.NotFound:
            return None
        meta = obj.get("metadata") or {}
        if meta.get("uid") != uid or meta.get("deletionTimestamp"):
            return None
        node = (obj.get("spec") or {}).get("nodeName")
        return str(node) if node else None

    async def list_objects(
        self, res: Resource, namespace: str | None = None, transform: Callable[[Obj], Obj] | None = None
    ) -> tuple[list[Obj], str]:
        """In pages of `LIST_PAGE`, as client-go's `ListPager`: `continue` from each page's until it is
        empty. When a continue token has expired (410: the list took longer than the API server's
        compaction window) the pages read are dropped and the whole list is read in one request, as the
        pager's `FullListIfExpired`; an Expired first page is raised."""
        what = f"list {res.plural}"
        items: list[Obj] = []
        rv, cont = "", ""
        while True:
            query = [("limit", str(LIST_PAGE))] + ([("continue", cont)] if cont else [])
            try:
                page, page_rv, cont = await self._list_page(res, namespace, what, query, transform)
            except errors.Expired as exc:
                if not cont:
                    raise
                log.warning("%s: continue token expired after %d objects, listing all at once: %s",
                            what, len(items), exc)
                items.clear()
                items, rv, _ = await self._list_page(res, namespace, what, [], transform)
                return items, rv
            items += page
            rv = rv or page_rv
            if not cont:
                return items, rv

    async def _list_page(
        self,
        res: Resource,
        namespace: str | None,
        what: str,
        query: list[tuple[str, str]],
        transform: Callable[[Obj], Obj] | None,
    ) -> tuple[list[Obj], str, str]:
        """One list request: its objects transformed, its resourceVersion and continue token. The page as
        parsed is no longer referenced once this returns."""
        out = await self._acall("GET", res.path(namespace), what, query=query)
        meta = out.get("metadata") or {}
        raw: list[Obj] = out.get("items") or []
        items = [transform(o) for o in raw] if transform is not None else raw
        return items, str(meta.get("resourceVersion", "")), str(meta.get("continue") or "")

    async def watch(
        self, res: Resource, namespace: str | None, resource_version: str, timeout_seconds: int
    ) -> AsyncIterator[WatchEvent]:
        """Lines are read by a thread and handed over through a queue; closing the generator stops it."""
        what = f"watch {res.plural}"
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(timeout_seconds)),
            ("allowWatchBookmarks", "true"),
        ]
        path = res.path(namespace)
        resp = await asyncio.to_thread(self._open_watch, path, what, query, timeout_seconds + 10)
        lines: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def hand_over(item: bytes | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(lines.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        def pump() -> None:
            buf = b""
            try:
                for chunk in resp.stream(amt=None, decode_content=True):
                    if stop.is_set():
                        return
                    buf += chunk
                    *complete, buf = buf.split(b"\n")
                    for line in complete:
                        if line.strip():
                            hand_over(line)
            except BaseException as exc:  # handed to the consumer, not swallowed
                if not stop.is_set():
                    hand_over(exc)
            finally:
                hand_over(None)

        # A daemon thread (not the default executor): a watch blocked in a read never delays shutdown.
        thread = threading.Thread(target=pump, name=f"watch-{res.plural}", daemon=True)
        thread.start()
        try:
            while True:
                item = await lines.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise errors.KubeUnavailable(f"{what}: stream broke: {item}") from item
                event = json.loads(item)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise _error(int(obj.get("code", 500)), what, str(obj.get("message", "")))
                yield WatchEvent(type=str(event.get("type")), obj=obj)
        finally:
            stop.set()
            _interrupt(resp)

    async def get(self, res: Resource, namespace: str | None, name: str) -> Obj:
        out: Obj = await self._acall("GET", res.path(namespace, name), f"get {res.plural} {name}")
        return out

    async def get_lease(self, namespace: str, name: str) -> StoredLease | None:
        try:
            out = await self.get(LEASES, namespace, name)
        except errors.NotFound:
            return None
        return _stored(out)

    async def write_lease(
        self,
        namespace: str,
        name: str,
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        resource_version: str | None,
    ) -> StoredLease:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "annotations": dict(annotations)}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": dict(spec)}
        what = f"Lease {namespace}/{name}"
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        try:
            if resource_version is None:
                out = await self._acall("POST", LEASES.path(namespace), f"create {what}", body=body)
            else:
                out = await self._acall("PUT", LEASES.path(namespace, name), f"update {what}", body=body)
        except errors.Conflict as exc:
            raise errors.LeaseTableConflict(str(exc), exc.status) from exc
        return _stored(out)

    async def patch_node(
        self,
        name: str,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
        unschedulable: bool | None = None,
    ) -> Obj:
        patch: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        if labels:
            meta["labels"] = dict(labels)
        if annotations:
            meta["annotations"] = dict(annotations)
        if meta:
            patch["metadata"] = meta
        if unschedulable is not None:
            patch["spec"] = {"unschedulable": unschedulable or None}
        out: Obj = await self._acall(
            "PATCH", NODES.path(None, name), f"patch Node {name}", body=patch, content_type=MERGE_PATCH
        )
        return out

    async def patch_status(self, res: Resource, namespace: str, name: str, status: Mapping[str, Any]) -> Obj:
        out: Obj = await self._acall(
            "PATCH",
            res.path(namespace, name, "status"),
            f"patch {res.plural} {namespace}/{name} status",
            body={"status": dict(status)},
            content_type=MERGE_PATCH,
        )
        return out

    async def create_event(
        self, namespace: str, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = f"{involved.get('name', 'x')}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "k3s-upgrade-coordinator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._acall(
            "POST", EVENTS.path(namespace), f"create Event {reason} for {involved.get('name')}", body=body
        )

    async def list_pods_on_node(self, node: str) -> list[Obj]:
        out = await self._acall(
            "GET", PODS.path(None), f"list pods on {node}", query=[("fieldSelector", f"spec.nodeName={node}")]
        )
        return list(out.get("items") or [])

    async def evict_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        if grace_seconds is not None:
            body["deleteOptions"] = {"gracePeriodSeconds": grace_seconds}
        try:
            await self._acall(
                "POST", PODS.path(namespace, name, "eviction"), f"evict Pod {namespace}/{name}", body=body
            )
        except errors.KubeUnavailable as exc:
            if exc.status == 429:
                raise errors.EvictionBlocked(str(exc), 429) from exc
            raise

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        await self._acall("DELETE", PODS.path(namespace, name), f"delete Pod {namespace}/{name}", body=body)


def _ssl_context(cfg: k8s.Configuration) -> ssl.SSLContext:
    """TLS as the client's configuration says: its CA (or the system's), client certificate, verification."""
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cfg.assert_hostname is False:
        ctx.check_hostname = False
    return ctx


def _stored(obj: Obj) -> StoredLease:
    meta = obj.get("metadata") or {}
    return StoredLease(
        name=str(meta.get("name", "")),
        resource_version=str(meta.get("resourceVersion", "")),
        annotations=dict(meta.get("annotations") or {}),
        spec=dict(obj.get("spec") or {}),
    )


def _interrupt(resp: Any) -> None:
    """Unblock a thread reading a streaming response: shut the socket down, then close the response."""
    sock = getattr(getattr(resp, "connection", None), "sock", None) or getattr(
        getattr(getattr(resp, "_fp", None), "fp", None), "raw", None
    )
    try:
        if isinstance(sock, socket.socket):
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer
    resp.close()
