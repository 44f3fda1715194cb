"""What only the local bus promises: one process, the message object itself handed over,
one delivery callback per node per loop turn, and a bound on what a node holds."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.bus import LocalBroker, LocalBus, open_bus, room_topic
from tests.bus.conftest import Inbox, message

A = room_topic("#a")


async def test_open_bus_local_is_a_node_alone() -> None:
    """``open_bus()`` and ``open_bus("local")`` give a node on a broker of its own: what it
    publishes goes nowhere (its own members are served by the node itself)."""
    for url in ("local", "local:", "LOCAL"):
        bus = await open_bus(url, node="solo")
        assert isinstance(bus, LocalBus)
        assert bus.node == "solo"
        await bus.subscribe(A)
        bus.publish(A, message("#a"))
        assert bus.statistics().published == 1
        await bus.close()
    bus = await open_bus()
    assert bus.node  # a fresh name
    await bus.close()


async def test_the_same_object_is_delivered_on_the_next_turn() -> None:
    """The receiver gets the very object published (no copy, no encoding), on a later loop
    turn, never inside publish."""
    broker = LocalBroker()
    one, two = broker.bus("one"), broker.bus("two")
    inbox = Inbox()
    two.listen(inbox)
    await two.subscribe(A)
    sent = message("#a")
    one.publish(A, sent)
    assert inbox.messages == []  # not from inside publish
    await inbox.holds(1)
    assert inbox.messages[0][1] is sent


async def test_a_node_that_falls_behind_hears_lost_then_resumed() -> None:
    """A node past max_pending deliveries in one turn drops them, and hears lost and
    resumed at that point; the deliveries queued after it follow, in order."""
    broker = LocalBroker(max_pending=10)
    one, two = broker.bus("one"), broker.bus("two")
    inbox = Inbox()
    two.listen(inbox)
    await two.subscribe(A)
    for i in range(25):  # in one turn: 10 held, dropped at the 11th; 9 held, dropped...
        one.publish(A, message("#a", seq=i + 1, text=f"m{i}"))
    await inbox.until(lambda: "resumed" in inbox.events, "resumed")
    await inbox.heard("m24")
    assert inbox.events[:2] == ["lost", "resumed"]
    assert inbox.texts == [f"m{i}" for i in range(25 - len(inbox.texts), 25)]
    assert 0 < len(inbox.texts) < 10
    assert "fell" in inbox.losses[0]
    assert two.statistics().outages == 1
    outage = inbox.outages[0]
    assert outage.reason == inbox.losses[0]
    assert outage.seconds >= 0
    one.publish(A, message("#a", text="next turn"))
    await inbox.heard("next turn")
    assert inbox.events.count("lost") == 1


async def test_unsubscribed_before_the_turn_is_not_delivered() -> None:
    """A message pending for a topic the node leaves before its turn is not delivered."""
    broker = LocalBroker()
    one, two = broker.bus("one"), broker.bus("two")
    inbox = Inbox()
    two.listen(inbox)
    await two.subscribe(A)
    await two.subscribe(room_topic("#b"))
    one.publish(A, message("#a", text="left meanwhile"))
    await two.unsubscribe(A)
    one.publish(room_topic("#b"), message("#b", text="marker"))
    await inbox.heard("marker")
    assert inbox.texts == ["marker"]


async def test_a_node_without_a_handler_drops_what_arrives() -> None:
    """Deliveries to a node that set no handler are dropped, not kept for a later one."""
    broker = LocalBroker()
    one, two = broker.bus(), broker.bus()
    await two.subscribe(A)
    one.publish(A, message("#a", text="nobody listens"))
    await asyncio.sleep(0)  # one loop turn: the delivery callback runs, and drops it
    inbox = Inbox()
    two.listen(inbox)
    one.publish(A, message("#a", text="heard"))
    await inbox.heard("heard")
    assert inbox.texts == ["heard"]


def test_names_are_unique_on_a_broker() -> None:
    """Two nodes cannot share a name on one broker, and a broker holds at least one
    delivery per node."""
    broker = LocalBroker()
    broker.bus("one")
    with pytest.raises(ValueError, match="already on this bus"):
        broker.bus("one")
    with pytest.raises(ValueError, match="max_pending"):
        LocalBroker(max_pending=0)


async def test_a_closed_nodes_name_is_free_again() -> None:
    """Once a node closed, its name can be taken by a new one."""
    broker = LocalBroker()
    await broker.bus("one").close()
    assert broker.bus("one").node == "one"
