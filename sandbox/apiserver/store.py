"""Object storage with resourceVersions: create, read, list, update, delete, and the change history.

One global counter gives every write a resourceVersion, as etcd's revision does. Writes are validated
against the stored object here: 409 on a stale resourceVersion or an existing name, the status
subresource kept apart from the rest, `generation` bumped only when the spec changes, a write that changes
nothing keeps its resourceVersion, finalizers delay deletion. Each committed change is appended to a
bounded history (for watch replay) and published to the watch hub. All calls happen on the server's event
loop; stored objects are never mutated in place (each write stores a new dict).
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
import string
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sandbox.apiserver import errors
from sandbox.apiserver.persistence import HISTORY_LIMIT, Database
from sandbox.apiserver.resources import CRDS, Registry, ResourceType
from sandbox.apiserver.selectors import Matcher
from sandbox.apiserver.watch import Change, Obj, Watcher, WatchHub

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_SUFFIX = string.ascii_lowercase + string.digits


def now_rfc3339(clock: Callable[[], datetime] | None = None) -> str:
    return (clock or (lambda: datetime.now(UTC)))().strftime("%Y-%m-%dT%H:%M:%SZ")


ANNOTATIONS_LIMIT = 256 * 1024
"""Total bytes of annotation keys and values a real API server accepts on one object."""


def _check_annotations(rt: ResourceType, obj: Obj) -> None:
    """Refuse what a real API server refuses (apimachinery ValidateAnnotationsSize)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    if not isinstance(annotations, dict):
        return
    size = sum(len(str(k)) + len(str(v)) for k, v in annotations.items())
    if size > ANNOTATIONS_LIMIT:
        name = str((obj.get("metadata") or {}).get("name", ""))
        too_long = f"Too long: must have at most {ANNOTATIONS_LIMIT} bytes"
        raise errors.invalid(rt.kind, rt.group, name, "metadata.annotations", too_long)


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new "
    "list without the continue parameter."
)
"""kube-apiserver's message for a continue token whose revision etcd has compacted."""


def _spec_part(obj: Obj, with_status: bool) -> Obj:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if with_status else set())
    return {k: v for k, v in obj.items() if k not in skip}


