"""`coordinator.nodeviews.NodeViews`: each plan's selection kept as views are put and removed.

Aspects: after any sequence of puts (labels that move a node into, out of and within a selection, the
plan label done, at another hash or `disabled`) and removals, `select` answers the same views as a walk
over every view (`selection.selected`, `selection.is_done`), for several plans, selectors and hashes;
an answer is kept while no view it holds changes (another plan's or an unselected node's change leaves
it as it is); asking a plan with another selector or hash, or `retain`, drops what was kept for it.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.engine import NodeView
from coordinator.nodeviews import NodeViews
from coordinator.selection import is_done, plan_label, selected

NAMES = ["a", "b", "c", "d", "e"]
SELECTORS: list[dict[str, Any] | None] = [
    None,
    {"matchLabels": {"role": "worker"}},
    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["x", "y"]}]},
    {"matchExpressions": [{"key": "role", "operator": "DoesNotExist"}]},
]
PLANS = ["p", "q"]
HASHES = [None, "h1", "h2"]

labels = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["worker", "server"]),
        "zone": st.sampled_from(["x", "y", "z"]),
        plan_label("p"): st.sampled_from(["h1", "h2", "disabled"]),
        plan_label("q"): st.sampled_from(["h1", "h2"]),
    },
)
put = st.tuples(st.just("put"), st.sampled_from(NAMES), labels)
pop = st.tuples(st.just("pop"), st.sampled_from(NAMES))
key = st.tuples(st.sampled_from(range(len(SELECTORS))), st.sampled_from(HASHES))
switch = st.tuples(st.just("switch"), st.sampled_from(PLANS), key)  # the plan changed


def names(views: tuple[NodeView, ...] | list[NodeView]) -> list[str]:
    return sorted(v.name for v in views)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({p: key for p in PLANS}),
       st.lists(st.one_of(put, put, pop, switch), max_size=40))
def test_select_answers_like_a_walk_over_every_view(
    keys: dict[str, tuple[int, str | None]], steps: list[tuple[Any, ...]]
) -> None:
    views = NodeViews()
    for step in steps:
        if step[0] == "put":
            views.put(NodeView(name=step[1], uid=f"uid-{step[1]}", labels=step[2]))
        elif step[0] == "pop":
            views.pop(step[1])
        else:
            keys[step[1]] = step[2]
        for plan, (i, plan_hash) in keys.items():  # every pass asks every plan
            chosen, pending = views.select(SELECTORS[i], plan, plan_hash)
            walked = selected(SELECTORS[i], plan, views.values())
            walked_pending = [n for n in walked if plan_hash is None or not is_done(n, plan, plan_hash)]
            assert names(chosen) == names(walked)
            assert names(pending) == names(walked_pending)
            assert all(views[v.name] is v for v in chosen)  # the current views, not older ones


def test_an_answer_is_kept_until_a_view_in_it_changes() -> None:
    views = NodeViews()
    for name, role in (("a", "worker"), ("b", "worker"), ("c", "server")):
        views.put(NodeView(name=name, uid=name, labels={"role": role}))
    workers = {"matchLabels": {"role": "worker"}}
    first = views.select(workers, "p", "h1")
    assert names(first[0]) == ["a", "b"]
    views.put(NodeView(name="c", uid="c", labels={"role": "server", "zone": "x"}))  # not selected
    assert views.select(workers, "p", "h1") is first
    views.put(NodeView(name="a", uid="a", labels={"role": "server"}))  # leaves the selection
    assert names(views.select(workers, "p", "h1")[0]) == ["b"]
    views.put(NodeView(name="b", uid="b", labels={"role": "worker", plan_label("p"): "h1"}))  # done
    chosen, pending = views.select(workers, "p", "h1")
    assert (names(chosen), names(pending)) == (["b"], [])
    views.pop("b")
    assert views.select(workers, "p", "h1") == ((), ())


def test_another_selector_or_hash_and_retain_drop_what_was_kept() -> None:
    views = NodeViews()
    views.put(NodeView(name="a", uid="a", labels={"role": "worker"}))
    views.select(None, "p", "h1")
    views.select(None, "q", "h1")
    views.select({"matchLabels": {"role": "worker"}}, "p", "h2")
    assert sorted(k[:1] + k[2:] for k in views._selections) == [("p", "h2"), ("q", "h1")]
    views.retain({"p"})
    assert [k[0] for k in views._selections] == ["p"]
