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

from agent.discovery import DiscoveryError, K3sProcess, find_k3s, pid_alive

TICK = 0.011
"""Start times and the uptime clock both have clock-tick (10 ms) resolution."""


class RestartFailed(Exception):
    """The new k3s did not come up, or did not stay up, in time."""


AUTO_UNIT = "auto"
"""`--systemd-unit auto`: the unit whose cgroup the k3s process is in (`k3s` on servers and `k3s-agent` on
agents as install.sh names them, `k3s-<INSTALL_K3S_NAME>` too), so one DaemonSet serves both."""


def unit_from_cgroup(text: str) -> str | None:
    """The systemd service a process runs in, from the text of `/proc/PID/cgroup` (v2 `0::/system.slice/
    k3s.service`, or v1's `name=systemd` line); None when it is in none (not started by systemd)."""
    for line in text.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        if controllers in ("", "name=systemd"):
            units = [part for part in path.split("/") if part.endswith(".service")]
            if units:
                return units[-1]
    return None


def _unit_of(process: K3sProcess | None) -> str:
    if process is None:
        raise RestartFailed("--systemd-unit auto: no k3s process runs to tell its unit")
    try:
        with open(f"/proc/{process.pid}/cgroup") as handle:
            unit = unit_from_cgroup(handle.read())
    except OSError as exc:
        raise RestartFailed(f"--systemd-unit auto: cannot read the cgroup of k3s pid {process.pid}: {exc}") \
            from exc
    if unit is None:
        raise RestartFailed(f"--systemd-unit auto: k3s pid {process.pid} runs in no systemd service")
    return unit


async def restart(process: K3sProcess | None, systemd_unit: str | None) -> None:
    """Restart k3s; RestartFailed when that could not even be asked for (the cause in the message).

    `systemctl restart --no-block`: the unit install.sh writes is `Type=notify` with `TimeoutStartSec=0`,
    so a blocking restart would wait for as long as the new k3s takes to say it is ready, forever if it
    never does (a server that cannot rejoin etcd); `wait_for_new_process` bounds the wait instead. An
    unknown unit is still refused at once."""
    if systemd_unit == AUTO_UNIT:
        systemd_unit = _unit_of(process)
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
        if (found is not None and found.binary == binary and found.create_time >= started_after - TICK
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
