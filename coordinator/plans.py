"""The upgrade.cattle.io/v1 Plan (SUC v0.20) as pydantic models, and its validation. Pure.

`parse_plan(obj)` turns a Plan as read from the API into a `Plan` or a list of messages, each naming the
field and the problem (they become the `Validated` condition's message). Beyond the schema we check
what SUC checks (version xor channel, deleteLocalData xor deleteEmptydirData, postCompleteDelay >= 0,
window) and what this engine supports: the upgrade image must be `rancher/k3s-upgrade` (any registry
prefix and tag), and `prepare`, if given, must be that image with args `[prepare, <plan>]`, which means
"wait until plan <plan> is complete".
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coordinator.selection import SelectorError, compile_selector, matches
from coordinator.versions import VersionError, parse_version
from coordinator.windows import WindowError, parse_window

K3S_UPGRADE_IMAGE = re.compile(
    r"^(?:[^/]+[.:][^/]+/)?(?:library/)?rancher/k3s-upgrade(?::[\w.+-]+)?(?:@sha256:[0-9a-f]{64})?$"
)
_DURATION = re.compile(r"^(-)?((?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+|0)$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

FAILURE_BUDGET_ANNOTATION = "upgrade.k3s.io/failure-budget"
"""Plan annotation: how many failed nodes (at the current hash) the plan tolerates before it halts."""


class _M(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


class Expr(_M):
    key: str
    operator: str
    values: list[str] | None = None


class Selector(_M):
    match_labels: dict[str, str] | None = Field(default=None, alias="matchLabels")
    match_expressions: list[Expr] | None = Field(default=None, alias="matchExpressions")


class Container(_M):
    image: str = ""
    command: list[str] | None = None
    args: list[str] | None = None
    envs: list[dict[str, Any]] | None = None
    env_from: list[dict[str, Any]] | None = Field(default=None, alias="envFrom")
    volumes: list[dict[str, Any]] | None = None
    security_context: dict[str, Any] | None = Field(default=None, alias="securityContext")


class Drain(_M):
    timeout: str | int | None = None
    """As SUC takes it (an IntOrString since its v0.17): a duration string (`5m`), or an int counting
    nanoseconds (SUC before v0.17 took only that, a Go `time.Duration`). See `drain_timeout`."""
    grace_period: int | None = Field(default=None, alias="gracePeriod")
    delete_local_data: bool | None = Field(default=None, alias="deleteLocalData")
    delete_emptydir_data: bool | None = Field(default=None, alias="deleteEmptydirData")
    ignore_daemon_sets: bool | None = Field(default=None, alias="ignoreDaemonSets")
    force: bool = False
    disable_eviction: bool = Field(default=False, alias="disableEviction")
    skip_wait_for_delete_timeout: int = Field(default=0, alias="skipWaitForDeleteTimeout")
    pod_selector: dict[str, Any] | None = Field(default=None, alias="podSelector")


class SecretRef(_M):
    name: str
    path: str = ""
    ignore_updates: bool = Field(default=False, alias="ignoreUpdates")


class PlanWindow(_M):
    days: list[str] | None = None
    start_time: str | None = Field(default=None, alias="startTime")
    end_time: str | None = Field(default=None, alias="endTime")
    time_zone: str | None = Field(default=None, alias="timeZone")


class PlanSpec(_M):
    concurrency: int = 1
    node_selector: Selector | None = Field(default=None, alias="nodeSelector")
    service_account_name: str = Field(default="", alias="serviceAccountName")
    channel: str | None = None
    version: str | None = None
    secrets: list[SecretRef] = []
    prepare: Container | None = None
    upgrade: Container
    cordon: bool = False
    drain: Drain | None = None
    tolerations: list[dict[str, Any]] | None = None
    exclusive: bool = False
    window: PlanWindow | None = None
    job_active_deadline_secs: int | None = Field(default=None, alias="jobActiveDeadlineSecs")
    post_complete_delay: str | None = Field(default=None, alias="postCompleteDelay")
    post_complete_labels: dict[str, str] | None = Field(default=None, alias="postCompleteLabels")
    priority_class_name: str | None = Field(default=None, alias="priorityClassName")
    image_pull_secrets: list[dict[str, Any]] | None = Field(default=None, alias="imagePullSecrets")


class Plan(_M):
    """A validated Plan plus the metadata the engine needs."""

    name: str
    namespace: str
    uid: str
    annotations: dict[str, str]
    spec: PlanSpec
    prepare_plan: str | None = None
    """The plan named by `prepare: {args: [prepare, X]}`: this plan waits until X is complete."""
    post_complete_delay_seconds: float = 0.0
    failure_budget: int = 0


def parse_duration(text: str) -> float:
    """Go duration (`1h30m`, `90s`, `0`) in seconds; ValueError when it does not parse."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 5m, 1h30m)")
    total = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(m.group(2)))
    return -total if m.group(1) else total


