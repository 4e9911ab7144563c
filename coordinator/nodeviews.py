"""The coordinator's Node views by name, with each plan's selection kept up to date as the views change.

Every scheduling pass needs, per plan, the Nodes its selector picks and those of them not done at its
hash. Walking every Node for every plan costs nodes x plans per pass (5,000 Nodes and 20 plans: 100,000
lookups, most of a decision). The views change a few at a time, one per watch event, so `NodeViews`
keeps each plan's answer and updates it with every view put or removed (a selector evaluated per plan
asked for); a pass then reads each answer as it stands. So too for the two other sets a pass needs: the
control-plane Nodes (the skew rules read their versions) and the Nodes a person asks to retry.

The runtime owns one and changes it only between passes, so what a pass reads matches `World.nodes`.
An answer lists the same views as a walk over the Nodes (`selection.selected`, `selection.is_done`),
not necessarily in the same order: the engine does not depend on it. No I/O.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, ValuesView

from coordinator.cordons import CORDON_ANNOTATION
from coordinator.engine import RETRY_ANNOTATION, NodeView
from coordinator.selection import LabelPredicate, chooser, plan_label

Answer = tuple[tuple[NodeView, ...], tuple[NodeView, ...]]
"""(the views a plan selects, those of them not done at its hash)"""


class _Selection:
    """One plan's answer for one selector and hash, kept per view."""

    def __init__(self, choose: LabelPredicate, label: str, plan_hash: str | None) -> None:
        self.choose, self.label, self.hash = choose, label, plan_hash
        self.done: dict[str, NodeView] = {}
        self.pending: dict[str, NodeView] = {}
        self.answer: Answer | None = None

    def put(self, view: NodeView) -> None:
        name = view.name
        was = self.done.pop(name, None) or self.pending.pop(name, None)
        if self.choose(view.labels):
            if self.hash is not None and view.labels.get(self.label) == self.hash:  # `selection.is_done`
                self.done[name] = view
            else:
                self.pending[name] = view
            self.answer = None
        elif was is not None:
            self.answer = None

    def fill(self, views: Iterable[NodeView]) -> None:
        """`put` each of `views` (none of them put before): the first answer, in one walk."""
        choose, label, plan_hash, done, pending = self.choose, self.label, self.hash, self.done, self.pending
        for view in views:
            if choose(view.labels):
                if plan_hash is not None and view.labels.get(label) == plan_hash:
                    done[view.name] = view
                else:
                    pending[view.name] = view
        self.answer = None

    def discard(self, name: str) -> None:
        if self.done.pop(name, None) is not None or self.pending.pop(name, None) is not None:
            self.answer = None

    def read(self) -> Answer:
        if self.answer is None:
            pending = tuple(self.pending.values())
            self.answer = (*self.done.values(), *pending), pending
        return self.answer


class NodeViews(Mapping[str, NodeView]):
    """name -> the Node's current view; `select` answers for a plan without walking the views."""

    def __init__(self) -> None:
        self._views: dict[str, NodeView] = {}
        self._selections: dict[tuple[str, str, str | None], _Selection] = {}
        self._servers: dict[str, NodeView] = {}
        self._retries: dict[str, NodeView] = {}
        self._marked: dict[str, NodeView] = {}

    def __getitem__(self, name: str) -> NodeView:
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._views)

    def __len__(self) -> int:
        return len(self._views)

    # The dict's own, faster than Mapping's (a pass reads every view).
    def __contains__(self, name: object) -> bool:
        return name in self._views

    def get(self, name: str, default: NodeView | None = None) -> NodeView | None:  # type: ignore[override]
        return self._views.get(name, default)

    def values(self) -> ValuesView[NodeView]:
        return self._views.values()

    def put(self, view: NodeView) -> None:
        """The Node's view, new or replacing the one of the same name."""
        name = view.name
        self._views[name] = view
        for selection in self._selections.values():
            selection.put(view)
        retry = RETRY_ANNOTATION in view.annotations
        marked = CORDON_ANNOTATION in view.annotations
        for kept, wanted in ((self._servers, view.server), (self._retries, retry), (self._marked, marked)):
            if wanted:
                kept[name] = view
            else:
                kept.pop(name, None)

    def pop(self, name: str) -> NodeView | None:
        """Forget the Node; its last view, if any."""
        view = self._views.pop(name, None)
        if view is not None:
            for selection in self._selections.values():
                selection.discard(name)
            self._servers.pop(name, None)
            self._retries.pop(name, None)
            self._marked.pop(name, None)
        return view

    def servers(self) -> Collection[NodeView]:
        """The views of the Nodes that run the control plane (`NodeView.server`)."""
        return self._servers.values()

    def retries(self) -> Collection[NodeView]:
        """The views of the Nodes annotated `RETRY_ANNOTATION` (a person asks to try them again)."""
        return self._retries.values()

    def marked(self) -> Collection[NodeView]:
        """The views of the Nodes marked as cordoned by us (`coordinator.cordons.CORDON_ANNOTATION`)."""
        return self._marked.values()

    def select(self, selector: Mapping[str, object] | None, plan: str, plan_hash: str | None) -> Answer:
        """(the views `plan`'s `selector` picks, those of them not done at `plan_hash`; all of them
        without a hash), as a walk over every view would (`selection.selected`, `selection.is_done`)."""
        key = (plan, json.dumps(selector, sort_keys=True), plan_hash)
        selection = self._selections.get(key)
        if selection is None:
            # A plan has one selector and one hash at a time: what it was asked with before is stale.
            for stale in [k for k in self._selections if k[0] == plan]:
                del self._selections[stale]
            selection = _Selection(chooser(selector, plan), plan_label(plan), plan_hash)
            self._selections[key] = selection
            selection.fill(self._views.values())
        return selection.read()

    def retain(self, plans: Container[str]) -> None:
        """Stop keeping answers for plans not in `plans` (deleted ones)."""
        for gone in [k for k in self._selections if k[0] not in plans]:
            del self._selections[gone]