class Store:
    def __init__(self, db: Database | None = None, history_limit: int = HISTORY_LIMIT) -> None:
        self.registry = Registry()
        self.hub = WatchHub()
        self.db = db
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {}
        self.rv = 0
        self.history: deque[Change] = deque(maxlen=history_limit)
        self.compacted = 0
        """Highest resourceVersion whose change is no longer in the history (older watches get 410)."""
        self.on_delete: list[Callable[[ResourceType, Obj], None]] = []
        if db is not None:
            self._load(db)
        ns_rt = self.registry.lookup("", "v1", "namespaces")
        assert ns_rt is not None
        for ns in SYSTEM_NAMESPACES:
            if ("", ns) not in self.objects.get("namespaces", {}):
                self.create(ns_rt, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # ---- loading -------------------------------------------------------------------------------------

    def _load(self, db: Database) -> None:
        rows = db.load_objects()
        for key, obj in rows:
            if key == CRDS.key:
                self.registry.apply_crd(obj)
        for key, obj in rows:
            meta = obj["metadata"]
            self.objects.setdefault(key, {})[(meta.get("namespace") or "", meta["name"])] = obj
        self.rv = int(db.meta("rv", "0"))
        history = db.load_history()
        self.history.extend(history[-(self.history.maxlen or HISTORY_LIMIT) :])
        self.compacted = self.history[0].rv - 1 if self.history else self.rv

    # ---- reads ---------------------------------------------------------------------------------------

    def get(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        obj = self.objects.get(rt.key, {}).get((ns or "", name))
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return self.present(rt, obj)

    def present(self, rt: ResourceType, obj: Obj) -> Obj:
        """The object as served at this resource's version (apiVersion follows the request's version)."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        return {**obj, "apiVersion": rt.api_version}

    def items(self, rt: ResourceType, ns: str | None) -> Iterable[Obj]:
        bucket = self.objects.get(rt.key, {})
        if ns:
            return (o for (n, _), o in bucket.items() if n == ns)
        return bucket.values()

    def list_objects(
        self, rt: ResourceType, ns: str | None, match: Matcher, limit: int = 0, cont: str | None = None
    ) -> tuple[list[Obj], str, str | None]:
        """Matching objects in key order, the list's resourceVersion and a continue token (or None).

        Every page carries the first page's resourceVersion, as a real API server's; but its objects are
        the current ones, not a snapshot at that version (a watch from it delivers what changed anyway).
        A token whose resourceVersion is older than the kept history gets 410 Expired, as etcd's compaction
        of the revision a paged list reads at."""
        bucket = self.objects.get(rt.key, {})
        keys = sorted(k for k in bucket if not ns or k[0] == ns)
        rv = str(self.rv)
        start: tuple[str, str] | None = None
        if cont:
            try:
                token = json.loads(base64.urlsafe_b64decode(cont.encode()))
                start, rv = (token["ns"], token["name"]), token["rv"]
                expired = int(rv) < self.compacted
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.bad_request(f"invalid continue token: {exc}") from exc
            if expired:
                raise errors.gone(CONTINUE_EXPIRED)
        out: list[Obj] = []
        next_token = None
        for k in keys:
            if start is not None and k <= start:
                continue
            obj = bucket[k]
            if not match(obj):
                continue
            if limit and len(out) >= limit:
                last = out[-1]["metadata"]
                raw = json.dumps({"ns": last.get("namespace") or "", "name": last["name"], "rv": rv})
                next_token = base64.urlsafe_b64encode(raw.encode()).decode()
                break
            out.append(self.present(rt, obj))
        return out, rv, next_token

    # ---- writes --------------------------------------------------------------------------------------

    def _commit(self, changes: list[Change]) -> None:
        for c in changes:
            if len(self.history) == self.history.maxlen:
                self.compacted = self.history[0].rv
            self.history.append(c)
            bucket = self.objects.setdefault(c.key, {})
            ident = (c.obj["metadata"].get("namespace") or "", c.obj["metadata"]["name"])
            if c.type == "DELETED":
                bucket.pop(ident, None)
            else:
                bucket[ident] = c.obj
        if self.db is not None:
            self.db.commit(changes, self.rv, self.compacted)
        for c in changes:
            self.hub.publish(c)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _check_namespace(self, rt: ResourceType, ns: str | None) -> None:
        if rt.namespaced:
            if not ns:
                raise errors.bad_request(f"the namespace of the {rt.kind} must be given in the URL")
            if ("", ns) not in self.objects.get("namespaces", {}):
                raise errors.not_found("namespaces", "", ns)

    def create(self, rt: ResourceType, ns: str | None, body: Obj, dry_run: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = copy.deepcopy(body)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        body_ns = meta.get("namespace")
        if rt.namespaced:
            if body_ns and ns and body_ns != ns:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + "".join(secrets.choice(_SUFFIX) for _ in range(5))
            else:
                raise errors.invalid(
                    rt.kind, rt.group, "", "metadata.name", "Required value: name or generateName is required"
                )
        self._check_namespace(rt, ns)
        _check_annotations(rt, obj)
        name = meta["name"]
        if ((ns or "") if rt.namespaced else "", name) in self.objects.get(rt.key, {}):
            raise errors.already_exists(rt.plural, rt.group, name)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        for transient in ("resourceVersion", "deletionTimestamp", "managedFields", "selfLink"):
            meta.pop(transient, None)
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        if rt.custom and rt.status:
            obj.pop("status", None)
        if rt.key == CRDS.key:
            self._crd_status(obj)
        if rt.key == "namespaces":
            obj["status"] = {"phase": "Active"}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj
        meta["resourceVersion"] = self._next_rv()
        if rt.key == CRDS.key:
            self.registry.apply_crd(obj)
        self._commit([Change(self.rv, rt.key, "ADDED", obj, None)])
        return self.present(rt, obj)

    def update(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        body: Obj,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """PUT semantics (PATCH arrives here after the patch is applied to the current object)."""
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        current = self.objects.get(rt.key, {}).get((ns or "", name))
        if current is None:
            raise errors.not_found(rt.plural, rt.group, name)
        raw_meta = body.get("metadata")
        meta_in: Obj = raw_meta if isinstance(raw_meta, dict) else {}
        if meta_in.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({meta_in.get('name')}) does not match the name on the URL ({name})"
            )
        want_rv = meta_in.get("resourceVersion")
        if want_rv and want_rv != current["metadata"]["resourceVersion"]:
            raise errors.conflict(rt.plural, rt.group, name)
        if meta_in.get("uid") and meta_in["uid"] != current["metadata"]["uid"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                "Precondition failed: UID in precondition: "
                f"{meta_in['uid']}, UID in object meta: {current['metadata']['uid']}",
            )
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new["metadata"] = meta = copy.deepcopy(meta_in)
            old_meta = current["metadata"]
            for fixed in ("uid", "creationTimestamp", "name", "namespace", "generation", "deletionTimestamp"):
                if fixed in old_meta:
                    meta[fixed] = old_meta[fixed]
                else:
                    meta.pop(fixed, None)
            meta.pop("managedFields", None)
            if rt.status:
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
            if rt.key == CRDS.key:
                self._crd_status(new)
        new["apiVersion"], new["kind"] = current["apiVersion"], rt.kind
        _check_annotations(rt, new)
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        if (
            rt.generation
            and subresource != "status"
            and _spec_part(new, rt.status) != _spec_part(current, rt.status)
        ):
            new["metadata"]["generation"] = int(current["metadata"].get("generation") or 0) + 1
        if new == current:
            return self.present(rt, current)
        if dry_run:
            return self.present(rt, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._remove(rt, new)
            return self.present(rt, new)
        new["metadata"]["resourceVersion"] = self._next_rv()
        if rt.key == CRDS.key:
            self.registry.apply_crd(new)
        self._commit([Change(self.rv, rt.key, "MODIFIED", new, current)])
        return self.present(rt, new)

    def delete(
        self,
        rt: ResourceType,
        ns: str | None,
        name: str,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        current = self.objects.get(rt.key, {}).get((ns or "", name))
        if current is None:
            raise errors.not_found(rt.plural, rt.group, name)
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != current["metadata"]["uid"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: "
                f"{pre['uid']}, UID in object meta: {current['metadata']['uid']}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                "Precondition failed: ResourceVersion in "
                f"precondition: {pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{current['metadata']['resourceVersion']}",
            )
        if dry_run:
            return self.present(rt, current)
        if current["metadata"].get("finalizers"):
            if current["metadata"].get("deletionTimestamp"):
                return self.present(rt, current)
            new = copy.deepcopy(current)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._commit([Change(self.rv, rt.key, "MODIFIED", new, current)])
            return self.present(rt, new)
        gone = copy.deepcopy(current)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._remove(rt, gone)
        return self.present(rt, gone)

    def _remove(self, rt: ResourceType, gone: Obj) -> None:
        """Commit the deletion of `gone` (its resourceVersion already set) and cascade."""
        old = self.objects.get(rt.key, {}).get(
            (gone["metadata"].get("namespace") or "", gone["metadata"]["name"])
        )
        self._commit([Change(self.rv, rt.key, "DELETED", gone, old)])
        if rt.key == "namespaces":
            self._delete_namespace_contents(gone["metadata"]["name"])
        if rt.key == CRDS.key:
            types = self.registry.crd_resources.get(gone["metadata"]["name"], [])
            if types:
                for obj in list(self.objects.get(types[0].key, {}).values()):
                    self.delete(types[0], obj["metadata"].get("namespace"), obj["metadata"]["name"])
            self.registry.remove_crd(gone["metadata"]["name"])
        for hook in self.on_delete:
            hook(rt, gone)

    def _delete_namespace_contents(self, ns: str) -> None:
        for key, bucket in list(self.objects.items()):
            rt = self.registry.by_key(key)
            if rt is None or not rt.namespaced:
                continue
            for (n, _name), obj in list(bucket.items()):
                if n == ns:
                    gone = copy.deepcopy(obj)
                    gone["metadata"]["resourceVersion"] = self._next_rv()
                    self._remove(rt, gone)

    @staticmethod
    def _crd_status(crd: Obj) -> None:
        names = (crd.get("spec") or {}).get("names") or {}
        ts = now_rfc3339()
        crd["status"] = {
            "acceptedNames": names,
            "storedVersions": [
                v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")
            ],
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": ts,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": ts,
                },
            ],
        }

    # ---- watch ---------------------------------------------------------------------------------------

    def watch(self, rt: ResourceType, ns: str | None, match: Matcher, since: str | None) -> Watcher:
        """Subscribe; the watcher's queue starts with the replay (or the current objects when `since` is
        empty or "0"). Raises ApiError(410) when `since` is older than the kept history."""
        w = Watcher(rt.key, ns, match)
        if not since or since == "0":
            for obj in list(self.items(rt, ns)):
                if match(obj):
                    w.queue.put_nowait(("ADDED", obj))
        else:
            try:
                from_rv = int(since)
            except ValueError as exc:
                raise errors.bad_request(f'invalid resourceVersion "{since}"') from exc
            if from_rv < self.compacted:
                raise errors.gone(f"too old resource version: {from_rv} ({self.compacted + 1})")
            for c in self.history:
                if c.rv > from_rv and c.key == rt.key:
                    w.offer(c)
        self.hub.add(w)
        return w