def drain_timeout(timeout: str | int | None) -> float:
    """`spec.drain.timeout` in seconds (0 when unset: no limit, as `kubectl drain --timeout 0`); an int
    counts nanoseconds. ValueError for a string that is not a duration or a negative value."""
    if timeout is None or timeout == "":
        return 0.0
    seconds = timeout / 1e9 if isinstance(timeout, int) else parse_duration(timeout)
    if seconds < 0:
        raise ValueError(f"{timeout!r} is negative")
    return seconds


def is_k3s_upgrade_image(image: str) -> bool:
    return bool(K3S_UPGRADE_IMAGE.match(image.strip()))


def _loc(err: Any) -> str:
    return "spec." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "spec"


def parse_plan(obj: dict[str, Any]) -> tuple[Plan | None, list[str]]:
    """(plan, []) when valid, (None, messages) otherwise; each message names the field and the problem."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    raw_spec = obj.get("spec")
    if not isinstance(raw_spec, dict):
        return None, ["spec: missing or not an object"]
    try:
        spec = PlanSpec.model_validate(raw_spec)
    except ValidationError as exc:
        return None, [f"{_loc(e)}: {e['msg']}" for e in exc.errors()]
    errors: list[str] = []
    if bool(spec.version) == bool(spec.channel):
        errors.append("spec.version/spec.channel: exactly one of version and channel is required")
    if spec.version:
        try:
            parse_version(spec.version)
        except VersionError as exc:
            errors.append(f"spec.version: {exc}")
    if spec.concurrency < 0:
        errors.append(f"spec.concurrency: {spec.concurrency} is negative")
    if spec.job_active_deadline_secs is not None and spec.job_active_deadline_secs < 0:
        errors.append(
            f"spec.jobActiveDeadlineSecs: {spec.job_active_deadline_secs} is negative (0: no deadline)"
        )
    if not is_k3s_upgrade_image(spec.upgrade.image):
        errors.append(
            f"spec.upgrade.image: {spec.upgrade.image!r} is not supported "
            "(only rancher/k3s-upgrade is: this engine replaces the k3s binary itself)"
        )
    prepare_plan: str | None = None
    if spec.prepare is not None:
        args = spec.prepare.args or []
        if not is_k3s_upgrade_image(spec.prepare.image) or len(args) != 2 or args[0] != "prepare":
            errors.append("spec.prepare: only rancher/k3s-upgrade with args [prepare, <plan>] is supported")
        elif args[1] == name:
            errors.append(f"spec.prepare: plan {name} cannot wait for itself")
        else:
            prepare_plan = args[1]
    drain = spec.drain
    if drain and drain.delete_local_data is not None and drain.delete_emptydir_data is not None:
        errors.append("spec.drain: deleteLocalData and deleteEmptydirData are mutually exclusive (set one)")
    if spec.drain:
        try:
            drain_timeout(spec.drain.timeout)
        except ValueError as exc:
            errors.append(f"spec.drain.timeout: {exc}")
    delay = 0.0
    if spec.post_complete_delay:
        try:
            delay = parse_duration(spec.post_complete_delay)
            if delay < 0:
                errors.append(f"spec.postCompleteDelay: {spec.post_complete_delay} is negative")
        except ValueError as exc:
            errors.append(f"spec.postCompleteDelay: {exc}")
    if spec.window:
        w = spec.window
        try:
            parse_window(w.days, w.start_time, w.end_time, w.time_zone)
        except WindowError as exc:
            errors.append(f"spec.{exc}")
    try:
        matches(raw_spec.get("nodeSelector"), {})
    except SelectorError as exc:
        errors.append(f"spec.{exc}")
    if spec.drain is not None and spec.drain.pod_selector is not None:
        try:  # (SUC refuses it too; found only at the drain, the node would be cordoned first)
            compile_selector(spec.drain.pod_selector, "podSelector")
        except SelectorError as exc:
            errors.append(f"spec.drain.{exc}")
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    budget = 0
    if FAILURE_BUDGET_ANNOTATION in annotations:
        text = annotations[FAILURE_BUDGET_ANNOTATION]
        if text.isdigit():
            budget = int(text)
        else:
            errors.append(f"metadata.annotations[{FAILURE_BUDGET_ANNOTATION}]: {text!r} is not a count >= 0")
    if errors:
        return None, errors
    return Plan(
        name=name,
        namespace=str(meta.get("namespace", "")),
        uid=str(meta.get("uid", "")),
        annotations=annotations,
        spec=spec,
        prepare_plan=prepare_plan,
        post_complete_delay_seconds=delay,
        failure_budget=budget,
    ), []
