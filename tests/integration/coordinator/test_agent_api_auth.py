"""The agent API's door: who may call it and what it refuses, over real HTTP on loopback.

Aspects covered:
- 401 without a token, with a malformed Authorization header, with a token TokenReview rejects, and with
  a valid token that is not bound to a node; 401 answers carry WWW-Authenticate;
- 403 when node A's token polls or reports for node B, and when a token bound to a Pod on the node is of
  another ServiceAccount than the agents' (anyone who may run a Pod there can mint one with our audience);
- 400 for malformed JSON, a body that fails validation, a body naming another node, a bad `wait`;
- every error body is a `wire.messages.ErrorBody` with the matching status;
- successful TokenReviews are cached (one review for many polls), rejections are not; a burst of new
  agents is reviewed at most REVIEWS_IN_FLIGHT at a time, and beyond `max_waiting` waiting requests
  the others are refused with 503 and Retry-After (the count of waiting requests returns to zero, after
  cancelled requests too);
- the long-poll holds the request until `wait` (capped) and ends early when the broker is woken;
- a replica that is not the leader answers polls with `idle` and refuses reports with 503.

The TokenReview side is a stand-in `TokenReviewer` (the Protocol the API server adapter implements):
these tests are about the HTTP layer; the adapter against the API server is covered elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from coordinator.api import (
    REVIEWS_IN_FLIGHT,
    AuthError,
    BrokerSlot,
    IdleBroker,
    NodeAuthenticator,
    add_agent_routes,
)
from coordinator.kube.protocol import TokenIdentity
from wire.messages import TOKEN_AUDIENCE, Action, AgentState, ErrorBody, Instruction, Report


class Reviewer:
    """Knows a fixed set of tokens; counts reviews."""

    def __init__(self, tokens: dict[str, TokenIdentity]) -> None:
        self.tokens = tokens
        self.calls = 0

    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None:
        self.calls += 1
        assert audience == TOKEN_AUDIENCE
        return self.tokens.get(token)


TOKENS = {
    "tok-a": TokenIdentity(username="system:serviceaccount:system-upgrade:agent", node="node-a"),
    "tok-b": TokenIdentity(username="system:serviceaccount:system-upgrade:agent", node="node-b"),
    "tok-unbound": TokenIdentity(username="system:serviceaccount:default:default", node=None),
}


class Server:
    def __init__(self, url: str, reviewer: Reviewer, broker: IdleBroker) -> None:
        self.url = url
        self.reviewer = reviewer
        self.broker = broker


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    reviewer = Reviewer(dict(TOKENS))
    broker = IdleBroker()
    app = web.Application()
    add_agent_routes(app, NodeAuthenticator(reviewer, ttl=60.0), BrokerSlot(broker), poll_wait_max=2.0)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Server(f"http://127.0.0.1:{port}", reviewer, broker)
    finally:
        await runner.cleanup()


def state(node: str) -> str:
    return AgentState(node=node, agent_version="test", arch="amd64").model_dump_json()


def report(node: str) -> str:
    return Report(node=node, lease_id="l-1", phase="staged").model_dump_json()  # type: ignore[arg-type]


async def call(
    url: str, body: str | bytes, token: str | None = None, header: str | None = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        data = await r.json()
        if r.status == 401:
            assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
        return r.status, data


@pytest.mark.parametrize(
    ("token", "header", "status", "fragment"),
    [
        (None, None, 401, "missing Authorization"),
        (None, "Basic dXNlcjpwYXNz", 401, "malformed"),
        (None, "Bearer ", 401, "malformed"),
        ("not-a-token", None, 401, "rejected"),
        ("tok-unbound", None, 401, "not bound to a node"),
        ("tok-b", None, 403, "node-b"),
    ],
)
@pytest.mark.parametrize("endpoint", ["poll", "report"])
async def test_requests_without_the_nodes_own_token_are_refused(
    server: Server, endpoint: str, token: str | None, header: str | None, status: int, fragment: str
) -> None:
    body = state("node-a") if endpoint == "poll" else report("node-a")
    code, data = await call(f"{server.url}/v1/agents/node-a/{endpoint}", body, token, header)
    assert code == status
    err = ErrorBody.model_validate(data)
    assert err.status == status and fragment in err.error


@pytest.mark.parametrize(
    ("endpoint", "body", "query", "fragment"),
    [
        ("poll", b"{not json", "", "invalid AgentState"),
        ("poll", b'{"node": "node-a"}', "", "agent_version"),
        (
            "poll",
            b'{"node": "node-a", "agent_version": "x", "arch": "amd64", "phase": "dancing"}',
            "",
            "phase",
        ),
        ("poll", b'{"node": "node-a", "agent_version": "x", "arch": "amd64", "extra": 1}', "", "extra"),
        ("poll", state("node-b").encode(), "", "names node 'node-b'"),
        ("poll", state("node-a").encode(), "?wait=soon", "wait="),
        ("poll", state("node-a").encode(), "?wait=-1", "wait="),
        ("report", b"[]", "", "invalid Report"),
        ("report", report("node-b").encode(), "", "names node 'node-b'"),
    ],
)
async def test_malformed_requests_get_400_and_change_nothing(
    server: Server, endpoint: str, body: bytes, query: str, fragment: str
) -> None:
    code, data = await call(f"{server.url}/v1/agents/node-a/{endpoint}{query}", body, "tok-a")
    assert code == 400
    err = ErrorBody.model_validate(data)
    assert err.status == 400 and fragment in err.error, err.error


async def test_successful_reviews_are_cached_and_rejections_are_not(server: Server) -> None:
    for _ in range(5):
        code, _ = await call(f"{server.url}/v1/agents/node-a/poll", state("node-a"), "tok-a")
        assert code == 200
    assert server.reviewer.calls == 1
    for _ in range(3):
        code, _ = await call(f"{server.url}/v1/agents/node-a/poll", state("node-a"), "late-token")
        assert code == 401
    assert server.reviewer.calls == 4
    server.reviewer.tokens["late-token"] = TokenIdentity(username="sa", node="node-a")
    code, _ = await call(f"{server.url}/v1/agents/node-a/poll", state("node-a"), "late-token")
    assert code == 200


async def test_non_leader_answers_idle_after_the_capped_wait_and_refuses_reports(server: Server) -> None:
    started = time.monotonic()
    code, data = await call(f"{server.url}/v1/agents/node-a/poll?wait=30", state("node-a"), "tok-a")
    elapsed = time.monotonic() - started
    assert code == 200
    assert Instruction.model_validate(data).action is Action.IDLE
    assert 1.9 <= elapsed < 5, "wait is capped by poll_wait_max (2 s) and honoured"
    code, data = await call(f"{server.url}/v1/agents/node-a/report", report("node-a"), "tok-a")
    assert code == 503 and "not the leader" in ErrorBody.model_validate(data).error


async def test_waking_the_broker_ends_a_long_poll_early(server: Server) -> None:
    started = time.monotonic()
    pending = asyncio.create_task(
        call(f"{server.url}/v1/agents/node-a/poll?wait=2", state("node-a"), "tok-a")
    )
    await asyncio.sleep(0.2)
    server.broker.wake.set()
    code, _ = await pending
    assert code == 200
    assert time.monotonic() - started < 1.5


class SlowReviewer:
    """Every token is valid (bound to a node named like it); each review takes 10 ms; counts in flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most = 0

    async def review_token(
        self, token: str, audience: str, only_user: str | None = None
    ) -> TokenIdentity | None:
        self.calls += 1
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        return TokenIdentity(username="sa", node=token)


