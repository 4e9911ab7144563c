"""TokenRequest and TokenReview: ServiceAccount tokens bound to a Pod, and who a token belongs to.

`POST .../serviceaccounts/{sa}/token` mints an opaque random token remembered with its service account,
audiences, expiry and bound Pod (name, uid, node). `POST .../tokenreviews` answers for a token: unknown,
expired, wrong-audience, or bound to a Pod that is gone (or replaced: uid differs) -> not authenticated;
otherwise the service-account user with the Pod and node names in `extra`, as kube-apiserver does from
1.30 on (`node_name_extra=False`: as 1.28 and 1.29 do, the Pod's name and uid only, feature gate
ServiceAccountTokenPodNodeInfo off).
Minted tokens are persisted with the rest of the state.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sandbox.apiserver import errors
from sandbox.apiserver.persistence import Database
from sandbox.apiserver.store import Store

DEFAULT_AUDIENCES = ["https://kubernetes.default.svc.cluster.local", "k3s"]
DEFAULT_EXPIRATION = 3600
MIN_EXPIRATION = 600

Obj = dict[str, Any]


class TokenAuthority:
    def __init__(self, store: Store, db: Database | None, node_name_extra: bool = True) -> None:
        self.store = store
        self.db = db
        self.node_name_extra = node_name_extra
        self.tokens: dict[str, Obj] = db.load_tokens() if db is not None else {}

    def request(self, ns: str, sa_name: str, body: Obj, now: datetime | None = None) -> Obj:
        """Handle a TokenRequest for ServiceAccount ns/sa_name; returns the TokenRequest with status."""
        sa_rt = self.store.registry.lookup("", "v1", "serviceaccounts")
        assert sa_rt is not None
        sa = self.store.get(sa_rt, ns, sa_name)
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            spec = {}
        expiration = int(spec.get("expirationSeconds") or DEFAULT_EXPIRATION)
        if expiration < MIN_EXPIRATION:
            raise errors.invalid(
                "TokenRequest",
                "authentication.k8s.io",
                sa_name,
                "spec.expirationSeconds",
                f"Invalid value: {expiration}: may not specify a duration less than 10 minutes",
            )
        audiences = list(spec.get("audiences") or DEFAULT_AUDIENCES)
        record: Obj = {
            "namespace": ns,
            "serviceaccount": sa_name,
            "sa_uid": sa["metadata"]["uid"],
            "audiences": audiences,
        }
        ref = spec.get("boundObjectRef")
        if ref:
            if ref.get("kind") != "Pod":
                raise errors.invalid(
                    "TokenRequest",
                    "authentication.k8s.io",
                    sa_name,
                    "spec.boundObjectRef.kind",
                    f'Unsupported value: "{ref.get("kind")}": supported values: "Pod"',
                )
            pod_rt = self.store.registry.lookup("", "v1", "pods")
            assert pod_rt is not None
            pod = self.store.get(pod_rt, ns, ref.get("name", ""))
            if ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]:
                raise errors.conflict(
                    "pods",
                    "",
                    ref.get("name", ""),
                    "the UID in the bound object reference "
                    f"({ref['uid']}) does not match the UID in record ({pod['metadata']['uid']})",
                )
            record["pod"] = {
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
                "node": (pod.get("spec") or {}).get("nodeName") or "",
            }
        start = now or datetime.now(UTC)
        expires = start + timedelta(seconds=expiration)
        record["expires"] = expires.timestamp()
        token = "sa-" + secrets.token_urlsafe(32)
        self.tokens[token] = record
        if self.db is not None:
            self.db.save_token(token, record)
        out = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": None},
            "spec": {**spec, "audiences": audiences, "expirationSeconds": expiration},
            "status": {"token": token, "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ")},
        }
        return out

    def review(self, body: Obj, now: datetime | None = None) -> Obj:
        spec = body.get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not spec.get("token"):
            raise errors.invalid("TokenReview", "authentication.k8s.io", "", "spec.token", "Required value")
        status = self._status(str(spec["token"]), list(spec.get("audiences") or []), now or datetime.now(UTC))
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    def _status(self, token: str, wanted: list[str], now: datetime) -> Obj:
        record = self.tokens.get(token)
        if record is None:
            return {"authenticated": False, "user": {}, "error": "invalid bearer token"}
        if record["expires"] < now.timestamp():
            return {"authenticated": False, "user": {}, "error": "invalid bearer token, token has expired"}
        accepted = [a for a in record["audiences"] if a in (wanted or DEFAULT_AUDIENCES)]
        if not accepted:
            return {
                "authenticated": False,
                "user": {},
                "error": "invalid bearer token, token audiences "
                f"{record['audiences']} is invalid for the target audiences {wanted or DEFAULT_AUDIENCES}",
            }
        ns, sa = record["namespace"], record["serviceaccount"]
        sa_rt = self.store.registry.lookup("", "v1", "serviceaccounts")
        assert sa_rt is not None
        sa_obj = self.store.objects.get(sa_rt.key, {}).get((ns, sa))
        if sa_obj is None or sa_obj["metadata"]["uid"] != record["sa_uid"]:
            return {
                "authenticated": False,
                "user": {},
                "error": f'invalid bearer token, serviceaccounts "{sa}" not found',
            }
        extra: dict[str, list[str]] = {}
        pod = record.get("pod")
        if pod:
            live = self.store.objects.get("pods", {}).get((ns, pod["name"]))
            if (
                live is None
                or live["metadata"]["uid"] != pod["uid"]
                or live["metadata"].get("deletionTimestamp")
            ):
                return {
                    "authenticated": False,
                    "user": {},
                    "error": f'invalid bearer token, pod "{pod["name"]}" not found or was replaced',
                }
            extra = {
                "authentication.kubernetes.io/pod-name": [pod["name"]],
                "authentication.kubernetes.io/pod-uid": [pod["uid"]],
            }
            node = (live.get("spec") or {}).get("nodeName") or pod.get("node")
            if node and self.node_name_extra:
                extra["authentication.kubernetes.io/node-name"] = [node]
        user = {
            "username": f"system:serviceaccount:{ns}:{sa}",
            "uid": record["sa_uid"],
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
            "extra": extra,
        }
        return {"authenticated": True, "user": user, "audiences": accepted}
