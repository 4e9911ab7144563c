"""Which channels a set of releases implies, and how k3s versions order (pure functions).

Aspects covered:
- `+k3s2` sorts after `+k3s1`; a release sorts after its release candidates; minors compare numerically;
- `latest` = newest, `stable` = newest final unless given, `v1.NN` = newest final of each minor;
- a non-version string is rejected with a message naming it.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.channels import default_channels, minor_of, version_key


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("v1.24.4+k3s1", "v1.24.6+k3s1"),
        ("v1.24.6+k3s1", "v1.24.6+k3s2"),
        ("v1.9.0+k3s1", "v1.10.0+k3s1"),
        ("v1.30.0-rc1+k3s1", "v1.30.0+k3s1"),
        ("v1.30.0-rc1+k3s1", "v1.30.0-rc2+k3s1"),
    ],
)
def test_version_order(older: str, newer: str) -> None:
    assert version_key(older) < version_key(newer)


def test_default_channels() -> None:
    versions = ["v1.24.4+k3s1", "v1.24.6+k3s1", "v1.25.2+k3s1", "v1.26.0-rc1+k3s1"]
    assert default_channels(versions) == {
        "latest": "v1.26.0-rc1+k3s1", "testing": "v1.26.0-rc1+k3s1", "stable": "v1.25.2+k3s1",
        "v1.24": "v1.24.6+k3s1", "v1.25": "v1.25.2+k3s1", "v1.26": "v1.26.0-rc1+k3s1",
    }
    assert default_channels(versions, stable="v1.24.6+k3s1")["stable"] == "v1.24.6+k3s1"
    assert default_channels([]) == {}


def test_rejects_non_versions() -> None:
    with pytest.raises(ValueError, match=r"'1\.24' is not a k3s version"):
        version_key("1.24")


@given(st.lists(st.tuples(st.integers(1, 3), st.integers(0, 40), st.integers(0, 20), st.integers(1, 3)),
                min_size=1, max_size=12))
def test_minor_channel_is_the_newest_of_its_minor(parts: list[tuple[int, int, int, int]]) -> None:
    versions = [f"v{a}.{b}.{c}+k3s{d}" for a, b, c, d in parts]
    channels = default_channels(versions)
    for version in versions:
        assert version_key(channels[minor_of(version)]) >= version_key(version)
    assert channels["latest"] == max(versions, key=version_key)
