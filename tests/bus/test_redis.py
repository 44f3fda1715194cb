"""What only the Redis bus promises: it comes back by itself after its connections drop
(``CLIENT KILL``, a restart), backing off while Redis is away, subscribes to everything
again and says so; it refuses to publish while it is away; prefixes keep installations
apart; what is not a message is refused.

Real Redis throughout. Where Redis must go away or hang, the bus reaches it through a TCP
relay the test controls (``tests/bus/conftest.py::Relay``); nothing waits on the clock but
the health check, which is the clock's to test.
"""

from __future__ import annotations

import logging

import pytest

from roomcast.bus import open_bus, room_topic, user_topic
from roomcast.bus.redis import RedisBus
from roomcast.errors import Broken
from roomcast.wire.bus import encode
from tests.bus.conftest import Inbox, Relay, message, private
from tests.conftest import RedisPlace

A, B = room_topic("#a"), room_topic("#b")
FAST = "backoff_min=0.02&backoff_max=0.2"  # reconnect at once: the tests wait for it


async def two_nodes(
    place: RedisPlace, query: str = FAST, server: str | None = None
) -> tuple[RedisBus, Inbox, RedisBus, Inbox]:
    """Two nodes on the test's prefix, ``two`` (possibly behind ``server``) listening."""
    one = await RedisBus.open(place.url(FAST), node=place.node("one"))
    two = await RedisBus.open(place.url(query, server=server), node=place.node("two"))
    at_one, at_two = Inbox(), Inbox()
    one.listen(at_one)
    two.listen(at_two)
    return one, at_one, two, at_two


async def kill(place: RedisPlace, bus: RedisBus, *roles: str) -> int:
    """``CLIENT KILL`` the node's connections of ``roles`` (``sub``, ``pub``) at once."""
    return await place.kill(*(f"roomcast-bus-{role}-{bus.node}" for role in roles))


# --- coming back ---------------------------------------------------------------------------


async def test_client_kill_reconnects_resubscribes_and_says_so(redis_place: RedisPlace) -> None:
    """When an operator kills a node's connections, the node hears lost, reconnects,
    subscribes again, hears resumed (with the outage), and then receives again."""
    one, _, two, inbox = await two_nodes(redis_place)
    try:
        await two.subscribe(A)
        one.publish(A, message("#a", text="before"))
        await inbox.heard("before")
        assert await kill(redis_place, two, "sub", "pub") == 2
        await inbox.until(lambda: bool(inbox.outages), "resumed")
        assert inbox.events == ["message", "lost", "resumed"]
        outage = inbox.outages[0]
        assert outage.attempts >= 1
        assert outage.resumed_at >= outage.lost_at
        assert inbox.losses == [outage.reason]
        assert two.statistics().connected
        assert two.statistics().outages == 1
        one.publish(A, message("#a", text="after"))
        await inbox.heard("after")
    finally:
        await one.close()
        await two.close()


async def test_a_killed_publisher_publishes_again_once_back(redis_place: RedisPlace) -> None:
    """A node whose connections were killed publishes again once it has reconnected."""
    one, at_one, two, at_two = await two_nodes(redis_place)
    try:
        await two.subscribe(A)
        assert await kill(redis_place, one, "sub", "pub") == 2
        await at_one.until(lambda: bool(at_one.outages), "the publisher resumed")
        one.publish(A, message("#a", text="published after"))
        await at_two.heard("published after")
    finally:
        await one.close()
        await two.close()


async def test_a_publishing_connection_killed_while_idle_is_noticed(
    redis_place: RedisPlace,
) -> None:
    """A publishing connection killed while nothing is published is found dead by the
    idle PING, replaced, and reported, before the next message could be lost on it."""
    one, at_one, two, inbox = await two_nodes(redis_place, query=f"{FAST}&health_check=0.2")
    try:
        await kill(redis_place, two, "pub")
        await inbox.until(lambda: bool(inbox.outages), "resumed after the PING failed")
        assert "publishing connection" in inbox.losses[0]
        await one.subscribe(A)
        two.publish(A, message("#a", text="from two"))
        await at_one.heard("from two")
    finally:
        await one.close()
        await two.close()


async def test_every_topic_is_subscribed_again(redis_place: RedisPlace) -> None:
    """After an outage every topic is subscribed again, also more than one SUBSCRIBE's
    worth (1,000): resumed comes once Redis confirmed them all."""
    one, _, two, inbox = await two_nodes(redis_place)
    try:
        rooms = [f"#r{i}" for i in range(2500)]
        for room in rooms:
            await two.subscribe(room_topic(room))
        await kill(redis_place, two, "sub")
        await inbox.until(lambda: bool(inbox.outages), "resumed")
        for i, room in enumerate(rooms):
            one.publish(room_topic(room), message(room, text=f"to {room}", seq=i + 1))
        await inbox.holds(len(rooms))
        assert [t for t, _, _ in inbox.messages] == [room_topic(room) for room in rooms]
    finally:
        await one.close()
        await two.close()


