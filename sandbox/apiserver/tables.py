"""Server-side printing: `meta.k8s.io/v1` Table responses, as `kubectl get` asks for them.

Custom resources use their CRD's additionalPrinterColumns (a small JSONPath subset: `.a.b`, `[n]`, `[*]`,
`[?(@.k=='v')]`, `[?(@.k!='v')]`; an item without `k` matches neither) and show the first value selected,
as the API server does; built-ins get the columns kubectl users know for nodes and pods, and Name/Age
otherwise. Cells of type `date` carry the timestamp; kubectl renders it as an age. Pure functions.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from sandbox.apiserver.resources import PrinterColumn, ResourceType

Obj = dict[str, Any]

_STEP = re.compile(
    r"\.([A-Za-z0-9_\-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*(==|!=)\s*['\"]([^'\"]*)['\"]\)\]"
)


def jsonpath(obj: Any, path: str) -> list[Any]:
    """All values `path` selects in `obj` (empty when nothing matches)."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    values = [obj]
    pos = 0
    while pos < len(path):
        m = _STEP.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for v in values:
            if m.group(1) is not None:
                if isinstance(v, dict) and m.group(1) in v:
                    nxt.append(v[m.group(1)])
            elif m.group(2) is not None:
                if isinstance(v, list):
                    if m.group(2) == "*":
                        nxt.extend(v)
                    elif int(m.group(2)) < len(v):
                        nxt.append(v[int(m.group(2))])
            else:
                if isinstance(v, list):
                    for item in v:
                        got = jsonpath(item, "." + m.group(3))
                        if got and (str(got[0]) == m.group(5)) == (m.group(4) == "=="):
                            nxt.append(item)
        values = nxt
    return values


def _cell(values: list[Any]) -> Any:
    if not values:
        return None
    v = values[0]
    if isinstance(v, dict | list):
        return json.dumps(v, separators=(",", ":"))
    return v


def _col(name: str, typ: str = "string", fmt: str = "", priority: int = 0, desc: str = "") -> Obj:
    return {"name": name, "type": typ, "format": fmt, "description": desc or name, "priority": priority}