async def test_a_burst_of_new_agents_is_reviewed_a_few_at_a_time() -> None:
    reviewer = SlowReviewer()
    auth = NodeAuthenticator(reviewer)
    # 200 agents at once (all reconnect after a coordinator restart): at most REVIEWS_IN_FLIGHT reviews.
    idents = await asyncio.gather(*(auth.authorize(f"Bearer node-{i}", f"node-{i}") for i in range(200)))
    assert [i.node for i in idents] == [f"node-{i}" for i in range(200)]
    assert reviewer.calls == 200 and reviewer.most == REVIEWS_IN_FLIGHT
    # One agent polling many times at once is reviewed by the first few only; the rest find the cache.
    again = SlowReviewer()
    auth = NodeAuthenticator(again)
    await asyncio.gather(*(auth.authorize("Bearer node-x", "node-x") for _ in range(100)))
    assert again.calls <= REVIEWS_IN_FLIGHT


async def test_beyond_max_waiting_reviews_a_herd_is_told_to_retry() -> None:
    reviewer = SlowReviewer()
    auth = NodeAuthenticator(reviewer, max_waiting=20)
    # 100 new agents at once: REVIEWS_IN_FLIGHT are reviewed, 20 wait, the others get 503 at once.
    results = await asyncio.gather(
        *(auth.authorize(f"Bearer node-{i}", f"node-{i}") for i in range(100)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, AuthError)]
    assert len(refused) == 100 - REVIEWS_IN_FLIGHT - 20
    assert all(r.status == 503 and "wait for a TokenReview" in str(r) for r in refused)
    assert reviewer.calls == REVIEWS_IN_FLIGHT + 20
    assert auth._waiting == 0
    # A herd of new tokens is reviewed again: nothing is left counted as waiting.
    again = await asyncio.gather(*(auth.authorize(f"Bearer new-{i}", f"new-{i}") for i in range(36)))
    assert len(again) == 36 and reviewer.calls == 2 * (REVIEWS_IN_FLIGHT + 20)


async def test_a_request_cancelled_while_waiting_for_a_review_is_not_counted_any_more() -> None:
    reviewer = SlowReviewer()
    auth = NodeAuthenticator(reviewer, max_waiting=5)
    tasks = [asyncio.create_task(auth.authorize(f"Bearer node-{i}", f"node-{i}")) for i in range(21)]
    await asyncio.sleep(0)  # 16 reviewing, 5 waiting
    assert auth._waiting == 5
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert auth._waiting == 0
    ident = await auth.authorize("Bearer node-x", "node-x")
    assert ident.node == "node-x"


async def test_a_refused_herd_answer_says_when_to_retry() -> None:
    app = web.Application()
    add_agent_routes(app, NodeAuthenticator(SlowReviewer(), max_waiting=0), BrokerSlot(IdleBroker()), 2.0)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/agents/node-a/poll?wait=0"
            async with s.post(url, data=state("node-a"), headers={"Authorization": "Bearer node-a"}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert ErrorBody.model_validate_json(await r.read()).status == 503
    finally:
        await runner.cleanup()


async def test_a_token_of_another_service_account_is_refused_even_on_its_node() -> None:
    agents = "system:serviceaccount:system-upgrade:agent"
    reviewer = Reviewer({**TOKENS, "tok-intruder": TokenIdentity(username="system:serviceaccount:apps:web",
                                                                 node="node-a")})
    auth = NodeAuthenticator(reviewer, username=agents)
    assert (await auth.authorize("Bearer tok-a", "node-a")).username == agents
    with pytest.raises(AuthError) as refused:
        await auth.authorize("Bearer tok-intruder", "node-a")
    assert refused.value.status == 403 and "system:serviceaccount:apps:web" in str(refused.value)
