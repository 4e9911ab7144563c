"""Reading the Kubernetes protobuf envelope kubectl uses for some built-in creates (`kubectl create ns`).

kubectl 1.32 sends `application/vnd.kubernetes.protobuf` bodies for typed creates and does not fall back
to JSON, so the emulator decodes what those commands carry: the envelope (`k8s\\0` + runtime.Unknown with
apiVersion/kind) and the object's ObjectMeta (field 1: name, generateName, namespace, labels,
annotations). Other fields are not decoded (without Go schemas they cannot be named); objects needing
them should be written as JSON (`kubectl apply -f`). Pure functions.
"""

from __future__ import annotations

from typing import Any

from sandbox.apiserver.errors import ApiError, bad_request

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"
METADATA_ONLY = frozenset({"Namespace", "ServiceAccount"})
"""Kinds whose `kubectl create` carries nothing but metadata; others are refused (415), not half-read."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf):
            raise bad_request("truncated protobuf body")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes) -> list[tuple[int, bytes | int]]:
    """The (field number, value) pairs of a message; length-delimited values as bytes."""
    out: list[tuple[int, bytes | int]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
            out.append((num, val))
        elif wire == 2:
            size, pos = _varint(buf, pos)
            out.append((num, buf[pos : pos + size]))
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise bad_request(f"unsupported protobuf wire type {wire}")
    return out


def _text(v: bytes | int) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _map_entry(v: bytes | int) -> tuple[str, str]:
    entry = dict(fields(v)) if isinstance(v, bytes) else {}
    return _text(entry.get(1, b"")), _text(entry.get(2, b""))


def decode(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded object as a JSON-like dict with apiVersion, kind and metadata."""
    if not body.startswith(MAGIC):
        raise bad_request("protobuf body without the k8s envelope")
    unknown = dict(fields(body[len(MAGIC) :]))
    head = unknown.get(1, b"")
    type_meta = dict(fields(head)) if isinstance(head, bytes) else {}
    raw = unknown.get(2, b"")
    obj_fields = fields(raw) if isinstance(raw, bytes) else []
    meta: dict[str, Any] = {}
    for num, val in obj_fields:
        if num != 1 or not isinstance(val, bytes):
            continue
        for mnum, mval in fields(val):
            if mnum in (1, 2, 3) and _text(mval):
                meta[{1: "name", 2: "generateName", 3: "namespace"}[mnum]] = _text(mval)
            elif mnum == 11:
                k, v = _map_entry(mval)
                meta.setdefault("labels", {})[k] = v
            elif mnum == 12:
                k, v = _map_entry(mval)
                meta.setdefault("annotations", {})[k] = v
    kind = _text(type_meta.get(2, b""))
    if kind not in METADATA_ONLY:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"protobuf bodies are only decoded for {sorted(METADATA_ONLY)}, not {kind or 'this object'}: "
            "send it as application/json (e.g. kubectl apply -f)",
        )
    return {"apiVersion": _text(type_meta.get(1, b"")), "kind": kind, "metadata": meta}
