"""Which nodes a Plan selects, which of them are done, and SUC's stable candidate order. Pure.

Label selectors as Kubernetes defines them: `matchLabels` and `matchExpressions` with In, NotIn,
Exists, DoesNotExist, all ANDed (an empty selector selects everything). A node whose plan label is
`disabled` has opted out. Candidates are ordered by sha256(node UID + plan UID + plan hash), as SUC
does, so the order is stable for one hash and reshuffles when the plan changes.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Protocol, TypeVar

LABEL_PREFIX = "plan.upgrade.cattle.io/"
DISABLED = "disabled"


class SelectorError(ValueError):
    """A selector that cannot be evaluated (names the expression and the problem)."""


def plan_label(plan: str) -> str:
    return LABEL_PREFIX + plan


LabelPredicate = Callable[[Mapping[str, str]], bool]


def compile_selector(selector: Mapping[str, object] | None, field: str = "nodeSelector") -> LabelPredicate:
    """Validate a LabelSelector (its JSON shape) once and return a predicate over a label map.

    Raises SelectorError for a selector that cannot be evaluated, whatever labels it would later see (its
    message starts with `field`, the selector's name in the Plan).
    """
    if not selector:
        return lambda labels: True
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError(f"{field}.matchLabels must be a map")
    equal = tuple((str(k), v) for k, v in match_labels.items())
    exprs = selector.get("matchExpressions") or []
    if not isinstance(exprs, Sequence):
        raise SelectorError(f"{field}.matchExpressions must be a list")
    checks: list[tuple[str, str, frozenset[str]]] = []
    for i, expr in enumerate(exprs):
        if not isinstance(expr, Mapping):
            raise SelectorError(f"{field}.matchExpressions[{i}] must be an object")
        op = expr.get("operator")
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise SelectorError(f"{field}.matchExpressions[{i}].operator: unknown operator {op!r}")
        values = frozenset(str(v) for v in (expr.get("values") or []))
        checks.append((str(expr.get("key", "")), str(op), values))

    def predicate(labels: Mapping[str, str]) -> bool:
        for key, value in equal:
            if labels.get(key) != value:
                return False
        for key, op, values in checks:
            present = key in labels
            if op == "In":
                ok = present and labels[key] in values
            elif op == "NotIn":
                ok = not present or labels[key] not in values
            elif op == "Exists":
                ok = present
            else:
                ok = not present
            if not ok:
                return False
        return True

    return predicate


def matches(selector: Mapping[str, object] | None, labels: Mapping[str, str]) -> bool:
    """Whether `labels` satisfy a LabelSelector given as its JSON shape."""
    return compile_selector(selector)(labels)


class _Node(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...
    @property
    def labels(self) -> Mapping[str, str]: ...


N = TypeVar("N", bound=_Node)


def chooser(selector: Mapping[str, object] | None, plan: str) -> LabelPredicate:
    """Whether the plan selects a node by its labels: the selector matches and the node did not opt out
    with the plan label's value `disabled`."""
    label = plan_label(plan)
    match = compile_selector(selector)
    return lambda labels: match(labels) and labels.get(label) != DISABLED


def selected(selector: Mapping[str, object] | None, plan: str, nodes: Iterable[N]) -> list[N]:
    """Nodes matched by the selector, minus those that opted out with the label value `disabled`."""
    choose = chooser(selector, plan)
    return [n for n in nodes if choose(n.labels)]


def is_done(node: _Node, plan: str, plan_hash: str) -> bool:
    return node.labels.get(plan_label(plan)) == plan_hash


@lru_cache(maxsize=65536)
def candidate_key(node_uid: str, plan_uid: str, plan_hash: str) -> str:
    """The node's place in the plan's order (cached: every pass orders every candidate node)."""
    return hashlib.sha256((node_uid + plan_uid + plan_hash).encode()).hexdigest()


def candidate_order(nodes: Iterable[N], plan_uid: str, plan_hash: str, first: int | None = None) -> list[N]:
    """The nodes in the plan's order; only the `first` of them if given (without sorting them all)."""
    def order(n: N) -> tuple[str, str]:
        return (candidate_key(n.uid, plan_uid, plan_hash), n.name)

    if first is not None:
        return heapq.nsmallest(first, nodes, key=order) if first > 0 else []
    return sorted(nodes, key=order)
