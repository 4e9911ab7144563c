"""Finding the node's k3s process and its binary, and reading versions.

Pure rules first (`parse_command`, `match_k3s`, `parse_version_output`), then the psutil edge
(`list_processes`, `find_k3s`) and the `--version` run.

A process is k3s when its command line (as /proc/PID/cmdline shows it; k3s rewrites its title to
`<path> server ...`, so one NUL-less string is split on spaces) starts with a path whose basename is
`k3s` and whose subcommand is `server` or `agent` (options such as `--cluster-init` may follow). A
`k3s init -- <path> server` wrapper counts only when no real server/agent process is found.
The binary path, like any host path (`resolve_host_path`), is resolved under the host root: a path
already under the host root (the sandbox, where nodes share one file system) is taken as it is, anything
else is joined to the host root. Its directories' symlinks are followed within the host root, as a chroot
there would (`resolve_in_root`): the host's `/usr/local -> /opt/local` is `<host root>/opt/local` to the
agent, not the container's `/opt/local`. A process whose binary does not exist under our host root belongs
to another node (sandbox) and is ignored, so an agent can never signal another node's k3s. A binary that is
a symlink is refused with a message that says so: only a regular file is replaced.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)
SUBCOMMANDS = frozenset({"server", "agent"})
_VERSION = re.compile(r"^k3s version (v\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?\+k3s\d+)\b")
_HOST_PATH_DIRS = ("/usr/local/bin", "/usr/bin", "/opt/bin", "/bin")
MAX_SYMLINKS = 40
"""Symlinks followed while resolving one path, as Linux allows (ELOOP beyond): a loop ends."""


class DiscoveryError(Exception):
    """k3s could not be identified on this node without guessing; the message says why."""


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    cmdline: tuple[str, ...]
    create_time: float
    """Seconds since boot when it started (`process_clock`)."""


@dataclass(frozen=True)
class K3sProcess:
    pid: int
    role: str
    binary: Path
    """Path of the binary as the agent sees it (under the host root)."""
    host_binary: str
    """Path of the binary as the host sees it (what the process was started with)."""
    create_time: float
    """Seconds since boot when it started (`process_clock`)."""
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


def resolve_in_root(host_root: Path, path: str) -> Path:
    """Where the host path `path` is, seen from the agent: joined to the host root, with the symlinks of its
    directories followed within that root, as under a chroot there (an absolute target starts again at the
    host root, `..` goes no higher than it). Resolved in the agent's own view instead, a host's absolute
    link such as `/usr/local -> /opt/local` would point into the agent's container. The last component is
    taken as it is (a k3s binary that is a link is refused by the caller, naming it); a component that does
    not exist is taken as a plain name. `DiscoveryError` after `MAX_SYMLINKS` links (a loop)."""
    parts = path.split("/")
    last = parts.pop()
    todo = parts[::-1]  # components still to walk, the next one last
    done: list[str] = []  # the directories walked so far, under the host root, none of them a link
    links = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        try:
            target = os.readlink(os.path.join(host_root, *done, part))
        except OSError:  # not a link, or not there
            done.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise DiscoveryError(f"{path}: more than {MAX_SYMLINKS} symlinks under {host_root} (a loop?)")
        if target.startswith("/"):
            done = []
        todo.extend(target.split("/")[::-1])
    return Path(host_root, *done, last)


def resolve_host_path(host_root: Path, path: str, *, follow_last: bool = False) -> Path:
    """Where the absolute host path `path` is, seen from the agent (`resolve_in_root`); a path already under
    the host root (the sandbox, where nodes share one file system) is taken relative to it. With
    `follow_last`, a link in the last component is followed within the host root too: a directory or file
    that is itself a link (`/var/lib/rancher -> /data/rancher`) is found where the host has it, not in the
    agent's own view."""
    root = str(host_root).rstrip("/") or "/"
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    if follow_last:
        path = path.rstrip("/") + "/."  # the last component becomes a directory walked like the others
    return resolve_in_root(Path(root), path)


def resolve_binary(started_as: str, host_root: Path, exists: bool | None = None) -> Path:
    """Where a host path `started_as` is, seen from the agent (`resolve_in_root`)."""
    root = str(host_root).rstrip("/") or "/"
    if os.path.isabs(started_as):
        return resolve_host_path(host_root, started_as)
    for directory in _HOST_PATH_DIRS:
        candidate = resolve_in_root(Path(root), f"{directory}/{started_as}")
        if candidate.exists():
            return candidate
    return resolve_in_root(Path(root), f"/usr/local/bin/{started_as}")


