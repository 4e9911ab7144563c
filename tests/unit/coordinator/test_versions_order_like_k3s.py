"""k3s version parsing and ordering.

Aspects: release order by major.minor.patch, then pre-release (-rc1 < release), then the k3s revision
(+k3s1 < +k3s2, which plain SemVer ignores); the `v` is optional; garbage is a VersionError naming the text;
`same_version` matches kubelet strings.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coordinator.versions import VersionError, is_version, parse_version, same_version

ORDERED = [
    "v1.29.9+k3s1",
    "v1.30.0-rc1+k3s1",
    "v1.30.0-rc2+k3s1",
    "v1.30.0+k3s1",
    "v1.30.0+k3s2",
    "v1.30.1+k3s1",
    "v1.30.10+k3s1",
    "v1.31.0+k3s1",
]


@pytest.mark.parametrize(("lower", "higher"), list(itertools.pairwise(ORDERED)))
def test_order(lower: str, higher: str) -> None:
    assert parse_version(lower) < parse_version(higher)
    assert not parse_version(higher) < parse_version(lower)


@given(st.permutations(ORDERED))
def test_sorting_any_permutation_gives_release_order(perm: list[str]) -> None:
    assert [str(v) for v in sorted(parse_version(t) for t in perm)] == ORDERED


@pytest.mark.parametrize("text", ["", "latest", "1.30", "v1.30.1+foo", "v1.30.x+k3s1", "stable"])
def test_garbage_is_rejected_naming_the_text(text: str) -> None:
    with pytest.raises(VersionError, match="not a k3s version"):
        parse_version(text)
    assert not is_version(text)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("v1.30.1+k3s1", "v1.30.1+k3s1", True),
        ("v1.30.1+k3s1", "1.30.1+k3s1", True),
        ("v1.30.1+k3s1", "v1.30.1+k3s2", False),
        ("v1.30.1+k3s1", None, False),
        ("v1.30.1-rc1+k3s1", "v1.30.1+k3s1", False),
    ],
)
def test_same_version(a: str, b: str | None, same: bool) -> None:
    assert same_version(a, b) is same


def test_parts() -> None:
    v = parse_version("v1.30.4+k3s2")
    assert (v.major, v.minor, v.revision) == (1, 30, 2)


_PRE = st.one_of(
    st.none(),
    st.lists(
        st.one_of(st.integers(0, 20).map(str), st.sampled_from(["rc", "alpha", "beta", "a1", "rc1"])),
        min_size=1,
        max_size=3,
    ).map(".".join),
)
_VERSION = st.builds(
    lambda minor, patch, pre, rev: f"v1.{minor}.{patch}" + (f"-{pre}" if pre else "") + f"+k3s{rev}",
    st.integers(28, 31),
    st.integers(0, 3),
    _PRE,
    st.integers(1, 3),
)


@given(_VERSION, _VERSION)
def test_order_is_semver_precedence_then_revision(a: str, b: str) -> None:
    """The cached plain-tuple key orders exactly as semver's own precedence, then the k3s revision."""
    va, vb = parse_version(a), parse_version(b)
    ka, kb = (va.sem.replace(build=None), va.revision), (vb.sem.replace(build=None), vb.revision)
    assert (va < vb) == (ka < kb)
    assert (va == vb) == (ka == kb)
