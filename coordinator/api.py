"""The agent API (`/v1/agents/{node}/poll` and `/v1/agents/{node}/report`), a thin aiohttp layer.

Each handler: authenticate (TokenReview via `coordinator.auth`, the token's node must be `{node}`),
parse the body with the pydantic models of `wire.messages`, hand it to an `AgentBroker`, serialise the
`Instruction`. The broker holds the logic: the reconciler's broker applies reports to the lease table
and answers with the engine's instruction; `IdleBroker` answers "idle" (used while not the leader).

Status codes (every error body is a `wire.messages.ErrorBody`):
    200  an Instruction
    400  malformed JSON, a body that does not validate, a body naming another node, a bad `wait`
    401  no/invalid token;  403  a token of another node, or of another ServiceAccount than the agents'
    404  a report for a lease this node does not hold;  409  a report that does not fit the lease's phase
    503  not ready (TokenReview or the API server unreachable, or more than `max_waiting` agents
         waiting for a TokenReview, with Retry-After): retry with backoff

Authentication (invariant 7: only the agent of node N may obtain or report N's lease): agents present
a projected ServiceAccount token (audience `wire.messages.TOKEN_AUDIENCE`) bound to their Pod;
TokenReview tells us the node (`authentication.kubernetes.io/node-name` in `user.extra`). Successful
reviews are cached for a short TTL so long-polls do not cost one API call each; failures are never
cached (a token may become valid moments later, right after it is minted).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from coordinator.kube.errors import KubeError
from coordinator.kube.protocol import TokenIdentity
from wire.messages import (
    API_VERSION,
    TOKEN_AUDIENCE,
    Action,
    AgentState,
    ErrorBody,
    Instruction,
    Report,
    to_wire,
)

log = logging.getLogger("coordinator.api")
M = TypeVar("M", bound=BaseModel)

REVIEWS_IN_FLIGHT = 16
"""TokenReviews sent at once. When thousands of agents poll together (all of them reconnect after a
restart of the coordinator), the others wait their turn holding nothing but their own request, instead
of each building its API request up front: that burst cost about 1 MiB per 100 agents that stayed."""


class TokenReviewer(Protocol):
    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None: ...


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NodeAuthenticator:
    """Checks `Authorization: Bearer <token>` against TokenReview and the node in the request path."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        ttl: float = 120.0,
        audience: str = TOKEN_AUDIENCE,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 20000,
        max_waiting: int = 1000,
        username: str | None = None,
    ) -> None:
        self._reviewer = reviewer
        self._username = username
        """The agents' ServiceAccount as a user (`system:serviceaccount:NS:NAME`): any other's token is
        refused, even one bound to a Pod on the node (anyone who may run a Pod there can mint a token
        with our audience). None: any ServiceAccount (tests of the HTTP layer)."""
        self._ttl = ttl
        self._audience = audience
        self._clock = clock
        self._max = max_entries
        self._cache: dict[bytes, tuple[float, TokenIdentity]] = {}
        self._in_flight = asyncio.Semaphore(REVIEWS_IN_FLIGHT)
        self._max_waiting = max_waiting
        self._waiting = 0
        """Requests waiting for a TokenReview slot; beyond `max_waiting` (the coordinator passes
        `--max-held-polls`) they get 503 with `Retry-After: 1` and the agent retries with its backoff: a
        herd of agents reconnecting after a restart of the coordinator would otherwise hold every request
        in memory at once."""
        self.reviews = 0
        """TokenReview calls made (visible to tests and metrics)."""

    async def identify(self, authorization: str | None) -> TokenIdentity:
        if not authorization:
            raise AuthError(401, "missing Authorization header (expected: Bearer <ServiceAccount token>)")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(401, "malformed Authorization header (expected: Bearer <ServiceAccount token>)")
        now = self._clock()
        digest = hashlib.sha256(token.encode()).digest()  # the cache keeps no bearer token in memory
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        if self._waiting >= self._max_waiting:
            raise AuthError(503, f"{self._waiting} agent requests wait for a TokenReview already; retry")
        self._waiting += 1
        waiting = True
        try:
            async with self._in_flight:
                self._waiting -= 1
                waiting = False
                hit = self._cache.get(digest)  # reviewed meanwhile (the same agent polling again)
                if hit is not None and hit[0] > self._clock():
                    return hit[1]
                self.reviews += 1
                ident = await self._reviewer.review_token(token, self._audience, self._username)
        except KubeError as exc:
            raise AuthError(503, f"cannot review the token now: {exc}") from exc
        finally:
            if waiting:
                self._waiting -= 1
        if ident is None:
            self._cache.pop(digest, None)
            raise AuthError(401, f"token rejected by TokenReview (audience {self._audience})")
        if len(self._cache) >= self._max:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self._max:
                self._cache.clear()
        self._cache[digest] = (now + self._ttl, ident)
        return ident

    async def authorize(self, authorization: str | None, node: str) -> TokenIdentity:
        """The caller's identity, if it may act for `node`; otherwise `AuthError` (401 or 403)."""
        ident = await self.identify(authorization)
        # The user first: another's token is refused by its name alone, whatever its node (which the
        # review then need not find: before 1.30 that is a Pod GET, and its failure would answer 503).
        if self._username is not None and ident.username != self._username:
            raise AuthError(
                403, f"token of {ident.username!r} is not the agents' ServiceAccount ({self._username!r})"
            )
        if ident.node is None:
            raise AuthError(
                401, f"token of {ident.username!r} is not bound to a node (use a Pod-bound token)"
            )
        if ident.node != node:
            raise AuthError(403, f"token of node {ident.node!r} may not act for node {node!r}")
        return ident


