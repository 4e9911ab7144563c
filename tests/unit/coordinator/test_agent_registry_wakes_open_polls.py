"""`coordinator.reconciler.AgentRegistry`: the per-node event that wakes a node's long-polls.

Aspects: the polls of one node open at the same time share one event, which `notify` sets for the
nodes it names (or for every node); the event lives only while a poll of its node is open, so an agent
that is not polling costs no event; a node's next poll gets a fresh, unset event.
"""

from __future__ import annotations

from coordinator.reconciler import AgentRegistry


async def test_polls_of_a_node_share_one_event_while_any_is_open() -> None:
    agents = AgentRegistry()
    with agents.listening("a") as first, agents.listening("a") as second, agents.listening("b") as other:
        assert first is second and first is not other
        agents.notify(["a", "c"])  # c has no poll open: nothing to wake
        assert first.is_set() and not other.is_set()
        agents.notify()
        assert other.is_set()
    assert agents._changed == {}  # no poll open: no event kept
    with agents.listening("a") as again:
        assert again is not first and not again.is_set()


async def test_the_event_stays_until_the_last_poll_of_its_node_closes() -> None:
    agents = AgentRegistry()
    with agents.listening("a") as held:
        with agents.listening("a"):  # a heartbeat poll beside the held one
            pass
        agents.notify(["a"])
        assert held.is_set()  # the held poll is still woken
    assert "a" not in agents._changed
