"""The real coordinator process against the API server emulator, driven with kubectl where a user would.

The runtime tests beside this file use an in-memory Cluster for speed; this file is the same runtime,
as a real process, on the emulator's real semantics (409s, watches, TokenReview).

Aspects covered:
- deploy/crd.yaml and deploy/coordinator.yaml apply with kubectl;
- `python -m coordinator` (a subprocess) rolls the seed's two Plans out over 2 servers + 2 agents whose
  scripted agents authenticate with TokenRequest tokens bound to Pods on their nodes; the coordinator
  is killed with SIGKILL three times at random moments and restarted; every lease-table version seen
  on a watch keeps each plan within concurrency 1;
- `kubectl get plans` shows SUC's columns and `kubectl wait --for=condition=Complete plan/server-plan`
  returns;
- the 16 invalid Plans of the in-memory test, created on the emulator, each get Validated=False naming
  the field and touch no node, while a valid Plan beside them completes;
- two `--leader-elect` replicas (processes): never both leaders (their `k3s_upgrade_leader` gauges,
  sampled throughout), the standby takes over when the leader is SIGKILLed mid-rollout and finishes it;
- a leader stopped with SIGTERM gives its Lease up: the standby takes over without waiting it out.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator.kube.client import KubeCluster
from coordinator.kube.resources import LEASES
from coordinator.leasing import LeaseTable
from sandbox.apiserver import ThreadedApiServer
from sandbox.releases import ReleaseServer
from tests.integration.coordinator.scripted_agent import ScriptedAgent

ROOT = Path(__file__).resolve().parents[3]
OLD, NEW = "v1.24.5+k3s1", "v1.24.6+k3s1"
SERVERS, AGENTS = ["server-1", "server-2"], ["agent-1", "agent-2"]
NS = "system-upgrade"
AGENT_SA = "k3s-upgrade-agent"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Env:
    def __init__(self, url: str, kubeconfig: Path) -> None:
        self.url, self.kubeconfig = url, kubeconfig

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 30) -> str:
        out = subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stdout}\n{out.stderr}")
        return out.stdout

    async def api(
        self, method: str, path: str, body: Any = None, ctype: str = "application/merge-patch+json"
    ) -> Any:
        headers = {
            "Authorization": "Bearer admin-token",
            "Content-Type": ctype if method == "PATCH" else "application/json",
        }
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method, self.url + path, headers=headers, data=json.dumps(body) if body is not None else None
            ) as r,
        ):
            text = await r.text()
            assert r.status < 300, f"{method} {path}: {r.status} {text}"
            return json.loads(text) if text else None


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with ThreadedApiServer() as server:
        yield Env(server.url, server.write_kubeconfig(tmp_path / "kubeconfig"))


def test_deploy_manifests_apply_with_kubectl(env: Env) -> None:
    env.kubectl("apply", "-f", str(ROOT / "deploy" / "crd.yaml"))
    env.kubectl("apply", "-f", str(ROOT / "deploy" / "coordinator.yaml"))
    out = env.kubectl("-n", NS, "get", "deployment,service,serviceaccount", "-o", "name")
    for name in (
        "deployment.apps/k3s-upgrade-coordinator",
        "service/k3s-upgrade-coordinator",
        "serviceaccount/k3s-upgrade-coordinator",
    ):
        assert name in out


async def node_tokens(env: Env) -> dict[str, str]:
    """Each node's agent token, of the agents' ServiceAccount (deploy/daemonset.yaml's), bound to a Pod on
    the node."""
    tokens = {}
    await env.api(
        "POST",
        f"/api/v1/namespaces/{NS}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": AGENT_SA}},
    )
    for n in SERVERS + AGENTS:
        labels = {"kubernetes.io/arch": "amd64"} | (
            {"node-role.kubernetes.io/master": "true"} if n in SERVERS else {}
        )
        await env.api(
            "POST",
            "/api/v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n, "labels": labels}},
        )
        await set_node(env, n, OLD)
        pod = await env.api(
            "POST",
            f"/api/v1/namespaces/{NS}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"agent-{n}", "namespace": NS},
                "spec": {
                    "nodeName": n,
                    "serviceAccountName": AGENT_SA,
                    "containers": [{"name": "agent", "image": "k3s-upgrader"}],
                },
            },
        )
        tr = await env.api(
            "POST",
            f"/api/v1/namespaces/{NS}/serviceaccounts/{AGENT_SA}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {
                    "audiences": ["k3s-upgrade-coordinator"],
                    "expirationSeconds": 3600,
                    "boundObjectRef": {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "name": pod["metadata"]["name"],
                        "uid": pod["metadata"]["uid"],
                    },
                },
            },
        )
        tokens[n] = tr["status"]["token"]
    return tokens


async def set_node(env: Env, name: str, version: str) -> None:
    await env.api(
        "PATCH",
        f"/api/v1/nodes/{name}/status",
        {
            "status": {
                "nodeInfo": {"kubeletVersion": version, "architecture": "amd64"},
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
    )


def start_coordinator(env: Env, port: int, releases: str, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coordinator",
            "--kubeconfig",
            str(env.kubeconfig),
            "--namespace",
            NS,
            "--listen",
            f"127.0.0.1:{port}",
            "--release-base-url",
            releases,
            "--resync-interval",
            "1",
            "--agent-heartbeat-timeout",
            "10",
            "--verify-timeout",
            "30",
            "--poll-wait-max",
            "1",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("coordinator listening on"), line
    return proc


def stop_coordinator(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Stop a coordinator started by `start_coordinator` (if still running) and close its pipe."""
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(15)
    assert proc.stdout is not None
    proc.stdout.close()


async def prepared_cluster(env: Env) -> dict[str, str]:
    """The CRD, the namespace and its ServiceAccount, and the nodes; returns each node's agent token."""
    env.kubectl("apply", "-f", str(ROOT / "deploy" / "crd.yaml"))
    env.kubectl("create", "namespace", NS)
    env.kubectl("-n", NS, "create", "serviceaccount", "system-upgrade")
    return await node_tokens(env)


async def test_subprocess_rollout_survives_sigkill(env: Env, tmp_path: Path) -> None:
    tokens = await prepared_cluster(env)
    releases = ReleaseServer([NEW], tmp_path / "releases")
    await asyncio.to_thread(releases.start_in_thread)
    port = free_port()
    cluster = KubeCluster.connect(str(env.kubeconfig))
    tables: list[LeaseTable] = []

    async def watch_table() -> None:
        _, rv = await cluster.list_objects(LEASES, NS)
        async for ev in cluster.watch(LEASES, NS, rv, 300):
            if ev.obj["metadata"]["name"] == "k3s-upgrade-leases":
                tables.append(LeaseTable.from_annotations(ev.obj["metadata"].get("annotations")))

    watcher = asyncio.create_task(watch_table())
    proc = await asyncio.to_thread(start_coordinator, env, port, releases.base_url)
    stop = asyncio.Event()

    async def restart(name: str, version: str) -> None:
        await set_node(env, name, version)

    agents = [ScriptedAgent(f"http://127.0.0.1:{port}", n, tokens[n], OLD, restart, wait=1.0) for n in tokens]
    runs = [asyncio.create_task(a.run(stop)) for a in agents]
    env.kubectl("apply", "-f", str(ROOT / "sandbox" / "seed_plans.yaml"))
    try:
        for _ in range(3):
            await asyncio.sleep(random.uniform(0.3, 1.5))
            await asyncio.to_thread(stop_coordinator, proc, signal.SIGKILL)
            proc = await asyncio.to_thread(start_coordinator, env, port, releases.base_url)
        await asyncio.to_thread(
            env.kubectl,
            "-n",
            NS,
            "wait",
            "--for=condition=Complete",
            "plan/server-plan",
            "--timeout=90s",
            timeout=100,
        )
        await asyncio.to_thread(
            env.kubectl,
            "-n",
            NS,
            "wait",
            "--for=condition=Complete",
            "plan/agent-plan",
            "--timeout=90s",
            timeout=100,
        )
    finally:
        stop.set()
        await asyncio.gather(*runs)
        await asyncio.to_thread(stop_coordinator, proc)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await cluster.aclose()
        await asyncio.to_thread(releases.stop_in_thread)
    assert tables
    for table in tables:
        for plan in ("server-plan", "agent-plan"):
            assert len(table.active_for_plan(plan)) <= 1
    out = env.kubectl("-n", NS, "get", "plans")
    header = out.splitlines()[0].split()
    assert header[:6] == ["NAME", "IMAGE", "CHANNEL", "VERSION", "COMPLETE", "MESSAGE"], header
    assert "True" in out.splitlines()[1]
    nodes = json.loads(env.kubectl("get", "nodes", "-o", "json"))["items"]
    for n in nodes:
        labels = n["metadata"]["labels"]
        plan = "server-plan" if n["metadata"]["name"] in SERVERS else "agent-plan"
        assert f"plan.upgrade.cattle.io/{plan}" in labels
        assert not n["spec"].get("unschedulable")


async def test_invalid_plans_beside_a_valid_one(env: Env, tmp_path: Path) -> None:
    """The 16 bad Plans of the in-memory test, created on the emulator: each gets Validated=False naming
    the field, none touches a node, and a valid Plan beside them completes (coordinator as a subprocess)."""
    from tests.integration.coordinator.test_invalid_plans_beside_a_valid_one import BAD

    tokens = await prepared_cluster(env)
    plans = f"/apis/upgrade.cattle.io/v1/namespaces/{NS}/plans"

    def plan(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        meta = {"name": name, "namespace": NS}
        return {"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan", "metadata": meta, "spec": spec}

    for name, (spec, _) in BAD.items():
        await env.api("POST", plans, plan(name, spec))
    good = {
        "concurrency": 1,
        "version": NEW,
        "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchLabels": {"node-role.kubernetes.io/master": "true"}},
    }
    await env.api("POST", plans, plan("good", good))
    releases = ReleaseServer([NEW], tmp_path / "releases")
    await asyncio.to_thread(releases.start_in_thread)
    port = free_port()
    proc = await asyncio.to_thread(start_coordinator, env, port, releases.base_url)
    stop = asyncio.Event()

    async def restart(name: str, version: str) -> None:
        await set_node(env, name, version)

    agents = [
        ScriptedAgent(f"http://127.0.0.1:{port}", n, tokens[n], OLD, restart, wait=1.0) for n in SERVERS
    ]
    runs = [asyncio.create_task(a.run(stop)) for a in agents]
    try:
        await asyncio.to_thread(
            env.kubectl,
            "-n",
            NS,
            "wait",
            "--for=condition=Complete",
            "plan/good",
            "--timeout=60s",
            timeout=70,
        )
        items = {p["metadata"]["name"]: p for p in (await env.api("GET", plans))["items"]}
    finally:
        stop.set()
        await asyncio.gather(*runs)
        await asyncio.to_thread(stop_coordinator, proc)
        await asyncio.to_thread(releases.stop_in_thread)
    for name, (_, field) in BAD.items():
        conditions = (items[name].get("status") or {}).get("conditions") or []
        validated = next((c for c in conditions if c["type"] == "Validated"), None)
        assert validated is not None, f"{name}: no Validated condition in {conditions}"
        assert validated["status"] == "False", f"{name}: {validated}"
        assert field in validated["message"], f"{name}: {field!r} not named in {validated['message']!r}"
    rows = {r.split()[0]: r for r in env.kubectl("-n", NS, "get", "plans").splitlines()[1:]}
    for name, (_, field) in BAD.items():  # SUC's Message column: the first condition with a message
        assert field in rows[name], f"kubectl get plans shows no cause for {name}: {rows[name]!r}"
    nodes = (await env.api("GET", "/api/v1/nodes"))["items"]
    for n in nodes:
        labels = n["metadata"].get("labels") or {}
        assert not [k for k in labels if k.startswith("plan.upgrade.cattle.io/") and k[23:] in BAD], n
        assert not (n.get("spec") or {}).get("unschedulable"), n["metadata"]["name"]
        if n["metadata"]["name"] in SERVERS:
            assert labels.get("plan.upgrade.cattle.io/good"), n["metadata"]["name"]


async def leader_gauge(session: aiohttp.ClientSession, port: int) -> float | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith("k3s_upgrade_leader "):
                    return float(line.split()[1])
    except aiohttp.ClientError:
        return None  # a killed replica
    return None


async def test_two_replicas_never_both_lead_and_the_standby_takes_over(env: Env, tmp_path: Path) -> None:
    tokens = await prepared_cluster(env)
    releases = ReleaseServer([NEW], tmp_path / "releases")
    await asyncio.to_thread(releases.start_in_thread)
    ports = {"a": free_port(), "b": free_port()}
    elect = ("--leader-elect", "--leader-lease-duration", "3")
    procs = {
        name: await asyncio.to_thread(
            start_coordinator, env, port, releases.base_url, *elect, "--identity", name
        )
        for name, port in ports.items()
    }
    samples: list[tuple[float | None, float | None]] = []
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop_sampling.is_set():
                samples.append(
                    (await leader_gauge(session, ports["a"]), await leader_gauge(session, ports["b"]))
                )
                await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    stop = asyncio.Event()
    runs: list[asyncio.Task[None]] = []

    async def restart(name: str, version: str) -> None:
        await asyncio.sleep(1.0)  # a node's upgrade takes time, so the kill lands mid-rollout
        await set_node(env, name, version)

    def agents_for(port: int) -> list[ScriptedAgent]:
        return [
            ScriptedAgent(f"http://127.0.0.1:{port}", n, tokens[n], OLD, restart, wait=1.0) for n in tokens
        ]

    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not any(a == 1.0 or b == 1.0 for a, b in samples):
            assert asyncio.get_running_loop().time() < deadline, f"no leader elected: {samples[-3:]}"
            await asyncio.sleep(0.1)
        a, _ = samples[-1]
        leader, standby = ("a", "b") if a == 1.0 else ("b", "a")
        # Agents reach the leader (as a Service would route to the ready leader).
        agents = agents_for(ports[leader])
        runs = [asyncio.create_task(x.run(stop)) for x in agents]
        env.kubectl("apply", "-f", str(ROOT / "sandbox" / "seed_plans.yaml"))
        await asyncio.sleep(random.uniform(1.0, 2.5))
        agent_plan = await env.api("GET", f"/apis/upgrade.cattle.io/v1/namespaces/{NS}/plans/agent-plan")
        conditions = (agent_plan.get("status") or {}).get("conditions") or []
        assert not any(c["type"] == "Complete" and c["status"] == "True" for c in conditions), (
            f"the rollout finished before the leader was killed: {agent_plan.get('status')}"
        )
        procs[leader].send_signal(signal.SIGKILL)
        await asyncio.to_thread(procs[leader].wait, 10)
        stop.set()
        await asyncio.gather(*runs)
        stop.clear()
        for agent in agents:  # the same agents, with their lease state, now reach the standby
            agent.coordinator = f"http://127.0.0.1:{ports[standby]}"
        runs = [asyncio.create_task(x.run(stop)) for x in agents]
        for plan in ("server-plan", "agent-plan"):
            await asyncio.to_thread(
                env.kubectl,
                "-n",
                NS,
                "wait",
                "--for=condition=Complete",
                f"plan/{plan}",
                "--timeout=90s",
                timeout=100,
            )
        index = 1 if standby == "b" else 0
        deadline = asyncio.get_running_loop().time() + 15
        while samples[-1][index] != 1.0:
            assert asyncio.get_running_loop().time() < deadline, "the standby never took over"
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*runs)
        stop_sampling.set()
        await sampler
        for proc in procs.values():
            await asyncio.to_thread(stop_coordinator, proc)
        await asyncio.to_thread(releases.stop_in_thread)
    both = [s for s in samples if s == (1.0, 1.0)]
    assert not both, f"both replicas led at once in {len(both)} of {len(samples)} samples"


