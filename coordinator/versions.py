"""k3s version strings (`v1.30.4+k3s1`, `v1.31.0-rc1+k3s1`): parsing and ordering.

Plain SemVer ignores build metadata, so `+k3s2` and `+k3s1` would compare equal; k3s orders by
major.minor.patch, then pre-release (`-rc1` < release), then the k3s revision (`k3s1` < `k3s2`).
Pure; parsed with `semver`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property, lru_cache, total_ordering
from typing import Any

import semver

_REVISION = re.compile(r"^k3s(\d+)$")


class VersionError(ValueError):
    """The text is not a k3s version (the message quotes it)."""


@total_ordering
@dataclass(frozen=True)
class K3sVersion:
    text: str
    sem: semver.Version
    revision: int

    @property
    def major(self) -> int:
        return int(self.sem.major)

    @property
    def minor(self) -> int:
        return int(self.sem.minor)

    @cached_property
    def _key_tuple(self) -> tuple[Any, ...]:
        """SemVer precedence as a plain tuple (compared without semver's per-call work), then revision:
        a release sorts after its pre-releases; pre-release fields compare numerically when numeric,
        numeric before alphanumeric, and a shorter list of equal fields first."""
        pre = self.sem.prerelease
        fields = tuple((0, int(f), "") if f.isdigit() else (1, 0, f) for f in pre.split(".")) if pre else ()
        release = (1,) if not pre else (0, fields)
        return (int(self.sem.major), int(self.sem.minor), int(self.sem.patch), release, self.revision)

    def _key(self) -> tuple[Any, ...]:
        return self._key_tuple

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, K3sVersion):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, K3sVersion):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key_tuple)

    def __str__(self) -> str:
        return self.text


@lru_cache(maxsize=1024)
def parse_version(text: str) -> K3sVersion:
    """Parse `v1.30.4+k3s1` (the `v` is optional; a missing revision counts as 0).

    Cached: every scheduling pass compares every node's version, and a cluster runs only a few."""
    raw = text.strip()
    body = raw[1:] if raw[:1] in ("v", "V") else raw
    try:
        ver = semver.Version.parse(body)
    except (ValueError, TypeError) as exc:
        raise VersionError(f"{text!r} is not a k3s version (expected e.g. v1.30.4+k3s1)") from exc
    revision = 0
    if ver.build:
        m = _REVISION.match(ver.build)
        if m is None:
            raise VersionError(f"{text!r} is not a k3s version: build metadata {ver.build!r} is not k3sN")
        revision = int(m.group(1))
    return K3sVersion(text=raw, sem=ver, revision=revision)


def is_version(text: str) -> bool:
    try:
        parse_version(text)
    except VersionError:
        return False
    return True


def same_version(a: str | None, b: str | None) -> bool:
    """True when both parse and are the same release (kubelet versions may lack the `v`)."""
    if not a or not b:
        return False
    try:
        return parse_version(a) == parse_version(b)
    except VersionError:
        return a == b
