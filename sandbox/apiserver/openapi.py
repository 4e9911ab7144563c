"""Just enough OpenAPI for kubectl: `/openapi/v2` and `/openapi/v3` documents describing the served kinds.

kubectl uses OpenAPI to decide how to validate (`fieldValidation` support) and, for `apply`, to find
patch strategies; built-in types are compiled into kubectl, and custom resources patch with JSON merge
patch, so the documents list each group/version's paths and kinds with open-ended (`x-kubernetes-
preserve-unknown-fields`) schemas, plus the CRD's own schema where one is given.
"""

from __future__ import annotations

from typing import Any

from sandbox.apiserver.resources import Registry, ResourceType

Obj = dict[str, Any]

_PARAMS = [
    {"name": "dryRun", "in": "query", "schema": {"type": "string"}, "uniqueItems": True},
    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}, "uniqueItems": True},
    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}, "uniqueItems": True},
]


def _def_name(rt: ResourceType) -> str:
    group = rt.group or "core"
    rev = ".".join(reversed(group.split("."))) if rt.custom else f"io.k8s.api.{group.split('.')[0]}"
    return f"{rev}.{rt.version}.{rt.kind}"


def _gvk(rt: ResourceType) -> list[Obj]:
    return [{"group": rt.group, "version": rt.version, "kind": rt.kind}]


def _schema(reg: Registry, rt: ResourceType, crds: dict[str, Obj]) -> Obj:
    schema: Obj = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "x-kubernetes-group-version-kind": _gvk(rt),
    }
    crd = crds.get(f"{rt.plural}.{rt.group}")
    if crd:
        for ver in (crd.get("spec") or {}).get("versions") or []:
            if ver.get("name") == rt.version:
                given = (ver.get("schema") or {}).get("openAPIV3Schema")
                if given:
                    schema = {**given, "x-kubernetes-group-version-kind": _gvk(rt)}
    return schema


def _paths(rt: ResourceType) -> Obj:
    gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    actions = {"get": "get", "put": "put", "patch": "patch", "delete": "delete", "post": "post"}
    ops = {
        m: {
            "parameters": _PARAMS,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": a,
            "x-kubernetes-group-version-kind": gvk,
        }
        for m, a in actions.items()
    }
    return {
        rt.path("{namespace}" if rt.namespaced else None): ops,
        rt.path("{namespace}" if rt.namespaced else None, "{name}"): ops,
    }


def v3_root(reg: Registry) -> Obj:
    paths = {}
    for g, versions in reg.group_versions().items():
        for v in versions:
            key = f"api/{v}" if not g else f"apis/{g}/{v}"
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash=sandbox"}
    return {"paths": paths}


def v3_document(reg: Registry, group: str, version: str, crds: dict[str, Obj]) -> Obj | None:
    types = reg.resources_in(group, version)
    if not types:
        return None
    paths: Obj = {}
    schemas: Obj = {}
    for rt in types:
        paths.update(_paths(rt))
        schemas[_def_name(rt)] = _schema(reg, rt, crds)
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.4+k3s1"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def v2_document(reg: Registry, crds: dict[str, Obj]) -> Obj:
    paths: Obj = {}
    defs: Obj = {}
    for (_g, _v, _p), rt in sorted(reg.by_gvr.items()):
        paths.update(_paths(rt))
        defs[_def_name(rt)] = _schema(reg, rt, crds)
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.4+k3s1"},
        "paths": paths,
        "definitions": defs,
    }