async def test_a_leader_stopped_with_sigterm_gives_its_lease_up(env: Env, tmp_path: Path) -> None:
    """A Deployment rollout stops the leader with SIGTERM: it releases the Lease once it stopped writing
    (as client-go's ReleaseOnCancel), so the standby need not wait out the lease duration."""
    await prepared_cluster(env)
    releases = ReleaseServer([NEW], tmp_path / "releases")
    await asyncio.to_thread(releases.start_in_thread)
    ports = {"a": free_port(), "b": free_port()}
    elect = ("--leader-elect", "--leader-lease-duration", "9")
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        procs["a"] = await asyncio.to_thread(
            start_coordinator, env, ports["a"], releases.base_url, *elect, "--identity", "a"
        )
        async with aiohttp.ClientSession() as session:
            deadline = asyncio.get_running_loop().time() + 20
            while await leader_gauge(session, ports["a"]) != 1.0:
                assert asyncio.get_running_loop().time() < deadline, "a never led"
                await asyncio.sleep(0.1)
            procs["b"] = await asyncio.to_thread(
                start_coordinator, env, ports["b"], releases.base_url, *elect, "--identity", "b"
            )
            procs["a"].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(procs["a"].wait, 15) == 0
            lease = await env.api("GET", f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/"
                                         "k3s-upgrade-coordinator")
            assert lease["spec"]["holderIdentity"] in ("", "b"), lease["spec"]
            deadline = asyncio.get_running_loop().time() + 9
            while await leader_gauge(session, ports["b"]) != 1.0:
                assert asyncio.get_running_loop().time() < deadline, "the standby did not take over"
                await asyncio.sleep(0.1)
    finally:
        for proc in procs.values():
            await asyncio.to_thread(stop_coordinator, proc)
        await asyncio.to_thread(releases.stop_in_thread)
