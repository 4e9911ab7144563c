"""Rollout at scale: N simulated nodes, one Plan, a real coordinator process, the API server emulator.

Three processes: the API server emulator (`python -m bench.rollout --serve-apiserver`, a wrapper that
also answers request counts on stdin, since the emulator's request log lives in its own process), the
coordinator (`python -m coordinator`, measured with psutil: CPU seconds and peak RSS from VmHWM), and
this one, which holds the release server (a thread) and `bench.nodesim` stand-ins for every node.

Figures: total time from the Plan's creation to the last node's `finish`, against the ideal
ceil(N / concurrency) x per-node work; hand-off latency, i.e. for the k-th node that sent its `restarted`
report (its Node already Ready on the target), the time until the (concurrency + k)-th lease was
received, as `stage`, or as `apply` by a node that prefetched the binary: the report's trip, the
verification, the label, the release and the grant (and for `apply` the cordon and the table writes
around it; and the same from the k-th `finish` received, which may come after the next grant: then it is
negative); the go-ahead latency per node (its `stage` received to its `apply` received: the staged
report, the cordon and the table writes around it, with no download in between; 0 after a prefetch);
Kubernetes API requests during the rollout per upgraded node by verb and resource; the CPU seconds of
the API server and of the stand-ins during the rollout too, to show where a 2-core machine's time goes;
the coordinator's RSS once its caches are synced (every Node read) and once every stand-in holds a
long-poll, before the Plan exists, beside its peak; the means of the hand-off and go-ahead, and of the
time from `apply` to `restarted` beyond the node's own work (the Node update, the report's trip);
the time from the Plan's creation to the first lease received, and from the last `restarted` sent to
the last `finish` received; from the coordinator's /metrics, the mean time of one API write by kind,
the reconcile passes per node and their mean duration, the mean time a pass took to decide (before its
first write), and the mean time a report waited for the pass that took it up, during the rollout; and
the coordinator's own count of hand-offs (`k3s_upgrade_handoff_seconds`: from the arrival of the last
evidence that a node was upgraded to the storing of the next grant, the issue's "a node verified -> the
next lease granted" as the coordinator sees it, without the trips to and from the stand-ins), their mean
and the histogram buckets that hold their p50 and p99 (`_at_most`); and where the slow hand-offs are:
the first wave's (the first `concurrency` slots freed: nodes that went ahead together and come back
within a few ms of each other, the burst a rollout of equal nodes starts with) against the rest's. The
stand-ins use `agent.client` itself, which keeps its connection from exchange to exchange.

`--api-latency-ms` makes the emulator wait that long before it handles each request but a watch: the
round trip to an API server across a network, where the hand-off costs what the pass waits for in turn.

`--floor` runs the same stand-ins and measurements against `bench.floor` instead of the coordinator:
the agent API with a scheduler that writes nothing to Kubernetes (`POST /start` replaces the Plan). What
it measures is the harness's own share of the figures on this machine. `--bare` (a floor) leaves out the
protocol's exchanges between the grant and the node's work too (`bench.floor --bare`): one instruction
and one report per node. Prints JSON.

Garbage collection: every process of the harness (the emulator, this one, and `bench.floor`) uses the
coordinator's settings (`coordinator.gc_tuning`): fewer young collections, and what is alive just before
the rollout (the stand-ins, the Nodes, the sessions) frozen out of full collections. Without them, a
full collection in the emulator or among the 1,000 stand-ins paused every request meanwhile, and those
pauses were most of the floor's hand-off p99 (111.9-166.6 ms before, 44.6-49.3 ms after, 4 runs each).

    python -m bench.rollout [--nodes 1000] [--concurrency 50] [--work 1.0] [--floor [--bare]]
                            [--max-held-polls N] [--prefetch-waves N] [--api-latency-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from agent.client import CoordinatorClient
from bench.nodesim import AGENT_SERVICE_ACCOUNT, ApiClient, SimNode, Timeline, register
from bench.processes import cpu_seconds, stop_process
from coordinator import gc_tuning
from coordinator.config import DEFAULT_MAX_HELD_POLLS, DEFAULT_PREFETCH_WAVES
from sandbox.apiserver import ApiServer, LoggedRequest, write_kubeconfig
from sandbox.releases import ReleaseServer

ROOT = Path(__file__).resolve().parents[1]
NS = "system-upgrade"
OLD, NEW = "v1.30.3+k3s1", "v1.30.4+k3s1"
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


# ---- the API server emulator in its own process ------------------------------------------------------


def classify(req: LoggedRequest) -> str:
    """`VERB resource[/subresource]`, e.g. `PATCH nodes/status`, `LIST nodes`, `WATCH leases`."""
    parts = [p for p in req.path.split("/") if p]
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource = rest[0] if rest else "/".join(parts[:1]) or "/"
    named = len(rest) >= 2
    if len(rest) >= 3:
        resource += "/" + rest[2]
    verb = req.method
    if verb == "GET":
        verb = (
            "WATCH" if "watch=true" in req.query or "watch=1" in req.query else ("GET" if named else "LIST")
        )
    return f"{verb} {resource}"


async def serve_apiserver(latency: float = 0.0) -> None:
    """Serve the emulator; print its URL; on each stdin line print the request counts seen since the last
    line as JSON (a `freeze` line freezes what is alive first: see the module docstring); stop at EOF.
    `latency`: seconds every request but a watch waits (`Faults.latency`)."""
    gc_tuning.tune()
    server = ApiServer(bookmark_interval=5.0)
    server.faults.latency = latency
    await server.start("127.0.0.1", 0)
    print(server.url, flush=True)
    loop = asyncio.get_running_loop()
    seen = 0
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip() == "freeze":
            gc_tuning.freeze_long_lived()
        log = server.request_log
        counts = Counter(classify(r) for r in log[seen:])
        seen = len(log)
        print(json.dumps(dict(counts)), flush=True)
    await server.stop()


class ApiServerProcess:
    def __init__(self, latency_ms: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.rollout", "--serve-apiserver", "--api-latency-ms", str(latency_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin: IO[str] = self.proc.stdin
        self.stdout: IO[str] = self.proc.stdout
        self.url = self.stdout.readline().strip()
        if not self.url.startswith("http"):
            self.close()
            raise RuntimeError(f"the API server emulator did not start (said {self.url!r})")

    def counts(self, freeze: bool = False) -> Counter[str]:
        """Requests since the previous call, by `VERB resource`; `freeze`: see the module docstring."""
        self.stdin.write("freeze\n" if freeze else "\n")
        self.stdin.flush()
        return Counter(json.loads(self.stdout.readline()))

    def close(self) -> None:
        self.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdout.close()


# ---- the coordinator process -------------------------------------------------------------------------


def start_coordinator(argv: list[str], banner: str, log: IO[bytes]) -> tuple[subprocess.Popen[str], str]:
    """Start `python -m <argv>` and wait for its first line, `<banner> http://HOST:PORT`: its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *argv],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(banner):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(f"{argv[0]} did not start: {line!r}")
    address = line.split()[-1].removeprefix("http://")
    return proc, f"http://{address}"


