"""k3s release checksums: asset names per architecture and the `sha256sum-<arch>.txt` format."""

from __future__ import annotations

import re

ASSETS = {"amd64": "k3s", "arm64": "k3s-arm64", "arm": "k3s-armhf"}
"""Release asset of the k3s binary per GOARCH (the armhf binary's checksum file is named `arm`)."""
_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)$")


def asset_for_arch(arch: str) -> str:
    try:
        return ASSETS[arch]
    except KeyError:
        raise ValueError(f"k3s has no release binary for architecture {arch!r}") from None


def checksum_file_for_arch(arch: str) -> str:
    asset_for_arch(arch)
    return f"sha256sum-{arch}.txt"


def parse_sha256sums(text: str) -> dict[str, str]:
    """Asset name -> lowercase sha256 from `sha256sum` output; blank lines skipped, others are errors."""
    sums: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"checksum file line {number} is not '<sha256>  <name>': {line[:120]!r}")
        name = match.group(2)
        if name in sums and sums[name] != match.group(1).lower():
            raise ValueError(f"checksum file names {name!r} twice with different sums")
        sums[name] = match.group(1).lower()
    return sums
