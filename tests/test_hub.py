"""The hub: its state table, how sessions end, flood control, and runs of messages (``Hub.say``)
with their store failures. Sessions in memory, a fake clock, no sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from roomcast.errors import Broken, ClientError, Closed
from roomcast.hub import GENERAL
from roomcast.model import (
    Action,
    Draft,
    Error,
    Info,
    Join,
    Kind,
    Logout,
    Message,
    Quit,
    Say,
    SetName,
    Welcome,
    WhoList,
)
from roomcast.session import State
from roomcast.store import MemoryStore
from tests.helpers import (
    make_hub,
    named,
    ready,
    registered,
    texts,
)

# --- the state table ----------------------------------------------------------------------


async def test_new_session_gets_welcome_and_joins_general() -> None:
    """A named session is welcomed, joins #general and is listed there."""
    hub, _ = make_hub()
    session = hub.connect("peer")
    replies = await hub.handle(session, SetName(name="alice"))
    assert replies[0] == Welcome(name="alice")
    assert replies[1] == WhoList(room=GENERAL, names=("alice",))
    assert session.state is State.ACTIVE and session.current == GENERAL
    joined = await ready(session)
    assert [(m.kind, m.sender, m.room) for m in joined if isinstance(m, Message)] == [
        (Kind.JOIN, "alice", GENERAL)
    ]


async def test_commands_before_a_name_are_refused_precisely() -> None:
    """Before a name, anything but a name or quit gets 'expected a name first, got X'."""
    hub, _ = make_hub()
    session = hub.connect("peer")
    [error] = await hub.handle(session, Join(room="#rust"))
    assert isinstance(error, Error) and error.code == "no_name"
    assert "expected a name first, got Join" in error.message


async def test_a_second_name_is_refused() -> None:
    """An active session cannot set its name again; it must use nick."""
    hub, _ = make_hub()
    session = await named(hub, "alice")
    [error] = await hub.handle(session, SetName(name="alicia"))
    assert isinstance(error, Error) and error.code == "has_name"


async def test_a_closed_session_accepts_nothing() -> None:
    """After quit, every command gets a 'closed' error."""
    hub, _ = make_hub()
    session = await named(hub, "alice")
    assert await hub.handle(session, Quit(reason="bye")) == []
    [error] = await hub.handle(session, Say(text="hello"))
    assert isinstance(error, Error) and error.code == "closed"


async def test_logout_keeps_the_connection_without_a_name() -> None:
    """After logout the session is NEW again and can pick a guest name."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    assert await hub.handle(alice, Logout()) == []
    assert alice.state is State.NEW
    # told after whatever was ready for the account, so nothing of it follows the notice
    events = await alice.take()
    assert events[-1] == Info(text="logged out: choose a name, or /login name password")
    replies = await hub.handle(alice, SetName(name="guest1"))
    assert replies[0] == Welcome(name="guest1")


# --- how sessions end ---------------------------------------------------------------------


async def test_quit_announces_and_closes_the_session() -> None:
    """Quit tells every room of the user, frees the name, and ends receive with Closed."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    await hub.handle(alice, Quit(reason="bye now"))
    [m] = await ready(bob)
    assert isinstance(m, Message) and (m.kind, m.sender, m.text) == (Kind.QUIT, "alice", "bye now")
    assert hub.online == 1
    delivered = await alice.receive()
    assert delivered[-1] == Info(text="goodbye")
    with pytest.raises(Closed):
        await alice.receive()


async def test_quit_still_delivers_what_was_said_before() -> None:
    """The quitter gets every message said before its quit, then goodbye."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await hub.handle(alice, Say(text="last words"))
    await hub.handle(alice, Quit())
    got = await ready(alice)
    assert texts(got) == ["last words"] and got[-1] == Info(text="goodbye")


async def test_hub_close_disconnects_everyone() -> None:
    """Closing the hub ends every session with the reason."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.close("maintenance")
    assert alice.state is State.CLOSED and alice.close_reason == "maintenance"


# --- flood control ------------------------------------------------------------------------


async def test_flood_is_refused_then_allowed_again() -> None:
    """Past the burst, commands get 'flood' until the clock refills the bucket."""
    hub, clock = make_hub(rate=2, burst=3)
    alice = await named(hub, "alice")  # the name took one token
    for _ in range(2):
        assert await hub.handle(alice, Say(text="ok")) == []
    [error] = await hub.handle(alice, Say(text="too much"))
    assert isinstance(error, Error) and error.code == "flood"
    clock.advance(0.5)
    assert await hub.handle(alice, Say(text="ok again")) == []


async def test_pace_says_how_long_until_the_next_command_may_go() -> None:
    """pace is 0 while tokens last, then the time until the next one comes; allowance counts
    the commands that may go at once, never more than the burst."""
    hub, clock = make_hub(rate=2, burst=3)
    alice = await named(hub, "alice")  # the name took one token
    assert hub.pace(alice) == 0.0 and hub.allowance(alice) == 2
    assert await hub.say(alice, [Say(text="a"), Say(text="b")]) == []
    assert hub.allowance(alice) == 0
    assert hub.pace(alice) == pytest.approx(0.5)
    clock.advance(0.2)
    assert hub.pace(alice) == pytest.approx(0.3)
    clock.advance(0.3)
    assert hub.pace(alice) == 0.0 and hub.allowance(alice) == 1
    assert await hub.handle(alice, Say(text="c")) == []  # waiting as told is never refused
    clock.advance(60.0)
    assert hub.allowance(alice) == 3