def same_binary(a: Path, b: Path) -> bool:
    """Whether two paths, as the agent sees them, name the same file place: equal, or the same name in the
    same directory spelt two ways (an older agent's journal did not follow the directories' links within
    the host root: /host/usr/local/bin/k3s and /host/var/usrlocal/bin/k3s are one file on Fedora CoreOS).
    The file itself may be gone or replaced meanwhile (the swap renames over it): its directory decides."""
    if a == b:
        return True
    if a.name != b.name:
        return False
    try:
        return os.path.samefile(a.parent, b.parent)
    except OSError:
        return False


def match_k3s(processes: list[ProcessInfo], host_root: Path, existing: set[Path] | None = None) -> K3sProcess:
    """The one k3s server/agent process of this node. `existing` (for tests) lists the binaries that
    exist; by default the file system is asked."""
    found: list[K3sProcess] = []
    linked: list[str] = []
    for proc in processes:
        parsed = parse_command(proc.cmdline)
        if parsed is None:
            continue
        started_as, role, wrapper = parsed
        try:
            binary = resolve_binary(started_as, host_root)
        except DiscoveryError as exc:  # a link loop on its path: not a binary we could replace
            log.warning("k3s-looking pid %d skipped: %s", proc.pid, exc)
            continue
        if existing is None and binary.is_symlink():
            linked.append(f"{started_as} -> {os.readlink(binary)}")
            continue
        present = binary in existing if existing is not None else binary.is_file()
        if not present:
            continue
        found.append(K3sProcess(proc.pid, role, binary, started_as, proc.create_time, wrapper))
    real = [p for p in found if not p.wrapper] or found
    if not real and linked:
        # Replacing a link would put a file in its place behind the back of whatever manages it (which
        # could point it back at the old release later); an absolute link does not even resolve here.
        raise DiscoveryError(f"k3s runs from a symlink ({', '.join(linked)}): only a regular file is "
                             "replaced; install k3s as a file there, or upgrade its target by hand")
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
    """The processes whose command line is a k3s server or agent (`parse_command`), with their start
    times. Only those are stat'ed: the agent looks every 0.1 s while it waits for k3s, on nodes that run
    hundreds of processes, within its pod's CPU limit."""
    result: list[ProcessInfo] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline")
        if not cmdline or parse_command(tuple(cmdline)) is None:
            continue
        stat = process_stat(int(proc.info["pid"]))
        if stat is not None:
            result.append(ProcessInfo(int(proc.info["pid"]), tuple(cmdline), stat[1]))
    return result


def find_k3s(host_root: Path) -> K3sProcess:
    return match_k3s(list_processes(), host_root)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_stat(text: str) -> tuple[str, float]:
    """(state letter, start time in clock ticks since boot) from the text of `/proc/<pid>/stat`.

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses: the fields
    are counted after its last `)`. The state is field 3, the start time field 22.
    """
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], float(fields[19])


def process_stat(pid: int) -> tuple[str, float] | None:
    """(state, seconds since boot it started) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state, ticks = parse_stat(handle.read())
    except (FileNotFoundError, ProcessLookupError):
        return None
    return state, ticks / CLOCK_TICKS


def process_clock() -> float:
    """Now, in seconds since boot (`/proc/uptime`): the clock of a process's start time in `/proc`.

    Start times are taken on this clock, not the wall clock, so "started after the swap" holds across a
    step of the wall clock (NTP after a boot, a board without a battery-backed clock). It restarts at each
    boot: a time is only compared with others of the same `boot_id()`.
    """
    with open("/proc/uptime") as handle:
        return float(handle.read().split()[0])


def boot_id() -> str:
    """This boot's identity (the kernel's random `boot_id`)."""
    with open("/proc/sys/kernel/random/boot_id") as handle:
        return handle.read().strip()


def wall_clock_boot_time() -> float:
    """The wall-clock time of this boot: how an agent before boot-relative times journalled them."""
    return float(psutil.boot_time())


def pid_alive(pid: int, create_time: float) -> bool:
    stat = process_stat(pid)
    return stat is not None and abs(stat[1] - create_time) < 0.01 and stat[0] != "Z"


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
