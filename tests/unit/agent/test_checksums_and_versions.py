"""Checksum files and `k3s --version` output are parsed strictly.

Aspects: every architecture maps to its release asset and checksum file (armhf's file is `arm`); sha256sum
lines (two spaces, binary-mode `*`, uppercase hex) parse to lowercase; malformed lines and conflicting
duplicates are errors naming the line; real k3s version output (with pre-releases) parses and anything
else is refused; round trip with hypothesis.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.checksums import asset_for_arch, checksum_file_for_arch, parse_sha256sums
from agent.discovery import parse_version_output

A = "a" * 64
B = "B" * 64


@pytest.mark.parametrize(("arch", "asset", "sums"), [
    ("amd64", "k3s", "sha256sum-amd64.txt"),
    ("arm64", "k3s-arm64", "sha256sum-arm64.txt"),
    ("arm", "k3s-armhf", "sha256sum-arm.txt"),
])
def test_assets_per_arch(arch: str, asset: str, sums: str) -> None:
    assert asset_for_arch(arch) == asset and checksum_file_for_arch(arch) == sums


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(ValueError, match="s390x"):
        asset_for_arch("s390x")


@pytest.mark.parametrize(("text", "expected"), [
    (f"{A}  k3s\n", {"k3s": A}),
    (f"{A}  k3s\n{B} *k3s-airgap-images-amd64.tar\n\n", {"k3s": A, "k3s-airgap-images-amd64.tar": B.lower()}),
    (f"\n  {A}  k3s  \n{A}  k3s\n", {"k3s": A}),
    ("", {}),
])
def test_parse_sha256sums(text: str, expected: dict[str, str]) -> None:
    assert parse_sha256sums(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("abc  k3s\n", "line 1"),
    (f"{A}\n", "line 1"),
    (f"{A}  k3s\n{A}k3s\n", "line 2"),
    (f"{A}  k3s extra\n", "line 1"),
    (f"{A}  k3s\n{'c' * 64}  k3s\n", "twice"),
])
def test_malformed_checksum_files_are_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sha256sums(text)


@given(st.dictionaries(st.from_regex(r"[A-Za-z0-9._+-]{1,30}", fullmatch=True),
                       st.from_regex(r"[0-9a-f]{64}", fullmatch=True)))
def test_checksum_round_trip(sums: dict[str, str]) -> None:
    text = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    assert parse_sha256sums(text) == sums


@pytest.mark.parametrize(("output", "version"), [
    ("k3s version v1.30.4+k3s1 (98262b5d)\ngo version go1.22.5\n", "v1.30.4+k3s1"),
    ("k3s version v1.31.0-rc1+k3s2 (abcdef12)\ngo version go1.22.5\n", "v1.31.0-rc1+k3s2"),
    ("INFO something\nk3s version v1.28.11+k3s1 (617b0e84)\n", "v1.28.11+k3s1"),
])
def test_parse_version_output(output: str, version: str) -> None:
    assert parse_version_output(output) == version


@pytest.mark.parametrize("output", [
    "", "go version go1.22.5", "k3s version 1.30.4 (x)", "k3s version v1.30.4 (98262b5d)",
    "rke2 version v1.30.4+rke2r1 (x)",
])
def test_non_k3s_version_output_is_refused(output: str) -> None:
    with pytest.raises(ValueError, match="not k3s --version output"):
        parse_version_output(output)
