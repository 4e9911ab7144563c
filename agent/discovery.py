"""Finding the node's k3s process and its binary, and reading versions.

Pure rules first (`parse_command`, `match_k3s`, `parse_version_output`), then the psutil edge
(`list_processes`, `find_k3s`) and the `--version` run.

A process is k3s when its command line (as /proc/PID/cmdline shows it; k3s rewrites its title to
`<path> server ...`, so one NUL-less string is split on spaces) starts with a path whose basename is
`k3s` and whose subcommand is `server` or `agent` (options such as `--cluster-init` may follow). A
`k3s init -- <path> server` wrapper counts only when no real server/agent process is found.
The binary path is resolved under the host root: a path already under the host root (the sandbox, where
nodes share one file system) is taken as it is, anything else is joined to the host root. A process whose
binary does not exist under our host root belongs to another node (sandbox) and is ignored, so an agent
can never signal another node's k3s.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

SUBCOMMANDS = frozenset({"server", "agent"})
_VERSION = re.compile(r"^k3s version (v\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?\+k3s\d+)\b")
_HOST_PATH_DIRS = ("/usr/local/bin", "/usr/bin", "/opt/bin", "/bin")


class DiscoveryError(Exception):
    """k3s could not be identified on this node without guessing; the message says why."""


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmdline: tuple[str, ...]
    create_time: float


@dataclass(frozen=True)
class K3sProcess:
    pid: int
    role: str
    binary: Path
    """Path of the binary as the agent sees it (under the host root)."""
    host_binary: str
    """Path of the binary as the host sees it (what the process was started with)."""
    create_time: float
    wrapper: bool = False


def normalise_cmdline(cmdline: tuple[str, ...]) -> tuple[str, ...]:
    parts = tuple(p for p in cmdline if p)
    if len(parts) == 1 and " " in parts[0]:
        parts = tuple(parts[0].split())
    return parts


def parse_command(cmdline: tuple[str, ...]) -> tuple[str, str, bool] | None:
    """(binary path as started, role, is-wrapper) for a k3s server/agent command line, else None."""
    parts = normalise_cmdline(cmdline)
    if not parts or os.path.basename(parts[0]) != "k3s":
        return None
    rest = [p for p in parts[1:] if not p.startswith("-")]
    if rest and rest[0] in SUBCOMMANDS:
        return parts[0], rest[0], False
    if rest and rest[0] == "init":
        inner = parts[parts.index("init") + 1:]
        inner = inner[1:] if inner and inner[0] == "--" else inner
        if inner and os.path.basename(inner[0]) == "k3s":
            nested = parse_command(tuple(inner))
            if nested is not None:
                return nested[0], nested[1], True
        return parts[0], "server", True
    return None


def resolve_binary(started_as: str, host_root: Path, exists: bool | None = None) -> Path:
    """Where a host path `started_as` is, seen from the agent."""
    root = str(host_root).rstrip("/") or "/"
    if os.path.isabs(started_as):
        if root != "/" and (started_as == root or started_as.startswith(root + "/")):
            return Path(started_as)
        return Path(root) / started_as.lstrip("/")
    for directory in _HOST_PATH_DIRS:
        candidate = Path(root) / directory.lstrip("/") / started_as
        if candidate.exists():
            return candidate
    return Path(root) / "usr/local/bin" / started_as


def match_k3s(processes: list[ProcessInfo], host_root: Path, existing: set[Path] | None = None) -> K3sProcess:
    """The one k3s server/agent process of this node. `existing` (for tests) lists the binaries that
    exist; by default the file system is asked."""
    found: list[K3sProcess] = []
    for proc in processes:
        parsed = parse_command(proc.cmdline)
        if parsed is None:
            continue
        started_as, role, wrapper = parsed
        binary = resolve_binary(started_as, host_root)
        present = binary in existing if existing is not None else binary.is_file()
        if not present:
            continue
        found.append(K3sProcess(proc.pid, role, binary, started_as, proc.create_time, wrapper))
    real = [p for p in found if not p.wrapper] or found
    if not real:
        raise DiscoveryError(f"no k3s server or agent process found whose binary is under {host_root}")
    if len({p.pid for p in real}) > 1:
        listed = ", ".join(f"pid {p.pid} ({p.host_binary} {p.role})" for p in real)
        raise DiscoveryError(f"several k3s processes found under {host_root}: {listed}; refusing to guess")
    return real[0]


def parse_version_output(text: str) -> str:
    """The version tag from `k3s --version` output (`k3s version v1.30.4+k3s1 (abcdef12)`)."""
    for line in text.splitlines():
        match = _VERSION.match(line.strip())
        if match:
            return match.group(1)
    raise ValueError(f"not k3s --version output: {text.strip()[:200]!r}")


def list_processes() -> list[ProcessInfo]:
    result: list[ProcessInfo] = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = proc.info.get("cmdline")
        if cmdline:
            result.append(ProcessInfo(int(proc.info["pid"]), tuple(cmdline), float(proc.info["create_time"])))
    return result


def find_k3s(host_root: Path) -> K3sProcess:
    return match_k3s(list_processes(), host_root)


def process_clock() -> float:
    """Now, on the clock of psutil's `create_time` (boot time + uptime).

    psutil derives start times from the boot time in whole seconds plus clock ticks, so they can be up to a
    second off the wall clock; "started after the swap" is therefore decided on this clock, not time.time().
    """
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    return float(psutil.boot_time()) + uptime


def pid_alive(pid: int, create_time: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def binary_version(binary: Path, limit: float = 30.0) -> str:
    """Run `<binary> --version` and parse the tag; raises ValueError with the cause."""
    proc = await asyncio.create_subprocess_exec(
        str(binary), "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ValueError(f"{binary} --version did not finish within {limit} s") from None
    if proc.returncode != 0:
        raise ValueError(f"{binary} --version exited {proc.returncode}: {err.decode(errors='replace')[:200]}")
    return parse_version_output(out.decode(errors="replace"))
