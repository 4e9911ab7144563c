"""`k3s --version` output is parsed strictly: real k3s version output (with pre-releases) parses and
anything else is refused. (The release's checksum files are the coordinator's to parse:
tests/unit/coordinator/test_channel_and_artifact_resolution.py.)
"""

from __future__ import annotations

import pytest

from agent.discovery import parse_version_output


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
