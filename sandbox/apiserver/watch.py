"""The watch hub: who is watching what, and which event each watcher sees.

A watcher names a resource (storage key), optionally a namespace, and a selector. For every change the
store hands the hub the object before and after; the hub turns that into what this watcher must see:
an object entering its selector is ADDED, one leaving it is DELETED (as on the real server), one
staying in it is MODIFIED. Replays from the history use the same translation. Pure except for the
per-watcher asyncio queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.apiserver.selectors import Matcher

Obj = dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One committed write: `type` is ADDED/MODIFIED/DELETED, `old` the object before (None on ADDED)."""

    rv: int
    key: str
    type: str
    obj: Obj
    old: Obj | None


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def translate(change: Change, namespace: str | None, match: Matcher) -> tuple[str, Obj] | None:
    """What a watcher with this namespace and selector sees of a change (None: nothing)."""
    if namespace and namespace_of(change.obj) != namespace:
        return None
    new_in = change.type != "DELETED" and match(change.obj)
    old_in = change.old is not None and match(change.old)
    if change.type == "ADDED":
        return ("ADDED", change.obj) if new_in else None
    if change.type == "DELETED":
        return ("DELETED", change.obj) if old_in else None
    if new_in and old_in:
        return ("MODIFIED", change.obj)
    if new_in:
        return ("ADDED", change.obj)
    if old_in:
        return ("DELETED", change.obj)
    return None


@dataclass(eq=False)
class Watcher:
    key: str
    namespace: str | None
    match: Matcher
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def offer(self, change: Change) -> None:
        seen = translate(change, self.namespace, self.match)
        if seen is not None:
            self.queue.put_nowait(seen)

    def close(self) -> None:
        self.queue.put_nowait(None)


@dataclass
class WatchHub:
    by_key: dict[str, set[Watcher]] = field(default_factory=dict)

    def add(self, w: Watcher) -> None:
        self.by_key.setdefault(w.key, set()).add(w)

    def remove(self, w: Watcher) -> None:
        self.by_key.get(w.key, set()).discard(w)

    def publish(self, change: Change) -> None:
        for w in list(self.by_key.get(change.key, ())):
            w.offer(change)

    def close_all(self) -> None:
        for ws in self.by_key.values():
            for w in ws:
                w.close()

    def count(self) -> int:
        return sum(len(ws) for ws in self.by_key.values())