class BrokerError(Exception):
    """The broker refuses a request; `status` is the HTTP status to answer with (404, 409, 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class AgentBroker(Protocol):
    async def poll(self, state: AgentState, wait: float) -> Instruction:
        """The instruction for this agent; may wait up to `wait` seconds for one that differs."""
        ...

    async def report(self, report: Report) -> Instruction:
        """Record a phase change of the lease, then answer with the next instruction."""
        ...


class IdleBroker:
    """Answers every agent with `idle` after the long-poll wait: what a replica that is not leader says.

    `wake` ends pending waits early (e.g. when this replica becomes leader and should answer for real).
    """

    def __init__(
        self, reason: str = "this coordinator replica is not the leader", max_wait: float | None = None
    ) -> None:
        self.reason = reason
        self.max_wait = max_wait
        """Behind a two-replica Service, a short hold sends the agent back (maybe to the leader) soon."""
        self.wake = asyncio.Event()

    async def poll(self, state: AgentState, wait: float) -> Instruction:
        if self.max_wait is not None:
            wait = min(wait, self.max_wait)
        if wait > 0:
            try:
                async with asyncio.timeout(wait):  # not wait_for: it can swallow a cancel (3.11)
                    await self.wake.wait()
            except TimeoutError:
                pass
        return Instruction(action=Action.IDLE, reason=self.reason, poll_after_seconds=1.0)

    async def report(self, report: Report) -> Instruction:
        raise BrokerError(503, f"{self.reason}; report for lease {report.lease_id} not accepted, retry")


class BrokerSlot:
    """The broker currently answering agents (swapped on leadership changes)."""

    def __init__(self, broker: AgentBroker) -> None:
        self.broker = broker


AUTH = web.AppKey("auth", NodeAuthenticator)
BROKER = web.AppKey("broker", BrokerSlot)
POLL_WAIT_MAX = web.AppKey("poll_wait_max", float)


def error(status: int, message: str) -> web.Response:
    body = ErrorBody(error=message, status=status)
    return web.json_response(text=to_wire(body), status=status)


def _ok(model: BaseModel) -> web.Response:
    return web.json_response(text=to_wire(model))


async def _parse(request: web.Request, model: type[M]) -> M:
    raw = await request.read()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise web.HTTPBadRequest(
            text=ErrorBody(error=f"invalid {model.__name__}: {problems}", status=400).model_dump_json(),
            content_type="application/json",
        ) from exc


CLOSE_BEYOND = 2.0
"""Seconds: an answer that asks its agent to come back later than this ends the connection (agents paced
beyond `--max-held-polls`): kept idle until then, thousands of them cost the coordinator about 7 KiB
each (30 MiB at 5,000 nodes) to save one connection per agent every few seconds."""


def _from(
    broker: AgentBroker, response: web.Response, instruction: Instruction | None = None
) -> web.Response:
    """`response`, ending its connection when a replica that is not the leader answers (agents keep their
    connection from exchange to exchange, and the next one must go through the Service again, which may
    send it to the leader), or when it tells the agent to come back after `CLOSE_BEYOND`."""
    if isinstance(broker, IdleBroker) or (
        instruction is not None and instruction.poll_after_seconds > CLOSE_BEYOND
    ):
        response.force_close()
    return response


async def _authorize(request: web.Request, node: str) -> web.Response | None:
    try:
        await request.app[AUTH].authorize(request.headers.get("Authorization"), node)
    except AuthError as exc:
        log.info("agent request refused", extra={"node": node, "status": exc.status, "cause": str(exc)})
        resp = error(exc.status, str(exc))
        if exc.status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="k3s-upgrade-coordinator"'
        elif exc.status == 503:
            resp.headers["Retry-After"] = "1"
        return resp
    return None


async def poll(request: web.Request) -> web.Response:
    node = request.match_info["node"]
    refused = await _authorize(request, node)
    if refused is not None:
        return refused
    raw_wait = request.query.get("wait", "0")
    try:
        wait = float(raw_wait)
        if not 0 <= wait < float("inf"):
            raise ValueError
    except ValueError:
        return error(400, f"query parameter wait={raw_wait!r} is not a number of seconds >= 0")
    state = await _parse(request, AgentState)
    if state.node != node:
        return error(400, f"body names node {state.node!r} but the path names {node!r}")
    slot = request.app[BROKER]
    try:
        instruction = await slot.broker.poll(state, min(wait, request.app[POLL_WAIT_MAX]))
    except BrokerError as exc:
        return _from(slot.broker, error(exc.status, str(exc)))
    # (The broker now: leadership may have moved during the poll.)
    return _from(slot.broker, _ok(instruction), instruction)


async def report(request: web.Request) -> web.Response:
    node = request.match_info["node"]
    refused = await _authorize(request, node)
    if refused is not None:
        return refused
    body = await _parse(request, Report)
    if body.node != node:
        return error(400, f"body names node {body.node!r} but the path names {node!r}")
    slot = request.app[BROKER]
    try:
        instruction = await slot.broker.report(body)
    except BrokerError as exc:
        return _from(slot.broker, error(exc.status, str(exc)))
    return _from(slot.broker, _ok(instruction), instruction)


def add_agent_routes(
    app: web.Application, auth: NodeAuthenticator, slot: BrokerSlot, poll_wait_max: float
) -> None:
    """Mount the agent API on `app`."""
    app[AUTH] = auth
    app[BROKER] = slot
    app[POLL_WAIT_MAX] = poll_wait_max
    prefix = f"/{API_VERSION}/agents/{{node}}"
    app.router.add_post(f"{prefix}/poll", poll)
    app.router.add_post(f"{prefix}/report", report)
