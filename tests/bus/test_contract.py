"""The bus contract: every implementation of ``Bus`` passes this suite (local and Redis).

Nothing here waits on the clock. Where a test shows that something is NOT delivered, the
publisher then publishes a marker on a topic that is delivered: one publisher's messages
arrive in the order published, so once the marker is in, the other would have been too.
"""

from __future__ import annotations

import inspect
import logging

import pytest

from roomcast.bus import Topic, room_topic, user_topic
from roomcast.errors import Broken
from roomcast.model import MAX_TEXT, Message, Private
from tests.bus.conftest import Cluster, Inbox, message, private

A, B, C = room_topic("#a"), room_topic("#b"), room_topic("#c")


async def test_publish_reaches_another_nodes_subscriber(cluster: Cluster) -> None:
    """What one node publishes on a topic reaches another node subscribed to it, as the
    same value, with the publisher's name; the subscription is in force once subscribe
    returns."""
    one, _ = await cluster.node("one")
    two, inbox = await cluster.node("two")
    await two.subscribe(A)
    sent = message("#a", seq=7, text="hello")
    one.publish(A, sent)
    await inbox.heard("hello")
    assert inbox.messages == [(A, sent, "one")]


async def test_a_topic_not_subscribed_is_not_delivered(cluster: Cluster) -> None:
    """A node hears nothing of a topic it did not subscribe to."""
    one, _ = await cluster.node()
    two, inbox = await cluster.node()
    await two.subscribe(B)
    one.publish(A, message("#a", text="not for two"))
    one.publish(B, message("#b", text="marker"))
    await inbox.heard("marker")
    assert inbox.texts == ["marker"]


async def test_a_node_does_not_hear_itself(cluster: Cluster) -> None:
    """A node's own publications are not delivered back to it: it has handed them to its
    members already."""
    one, own = await cluster.node()
    two, _ = await cluster.node()
    await one.subscribe(A)
    one.publish(A, message("#a", text="mine"))
    two.publish(A, message("#a", text="theirs"))
    await own.heard("theirs")
    assert own.texts == ["theirs"]


async def test_unsubscribe_stops_deliveries(cluster: Cluster) -> None:
    """After unsubscribe returns, nothing more arrives for that topic; the others go on."""
    one, _ = await cluster.node()
    two, inbox = await cluster.node()
    await two.subscribe(A)
    await two.subscribe(B)
    one.publish(A, message("#a", text="before"))
    await inbox.heard("before")
    await two.unsubscribe(A)
    one.publish(A, message("#a", text="after"))
    one.publish(B, message("#b", text="marker"))
    await inbox.heard("marker")
    assert inbox.texts == ["before", "marker"]
    await two.unsubscribe(A)  # again: nothing to do
    await two.unsubscribe(C)  # never subscribed: nothing to do


async def test_subscribing_twice_is_subscribing_once(cluster: Cluster) -> None:
    """A topic subscribed twice delivers each message once."""
    one, _ = await cluster.node()
    two, inbox = await cluster.node()
    await two.subscribe(A)
    await two.subscribe(A)
    one.publish(A, message("#a", text="once"))
    one.publish(A, message("#a", text="marker"))
    await inbox.heard("marker")
    assert inbox.texts == ["once", "marker"]
    assert two.statistics().topics == 1


async def test_one_publishers_messages_arrive_in_order(cluster: Cluster) -> None:
    """Many messages published at once, on two topics, reach a subscriber in the order
    they were published."""
    one, _ = await cluster.node()
    two, inbox = await cluster.node()
    await two.subscribe(A)
    await two.subscribe(B)
    count = 2000
    for i in range(1, count + 1):
        room = "#a" if i % 3 else "#b"
        one.publish(room_topic(room), message(room, seq=i, text=f"m{i}"))
    await inbox.heard(f"m{count}")
    assert inbox.texts == [f"m{i}" for i in range(1, count + 1)]


async def test_each_node_hears_the_others(cluster: Cluster) -> None:
    """With three nodes on a topic, each hears the two others and not itself."""
    nodes = [await cluster.node(f"n{i}") for i in range(3)]
    for bus, _ in nodes:
        await bus.subscribe(A)
    for i, (bus, _) in enumerate(nodes):
        bus.publish(A, message("#a", seq=i + 1, text=f"from n{i}"))
    for i, (_, inbox) in enumerate(nodes):
        await inbox.holds(2)
        assert set(inbox.texts) == {f"from n{j}" for j in range(3) if j != i}
        assert sorted(origin for _, _, origin in inbox.messages) == sorted(
            f"n{j}" for j in range(3) if j != i
        )