async def test_redis_away_for_a_while_is_waited_for_with_backoff(
    redis_place: RedisPlace, relay: tuple[Relay, str]
) -> None:
    """While Redis is away the node tries again and again, waiting longer each time (at
    least half the doubled wait); when Redis is back it subscribes again and resumes."""
    proxy, server = relay
    first, cap = 0.02, 0.16
    one, _, two, inbox = await two_nodes(
        redis_place, query=f"backoff_min={first}&backoff_max={cap}", server=server
    )
    try:
        await two.subscribe(A)
        proxy.mode = "refuse"
        proxy.cut()
        await inbox.until(lambda: bool(inbox.losses), "lost")
        await proxy.refused(6)
        gaps = [b - a for a, b in zip(proxy.attempts, proxy.attempts[1:], strict=False)]
        for n, gap in enumerate(gaps[:5], start=1):
            least = min(cap, first * 2**n) / 2
            assert gap >= least - 0.002, f"wait {n} was {gap:.3f} s, less than {least:.3f} s"
        proxy.mode = "forward"
        await inbox.until(lambda: bool(inbox.outages), "resumed")
        assert inbox.outages[0].attempts > 6
        one.publish(A, message("#a", text="back"))
        await inbox.heard("back")
        assert inbox.events == ["lost", "resumed", "message"]
    finally:
        await one.close()
        await two.close()


async def test_a_hung_redis_is_noticed_by_the_health_check(
    redis_place: RedisPlace, relay: tuple[Relay, str]
) -> None:
    """A Redis that keeps the connection but answers nothing is declared lost after a
    silence and an unanswered PING; connecting to it again times out, and the node comes
    back when Redis answers again."""
    proxy, server = relay
    one, _, two, inbox = await two_nodes(
        redis_place, query=f"{FAST}&health_check=0.1&timeout=0.3", server=server
    )
    try:
        await two.subscribe(A)
        proxy.mode = "freeze"
        await inbox.until(lambda: bool(inbox.losses), "lost", wait=5)
        with pytest.raises(Broken, match="not connected"):
            two.publish(A, message("#a"))
        proxy.mode = "forward"
        proxy.cut()
        await inbox.until(lambda: bool(inbox.outages), "resumed")
        one.publish(A, message("#a", text="answered"))
        await inbox.heard("answered")
    finally:
        await one.close()
        await two.close()


# --- while away ----------------------------------------------------------------------------


async def test_publish_while_redis_is_away_is_broken(
    redis_place: RedisPlace, relay: tuple[Relay, str]
) -> None:
    """While the node is not connected, publish raises Broken at once (the message is
    stored: the other nodes refill it) and counts it as failed."""
    proxy, server = relay
    one, _, two, inbox = await two_nodes(redis_place, server=server)
    try:
        proxy.mode = "refuse"
        proxy.cut()
        await inbox.until(lambda: bool(inbox.losses), "lost")
        with pytest.raises(Broken, match="not connected to Redis at redis://127.0.0.1"):
            two.publish(A, message("#a"))
        assert two.statistics().failed == 1
        assert not two.statistics().connected
    finally:
        await one.close()
        await two.close()


async def test_a_topic_subscribed_while_away_is_subscribed_on_return(
    redis_place: RedisPlace, relay: tuple[Relay, str]
) -> None:
    """subscribe while the node is away returns at once; once back, the topic is
    subscribed, as resumed says."""
    proxy, server = relay
    one, _, two, inbox = await two_nodes(redis_place, server=server)
    try:
        await two.subscribe(A)
        proxy.mode = "refuse"
        proxy.cut()
        await inbox.until(lambda: bool(inbox.losses), "lost")
        await two.subscribe(B)
        await two.unsubscribe(A)
        proxy.mode = "forward"
        await inbox.until(lambda: bool(inbox.outages), "resumed")
        one.publish(A, message("#a", text="unsubscribed while away"))
        one.publish(B, message("#b", text="subscribed while away"))
        await inbox.heard("subscribed while away")
        assert inbox.texts == ["subscribed while away"]
    finally:
        await one.close()
        await two.close()


async def test_unreachable_redis_at_open_is_broken(relay: tuple[Relay, str]) -> None:
    """A node that cannot reach Redis when it starts gets Broken saying where."""
    proxy, server = relay
    proxy.mode = "refuse"
    with pytest.raises(Broken, match="cannot reach Redis at redis://127.0.0.1"):
        await open_bus(f"{server}?timeout=2")


