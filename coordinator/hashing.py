"""The plan hash SUC writes as `latestHash` and as the value of the node label. Pure.

SHA-224 hex over, in order: the resolved version, the serviceAccountName, the JSON of each spec field
named in the annotation `upgrade.cattle.io/digest` (comma-separated, e.g. `spec.upgrade.envs`), and for
every secret of `spec.secrets` not marked `ignoreUpdates` its name, then each key (sorted) and value.
A change to any of these is a new hash, so every node is upgraded again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

DIGEST_ANNOTATION = "upgrade.cattle.io/digest"


def _field(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.strip().strip(".").split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def plan_hash(
    version: str,
    service_account: str,
    plan_obj: Mapping[str, Any],
    secrets: Sequence[tuple[str, bool]],
    secret_data: Mapping[str, Mapping[str, bytes]],
) -> str:
    """`secrets` are (name, ignoreUpdates) in spec order; `secret_data` maps name -> decoded data."""
    h = hashlib.sha224()
    h.update(version.encode())
    h.update(service_account.encode())
    annotations = (plan_obj.get("metadata") or {}).get("annotations") or {}
    for path in filter(None, (annotations.get(DIGEST_ANNOTATION) or "").split(",")):
        h.update(json.dumps(_field(plan_obj, path), sort_keys=True, separators=(",", ":")).encode())
    for name, ignore in secrets:
        if ignore:
            continue
        h.update(name.encode())
        data = secret_data.get(name) or {}
        for key in sorted(data):
            h.update(key.encode())
            h.update(data[key])
    return h.hexdigest()
