"""The resource registry: which REST resources exist, their kinds and scopes, and discovery documents.

Built-in resources are declared here as data; CustomResourceDefinitions add and remove resources at run
time (`Registry.apply_crd`). Discovery (`/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>`) is rendered from the
registry in the legacy (non-aggregated) format, which kubectl falls back to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

COMMON_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0
    format: str = ""


@dataclass(frozen=True)
class ResourceType:
    """One REST resource at one group/version."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    status: bool = False
    """Has a `/status` subresource (spec and status are written separately)."""
    generation: bool = False
    """metadata.generation is kept and bumped on spec changes."""
    custom: bool = False
    """Served from a CRD (no strategic merge patch, status dropped on create)."""
    subresources: tuple[str, ...] = ()
    """Extra subresources handled specially (eviction, token)."""
    fields: frozenset[str] = COMMON_FIELDS
    """Field selector labels the real server supports for this resource."""
    verbs: tuple[str, ...] = tuple(ALL_VERBS)
    columns: tuple[PrinterColumn, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key: the same object served at several versions shares it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return base + (f"/{name}" if name else "")


def _core(plural: str, kind: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    return ResourceType("", "v1", plural, kind, namespaced, singular=kind.lower(), **kw)


def _grp(
    group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kw: Any
) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, singular=kind.lower(), **kw)


_POD_FIELDS = COMMON_FIELDS | {
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
}
_EVENT_FIELDS = COMMON_FIELDS | {
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
}

BUILTINS: tuple[ResourceType, ...] = (
    _core(
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        status=True,
        fields=COMMON_FIELDS | {"status.phase"},
    ),
    _core(
        "nodes",
        "Node",
        False,
        short_names=("no",),
        status=True,
        fields=COMMON_FIELDS | {"spec.unschedulable"},
    ),
    _core(
        "pods",
        "Pod",
        short_names=("po",),
        categories=("all",),
        status=True,
        subresources=("eviction",),
        fields=_POD_FIELDS,
    ),
    _core("events", "Event", short_names=("ev",), fields=_EVENT_FIELDS),
    _core("secrets", "Secret", fields=COMMON_FIELDS | {"type"}),
    _core("configmaps", "ConfigMap", short_names=("cm",)),
    _core("serviceaccounts", "ServiceAccount", short_names=("sa",), subresources=("token",)),
    _core("services", "Service", short_names=("svc",), categories=("all",), status=True),
    _core("endpoints", "Endpoints", short_names=("ep",)),
    _grp(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        short_names=("ds",),
        categories=("all",),
        status=True,
        generation=True,
    ),
    _grp(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        categories=("all",),
        status=True,
        generation=True,
    ),
    _grp(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short_names=("rs",),
        categories=("all",),
        status=True,
        generation=True,
    ),
    _grp(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        short_names=("sts",),
        categories=("all",),
        status=True,
        generation=True,
    ),
    _grp(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        short_names=("pdb",),
        status=True,
        generation=True,
    ),
    _grp("coordination.k8s.io", "v1", "leases", "Lease"),
    _grp("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _grp("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _grp("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _grp("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _grp("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, short_names=("pc",)),
    _grp(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        status=True,
        generation=True,
    ),
    _grp("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, verbs=("create",)),
)

CRDS = next(r for r in BUILTINS if r.plural == "customresourcedefinitions")


@dataclass
class Registry:
    """Resources by (group, version, plural), built-ins first, then CRD-served ones."""

    by_gvr: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    crd_resources: dict[str, list[ResourceType]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for r in BUILTINS:
            self.by_gvr[(r.group, r.version, r.plural)] = r

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self.by_gvr.get((group, version, plural))

    def by_key(self, key: str) -> ResourceType | None:
        for r in self.by_gvr.values():
            if r.key == key:
                return r
        return None

    def group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for g, v, _ in self.by_gvr:
            versions = out.setdefault(g, [])
            if v not in versions:
                versions.append(v)
        return out

    def resources_in(self, group: str, version: str) -> list[ResourceType]:
        return [r for (g, v, _), r in self.by_gvr.items() if g == group and v == version]

    def apply_crd(self, crd: dict[str, Any]) -> list[ResourceType]:
        """Serve (or re-serve) the resource a CRD declares; returns its types, one per served version."""
        self.remove_crd(crd["metadata"]["name"])
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group = spec.get("group", "")
        types: list[ResourceType] = []
        for ver in spec.get("versions") or []:
            if not ver.get("served", True):
                continue
            cols = tuple(
                PrinterColumn(
                    c.get("name", ""),
                    c.get("type", "string"),
                    c.get("jsonPath", ""),
                    c.get("description", ""),
                    int(c.get("priority", 0)),
                    c.get("format", ""),
                )
                for c in ver.get("additionalPrinterColumns") or []
            )
            rt = ResourceType(
                group,
                ver["name"],
                names["plural"],
                names["kind"],
                spec.get("scope") == "Namespaced",
                singular=names.get("singular") or names["kind"].lower(),
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                status="status" in (ver.get("subresources") or {}),
                generation=True,
                custom=True,
                columns=cols,
            )
            types.append(rt)
            self.by_gvr[(group, rt.version, rt.plural)] = rt
        self.crd_resources[crd["metadata"]["name"]] = types
        return types

    def remove_crd(self, name: str) -> None:
        for rt in self.crd_resources.pop(name, []):
            self.by_gvr.pop((rt.group, rt.version, rt.plural), None)


def api_versions() -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }


def _group_doc(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def api_group(reg: Registry, group: str) -> dict[str, Any] | None:
    versions = reg.group_versions().get(group)
    if not versions or not group:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group_doc(group, versions)}


def api_group_list(reg: Registry) -> dict[str, Any]:
    groups = [_group_doc(g, vs) for g, vs in reg.group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def resource_list(reg: Registry, group: str, version: str) -> dict[str, Any] | None:
    types = reg.resources_in(group, version)
    if not types:
        return None
    resources: list[dict[str, Any]] = []
    for r in types:
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        if r.status:
            resources.append(
                {
                    "name": f"{r.plural}/status",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if "eviction" in r.subresources:
            resources.append(
                {
                    "name": f"{r.plural}/eviction",
                    "singularName": "",
                    "namespaced": True,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                }
            )
        if "token" in r.subresources:
            resources.append(
                {
                    "name": f"{r.plural}/token",
                    "singularName": "",
                    "namespaced": True,
                    "group": "authentication.k8s.io",
                    "version": "v1",
                    "kind": "TokenRequest",
                    "verbs": ["create"],
                }
            )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