async def test_a_session_held_back_longer_than_the_flood_hold_is_refused() -> None:
    """A session that keeps coming faster than the rate is told to wait until its hold would
    pass flood_hold; then pace refuses it with the reason. A pause ends a hold."""
    hub, clock = make_hub(rate=2, burst=1, flood_hold=1)
    alice = await named(hub, "alice")  # took the only token
    for _ in range(2):  # held back 0.5 s at a time: 1 s in all, not more
        assert hub.pace(alice) == pytest.approx(0.5)
        clock.advance(0.5)
        assert hub.pace(alice) == 0.0
        assert await hub.handle(alice, Say(text="x")) == []
    with pytest.raises(ClientError) as refused:
        hub.pace(alice)  # another 0.5 s would make 1.5
    assert refused.value.code == "flood"
    assert refused.value.message == "sending too fast: held back for more than 1 s"

    bob = await named(hub, "bob")
    for _ in range(2):
        assert hub.pace(bob) == pytest.approx(0.5)
        clock.advance(0.5)
        assert hub.pace(bob) == 0.0
        assert await hub.handle(bob, Say(text="x")) == []
    clock.advance(0.5)  # bob pauses: its next line need not wait, and the hold is over
    assert hub.pace(bob) == 0.0
    assert await hub.handle(bob, Say(text="after a pause")) == []
    assert hub.pace(bob) == pytest.approx(0.5)  # a new hold, from now


# --- runs of messages ---------------------------------------------------------------------


class CountingStore(MemoryStore):
    """A memory store that counts its writes of room messages."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        self.writes += 1
        return super().append_many(drafts, then=then)


async def test_a_run_of_messages_is_one_store_write_delivered_in_order() -> None:
    """``say`` stores a run in one write; everyone gets each message once, in order in each
    room, and a run may name rooms and mix actions."""
    store = CountingStore()
    hub, _ = make_hub(store, rate=1000, burst=1000)
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await hub.handle(alice, Join(room="#rust"))
    await hub.handle(bob, Join(room="#rust"))
    await ready(alice), await ready(bob)
    before = store.writes
    run: list[Say | Action] = [
        Say(text="one", room=GENERAL),
        Action(text="waves"),
        Say(text="two", room=GENERAL),
    ]
    assert await hub.say(alice, run) == []
    assert store.writes == before + 1
    got = [(m.room, m.kind, m.text) for m in await ready(bob) if isinstance(m, Message)]
    assert [g for g in got if g[0] == GENERAL] == [
        (GENERAL, Kind.MESSAGE, "one"),
        (GENERAL, Kind.MESSAGE, "two"),
    ]
    assert [g for g in got if g[0] == "#rust"] == [("#rust", Kind.ACTION, "waves")]
    assert texts(await ready(alice)) == ["one", "two"]  # the echo is the acknowledgement


class FailingStore(MemoryStore):
    """A memory store whose room writes fail while ``failing`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        if not self.failing:
            return super().append_many(drafts, then=then)
        stored: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        stored.set_exception(Broken("disk on fire"))
        return stored


async def test_a_store_failure_is_told_to_the_sender_and_the_room_goes_on() -> None:
    """When the store fails, the sender hears "unavailable" and nobody gets the message;
    once it works again, so does the room, in sequence."""
    store = FailingStore()
    hub, _ = make_hub(store, rate=1000, burst=1000)
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    store.failing = True
    [error] = await hub.say(alice, [Say(text="lost"), Say(text="lost too")])
    assert isinstance(error, Error) and error.code == "unavailable"
    [error] = await hub.handle(alice, Join(room="#new"))
    assert isinstance(error, Error) and error.code == "unavailable"
    store.failing = False
    assert await hub.say(alice, [Say(text="back", room=GENERAL)]) == []
    assert texts(await ready(bob)) == ["back"]


async def test_a_run_refuses_each_bad_message_alone() -> None:
    """In a run, a message over the flood limit or to a room the user is not in gets its
    error, in order; the others are stored and delivered."""
    hub, _ = make_hub(rate=1, burst=4)
    alice, bob = await named(hub, "alice"), await named(hub, "bob")  # a token each
    await ready(bob)
    run = [Say(text="a"), Say(text="b", room="#nowhere"), Say(text="c"), Say(text="d")]
    errors = await hub.say(alice, run)
    assert [e.code for e in errors if isinstance(e, Error)] == ["not_member", "flood"]
    assert texts(await ready(bob)) == ["a", "c"]


async def test_a_run_from_a_session_without_a_name_is_refused() -> None:
    """The state table holds for runs too."""
    hub, _ = make_hub()
    session = hub.connect("peer")
    [error] = await hub.say(session, [Say(text="hi")])
    assert isinstance(error, Error) and error.code == "no_name"
