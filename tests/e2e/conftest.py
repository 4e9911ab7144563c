"""Shared pieces of the end-to-end tests: a leak check around every test, and timeline helpers.

Every e2e test runs whole rollouts through real processes (API server emulator, supervisord + stand-in
k3s, agents, coordinator) and observes them with kubectl. After each test nothing of the sandbox may be
left: no child process, no network namespace, no mount below a sandbox directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from sandbox import netns
from sandbox.cluster import Sandbox, SandboxConfig, SandboxError
from sandbox.progress import NodeView

NEEDED = ("sandbox.apiserver", "coordinator.__main__", "agent.__main__")


def require_components() -> None:
    """Every component the sandbox runs is importable (a missing one is a failure, not a skip)."""
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    assert not missing, f"sandbox components missing: {missing}"


def _mounts() -> set[str]:
    return {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}


def _netns() -> set[str]:
    return set(netns.list_namespaces()) if netns.available() else set()


def _become_subreaper() -> None:
    """Make orphaned descendants (e.g. a demo subprocess's children) re-parent to this process, so the
    leak check below sees them instead of losing them to init."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _reap(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Fail the test if it leaves a process, network namespace or mount behind."""
    _become_subreaper()
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    before_ns, before_mounts = _netns(), _mounts()
    yield
    deadline = time.monotonic() + 10
    left: list[psutil.Process] = []
    while time.monotonic() < deadline:
        new = [p for p in me.children(recursive=True) if p.pid not in before_children]
        left = []
        for proc in new:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    _reap({proc.pid})
                else:
                    left.append(proc)
            except psutil.Error:
                continue
        if not left:
            break
        time.sleep(0.1)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:120]}")
        except psutil.Error:
            continue
    assert not described, f"processes left behind: {described}"
    assert _netns() - before_ns == set(), f"network namespaces left behind: {_netns() - before_ns}"
    new_mounts = _mounts() - before_mounts
    assert not new_mounts, f"mounts left behind: {new_mounts}"


# -- timeline helpers (pure) -----------------------------------------------------------------------
History = dict[str, list[tuple[float, NodeView]]]


def intervals(seq: list[tuple[float, NodeView]], pred: str) -> list[tuple[float, float]]:
    """Intervals of time during which `pred` (an attribute: "cordoned") held, open ones end at +inf."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for at, view in seq:
        on = bool(getattr(view, pred))
        if on and start is None:
            start = at
        elif not on and start is not None:
            out.append((start, at))
            start = None
    if start is not None:
        out.append((start, float("inf")))
    return out


def first_time(seq: list[tuple[float, NodeView]], cond: object) -> float | None:
    for at, view in seq:
        if callable(cond) and cond(view):
            return at
    return None


def max_overlap(spans: list[tuple[float, float]]) -> int:
    """Largest number of intervals open at the same moment."""
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


# -- sandbox fixtures -------------------------------------------------------------------------------
def plan_manifest(name: str, *, servers: bool, version: str | None = None, channel: str | None = None,
                  concurrency: int = 1, drain: dict[str, object] | None = None,
                  prepare: str | None = None) -> str:
    """A Plan like the docs' (selecting servers or agents by `node-role.kubernetes.io/master`)."""
    import yaml

    expr = ({"key": "node-role.kubernetes.io/master", "operator": "In", "values": ["true"]} if servers
            else {"key": "node-role.kubernetes.io/master", "operator": "DoesNotExist"})
    spec: dict[str, object] = {
        "concurrency": concurrency, "cordon": True, "nodeSelector": {"matchExpressions": [expr]},
        "serviceAccountName": "system-upgrade", "upgrade": {"image": "rancher/k3s-upgrade"},
    }
    if version:
        spec["version"] = version
    if channel:
        spec["channel"] = channel
    if drain is not None:
        spec["drain"] = drain
    if prepare:
        spec["prepare"] = {"image": "rancher/k3s-upgrade", "args": ["prepare", prepare]}
    return yaml.safe_dump({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
                           "metadata": {"name": name, "namespace": "system-upgrade"}, "spec": spec})


MakeSandbox = Callable[..., Sandbox]
_START_FAILURES: list[str] = []
"""A sandbox that cannot start will not start for the next test either: fail those at once (suite budget)."""


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[MakeSandbox]:
    """`make_sandbox(**SandboxConfig fields)` -> a started Sandbox, stopped (and checked) after the test."""
    require_components()
    started: list[Sandbox] = []

    def make(**fields: object) -> Sandbox:
        if _START_FAILURES:
            pytest.fail(f"not trying again, an earlier sandbox did not start: {_START_FAILURES[0]}")
        fields.setdefault("state_dir", tmp_path / f"sandbox{len(started)}")
        sandbox = Sandbox(SandboxConfig(**fields))  # type: ignore[arg-type]
        try:
            sandbox.start()
        except SandboxError as exc:
            _START_FAILURES.append(str(exc))
            raise
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()
