"""A benchmark's child processes: stopping one (SIGTERM, a grace period, then SIGKILL; its pipes closed),
and the CPU time a process has used, finely enough to time a burst of 100 ms."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any


async def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """Terminate `proc`, kill it if it is still there after `grace` seconds, and close its pipes."""
    proc.terminate()
    try:
        await asyncio.to_thread(proc.wait, grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def cpu_seconds(pid: int) -> float | None:
    """CPU time of every thread of `pid` so far, in seconds at nanosecond resolution (the scheduler's own
    account, `/proc/PID/task/*/schedstat`; psutil's counts clock ticks of 10 ms, too coarse for a
    window of 100 ms). None where the kernel does not keep it or the process is gone."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9