def coordinator_argv(
    kubeconfig: Path, releases: str, max_held_polls: int = DEFAULT_MAX_HELD_POLLS,
    prefetch_waves: int = DEFAULT_PREFETCH_WAVES,
) -> list[str]:
    return [
        "coordinator",
        "--kubeconfig",
        str(kubeconfig),
        "--namespace",
        NS,
        "--listen",
        "127.0.0.1:0",
        "--release-base-url",
        releases,
        "--log-level",
        "WARNING",
        "--max-held-polls",
        str(max_held_polls),
        "--prefetch-waves",
        str(prefetch_waves),
    ]


def floor_argv(kubeconfig: Path, nodes: int, concurrency: int, bare: bool = False) -> list[str]:
    return [
        "bench.floor",
        "--kubeconfig",
        str(kubeconfig),
        "--nodes",
        str(nodes),
        "--concurrency",
        str(concurrency),
        "--version",
        NEW,
        *(["--bare"] if bare else []),
    ]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """From /proc: VmRSS (the resident set now) or VmHWM (the kernel's own high-water mark of it)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def peak_rss_mib(pid: int) -> float:
    return rss_mib(pid, "VmHWM")


async def until_ready(session: aiohttp.ClientSession, url: str, limit: float = 60.0) -> None:
    """Until the coordinator's /readyz answers 200: its caches (all the Nodes) are synced."""
    async with asyncio.timeout(limit):
        while True:
            async with session.get(f"{url}/readyz") as r:
                if r.status == 200:
                    return
            await asyncio.sleep(0.1)


