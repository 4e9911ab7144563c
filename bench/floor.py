"""The rollout benchmark's floor: what this harness costs on this machine when the scheduler costs nothing.

`python -m bench.floor` serves the real agent API (`coordinator.api`: the aiohttp routes, the pydantic
bodies, the bearer-token check with its TokenReview cache, reviews through `KubeCluster`) in front of a
scheduler that makes no Kubernetes writes at all: it hands `concurrency` leases out in node-name order,
answers `staged` with `apply` at once and `restarted` with `finish` while it grants the next lease. As the
coordinator does, it names the binary to the next `concurrency` nodes in their idle answers (a prefetch),
and grants a node that says it holds it as `apply` at once (the coordinator grants it `staged` and
answers `apply` once it is cordoned).
`bench.rollout --floor` runs the same stand-ins, API server emulator and measurements against it.

`--bare` goes further: it hands out each lease as `apply` at once, prefetched or not, and names nothing
to prefetch. That leaves one instruction and one report per node, beside the Node status update a
restarting k3s makes: the least any coordinator could exchange with an agent. It is not our protocol. It
measures what this machine and this harness cost alone, so the rest of `--floor` is the cost of the
protocol's other exchanges (the prefetch answers and the polls after them, and for the first nodes,
which no one told to prefetch, `stage` and `staged`).

It is a lower bound, and a loose one: it makes the agent protocol's exchanges and skips everything the
Plan asks of any coordinator (the cordon, seeing the Node Ready on the target, the label, the uncordon,
a record that survives a crash, Events, status) and the Plan's trip through a watch (`POST /start`
stands in for the Plan's creation). What it shows is the harness's own share of the figures: the
stand-ins' event loop, their Node status updates, HTTP on loopback, three processes on the cores. The
difference to it is the coordinator's work, required or not.

    python -m bench.floor --kubeconfig FILE --nodes N --concurrency C --version V [--bare]

prints `floor listening on http://HOST:PORT`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from collections import deque
from dataclasses import dataclass

from aiohttp import web

from coordinator import gc_tuning
from coordinator.api import BrokerError, BrokerSlot, NodeAuthenticator, add_agent_routes
from coordinator.kube.client import KubeCluster
from wire.messages import (
    Action,
    AgentPhase,
    AgentState,
    Artifact,
    Instruction,
    LeaseAssignment,
    Prefetch,
    Report,
)

ARTIFACT = Artifact(url="http://127.0.0.1:9/k3s", sha256="0" * 64, name="k3s")
PREFETCH = Prefetch(artifact=ARTIFACT, target_version="v0.0.0+floor")


@dataclass
class FloorLease:
    assignment: LeaseAssignment
    applying: bool = False


class FloorBroker:
    """`concurrency` leases at a time, in node-name order, with nothing stored anywhere."""

    def __init__(self, nodes: list[str], concurrency: int, version: str, bare: bool = False) -> None:
        self.bare = bare
        """Grant as `apply` at once (see the module docstring)."""
        self.pending = deque(sorted(nodes))
        self.concurrency = concurrency
        self.version = version
        self.leases: dict[str, FloorLease] = {}
        self.finished: dict[str, LeaseAssignment] = {}
        """node -> its released lease: a `restarted` report sent again gets `finish` again."""
        self.wakes: dict[str, asyncio.Event] = {}
        self.prefetched: set[str] = set()
        """Nodes whose agents said in their last poll that they hold the binary."""

    def start(self) -> None:
        self.grant()

    def grant(self) -> None:
        told = self.concurrency  # the first `concurrency` pending nodes were told to prefetch
        while len(self.leases) < self.concurrency and self.pending:
            told -= 1
            node = self.pending.popleft()
            assignment = LeaseAssignment(
                lease_id=f"floor-{node}",
                plan="bench",
                node=node,
                target_version=self.version,
                plan_hash="floor",
                artifact=ARTIFACT,
                restart_stable_seconds=0,
            )
            self.leases[node] = FloorLease(assignment, applying=self.bare or node in self.prefetched)
            self.wakes.setdefault(node, asyncio.Event()).set()
        if not self.bare:  # the ones that became next learn what to prefetch
            for node in itertools.islice(self.pending, told, self.concurrency):
                self.wakes.setdefault(node, asyncio.Event()).set()

    def instruction(self, node: str) -> Instruction:
        lease = self.leases.get(node)
        if lease is None:
            upcoming = not self.bare and node in itertools.islice(self.pending, self.concurrency)
            return Instruction(action=Action.IDLE, poll_after_seconds=0,
                               prefetch=PREFETCH if upcoming else None)
        action = Action.APPLY if lease.applying else Action.STAGE
        return Instruction(action=action, lease=lease.assignment)

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        if state.prefetched == ARTIFACT.sha256:
            self.prefetched.add(state.node)
        ins = self.instruction(state.node)
        busy = state.phase is not AgentPhase.IDLE
        told = ins.prefetch is None or state.prefetched == ins.prefetch.artifact.sha256
        # Nothing new for this agent (idle and no lease, or already applying): hold the poll, as the
        # coordinator does, until a grant wakes it or the wait is over.
        if (ins.action is Action.IDLE and not busy and told) or (ins.action is Action.APPLY and busy):
            wake = self.wakes.setdefault(state.node, asyncio.Event())
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()
            ins = self.instruction(state.node)
        return ins

    async def report(self, report: Report) -> Instruction:
        done = self.finished.get(report.node)
        if done is not None and done.lease_id == report.lease_id and report.phase is AgentPhase.RESTARTED:
            return Instruction(action=Action.FINISH, lease=done)  # the answer was lost: the same again
        lease = self.leases.get(report.node)
        if lease is None or lease.assignment.lease_id != report.lease_id:
            raise BrokerError(404, f"node {report.node} holds no lease {report.lease_id}")
        if report.phase is AgentPhase.RESTARTED:
            del self.leases[report.node]
            self.finished[report.node] = lease.assignment
            self.grant()
            return Instruction(action=Action.FINISH, lease=lease.assignment)
        if report.phase in (AgentPhase.STAGED, AgentPhase.APPLYING):
            lease.applying = True
            return Instruction(action=Action.APPLY, lease=lease.assignment)
        raise BrokerError(409, f"the floor does not handle a {report.phase} report")


async def serve(kubeconfig: str, nodes: list[str], concurrency: int, version: str, bare: bool) -> None:
    broker = FloorBroker(nodes, concurrency, version, bare)
    cluster = KubeCluster.connect(kubeconfig)
    app = web.Application()
    add_agent_routes(app, NodeAuthenticator(cluster), BrokerSlot(broker), 30.0)

    async def start(_: web.Request) -> web.Response:
        gc_tuning.freeze_long_lived()  # as the coordinator does once synced: no full collection scans them
        broker.start()
        return web.json_response({"granted": len(broker.leases)})

    app.router.add_post("/start", start)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"floor listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await cluster.aclose()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", required=True, help="of the API server emulator (for TokenReviews)")
    p.add_argument(
        "--nodes", type=int, required=True, help="node-00000 .. node-(N-1), as bench.rollout names them"
    )
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--version", required=True, help="the target version handed out")
    p.add_argument("--bare", action="store_true", help="grant as `apply` at once (see above)")
    args = p.parse_args()
    names = [f"node-{i:05d}" for i in range(args.nodes)]
    gc_tuning.tune()  # the coordinator's GC settings: the floor must not pause where the coordinator does not
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.kubeconfig, names, args.concurrency, args.version, args.bare))


if __name__ == "__main__":
    main()
