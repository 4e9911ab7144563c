"""Version-skew safety rules the k3s docs ask for and SUC does not enforce. Pure.

Before a node gets a lease: (1) never downgrade a node that runs a newer version than the target;
(2) never skip a minor version (v1.28 -> v1.30); (3) a node that is not a server never goes past the
oldest version its servers run (kubelets must not be newer than the API servers). Each rule has an
explicit opt-in to allow it (`Safety` in coordinator.config; here `SkewPolicy`). `check` returns None
when the move is safe, otherwise a message naming the node and the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from coordinator.versions import VersionError, parse_version

SERVER_LABELS = ("node-role.kubernetes.io/master", "node-role.kubernetes.io/control-plane")


@dataclass(frozen=True)
class SkewPolicy:
    allow_downgrade: bool = False
    allow_minor_skip: bool = False
    allow_agent_skew: bool = False


def is_server(labels: Mapping[str, str]) -> bool:
    return any(labels.get(k) == "true" for k in SERVER_LABELS)


def check(
    node: str,
    current: str | None,
    target: str,
    server: bool,
    server_versions: Iterable[str | None],
    policy: SkewPolicy,
) -> str | None:
    try:
        tgt = parse_version(target)
    except VersionError as exc:
        return str(exc)
    cur = None
    if current:
        try:
            cur = parse_version(current)
        except VersionError:
            cur = None
    if cur is not None:
        if not policy.allow_downgrade and cur > tgt:
            return f"node {node} runs {current}, newer than the target {target}: downgrade refused"
        if not policy.allow_minor_skip and (tgt.major, tgt.minor) > (cur.major, cur.minor + 1):
            return f"node {node} runs {current}: going to {target} would skip a minor version"
    if not server and not policy.allow_agent_skew:
        parsed = []
        for v in server_versions:
            try:
                parsed.append(parse_version(v)) if v else None
            except VersionError:
                continue
        if parsed and tgt > min(parsed):
            return (
                f"node {node} is an agent; its servers run {min(parsed)} and the target {target} "
                "is newer: upgrade the servers first"
            )
    return None


_NODE = "\x00node\x00"
"""Stands for the node's name in a cached message (names cannot hold NUL)."""


def checker(
    target: str, server_versions: Iterable[str | None], policy: SkewPolicy
) -> Callable[[str, str | None, bool], str | None]:
    """`check` against one target and one set of servers, for many nodes: `(node, current, server)`.

    A pass checks every candidate node, and a cluster runs only a few versions: each distinct
    (current version, server or not) is checked once, and the message then names the node."""
    servers = tuple(server_versions)
    seen: dict[tuple[str | None, bool], str | None] = {}

    def problem(node: str, current: str | None, server: bool) -> str | None:
        key = (current, server)
        if key not in seen:
            seen[key] = check(_NODE, current, target, server, servers, policy)
        found = seen[key]
        return None if found is None else found.replace(_NODE, node)

    return problem