# ---- the benchmark -----------------------------------------------------------------------------------


def plan(concurrency: int) -> dict[str, Any]:
    return {
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {"name": "bench", "namespace": NS},
        "spec": {
            "concurrency": concurrency,
            "cordon": True,
            "version": NEW,
            "serviceAccountName": "system-upgrade",
            "upgrade": {"image": "rancher/k3s-upgrade"},
            "nodeSelector": {
                "matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]
            },
        },
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile in ms, rounded; None when there is nothing to rank (fewer nodes finished
    than `concurrency`, so no hand-off happened)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 1)


def mean_ms(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


async def scrape(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """From the coordinator's /metrics: reconcile passes, their decisions, the reports' waits for them,
    and API writes: counts and total seconds."""
    async with session.get(f"{url}/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "k3s_upgrade_reconcile_duration_seconds_sum":
                out["pass seconds"] = sample.value
            elif sample.name == "k3s_upgrade_reconcile_duration_seconds_count":
                out["passes"] = sample.value  # the passes that ended
            elif sample.name == "k3s_upgrade_agent_polls_paced_total":
                out["paced"] = sample.value
            elif sample.name in TIMED:
                out[TIMED[sample.name]] = out.get(TIMED[sample.name], 0.0) + sample.value
            elif sample.name == "k3s_upgrade_handoff_seconds_bucket":  # cumulative, summed over the plans
                key = f"handoff le {sample.labels['le']}"
                out[key] = out.get(key, 0.0) + sample.value
            elif sample.name.startswith("k3s_upgrade_api_write_duration_seconds_"):
                field = sample.name.rsplit("_", 1)[1]
                if field in ("count", "sum"):
                    out[f"{field} {sample.labels['kind']}"] = sample.value
    return out


TIMED = {
    "k3s_upgrade_decide_duration_seconds_sum": "decide seconds",
    "k3s_upgrade_decide_duration_seconds_count": "decides",
    "k3s_upgrade_report_wait_seconds_sum": "report wait seconds",
    "k3s_upgrade_report_wait_seconds_count": "reports",
    "k3s_upgrade_handoff_seconds_sum": "handoff seconds",
    "k3s_upgrade_handoff_seconds_count": "handoffs",
}
"""Histograms of /metrics that `scrape` reads: the sample's name -> its key in what it returns."""


def timed_count(before: dict[str, float], during: dict[str, float], count: str) -> float:
    """How many times a histogram observed during the rollout (a labelled one has no sample before its
    first observation)."""
    return during.get(count, 0.0) - before.get(count, 0.0)


def timed_ms_mean(
    before: dict[str, float], during: dict[str, float], seconds: str, count: str
) -> float | None:
    """Mean milliseconds of what a histogram timed during the rollout (None against the floor)."""
    n = timed_count(before, during, count)
    return round((during[seconds] - before.get(seconds, 0.0)) / n * 1000, 1) if n > 0 else None


def bucket_ms(before: dict[str, float], during: dict[str, float], q: float) -> float | None:
    """The upper bound in ms of the `k3s_upgrade_handoff_seconds` bucket that holds the q-quantile of the
    hand-offs during the rollout: that quantile is at most this (None: no hand-off, or past the last
    bucket)."""
    bounds = sorted(
        (float(key.rsplit(" ", 1)[1]), during[key] - before.get(key, 0.0))
        for key in during
        if key.startswith("handoff le ")
    )
    total = bounds[-1][1] if bounds else 0.0
    for bound, cumulative in bounds:
        if total > 0 and cumulative >= q * total:
            return None if math.isinf(bound) else round(bound * 1000, 1)
    return None


def write_ms_mean(before: dict[str, float], during: dict[str, float]) -> dict[str, float]:
    """Mean milliseconds of one API write during the rollout, by kind."""
    means = {}
    for key, count in during.items():
        if key.startswith("count "):
            kind = key.split(" ", 1)[1]
            n = count - before.get(key, 0.0)
            if n > 0:
                took = during[f"sum {kind}"] - before.get(f"sum {kind}", 0.0)
                means[kind] = round(took / n * 1000, 1)
    return dict(sorted(means.items()))


def handoffs(after: list[float], grants: list[float], concurrency: int) -> list[float]:
    """The k-th freed slot (sorted `after` times) against the (concurrency + k)-th grant, in ms."""
    a, g = sorted(after), sorted(grants)[concurrency:]
    return [(gi - ai) * 1000 for ai, gi in zip(a, g, strict=False)]


def first_wave_cpu(
    probes: Mapping[str, tuple[float, Mapping[str, float | None]]], concurrency: int, cores: int
) -> dict[str, Any]:
    """What each process spent on the first wave's hand-offs: CPU ms from its first node back to its last
    hand-off over (`Timeline.probes`), the coordinator's per hand-off and as a share of one core (it runs
    on one thread), and the share of the machine's cores all three kept busy. None where a probe is
    missing (fewer nodes than two waves) or a process's CPU time could not be read."""
    back, over = probes.get("first_wave_back"), probes.get("first_wave_handed_off")
    if back is None or over is None or over[0] <= back[0]:
        return {"first_wave_window_ms": None, "first_wave_cpu_ms": None,
                "first_wave_coordinator_cpu_ms_per_handoff": None, "first_wave_coordinator_busy": None,
                "first_wave_cores_busy": None}
    window = over[0] - back[0]
    spent = {k: None if v is None or over[1].get(k) is None else over[1][k] - v for k, v in back[1].items()}
    coordinator = spent.get("coordinator")
    known = [v for v in spent.values() if v is not None]
    return {
        "first_wave_window_ms": round(window * 1000, 1),
        "first_wave_cpu_ms": {k: None if v is None else round(v * 1000, 1) for k, v in spent.items()},
        "first_wave_coordinator_cpu_ms_per_handoff": (
            None if coordinator is None else round(coordinator * 1000 / concurrency, 2)
        ),
        "first_wave_coordinator_busy": None if coordinator is None else round(coordinator / window, 2),
        "first_wave_cores_busy": round(sum(known) / window / cores, 2) if len(known) == len(spent) else None,
    }


def first_wave(handoffs_ms: list[float], restarted: list[float], concurrency: int) -> dict[str, Any]:
    """Where the slow hand-offs are: those of the first wave (the first `concurrency` slots freed, by
    nodes that went ahead together and come back within a few ms: the one burst a rollout of equal
    nodes starts with) against the rest, and within how many ms the first wave came back."""
    first, rest = handoffs_ms[:concurrency], handoffs_ms[concurrency:]
    back = sorted(restarted)[:concurrency]
    return {
        "first_wave_back_within_ms": round((back[-1] - back[0]) * 1000, 1) if back else None,
        "handoff_ms_first_wave_p50": percentile(first, 0.5),
        "handoff_ms_first_wave_max": percentile(first, 1.0),
        "handoff_ms_p99_after_first_wave": percentile(rest, 0.99),
        "handoffs_over_50_ms": sum(1 for h in handoffs_ms if h > 50),
        "handoffs_over_50_ms_in_first_wave": sum(1 for h in first if h > 50),
    }


async def rollout(
    nodes: int,
    concurrency: int,
    work: float,
    tmp: Path,
    limit: float,
    floor: bool = False,
    max_held_polls: int = DEFAULT_MAX_HELD_POLLS,
    bare: bool = False,
    prefetch_waves: int = DEFAULT_PREFETCH_WAVES,
    api_latency_ms: float = 0.0,
) -> dict[str, Any]:
    floor = floor or bare
    gc_tuning.tune()  # see the module docstring
    api_proc = ApiServerProcess(api_latency_ms)
    releases = ReleaseServer([NEW], tmp / "releases")
    coordinator: subprocess.Popen[str] | None = None
    stop = asyncio.Event()
    runs: list[asyncio.Task[None]] = []
    sims: list[SimNode] = []
    log_path = tmp / "coordinator.log"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            kubeconfig = write_kubeconfig(tmp / "kubeconfig", api_proc.url)
            api = ApiClient(session, api_proc.url)
            crd = await asyncio.to_thread(
                subprocess.run,
                [
                    "kubectl",
                    "--kubeconfig",
                    str(kubeconfig),
                    "apply",
                    "-f",
                    str(ROOT / "deploy" / "crd.yaml"),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if crd.returncode != 0:
                raise RuntimeError(f"kubectl apply deploy/crd.yaml: {crd.stderr}")
            await api.call(
                "POST",
                "/api/v1/namespaces",
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
            )
            await api.call(
                "POST",
                f"/api/v1/namespaces/{NS}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_SERVICE_ACCOUNT}},
            )
            names = [f"node-{i:05d}" for i in range(nodes)]
            t_setup = time.monotonic()
            tokens = await register(api, names, OLD, NS)
            setup_s = time.monotonic() - t_setup
            await asyncio.to_thread(releases.start_in_thread)
            with log_path.open("wb") as log:
                if floor:
                    argv, banner = floor_argv(kubeconfig, nodes, concurrency, bare), "floor listening on"
                else:
                    argv = coordinator_argv(kubeconfig, releases.base_url, max_held_polls, prefetch_waves)
                    banner = "coordinator listening on"
                proc, url = await asyncio.to_thread(start_coordinator, argv, banner, log)
            coordinator = proc
            if not floor:
                await until_ready(session, url)
            await asyncio.sleep(0.5)
            rss_synced = rss_mib(proc.pid)
            pids = {"coordinator": proc.pid, "apiserver": api_proc.proc.pid, "nodesim": os.getpid()}
            timeline = Timeline(
                expected=nodes, wave=concurrency, probe=lambda: {k: cpu_seconds(p) for k, p in pids.items()}
            )
            token_dir = tmp / "tokens"
            token_dir.mkdir(exist_ok=True)
            for n in names:
                (token_dir / n).write_text(tokens[n])
                client = CoordinatorClient(url, n, token_dir / n, timeout=30.0)
                sims.append(SimNode(n, client, OLD, api, timeline, work=work, bare=bare))
            runs = [asyncio.create_task(s.run(stop)) for s in sims]
            api_proc.counts()  # drop the setup's requests
            # Until every stand-in's first poll was authenticated (one TokenReview each) and held.
            reviewed = 0
            async with asyncio.timeout(limit):
                while reviewed < nodes:
                    await asyncio.sleep(0.25)
                    reviewed += (await asyncio.to_thread(api_proc.counts))["POST tokenreviews"]
            await asyncio.sleep(1.0)
            timeline.errors.clear()
            rss_polling = rss_mib(proc.pid)
            api_proc.counts(freeze=True)  # drop start-up requests
            gc_tuning.freeze_long_lived()  # the stand-ins, sessions and timeline (see the module docstring)
            before = {} if floor else await scrape(session, url)
            t0 = time.monotonic()
            others = {"apiserver": psutil.Process(api_proc.proc.pid), "nodesim": psutil.Process()}
            cpu0 = {k: sum(v.cpu_times()[:2]) for k, v in others.items()}
            if floor:
                async with session.post(f"{url}/start") as r:
                    r.raise_for_status()
            else:
                await api.call("POST", f"/apis/upgrade.cattle.io/v1/namespaces/{NS}/plans", plan(concurrency))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limit):
                    await timeline.all_finished.wait()
            done = len(timeline.finished)
            if not done:
                raise RuntimeError(
                    f"no node of {nodes} finished within {limit:g}s; agent errors: {timeline.errors[-5:]}; "
                    f"coordinator log: {log_path.read_text()[-2000:]}"
                )
            total = max(timeline.finished.values()) - t0
            during = {} if floor else await scrape(session, url)
            counts = await asyncio.to_thread(api_proc.counts)
            cpu = psutil.Process(proc.pid).cpu_times()
            rss = peak_rss_mib(proc.pid)
            others_cpu = {k: sum(v.cpu_times()[:2]) - cpu0[k] for k, v in others.items()}
        finally:
            stop.set()
            for t in runs:
                t.cancel()
            await asyncio.gather(*runs, return_exceptions=True)
            await asyncio.gather(*(s.client.close() for s in sims), return_exceptions=True)
            if coordinator is not None:
                await stop_process(coordinator, 20)
            await asyncio.to_thread(releases.stop_in_thread)
            await asyncio.to_thread(api_proc.close)
    ideal = math.ceil(nodes / concurrency) * work
    passes = during.get("passes", 0.0) - before.get("passes", 0.0)
    passes_per_node = round(passes / done, 2) if during else None
    took = during.get("pass seconds", 0.0) - before.get("pass seconds", 0.0)
    pass_ms_mean = round(took / passes * 1000, 1) if passes else None
    paced = during.get("paced", 0.0) - before.get("paced", 0.0)
    paced_per_node = round(paced / done, 2) if during else None
    from_restarted = handoffs(list(timeline.restarted.values()), list(timeline.staged.values()), concurrency)
    from_finish = handoffs(list(timeline.finished.values()), list(timeline.staged.values()), concurrency)
    go_ahead = [(timeline.applied[n] - t) * 1000 for n, t in timeline.staged.items() if n in timeline.applied]
    applied, restarted = timeline.applied, timeline.restarted
    beyond_work = [(r - applied[n] - work) * 1000 for n, r in restarted.items() if n in applied]
    # The stand-ins' own writes (a restarting kubelet's status patch, the Plan) are not the coordinator's.
    counts.subtract({"PATCH nodes/status": len(timeline.restarted), "POST plans": 1})
    counts = +counts
    writes = {k: v for k, v in counts.items() if k.split()[0] in WRITES}
    core_writes = sum(v for k, v in writes.items() if "eviction" not in k and "tokenreviews" not in k)
    return {
        "benchmark": "rollout-bare-floor" if bare else "rollout-floor" if floor else "rollout",
        "floor": floor,
        "bare": bare,
        "nodes": nodes,
        "concurrency": concurrency,
        "work_s": work,
        "coordinator_max_held_polls": None if floor else max_held_polls,
        "coordinator_prefetch_waves": None if floor else prefetch_waves,
        "api_latency_ms": api_latency_ms,
        "setup_s": round(setup_s, 1),
        "finished_nodes": done,
        "complete": done == nodes,
        "total_s": round(total, 2) if done == nodes else None,
        "nodes_per_s": round(done / total, 2),
        "ideal_s": ideal,
        "total_over_ideal": round(total / ideal, 3) if done == nodes else None,
        "first_grant_ms": round((min(timeline.staged.values()) - t0) * 1000, 1),
        "last_finish_after_last_restarted_ms": round(
            (max(timeline.finished.values()) - max(timeline.restarted.values())) * 1000, 1
        ),
        "handoff_ms_p50": percentile(from_restarted, 0.5),
        "handoff_ms_p99": percentile(from_restarted, 0.99),
        "handoff_ms_max": percentile(from_restarted, 1.0),
        "handoff_from_finish_ms_p50": percentile(from_finish, 0.5),
        "handoff_from_finish_ms_p99": percentile(from_finish, 0.99),
        "handoff_ms_mean": mean_ms(from_restarted),
        **first_wave(from_restarted, list(timeline.restarted.values()), concurrency),
        **first_wave_cpu(timeline.probes, concurrency, psutil.cpu_count() or 1),
        "grant_to_apply_ms_mean": mean_ms(go_ahead),
        "apply_to_restarted_ms_mean_beyond_work": mean_ms(beyond_work),
        "grant_to_apply_ms_p50": percentile(go_ahead, 0.5),
        "grant_to_apply_ms_p99": percentile(go_ahead, 0.99),
        "coordinator_api_writes_per_node": round(core_writes / done, 2),
        "coordinator_api_requests_per_node": {k: round(v / done, 2) for k, v in sorted(counts.items())},
        "coordinator_api_write_ms_mean": write_ms_mean(before, during),
        "coordinator_passes_per_node": passes_per_node,
        "coordinator_pass_ms_mean": pass_ms_mean,
        "coordinator_decide_ms_mean": timed_ms_mean(before, during, "decide seconds", "decides"),
        "coordinator_report_wait_ms_mean": timed_ms_mean(before, during, "report wait seconds", "reports"),
        "coordinator_paced_polls_per_node": paced_per_node,
        "coordinator_handoffs": round(timed_count(before, during, "handoffs")) if during else None,
        "coordinator_handoff_ms_mean": timed_ms_mean(before, during, "handoff seconds", "handoffs"),
        "coordinator_handoff_ms_p50_at_most": bucket_ms(before, during, 0.5),
        "coordinator_handoff_ms_p99_at_most": bucket_ms(before, during, 0.99),
        "coordinator_cpu_s": round(cpu.user + cpu.system, 1),
        "coordinator_peak_rss_mib": rss,
        "coordinator_rss_mib_synced": rss_synced,
        "coordinator_rss_mib_all_polling": rss_polling,
        "apiserver_cpu_s_during_rollout": round(others_cpu["apiserver"], 1),
        "nodesim_cpu_s_during_rollout": round(others_cpu["nodesim"], 1),
        "agent_errors_during_rollout": len(timeline.errors),
        "agent_error_sample": sorted({e.split(": ", 1)[1][:160] for e in timeline.errors})[:3],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--work", type=float, default=1.0, help="each node's own upgrade time, seconds")
    p.add_argument("--limit", type=float, default=300.0, help="give up after this many seconds")
    p.add_argument(
        "--floor",
        action="store_true",
        help="against bench.floor (the agent API, no Kubernetes writes) instead of the coordinator",
    )
    p.add_argument(
        "--bare",
        action="store_true",
        help="against bench.floor --bare: one instruction and one report per node (implies --floor)",
    )
    p.add_argument(
        "--max-held-polls",
        type=int,
        default=DEFAULT_MAX_HELD_POLLS,
        help=f"the coordinator's --max-held-polls (default {DEFAULT_MAX_HELD_POLLS}, its own default)",
    )
    p.add_argument(
        "--prefetch-waves",
        type=int,
        default=DEFAULT_PREFETCH_WAVES,
        help=f"the coordinator's --prefetch-waves (default {DEFAULT_PREFETCH_WAVES}, its own default)",
    )
    p.add_argument(
        "--api-latency-ms",
        type=float,
        default=0.0,
        help="ms every API request but a watch waits in the emulator (an API server across a network; 0)",
    )
    p.add_argument("--serve-apiserver", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_apiserver:
        asyncio.run(serve_apiserver(args.api_latency_ms / 1000))
        return {}
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        return asyncio.run(
            rollout(
                args.nodes,
                args.concurrency,
                args.work,
                Path(tmp),
                args.limit,
                args.floor,
                args.max_held_polls,
                args.bare,
                args.prefetch_waves,
                args.api_latency_ms,
            )
        )


if __name__ == "__main__":
    figures = main()
    if figures:
        print(json.dumps(figures))
