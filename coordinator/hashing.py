"""The plan hash SUC writes as `latestHash` and as the value of the node label. Pure.

As SUC's `DigestStatus` computes it: SHA-224 hex over, in order, the resolved version, the
serviceAccountName, the string value of each field path named in the Plan annotation
`upgrade.cattle.io/digest` (comma-separated dotted paths from the object root, e.g.
`spec.upgrade.envs`; strings verbatim, other values as compact JSON), and for every secret of
`spec.secrets` not marked `ignoreUpdates` kubectl's short secret hash (`hash.SecretHash`: sha256 of
the JSON {"data", "kind": "Secret", "name", "type"} with base64 data, first 10 hex digits with
0->g 1->h 3->k a->m e->t). Any change to these is a new hash, so every node is upgraded again.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

DIGEST_ANNOTATION = "upgrade.cattle.io/digest"
_ENCODE = str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"})


def _field(obj: Mapping[str, Any], path: str) -> Any:
    cur: Any = obj
    for part in path.strip().split("."):
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(part)
    return cur


def _as_string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def secret_hash(name: str, data: Mapping[str, bytes], type_: str = "Opaque") -> str:
    """kubectl's `hash.SecretHash` of a Secret with this name, type and (decoded) data."""
    encoded = json.dumps(
        {
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            "kind": "Secret",
            "name": name,
            "type": type_,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(encoded.encode()).hexdigest()[:10].translate(_ENCODE)


def plan_hash(
    version: str,
    service_account: str,
    plan_obj: Mapping[str, Any],
    secrets: Sequence[tuple[str, bool]],
    secret_data: Mapping[str, Mapping[str, bytes]],
    secret_types: Mapping[str, str] | None = None,
) -> str:
    """`secrets` are (name, ignoreUpdates) in spec order; `secret_data` maps name -> decoded data."""
    h = hashlib.sha224()
    h.update(version.encode())
    h.update(service_account.encode())
    annotations = (plan_obj.get("metadata") or {}).get("annotations") or {}
    for path in filter(None, (annotations.get(DIGEST_ANNOTATION) or "").split(",")):
        h.update(_as_string(_field(plan_obj, path)).encode())
    for name, ignore in secrets:
        if ignore:
            continue
        kind = (secret_types or {}).get(name, "Opaque")
        h.update(secret_hash(name, secret_data.get(name) or {}, kind).encode())
    return h.hexdigest()