async def test_private_messages_travel_on_user_topics(cluster: Cluster) -> None:
    """A private message published on its recipient's and its sender's topics reaches the
    nodes where either has sessions, as the same value."""
    one, _ = await cluster.node()
    two, at_bob = await cluster.node()
    three, at_ann = await cluster.node()
    await two.subscribe(user_topic("Bob"))
    await three.subscribe(user_topic("ann"))
    sent = private("Ann", "bob", seq=3)
    one.publish(user_topic("bob"), sent)
    one.publish(user_topic("ann"), sent)
    for inbox in (at_bob, at_ann):
        await inbox.holds(1)
    assert at_bob.messages == [(user_topic("bob"), sent, one.node)]
    assert at_ann.messages == [(user_topic("ann"), sent, one.node)]
    assert isinstance(at_bob.messages[0][1], Private)


async def test_publish_on_another_topic_than_the_messages_is_refused(cluster: Cluster) -> None:
    """A room message goes on its room's topic only, a private message on its sender's or
    recipient's: anything else is a mistake of the caller's."""
    one, _ = await cluster.node()
    with pytest.raises(ValueError, match="room #a"):
        one.publish(B, message("#a"))
    with pytest.raises(ValueError):
        one.publish(user_topic("cid"), private("ann", "bob"))
    with pytest.raises(ValueError):
        one.publish(A, private("ann", "bob"))


async def test_the_longest_message_travels_intact(cluster: Cluster) -> None:
    """A message of the longest text, of four-byte characters and line feeds, arrives as
    it was sent."""
    one, _ = await cluster.node()
    two, inbox = await cluster.node()
    await two.subscribe(A)
    text = ("\U0001f600\n" * MAX_TEXT)[:MAX_TEXT]
    sent = message("#a", text=text)
    one.publish(A, sent)
    await inbox.until(lambda: bool(inbox.messages), "the long message")
    assert inbox.messages[0][1] == sent


async def test_publish_never_waits(cluster: Cluster) -> None:
    """publish is a plain call that returns at once: a caller may publish from a callback
    (the store's ``then``) without a task."""
    one, _ = await cluster.node()
    assert not inspect.iscoroutinefunction(one.publish)
    one.publish(A, message("#a"))


async def test_a_failing_handler_does_not_stop_deliveries(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler that raises is logged, and the next messages are still delivered."""

    class Failing(Inbox):
        def received(self, topic: Topic, message: Message | Private, origin: str) -> None:
            super().received(topic, message, origin)
            if message.text == "boom":
                raise RuntimeError("the handler broke")

    one, _ = await cluster.node()
    two, _ = await cluster.node()
    inbox = Failing()
    two.listen(inbox)
    await two.subscribe(A)
    with caplog.at_level(logging.ERROR, logger="roomcast.bus"):
        one.publish(A, message("#a", text="boom"))
        one.publish(A, message("#a", text="after"))
        await inbox.heard("after")
    assert inbox.texts == ["boom", "after"]
    assert "the handler of node" in caplog.text


async def test_the_last_handler_set_is_the_one_called(cluster: Cluster) -> None:
    """listen replaces the handler: deliveries go to the newest one only."""
    one, _ = await cluster.node()
    two, first = await cluster.node()
    second = Inbox()
    two.listen(second)
    await two.subscribe(A)
    one.publish(A, message("#a", text="to the second"))
    await second.heard("to the second")
    assert first.messages == []


async def test_a_closed_node_hears_nothing_and_publishes_nothing(cluster: Cluster) -> None:
    """After close, publish and subscribe raise Broken, close again does nothing, and the
    other nodes go on without it."""
    one, _ = await cluster.node()
    two, at_two = await cluster.node()
    three, at_three = await cluster.node()
    await two.subscribe(A)
    await three.subscribe(A)
    await two.close()
    await two.close()
    with pytest.raises(Broken, match="closed"):
        two.publish(A, message("#a"))
    with pytest.raises(Broken, match="closed"):
        await two.subscribe(B)
    one.publish(A, message("#a", text="still on"))
    await at_three.heard("still on")
    assert at_two.messages == []
    assert two.statistics().connected is False


async def test_statistics_count_what_went_through(cluster: Cluster) -> None:
    """statistics() counts the topics, what was published and what was received."""
    one, _ = await cluster.node("counted")
    two, inbox = await cluster.node()
    await two.subscribe(A)
    await two.subscribe(user_topic("ann"))
    for i in range(5):
        one.publish(A, message("#a", seq=i + 1, text=f"m{i}"))
    await inbox.heard("m4")
    stats_one, stats_two = one.statistics(), two.statistics()
    assert stats_one.node == "counted"
    assert stats_one.connected
    assert stats_two.topics == 2
    assert stats_two.received == 5
    await inbox.until(lambda: one.statistics().published == 5, "five publications counted")
    assert one.statistics().failed == 0


async def test_a_node_name_must_be_fit(cluster: Cluster) -> None:
    """A node's name is ASCII letters, digits, '_', '-' and '.' (it goes into payloads
    and connection names as it is)."""
    with pytest.raises(ValueError, match="cannot name a node"):
        await cluster.node("two words")
