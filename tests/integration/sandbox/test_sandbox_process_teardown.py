"""The sandbox's process handling: a stopped piece leaves no process behind, waits have deadlines.

Aspects covered:
- `Proc.stop` ends the whole process group, including a grandchild that ignores SIGTERM;
- `Proc.kill` (a crash) is immediate; output goes to the log file, `tail` shows it;
- `wait_for` returns the first truthy value, raises with the last error after its deadline, and gives up
  at once on `ProcessDied`;
- node names: servers first (`server-1..`, `agent-1..`), or the names given, counted against the roles.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from sandbox.cluster import Proc, ProcessDied, Sandbox, SandboxConfig, SandboxError, wait_for

SCRIPT = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('child', flush=True); "
    "time.sleep(60)"])
print("parent", child.pid, flush=True)
time.sleep(60)
"""


def test_stop_ends_the_whole_group(tmp_path: Path) -> None:
    proc = Proc("demo", [sys.executable, "-c", SCRIPT], tmp_path / "logs" / "demo.log")

    def child() -> int | None:
        lines = proc.log.read_text().splitlines()
        return next((int(line.split()[1]) for line in lines if line.startswith("parent")), None)

    child_pid = wait_for("no child", child, 10, 0.05)
    wait_for("child not started", lambda: "child" in proc.tail().split(), 10, 0.05)
    started = time.monotonic()
    proc.stop(timeout=2)
    assert not proc.alive()
    assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - started < 8


def test_kill_is_a_crash(tmp_path: Path) -> None:
    proc = Proc("sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                tmp_path / "sleeper.log")
    wait_for("not up", lambda: "up" in proc.tail(), 10, 0.05)
    proc.kill()
    assert proc.popen.returncode == -signal.SIGKILL


def test_wait_for_deadlines() -> None:
    calls = iter([0, 0, 5])
    assert wait_for("never", lambda: next(calls), 5, 0.01) == 5

    def failing() -> None:
        raise ValueError("boom")

    with pytest.raises(SandboxError, match=r"thing did not happen within 0.2 s \(last error: boom\)"):
        wait_for("thing did not happen", failing, 0.2, 0.01)

    def died() -> None:
        raise ProcessDied("gone")

    started = time.monotonic()
    with pytest.raises(ProcessDied):
        wait_for("x", died, 30, 0.01)
    assert time.monotonic() - started < 1


def test_node_names() -> None:
    assert Sandbox(SandboxConfig(servers=2, agents=1, state_dir=Path("/nonexistent")))._node_names() == [
        ("server-1", "server"), ("server-2", "server"), ("agent-1", "agent")]
    named = Sandbox(SandboxConfig(servers=1, agents=1, node_names=("cp", "w"), state_dir=Path("/x")))
    assert named._node_names() == [("cp", "server"), ("w", "agent")]
    with pytest.raises(SandboxError, match="1 node names for 2 nodes"):
        Sandbox(SandboxConfig(servers=1, agents=1, node_names=("cp",), state_dir=Path("/x")))._node_names()
