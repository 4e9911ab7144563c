"""The agent's footprint: download + verify of a 70 MB artifact against curl, and idle RSS/CPU.

Download: a 70 MB random file is served by `python -m http.server` (its own process, so the server does
not share a GIL with the client). In the same run, `curl` fetches the URL to a file and, in a fresh
process, `agent.download.download` fetches and SHA-256-verifies it (the agent's real code path); each is
timed over the same number of rounds, interleaved. `agent_over_curl` is agent MB/s over curl MB/s, each
from its best round; the same from the median rounds is reported beside it. Both are timed from the
start of the transfer to its end: the agent inside its process, curl by its own `time_total` (so neither
pays for its start-up; timing curl from outside through `subprocess.run` saw its end only at the parent's
next poll of the child, 63.5 ms, then 113.5 ms after its start, which made curl look bimodal). Two costs
that curl does not have and the agent cannot skip are timed apart: `sha256_ms`, hashlib's SHA-256 of
the artifact in memory (the verification), and `fsync_ms`, the fsync of the artifact freshly written to
a file in the same directory (the staged binary must survive a power cut before it replaces the live
one). The agent writes and hashes in a thread beside the one that receives, and starts the file's
writeback as it grows, so on an idle core both costs overlap the transfer; the CPU time of curl, of the
agent (all its threads) and of the server in each one's best round show how busy the two cores were.
The child first imports what the running agent has imported (`agent.__main__`, which the download needs
nothing beyond) and nothing of this benchmark's own (aiohttp, the sandbox), so its VmHWM (kernel
high-water mark of its resident set) is the agent's peak RSS while downloading.

Idle: `bench.agent_idle` (the agent's RSS, USS and CPU while idle, before and after an upgrade).
Prints JSON.

    python -m bench.agent_download [--megabytes 70] [--rounds 5] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil


def serve_files(directory: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "0",
            "--directory",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"port (\d+)", line)
    if m is None:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"http.server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{m.group(1)}"


def child(url: str, sha256: str, part: Path) -> None:
    """Run in a fresh process: download + verify once, print seconds, CPU seconds and this process's peak
    RSS."""
    import agent.__main__  # noqa: F401 - what the running agent has imported
    from agent.download import download

    t0, cpu0 = time.perf_counter(), _cpu_seconds(resource.RUSAGE_SELF)
    asyncio.run(download(url, sha256, part))
    elapsed, cpu = time.perf_counter() - t0, _cpu_seconds(resource.RUSAGE_SELF) - cpu0
    hwm = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
    peak = int(hwm.split()[1]) / 1024
    figures = {"seconds": elapsed, "cpu_seconds": cpu, "peak_rss_mib": peak}
    print(json.dumps(figures))


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def agent_round(url: str, sha256: str, part: Path) -> dict[str, float]:
    part.unlink(missing_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "bench.agent_download", "--child", url, sha256, str(part)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"agent download failed: {out.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def curl_round(url: str, dest: Path) -> tuple[float, float]:
    """(seconds, CPU seconds of curl). The seconds are curl's own `time_total` (from the start of the
    transfer to its end, as the agent's are timed inside its process): timed from here, `subprocess.run`
    with a timeout would see curl's end only at its next poll of the child (at 63.5 ms, then 113.5 ms, ...),
    and curl's start-up would be counted against it."""
    dest.unlink(missing_ok=True)
    cpu0 = _cpu_seconds(resource.RUSAGE_CHILDREN)
    out = subprocess.run(["curl", "-sSf", "-o", str(dest), "-w", "%{time_total}", url], check=True,
                         timeout=300, capture_output=True, text=True)
    return float(out.stdout.strip()), _cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0


def _server_cpu(server: subprocess.Popen[str]) -> float:
    times = psutil.Process(server.pid).cpu_times()
    return float(times.user + times.system)