async def test_publishes_past_max_pending_are_refused(redis_place: RedisPlace) -> None:
    """More than max_pending bytes queued at once are refused with Broken and logged once;
    once written, publishing goes on."""
    one, _, two, inbox = await two_nodes(redis_place)
    await one.close()
    small = await RedisBus.open(
        redis_place.url(f"{FAST}&max_pending=1000"), node=redis_place.node("small")
    )
    try:
        await two.subscribe(A)
        accepted = 0
        with pytest.raises(Broken, match="the bus is behind"):
            for i in range(1000):  # bounded: 1,000 bytes hold a few messages
                small.publish(A, message("#a", seq=i + 1, text=f"m{i}"))
                accepted += 1
        assert 0 < accepted < 20
        assert small.statistics().pending_bytes <= 1000
        await inbox.until(lambda: len(inbox.messages) == accepted, "the accepted ones")
        small.publish(A, message("#a", text="later"))
        await inbox.heard("later")
        assert small.statistics().failed == 1
    finally:
        await small.close()
        await two.close()


# --- on the wire -----------------------------------------------------------------------------


async def test_nodes_on_another_prefix_hear_nothing(redis_place: RedisPlace) -> None:
    """Two installations on one Redis with different prefixes do not hear each other."""
    bus = await RedisBus.open(redis_place.url(FAST), node=redis_place.node("mine"))
    inbox = Inbox()
    bus.listen(inbox)
    try:
        await bus.subscribe(A)
        other = f"other-{redis_place.prefix}".encode()
        mine = redis_place.prefix.encode()
        # one connection publishes both: Redis delivers them in this order
        async with redis_place.admin.pipeline(transaction=False) as pipe:
            pipe.publish(other + A.encode(), encode("x", message("#a", text="other prefix")))
            pipe.publish(mine + A.encode(), encode("x", message("#a", text="mine")))
            await pipe.execute()
        await inbox.heard("mine")
        assert inbox.texts == ["mine"]
    finally:
        await bus.close()


async def test_what_is_not_a_message_is_refused_and_counted(
    redis_place: RedisPlace, caplog: pytest.LogCaptureFixture
) -> None:
    """A payload that is not a message, or a message on another topic than its own, is
    refused, counted and logged; what follows is delivered."""
    bus = await RedisBus.open(redis_place.url(FAST), node=redis_place.node("mine"))
    inbox = Inbox()
    bus.listen(inbox)
    try:
        await bus.subscribe(A)
        channel = redis_place.prefix.encode() + A.encode()
        with caplog.at_level(logging.WARNING, logger="roomcast.bus"):
            async with redis_place.admin.pipeline(transaction=False) as pipe:
                pipe.publish(channel, b"not json")
                pipe.publish(channel, encode("x", message("#b", text="wrong topic")))
                pipe.publish(channel, encode("x", message("#a", text="fine")))
                await pipe.execute()
            await inbox.heard("fine")
        assert inbox.texts == ["fine"]
        assert bus.statistics().refused == 2
        assert "refused a payload" in caplog.text
        assert "room #b on this channel" in caplog.text
    finally:
        await bus.close()


async def test_own_publications_are_skipped_unread(redis_place: RedisPlace) -> None:
    """What a node published comes back from Redis on its topics, and is skipped by its
    first bytes, without being decoded."""
    one, _, two, inbox = await two_nodes(redis_place)
    at_one = Inbox()
    one.listen(at_one)
    try:
        await one.subscribe(A)
        one.publish(A, message("#a", text="mine"))
        two.publish(A, message("#a", text="marker"))
        await at_one.heard("marker")
        await at_one.until(lambda: one.statistics().own == 1, "one skipped")
        assert at_one.texts == ["marker"]
    finally:
        await one.close()
        await two.close()


async def test_close_writes_what_is_queued(redis_place: RedisPlace) -> None:
    """Messages published just before close still go out."""
    one, _, two, inbox = await two_nodes(redis_place)
    try:
        await two.subscribe(user_topic("ann"))
        for i in range(100):
            one.publish(user_topic("ann"), private("ann", "bob", seq=i + 1))
        await one.close()
        await inbox.until(lambda: len(inbox.messages) == 100, "the hundred")
    finally:
        await one.close()
        await two.close()


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:6379/0?timeout=0", "must be above 0"),
        ("redis://127.0.0.1:6379/0?colour=blue", "bad bus URL"),
        ("redis://127.0.0.1:6379/0?client_name=x", "bad bus URL"),
        ("redis://:secret@127.0.0.1:6379/0?colour=blue", r"redis://:\*\*\*@127"),
    ],
)
async def test_a_bad_url_is_refused_before_anything_is_opened(url: str, why: str) -> None:
    """A bad setting, or a parameter redis-py does not take, is a ValueError at open,
    without the password."""
    with pytest.raises(ValueError, match=why) as refused:
        await open_bus(url)
    assert "secret" not in str(refused.value)


async def test_unknown_bus_urls_are_refused() -> None:
    """open_bus knows local and redis URLs, and says so."""
    for url in ("kafka://x", "redis:nohost", "local:elsewhere", "unix:///tmp/redis.sock"):
        with pytest.raises(ValueError, match="unknown bus URL"):
            await open_bus(url)
