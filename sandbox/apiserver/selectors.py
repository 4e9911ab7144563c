"""Label and field selectors: parsing the query-string syntax and matching objects. Pure functions.

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>n`, `k<n`, joined by
commas. Field selectors: `f=v`, `f==v`, `f!=v` joined by commas, restricted to the fields each resource
supports (an unsupported field is a 400, as on the real server).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.apiserver.errors import bad_request

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<vals>[^)]*)\)\s*$")
_CMP_RE = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=|>|<)\s*(?P<val>[-A-Za-z0-9_.]*)\s*$")
_EXISTS_RE = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", ">", "<"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        val = labels.get(self.key)
        if self.op == "=":
            return has and val == self.values[0]
        if self.op == "!=":
            return not has or val != self.values[0]
        if self.op == "in":
            return has and val in self.values
        if self.op == "notin":
            return not has or val not in self.values
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in (">", "<"):
            try:
                have, want = int(val or ""), int(self.values[0])
            except ValueError:
                return False
            return have > want if self.op == ">" else have < want
        raise AssertionError(self.op)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse the `labelSelector` query parameter; raises ApiError(400) on bad syntax."""
    if not text:
        return []
    reqs = []
    for part in _split_top(text):
        if m := _SET_RE.match(part):
            vals = tuple(v.strip() for v in m["vals"].split(",") if v.strip())
            reqs.append(Requirement(m["key"], m["op"], vals))
        elif m := _CMP_RE.match(part):
            op = "=" if m["op"] == "==" else m["op"]
            reqs.append(Requirement(m["key"], op, (m["val"],)))
        elif m := _EXISTS_RE.match(part):
            reqs.append(Requirement(m["key"], "!" if m["neg"] else "exists"))
        else:
            raise bad_request(f'unable to parse requirement: invalid label selector "{text}": found "{part}"')
    return reqs


def selector_from_object(sel: Mapping[str, Any] | None) -> list[Requirement] | None:
    """A metav1.LabelSelector (matchLabels/matchExpressions) as requirements; None for a null selector."""
    if sel is None:
        return None
    reqs = [Requirement(k, "=", (str(v),)) for k, v in (sel.get("matchLabels") or {}).items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for e in sel.get("matchExpressions") or []:
        reqs.append(Requirement(e["key"], ops[e["operator"]], tuple(e.get("values") or ())))
    return reqs


def labels_match(reqs: list[Requirement], labels: Mapping[str, str] | None) -> bool:
    lab = labels or {}
    return all(r.matches(lab) for r in reqs)


@dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


def parse_field_selector(text: str | None, allowed: frozenset[str], kind: str) -> list[FieldRequirement]:
    if not text:
        return []
    out = []
    for part in re.split(r"(?<!\\),", text):
        if not part.strip():
            continue
        m = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise bad_request(f'invalid field selector: "{part}"')
        fld, op, val = m.groups()
        if fld not in allowed:
            raise bad_request(f"field label not supported: {fld} (for {kind})")
        out.append(FieldRequirement(fld, val.replace("\\,", ","), op != "!="))
    return out


_BOOL_FIELDS = frozenset({"spec.unschedulable", "spec.hostNetwork"})


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string value of a field-selector field on an object (missing -> "")."""
    if path == "source":
        return str(((obj.get("source") or {}).get("component")) or "")
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return "false" if path in _BOOL_FIELDS else ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(reqs: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    return all((field_value(obj, r.field) == r.value) == r.equal for r in reqs)


Matcher = Callable[[dict[str, Any]], bool]


def matcher(labels: list[Requirement], fields: list[FieldRequirement]) -> Matcher:
    def match(obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return labels_match(labels, meta.get("labels")) and fields_match(fields, obj)

    return match
