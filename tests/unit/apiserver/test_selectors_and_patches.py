"""Pure pieces of the emulator: selector parsing/matching, the three patch types, Table JSONPath.

Aspects covered:
- label selectors: equality, inequality, set-based, existence, bad syntax -> 400;
- field selectors: supported fields only, `!=`, missing values;
- JSON merge patch (RFC 7386 examples, and a property: merging a patch twice changes nothing more);
- JSON patch operations and failures (422);
- strategic merge patch: merge keys, `$patch: delete`, `$setElementOrder` dropped, 415 on custom resources;
- the printer-column JSONPath subset (filters, indexes).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.apiserver.errors import ApiError
from sandbox.apiserver.patching import apply_patch, json_patch, merge_patch, strategic_merge_patch
from sandbox.apiserver.selectors import fields_match, labels_match, parse_field_selector, parse_label_selector
from sandbox.apiserver.tables import jsonpath

LABELS = {"role": "master", "zone": "a", "n": "5"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("role=master", True),
        ("role==master", True),
        ("role!=master", False),
        ("role!=agent", True),
        ("zone in (a,b)", True),
        ("zone notin (a,b)", False),
        ("missing notin (a)", True),
        ("role", True),
        ("!role", False),
        ("!missing", True),
        ("role=master,zone=b", False),
        ("n>4", True),
        ("n<4", False),
        ("", True),
    ],
)
def test_label_selectors(selector: str, matches: bool) -> None:
    assert labels_match(parse_label_selector(selector), LABELS) is matches


@pytest.mark.parametrize("bad", ["role===x", "zone in a,b", "=x"])
def test_bad_label_selector_is_400(bad: str) -> None:
    with pytest.raises(ApiError) as exc:
        parse_label_selector(bad)
    assert exc.value.code == 400


def test_field_selectors() -> None:
    allowed = frozenset({"metadata.name", "spec.nodeName", "status.phase"})
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {}}
    assert fields_match(parse_field_selector("spec.nodeName=n1", allowed, "Pod"), pod)
    assert not fields_match(parse_field_selector("spec.nodeName!=n1", allowed, "Pod"), pod)
    assert fields_match(parse_field_selector("status.phase=", allowed, "Pod"), pod)
    with pytest.raises(ApiError) as exc:
        parse_field_selector("spec.other=x", allowed, "Pod")
    assert exc.value.code == 400 and "spec.other" in exc.value.message


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386(target: Any, patch: Any, result: Any) -> None:
    assert merge_patch(target, patch) == result


json_values = st.recursive(
    st.none() | st.integers() | st.text(max_size=3),
    lambda inner: st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=8,
)


@given(json_values, json_values)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


def test_json_patch_operations_and_failures() -> None:
    doc = {"spec": {"a": 1, "l": [1, 2]}}
    out = json_patch(
        doc,
        [
            {"op": "add", "path": "/spec/b", "value": 2},
            {"op": "remove", "path": "/spec/a"},
            {"op": "add", "path": "/spec/l/-", "value": 3},
            {"op": "replace", "path": "/spec/l/0", "value": 0},
            {"op": "test", "path": "/spec/b", "value": 2},
            {"op": "copy", "from": "/spec/b", "path": "/spec/c"},
            {"op": "move", "from": "/spec/c", "path": "/d"},
        ],
    )
    assert out == {"spec": {"b": 2, "l": [0, 2, 3]}, "d": 2}
    assert doc == {"spec": {"a": 1, "l": [1, 2]}}
    for bad in ([{"op": "test", "path": "/spec/a", "value": 9}], [{"op": "remove", "path": "/nope"}]):
        with pytest.raises(ApiError) as exc:
            json_patch(doc, bad)
        assert exc.value.code == 422


def test_strategic_merge_patch() -> None:
    pod = {
        "spec": {
            "containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}],
            "taints": [{"key": "k1"}],
        },
        "metadata": {"finalizers": ["f1"]},
    }
    out = strategic_merge_patch(
        pod,
        {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "spec": {
                "containers": [{"name": "b", "image": "z"}, {"name": "c", "image": "w"}],
                "taints": [{"key": "k1", "$patch": "delete"}],
            },
            "metadata": {"finalizers": ["f2"]},
        },
    )
    assert out["spec"]["containers"] == [
        {"name": "a", "image": "x"},
        {"name": "b", "image": "z"},
        {"name": "c", "image": "w"},
    ]
    assert out["spec"]["taints"] == [] and out["metadata"]["finalizers"] == ["f1", "f2"]
    with pytest.raises(ApiError) as exc:
        apply_patch("application/strategic-merge-patch+json", {}, {}, custom=True)
    assert exc.value.code == 415
    with pytest.raises(ApiError) as exc:
        apply_patch("text/plain", {}, {}, custom=False)
    assert exc.value.code == 415


def test_printer_column_jsonpath() -> None:
    plan = {
        "spec": {"upgrade": {"image": "img"}},
        "status": {
            "applying": ["n1"],
            "conditions": [
                {"type": "Validated", "status": "True"},
                {"type": "Complete", "status": "False", "message": "m"},
            ],
        },
    }
    assert jsonpath(plan, ".spec.upgrade.image") == ["img"]
    assert jsonpath(plan, ".status.conditions[?(@.type=='Complete')].status") == ["False"]
    assert jsonpath(plan, ".status.conditions[1].message") == ["m"]
    assert jsonpath(plan, ".status.conditions[*].type") == ["Validated", "Complete"]
    assert jsonpath(plan, ".status.conditions[?(@.message!='')].message") == ["m"]  # SUC's Message column
    assert jsonpath(plan, ".status.conditions[?(@.type!='Complete')].type") == ["Validated"]
    assert jsonpath(plan, ".spec.channel") == []