NAME_COL = _col("Name", fmt="name", desc="Name must be unique within a namespace.")
AGE_COL = _col(
    "Age",
    "date",
    desc="CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def _node_status(node: Obj) -> str:
    ready = next(
        (c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"), None
    )
    state = (
        "Unknown"
        if ready is None or ready.get("status") == "Unknown"
        else ("Ready" if ready.get("status") == "True" else "NotReady")
    )
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    return state


def _node_roles(node: Obj) -> str:
    roles = sorted(
        {
            k.split("/", 1)[1]
            for k in (node["metadata"].get("labels") or {})
            if k.startswith("node-role.kubernetes.io/") and "/" in k
        }
    )
    return ",".join(r for r in roles if r) or "<none>"


def _node_ip(node: Obj, kind: str) -> str:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == kind:
            return str(a.get("address"))
    return "<none>"


def _pod_ready(pod: Obj) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    total = len((pod.get("spec") or {}).get("containers") or []) or len(statuses)
    return f"{sum(1 for s in statuses if s.get('ready'))}/{total}"


def _pod_restarts(pod: Obj) -> int:
    return sum(
        int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get("containerStatuses") or []
    )


def _pod_status(pod: Obj) -> str:
    if pod["metadata"].get("deletionTimestamp"):
        return "Terminating"
    return str((pod.get("status") or {}).get("reason") or (pod.get("status") or {}).get("phase") or "Pending")


def columns_and_cells(rt: ResourceType, objs: list[Obj]) -> tuple[list[Obj], list[list[Any]]]:
    if rt.custom:
        return _custom(rt.columns, objs)
    if rt.plural == "nodes":
        cols = [
            NAME_COL,
            _col("Status"),
            _col("Roles"),
            AGE_COL,
            _col("Version"),
            _col("Internal-IP", priority=1),
            _col("External-IP", priority=1),
            _col("OS-Image", priority=1),
            _col("Kernel-Version", priority=1),
            _col("Container-Runtime", priority=1),
        ]
        rows = []
        for n in objs:
            info = (n.get("status") or {}).get("nodeInfo") or {}
            rows.append(
                [
                    n["metadata"]["name"],
                    _node_status(n),
                    _node_roles(n),
                    n["metadata"].get("creationTimestamp"),
                    info.get("kubeletVersion", ""),
                    _node_ip(n, "InternalIP"),
                    _node_ip(n, "ExternalIP"),
                    info.get("osImage", "<unknown>"),
                    info.get("kernelVersion", "<unknown>"),
                    info.get("containerRuntimeVersion", "<unknown>"),
                ]
            )
        return cols, rows
    if rt.plural == "pods":
        cols = [
            NAME_COL,
            _col("Ready"),
            _col("Status"),
            _col("Restarts", "string"),
            AGE_COL,
            _col("IP", priority=1),
            _col("Node", priority=1),
        ]
        rows = [
            [
                p["metadata"]["name"],
                _pod_ready(p),
                _pod_status(p),
                str(_pod_restarts(p)),
                p["metadata"].get("creationTimestamp"),
                (p.get("status") or {}).get("podIP") or "<none>",
                (p.get("spec") or {}).get("nodeName") or "<none>",
            ]
            for p in objs
        ]
        return cols, rows
    if rt.plural == "events":
        cols = [_col("Last Seen", "date"), _col("Type"), _col("Reason"), _col("Object"), _col("Message")]
        rows = []
        for e in objs:
            inv = e.get("involvedObject") or {}
            rows.append(
                [
                    e.get("lastTimestamp") or e.get("eventTime") or e["metadata"].get("creationTimestamp"),
                    e.get("type", ""),
                    e.get("reason", ""),
                    f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}",
                    e.get("message", ""),
                ]
            )
        return cols, rows
    return [NAME_COL, AGE_COL], [
        [o["metadata"]["name"], o["metadata"].get("creationTimestamp")] for o in objs
    ]


def _custom(columns: tuple[PrinterColumn, ...], objs: list[Obj]) -> tuple[list[Obj], list[list[Any]]]:
    if not columns:
        return [NAME_COL, AGE_COL], [
            [o["metadata"]["name"], o["metadata"].get("creationTimestamp")] for o in objs
        ]
    cols = [NAME_COL] + [_col(c.name, c.type, c.format, c.priority, c.description) for c in columns]
    rows = [[o["metadata"]["name"]] + [_cell(jsonpath(o, c.json_path)) for c in columns] for o in objs]
    return cols, rows


def human_age(stamp: Any, now: datetime | None = None) -> str:
    """A creationTimestamp as kubectl shows ages: 45s, 12m, 5h, 3d, or <unknown>."""
    try:
        then = datetime.strptime(str(stamp), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "<unknown>"
    secs = max(0, int(((now or datetime.now(UTC)) - then).total_seconds()))
    if secs < 120:
        return f"{secs}s"
    if secs < 3600:
        return f"{secs // 60}m"
    if secs < 48 * 3600:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _humanize(cols: list[Obj], rows: list[list[Any]]) -> list[list[Any]]:
    dates = [i for i, c in enumerate(cols) if c["type"] == "date"]
    for c in cols:
        if c["type"] == "date":
            c["type"] = "string"
    for row in rows:
        for i in dates:
            row[i] = human_age(row[i]) if row[i] else "<unknown>"
    return rows


def partial(obj: Obj) -> Obj:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}


def table(
    rt: ResourceType, objs: list[Obj], rv: str, include: str = "Metadata", cont: str | None = None
) -> Obj:
    cols, cells = columns_and_cells(rt, objs)
    cols = [dict(c) for c in cols]
    cells = _humanize(cols, cells)
    rows = []
    for obj, row in zip(objs, cells, strict=True):
        entry: Obj = {"cells": row}
        if include == "Object":
            entry["object"] = obj
        elif include != "None":
            entry["object"] = partial(obj)
        rows.append(entry)
    meta: Obj = {"resourceVersion": rv}
    if cont:
        meta["continue"] = cont
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": cols,
        "rows": rows,
    }


def wants_table(accept: str) -> bool:
    first = accept.split(",")[0] if accept else ""
    return "as=Table" in first
