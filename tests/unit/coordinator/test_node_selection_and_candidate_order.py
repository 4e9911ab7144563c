"""Which nodes a Plan selects and in what order they are upgraded.

Aspects: matchLabels and every matchExpressions operator (In, NotIn, Exists, DoesNotExist), ANDed;
empty selector selects all; unknown operator is a SelectorError naming the expression; the plan label
value `disabled` opts a node out; done = label equals hash; candidate order is SUC's sha256(node UID +
plan UID + hash), stable for one hash and different for another. (The selections the coordinator keeps
as Nodes change: test_node_views_keep_selections.py.)
"""

from __future__ import annotations

import hashlib

import pytest

from coordinator.engine import NodeView
from coordinator.selection import (
    SelectorError,
    candidate_order,
    is_done,
    matches,
    selected,
)

LABELS = {"role": "worker", "zone": "a", "gpu": "yes"}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (None, True),
        ({}, True),
        ({"matchLabels": {"role": "worker"}}, True),
        ({"matchLabels": {"role": "server"}}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["b"]}]}, True),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, False),
        ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, False),
        ({"matchLabels": {"role": "worker"},
          "matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}, False),
    ],
)
def test_selector_matching(selector: dict | None, expected: bool) -> None:  # type: ignore[type-arg]
    assert matches(selector, LABELS) is expected


def test_unknown_operator_names_the_expression() -> None:
    with pytest.raises(SelectorError, match=r"matchExpressions\[0\].operator"):
        matches({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, LABELS)


def node(name: str, labels: dict[str, str] | None = None) -> NodeView:
    return NodeView(name=name, uid=f"uid-{name}", labels=labels or {})


def test_disabled_opts_out_and_done_is_the_hash() -> None:
    label = "plan.upgrade.cattle.io/p"
    nodes = [node("a"), node("b", {label: "disabled"}), node("c", {label: "h1"})]
    assert [n.name for n in selected(None, "p", nodes)] == ["a", "c"]
    assert is_done(nodes[2], "p", "h1")
    assert not is_done(nodes[2], "p", "h2")
    assert not is_done(nodes[0], "p", "h1")


def test_candidate_order_is_sucs_sha256_and_depends_on_the_hash() -> None:
    nodes = [node(f"n{i}") for i in range(8)]

    def expected(h: str) -> list[str]:
        return [n.name for n in sorted(nodes, key=lambda n: hashlib.sha256(
            (n.uid + "plan-uid" + h).encode()).hexdigest())]

    order1 = [n.name for n in candidate_order(nodes, "plan-uid", "h1")]
    order2 = [n.name for n in candidate_order(list(reversed(nodes)), "plan-uid", "h2")]
    assert order1 == expected("h1")
    assert order2 == expected("h2")
    assert order1 != order2
    assert [n.name for n in candidate_order(list(reversed(nodes)), "plan-uid", "h1")] == order1
    for k in range(10):  # the first k without sorting all of them: the same prefix
        assert [n.name for n in candidate_order(reversed(nodes), "plan-uid", "h1", first=k)] == order1[:k]


def test_a_bad_expression_is_an_error_even_when_match_labels_already_fail() -> None:
    """The selector is validated as a whole, not only as far as one node's labels get it."""
    selector = {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "a", "operator": "Near"}]}
    with pytest.raises(SelectorError, match=r"matchExpressions\[0\].operator"):
        matches(selector, {})


def test_a_plan_with_a_bad_expression_beside_match_labels_is_invalid() -> None:
    from coordinator.plans import parse_plan

    spec = {
        "concurrency": 1,
        "version": "v1.30.4+k3s1",
        "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchLabels": {"a": "b"}, "matchExpressions": [{"key": "a", "operator": "Near"}]},
    }
    plan, errors = parse_plan({"metadata": {"name": "p", "namespace": "system-upgrade"}, "spec": spec})
    assert plan is None and any("nodeSelector" in e and "Near" in e for e in errors), errors
