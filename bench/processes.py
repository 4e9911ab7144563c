"""Stopping a benchmark's child process: SIGTERM, a grace period, then SIGKILL; its pipe closed."""

from __future__ import annotations

import asyncio
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
