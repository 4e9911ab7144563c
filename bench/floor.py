"""The rollout benchmark's floor: what this harness costs on this machine when the scheduler costs nothing.

`python -m bench.floor` serves the real agent API (`coordinator.api`: the aiohttp routes, the pydantic
bodies, the bearer-token check with its TokenReview cache) in front of a scheduler that makes no
Kubernetes writes at all: it hands `concurrency` leases out in node-name order, answers `staged` with
`apply` at once (no cordon, no lease table), and `restarted` with `finish` while it grants the next
lease (no verification, no label, no Event, no Plan status). `bench.rollout --floor` runs the same
stand-ins, API server emulator and measurements against it. Whatever total and hand-off it shows is
the part of the real coordinator's figures that no coordinator could remove on this machine: the
stand-ins' event loop, their Node status updates, HTTP on loopback, three processes on the cores.

Started with `--kubeconfig-url` (the API server emulator, for TokenReviews) and `--nodes`, it prints
`floor listening on http://HOST:PORT`; `POST /start` (the Plan's creation, as far as the floor knows)
starts the rollout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from coordinator.api import BrokerError, BrokerSlot, NodeAuthenticator, add_agent_routes
from coordinator.kube.protocol import TokenIdentity
from wire.messages import Action, AgentPhase, AgentState, Artifact, Instruction, LeaseAssignment, Report

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
ARTIFACT = Artifact(url="http://127.0.0.1:9/k3s", sha256="0" * 64, name="k3s")


class ApiTokenReviewer:
    """TokenReview against the API server emulator, as the coordinator does (the result is cached)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def review_token(self, token: str, audience: str) -> TokenIdentity | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        async with self.session.post(
            f"{self.url}/apis/authentication.k8s.io/v1/tokenreviews",
            json=body,
            headers={"Authorization": "Bearer admin-token"},
        ) as r:
            status = (await r.json()).get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        nodes = (user.get("extra") or {}).get(NODE_NAME_EXTRA) or [None]
        return TokenIdentity(username=str(user.get("username", "")), node=nodes[0])


@dataclass
class FloorLease:
    assignment: LeaseAssignment
    applying: bool = False


class FloorBroker:
    """`concurrency` leases at a time, in node-name order, with nothing stored anywhere."""

    def __init__(self, nodes: list[str], concurrency: int, version: str) -> None:
        self.pending = deque(sorted(nodes))
        self.concurrency = concurrency
        self.version = version
        self.leases: dict[str, FloorLease] = {}
        self.wakes: dict[str, asyncio.Event] = {}
        self.held = 0

    def start(self) -> None:
        self.grant()

    def grant(self) -> None:
        while len(self.leases) < self.concurrency and self.pending:
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
            self.leases[node] = FloorLease(assignment)
            self.wakes.setdefault(node, asyncio.Event()).set()

    def instruction(self, node: str) -> Instruction:
        lease = self.leases.get(node)
        if lease is None:
            return Instruction(action=Action.IDLE, poll_after_seconds=0)
        action = Action.APPLY if lease.applying else Action.STAGE
        return Instruction(action=action, lease=lease.assignment)

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        ins = self.instruction(state.node)
        busy = state.phase is not AgentPhase.IDLE
        # Nothing new for this agent (idle and no lease, or already applying): hold the poll, as the
        # coordinator does, until a grant wakes it or the wait is over.
        if (ins.action is Action.IDLE and not busy) or (ins.action is Action.APPLY and busy):
            wake = self.wakes.setdefault(state.node, asyncio.Event())
            wake.clear()
            self.held += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await wake.wait()
            finally:
                self.held -= 1
            ins = self.instruction(state.node)
        return ins

    async def report(self, report: Report) -> Instruction:
        lease = self.leases.get(report.node)
        if lease is None or lease.assignment.lease_id != report.lease_id:
            raise BrokerError(404, f"node {report.node} holds no lease {report.lease_id}")
        if report.phase is AgentPhase.RESTARTED:
            del self.leases[report.node]
            self.grant()
            return Instruction(action=Action.FINISH, lease=lease.assignment)
        if report.phase in (AgentPhase.STAGED, AgentPhase.APPLYING):
            lease.applying = True
            return Instruction(action=Action.APPLY, lease=lease.assignment)
        raise BrokerError(409, f"the floor does not handle a {report.phase} report")


async def serve(api_url: str, nodes: list[str], concurrency: int, version: str) -> None:
    broker = FloorBroker(nodes, concurrency, version)
    async with aiohttp.ClientSession() as session:
        app = web.Application()
        add_agent_routes(app, NodeAuthenticator(ApiTokenReviewer(session, api_url)), BrokerSlot(broker), 30.0)

        async def start(_: web.Request) -> web.Response:
            broker.start()
            return web.json_response({"granted": len(broker.leases)})

        async def held(_: web.Request) -> web.Response:
            return web.json_response({"held": broker.held})

        app.router.add_post("/start", start)
        app.router.add_get("/held", held)
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


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n\n")[0])
    p.add_argument("--api-url", required=True, help="the API server emulator (TokenReviews)")
    p.add_argument(
        "--nodes", type=int, required=True, help="node-00000 .. node-(N-1), as bench.rollout names them"
    )
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--version", required=True, help="the target version handed out")
    args = p.parse_args()
    names = [f"node-{i:05d}" for i in range(args.nodes)]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.api_url, names, args.concurrency, args.version))


if __name__ == "__main__":
    main()