def measure_download(megabytes: int, rounds: int, tmp: Path) -> dict[str, Any]:
    if shutil.which("curl") is None:
        raise RuntimeError("curl is not on the PATH: the download benchmark compares against it")
    served = tmp / "served"
    served.mkdir()
    data = os.urandom(megabytes * 1024 * 1024)
    (served / "k3s").write_bytes(data)
    size_mb = len(data) / 1e6
    sha = hashlib.sha256(data).hexdigest()
    del data
    server, base = serve_files(served)
    try:
        url = f"{base}/k3s"
        curl_s, agent_s, rss = [], [], []
        curl_cpu, agent_cpu, server_cpu_curl, server_cpu_agent = [], [], [], []
        for _ in range(rounds):  # interleaved, so both see the same machine state
            before = _server_cpu(server)
            seconds, cpu = curl_round(url, tmp / "curl.out")
            curl_s.append(seconds)
            curl_cpu.append(cpu)
            server_cpu_curl.append(_server_cpu(server) - before)
            before = _server_cpu(server)
            got = agent_round(url, sha, tmp / "agent.part")
            server_cpu_agent.append(_server_cpu(server) - before)
            agent_s.append(got["seconds"])
            agent_cpu.append(got["cpu_seconds"])
            rss.append(got["peak_rss_mib"])
    finally:
        server.terminate()
        server.wait(10)
        assert server.stdout is not None
        server.stdout.close()
    # After the rounds, so that their writeback does not slow the first round of either.
    data = (served / "k3s").read_bytes()
    hash_s, fsync_s = [], []
    for _ in range(3):  # what curl does not do: SHA-256 of the artifact, and making the file durable
        t0 = time.perf_counter()
        hashlib.sha256(data).hexdigest()
        hash_s.append(time.perf_counter() - t0)
        durable = tmp / "fsync.out"
        durable.unlink(missing_ok=True)
        with durable.open("wb", buffering=0) as handle:
            handle.write(data)
            t0 = time.perf_counter()
            os.fsync(handle.fileno())
            fsync_s.append(time.perf_counter() - t0)
        durable.unlink()
    del data
    best_curl, best_agent = curl_s.index(min(curl_s)), agent_s.index(min(agent_s))
    curl_mbps, agent_mbps = size_mb / min(curl_s), size_mb / min(agent_s)
    curl_median, agent_median = size_mb / statistics.median(curl_s), size_mb / statistics.median(agent_s)
    return {
        "artifact_mb": round(size_mb, 1),
        "rounds": rounds,
        "curl_mb_per_s": round(curl_mbps, 1),
        "agent_download_verify_mb_per_s": round(agent_mbps, 1),
        "agent_over_curl": round(agent_mbps / curl_mbps, 2),
        "curl_mb_per_s_median": round(curl_median, 1),
        "agent_mb_per_s_median": round(agent_median, 1),
        "agent_over_curl_median": round(agent_median / curl_median, 2),
        "curl_ms_best": round(min(curl_s) * 1000, 1),
        "agent_ms_best": round(min(agent_s) * 1000, 1),
        "curl_cpu_ms_best_round": round(curl_cpu[best_curl] * 1000, 1),
        "agent_cpu_ms_best_round": round(agent_cpu[best_agent] * 1000, 1),
        "server_cpu_ms_best_curl_round": round(server_cpu_curl[best_curl] * 1000, 1),
        "server_cpu_ms_best_agent_round": round(server_cpu_agent[best_agent] * 1000, 1),
        "sha256_ms": round(min(hash_s) * 1000, 1),
        "fsync_ms": round(min(fsync_s) * 1000, 1),
        "agent_download_peak_rss_mib": round(max(rss), 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.agent_download", description=__doc__.split("\n\n")[0])
    p.add_argument("--megabytes", type=int, default=70)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    p.add_argument("--child", nargs=3, metavar=("URL", "SHA256", "PART"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], Path(args.child[2]))
        return {}
    from bench.agent_idle import measure_idle

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        figures = {"benchmark": "agent", **measure_download(args.megabytes, args.rounds, Path(tmp))}
        figures.update(asyncio.run(measure_idle(args.idle, Path(tmp))))
    return figures


if __name__ == "__main__":
    result = main()
    if result:
        print(json.dumps(result))
