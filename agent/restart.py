"""Restarting k3s the way its service manager expects, and waiting for the new process to stay up.

By default the agent sends SIGTERM to the k3s process it found: systemd (`Restart=always`), OpenRC's
supervise-daemon, or the sandbox's supervisord starts it again from the binary now in place. With
`--systemd-unit` it instead runs `nsenter -t 1 -m -u -i -n -p -- systemctl restart <unit>` in the host's
namespaces (needs hostPID and privilege).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from agent.discovery import DiscoveryError, K3sProcess, find_k3s, pid_alive, same_binary

TICK = 0.011
"""Start times and the uptime clock both have clock-tick (10 ms) resolution."""


class RestartFailed(Exception):
    """The new k3s did not come up, or did not stay up, in time."""


AUTO_UNIT = "auto"
"""`--systemd-unit auto`: the unit whose cgroup the k3s process is in (`k3s` on servers and `k3s-agent` on
agents as install.sh names them, `k3s-<INSTALL_K3S_NAME>` too), so one DaemonSet serves both. Only a unit
named `k3s*.service` is taken: a k3s started by hand in a login that landed in `ssh.service`'s cgroup
must not get sshd restarted."""


def unit_from_cgroup(text: str) -> str | None:
    """The k3s systemd service a process runs in, from the text of `/proc/PID/cgroup` (v2 `0::/system.slice/
    k3s.service`, or v1's `name=systemd` line); None when it is in none (not started by systemd) or in
    a service not named `k3s*`."""
    for line in text.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers in ("", "name=systemd"):
            units = [part for part in path.split("/") if part.endswith(".service")]
            if units:
                return units[-1] if units[-1].startswith("k3s") else None
    return None


def unit_of(pid: int) -> str | None:
    """`unit_from_cgroup` of process `pid`; None when its cgroup cannot be read (it is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            return unit_from_cgroup(handle.read())
    except OSError:
        return None


async def restart(process: K3sProcess | None, systemd_unit: str | None,
                  known_unit: str | None = None) -> None:
    """Restart k3s; RestartFailed when that could not even be asked for (the cause in the message).

    `systemctl restart --no-block`: the unit install.sh writes is `Type=notify` with `TimeoutStartSec=0`,
    so a blocking restart would wait for as long as the new k3s takes to say it is ready, forever if it
    never does (a server that cannot rejoin etcd); `wait_for_new_process` bounds the wait instead. An
    unknown unit is still refused at once.

    `auto`: the unit of `process`, else `known_unit` (the unit k3s was last seen in): k3s may be between
    two runs when it is restarted (a crash-looping new k3s while it is rolled back), and a unit that
    systemd gave up on must be restarted all the same. With neither, nothing runs and nothing is known:
    as without a unit, its service manager is left to start it."""
    if systemd_unit == AUTO_UNIT:
        systemd_unit = (unit_of(process.pid) if process is not None else None) or known_unit
        if systemd_unit is None and process is not None:
            raise RestartFailed(f"--systemd-unit auto: k3s pid {process.pid} runs in no k3s systemd service")
    if systemd_unit:
        try:
            proc = await asyncio.create_subprocess_exec(
                "nsenter", "-t", "1", "-m", "-u", "-i", "-n", "-p", "--",
                "systemctl", "restart", "--no-block", systemd_unit,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise RestartFailed(f"cannot run systemctl restart {systemd_unit}: {exc}") from exc
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            text = out.decode(errors="replace")[:300]
            raise RestartFailed(f"systemctl restart {systemd_unit} exited {proc.returncode}: {text}")
        return
    if process is None:
        return  # nothing runs: the service manager is already starting it
    try:
        os.kill(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited already: its service manager starts it again
    except OSError as exc:
        raise RestartFailed(f"cannot send SIGTERM to k3s pid {process.pid}: {exc}") from exc


async def wait_for_new_process(host_root: Path, binary: Path, started_after: float, *, limit: float,
                               stable: float, interval: float = 0.1,
                               not_process: tuple[int, float] | None = None) -> K3sProcess:
    """A k3s process running `binary`, started after `started_after` (`process_clock`), alive `stable` s."""
    deadline = time.monotonic() + limit
    last_error = "no k3s process started"
    seen: set[int] = set()
    while time.monotonic() < deadline:
        try:
            found = await asyncio.to_thread(find_k3s, host_root)
        except DiscoveryError as exc:
            last_error = str(exc)
            found = None
        if (found is not None and same_binary(found.binary, binary)
                and found.create_time >= started_after - TICK
                and (found.pid, found.create_time) != not_process):
            seen.add(found.pid)
            stable_until = time.monotonic() + stable
            # A process gives no event when it dies unless it is our child: poll its liveness.
            while time.monotonic() < stable_until and pid_alive(found.pid, found.create_time):  # noqa: ASYNC110
                await asyncio.sleep(min(interval, max(0.0, stable_until - time.monotonic())))
            if pid_alive(found.pid, found.create_time):
                return found
            last_error = f"k3s pid {found.pid} exited within {stable} s of starting"
        await asyncio.sleep(interval)
    crashes = f" ({len(seen)} short-lived processes seen)" if seen else ""
    raise RestartFailed(f"no stable k3s from {binary} within {limit} s: {last_error}{crashes}")
