"""The chat core, driven directly: sessions in memory, a fake clock, no sockets."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from roomcast.errors import Closed
from roomcast.hub import GENERAL, Hub, Limits, Session, State
from roomcast.model import (
    Action,
    Error,
    Event,
    Info,
    Join,
    Kind,
    Leave,
    Message,
    Missed,
    Nick,
    Private,
    PrivateMessage,
    Quit,
    RoomList,
    Rooms,
    Say,
    SetName,
    Welcome,
    Who,
    WhoList,
)
from roomcast.store import MemoryStore


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_hub(
    store: MemoryStore | None = None, clock: FakeClock | None = None, **limits: int
) -> tuple[Hub, FakeClock]:
    clock = clock or FakeClock()
    ids = itertools.count(1)
    hub = Hub(
        store or MemoryStore(),
        limits=Limits(**limits),
        clock=clock,
        new_id=lambda: f"m{next(ids)}",
    )
    return hub, clock


async def named(hub: Hub, name: str) -> Session:
    session = hub.connect(f"test:{name}")
    replies = await hub.handle(session, SetName(name=name))
    assert isinstance(replies[0], Welcome), replies
    return session


async def ready(session: Session) -> list[Event]:
    """Everything ready for the session now (it never waits for more)."""
    out: list[Event] = []
    for _ in range(1000):
        batch = await session.take()
        if not batch:
            return out
        out += batch
    raise AssertionError("session never ran dry")


def texts(events: list[Event], room: str | None = None) -> list[str]:
    return [
        e.text
        for e in events
        if isinstance(e, Message) and e.kind is Kind.MESSAGE and (room is None or e.room == room)
    ]


# --- names and the state table ------------------------------------------------------------


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


async def test_names_are_unique_case_insensitively() -> None:
    """A name taken in any case is refused with name_taken; another name then works."""
    hub, _ = make_hub()
    await named(hub, "alice")
    session = hub.connect("peer")
    [error] = await hub.handle(session, SetName(name="ALICE"))
    assert isinstance(error, Error) and error.code == "name_taken"
    assert session.state is State.NEW
    replies = await hub.handle(session, SetName(name="alice2"))
    assert isinstance(replies[0], Welcome)


async def test_a_closed_session_accepts_nothing() -> None:
    """After quit, every command gets a 'closed' error."""
    hub, _ = make_hub()
    session = await named(hub, "alice")
    assert await hub.handle(session, Quit(reason="bye")) == [Info(text="goodbye")]
    [error] = await hub.handle(session, Say(text="hello"))
    assert isinstance(error, Error) and error.code == "closed"


# --- messages -----------------------------------------------------------------------------


async def test_say_reaches_every_member_and_echoes_to_the_sender() -> None:
    """One message is delivered to every member, the sender included, as the same object."""
    hub, clock = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(alice), await ready(bob)
    assert await hub.handle(alice, Say(text="hello")) == []
    [to_alice], [to_bob] = await ready(alice), await ready(bob)
    assert to_alice is to_bob
    assert isinstance(to_alice, Message)
    assert (to_alice.sender, to_alice.text, to_alice.kind) == ("alice", "hello", Kind.MESSAGE)
    assert to_alice.ts == clock.now and to_alice.id.startswith("m")


async def test_sequence_numbers_are_gap_free_per_room() -> None:
    """Every room message (joins included) gets the room's next sequence number from 1."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    for i in range(5):
        await hub.handle(alice, Say(text=f"m{i}"))
    got = [e for e in await ready(alice) if isinstance(e, Message)]
    assert [m.seq for m in got if m.room == GENERAL] == [1]
    assert [m.seq for m in got if m.room == "#rust"] == [1, 2, 3, 4, 5, 6]


async def test_messages_stay_in_their_room() -> None:
    """A message in #rust reaches #rust's members only."""
    hub, _ = make_hub()
    alice, bob, carol = [await named(hub, n) for n in ("alice", "bob", "carol")]
    await hub.handle(bob, Join(room="#rust"))
    await hub.handle(carol, Join(room="#rust"))
    await hub.handle(bob, Say(text="rusty", room="#rust"))
    assert texts(await ready(alice)) == []
    assert texts(await ready(bob)) == ["rusty"]
    assert texts(await ready(carol)) == ["rusty"]


async def test_plain_text_goes_to_the_current_room() -> None:
    """Say without a room goes to the room joined last."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await hub.handle(alice, Say(text="here"))
    assert texts(await ready(alice), "#rust") == ["here"]


async def test_saying_in_a_room_one_is_not_in_is_refused() -> None:
    """Say to a room the user has not joined gets not_member."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    [error] = await hub.handle(alice, Say(text="hi", room="#elsewhere"))
    assert isinstance(error, Error) and error.code == "not_member"


async def test_action_is_a_message_of_kind_action() -> None:
    """/me becomes an ACTION message in the room."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await ready(alice)
    await hub.handle(alice, Action(text="waves"))
    [m] = await ready(alice)
    assert isinstance(m, Message) and (m.kind, m.text) == (Kind.ACTION, "waves")


async def test_text_is_cleaned_of_control_characters() -> None:
    """Terminal escapes and control characters never reach other members."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    await hub.handle(alice, Say(text="\x1b[31mred\x07 alert\x00"))
    assert texts(await ready(bob)) == ["[31mred alert"]


# --- private messages ---------------------------------------------------------------------


async def test_private_message_reaches_only_sender_and_recipient() -> None:
    """A private message goes to the recipient and back to the sender, nobody else."""
    hub, _ = make_hub()
    alice, bob, carol = [await named(hub, n) for n in ("alice", "bob", "carol")]
    for s in (alice, bob, carol):
        await ready(s)
    assert await hub.handle(alice, PrivateMessage(to="BOB", text="psst")) == []
    [to_bob], [to_alice] = await ready(bob), await ready(alice)
    assert to_bob is to_alice and isinstance(to_bob, Private)
    assert (to_bob.sender, to_bob.recipient, to_bob.text, to_bob.seq) == ("alice", "bob", "psst", 1)
    assert await ready(carol) == []


async def test_private_message_to_nobody_is_refused() -> None:
    """A private message to a name that is not online gets no_such_user."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    [error] = await hub.handle(alice, PrivateMessage(to="ghost", text="boo"))
    assert isinstance(error, Error) and error.code == "no_such_user"


# --- rooms --------------------------------------------------------------------------------


async def test_join_announces_and_lists_members() -> None:
    """Joining tells the room and answers with its member list."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await hub.handle(alice, Join(room="#rust"))
    await ready(alice)
    assert await hub.handle(bob, Join(room="#Rust")) == [
        WhoList(room="#rust", names=("alice", "bob"))
    ]
    [m] = await ready(alice)
    assert isinstance(m, Message) and (m.kind, m.sender, m.room) == (Kind.JOIN, "bob", "#rust")


async def test_joining_twice_only_switches_the_current_room() -> None:
    """Joining a room one is in announces nothing and makes it current."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await ready(alice)
    assert await hub.handle(alice, Join(room=GENERAL)) == [Info(text="you are in #general")]
    assert alice.current == GENERAL and await ready(alice) == []


async def test_leave_announces_and_keeps_what_was_said_before() -> None:
    """The leaver still gets what was said up to its leave, then nothing more from the room."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await hub.handle(alice, Join(room="#rust"))
    await hub.handle(bob, Join(room="#rust"))
    await hub.handle(bob, Say(text="before"))
    assert await hub.handle(alice, Leave()) == [Info(text="you left #rust")]
    await hub.handle(bob, Say(text="after"))
    got = [e for e in await ready(alice) if isinstance(e, Message) and e.room == "#rust"]
    assert [(m.kind, m.text) for m in got][-2:] == [(Kind.MESSAGE, "before"), (Kind.LEAVE, "left")]
    assert alice.current == GENERAL and alice.rooms == [GENERAL]


async def test_leave_without_a_current_room_is_refused() -> None:
    """Leaving every room then leaving again gets no_room."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Leave())
    [error] = await hub.handle(alice, Leave())
    assert isinstance(error, Error) and error.code == "no_room"


async def test_empty_rooms_are_dropped_and_keep_their_sequence() -> None:
    """A room nobody is in disappears from the list; rejoined, its numbering continues."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#tmp"))
    await hub.handle(alice, Leave(room="#tmp"))
    assert await hub.handle(alice, Rooms()) == [RoomList(rooms=((GENERAL, 1),))]
    await hub.handle(alice, Join(room="#tmp"))
    joins = [e for e in await ready(alice) if isinstance(e, Message) and e.room == "#tmp"]
    assert [m.seq for m in joins] == [1, 2, 3]


async def test_rooms_lists_member_counts() -> None:
    """Rooms lists every room, sorted, with how many are in it."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await hub.handle(bob, Join(room="#b"))
    await hub.handle(alice, Join(room="#a"))
    assert await hub.handle(alice, Rooms()) == [
        RoomList(rooms=(("#a", 1), ("#b", 1), (GENERAL, 2)))
    ]


async def test_who_lists_a_room_and_refuses_an_unknown_one() -> None:
    """Who names the members, sorted case-insensitively; an unknown room is no_such_room."""
    hub, _ = make_hub()
    await named(hub, "bob")
    alice = await named(hub, "Alice")
    assert await hub.handle(alice, Who()) == [WhoList(room=GENERAL, names=("Alice", "bob"))]
    [error] = await hub.handle(alice, Who(room="#nowhere"))
    assert isinstance(error, Error) and error.code == "no_such_room"


async def test_room_limit() -> None:
    """A user cannot be in more rooms than the limit."""
    hub, _ = make_hub(max_rooms=2)
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#one"))
    [error] = await hub.handle(alice, Join(room="#two"))
    assert isinstance(error, Error) and error.code == "too_many_rooms"


# --- nick and quit ------------------------------------------------------------------------


async def test_nick_renames_everywhere_and_frees_the_old_name() -> None:
    """A nick change is announced in every room and the old name becomes free."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    assert await hub.handle(alice, Nick(name="alicia")) == [
        Info(text="you are now known as alicia")
    ]
    [m] = await ready(bob)
    assert isinstance(m, Message) and (m.kind, m.sender, m.text) == (Kind.NICK, "alice", "alicia")
    assert alice.name == "alicia"
    await named(hub, "alice")  # free again
    [error] = await hub.handle(alice, Nick(name="BOB"))
    assert isinstance(error, Error) and error.code == "name_taken"


async def test_nick_may_change_case() -> None:
    """A user may change the case of its own name."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    assert await hub.handle(alice, Nick(name="Alice")) == [Info(text="you are now known as Alice")]


async def test_quit_announces_and_closes_the_session() -> None:
    """Quit tells every room of the user, frees the name, and ends receive with Closed."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    await hub.handle(alice, Quit(reason="bye now"))
    [m] = await ready(bob)
    assert isinstance(m, Message) and (m.kind, m.sender, m.text) == (Kind.QUIT, "alice", "bye now")
    assert hub.online == 1
    with pytest.raises(Closed):
        await alice.receive()


async def test_disconnect_wakes_a_waiting_receive() -> None:
    """A task parked in receive gets Closed when the session is disconnected."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await ready(alice)
    waiting = asyncio.create_task(alice.receive())
    await asyncio.sleep(0)
    await hub.disconnect(alice, "gone")
    with pytest.raises(Closed):
        await asyncio.wait_for(waiting, 5)


async def test_receive_wakes_on_a_message_and_batches() -> None:
    """A parked receive wakes on the next message and takes everything ready at once."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    waiting = asyncio.create_task(bob.receive())
    await asyncio.sleep(0)
    for i in range(10):
        await hub.handle(alice, Say(text=str(i)))
    batch = await asyncio.wait_for(waiting, 5)
    assert texts(batch) == [str(i) for i in range(10)]


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


# --- lag: nothing is lost -----------------------------------------------------------------


async def test_a_lagging_session_is_refilled_from_the_store_in_order() -> None:
    """A member overtaken by the ring gets every message once, in order, from the store."""
    hub, _ = make_hub(ring_capacity=4, rate=1000, burst=1000)
    alice, slow = await named(hub, "alice"), await named(hub, "slow")
    await ready(slow)
    for i in range(100):
        await hub.handle(alice, Say(text=str(i)))
    got = await ready(slow)
    assert texts(got) == [str(i) for i in range(100)]
    assert not any(isinstance(e, Missed) for e in got)


async def test_refill_respects_max_count_per_take() -> None:
    """A refill is served page by page within the batch size, still in order."""
    hub, _ = make_hub(ring_capacity=4, rate=1000, burst=1000, refill_page=7)
    alice, slow = await named(hub, "alice"), await named(hub, "slow")
    await ready(slow)
    for i in range(50):
        await hub.handle(alice, Say(text=str(i)))
    got: list[Event] = []
    for _ in range(100):
        batch = await slow.take(5)
        assert len(batch) <= 5
        if not batch:
            break
        got += batch
    assert texts(got) == [str(i) for i in range(50)]


async def test_what_the_store_no_longer_keeps_is_reported_exactly() -> None:
    """When the store has cut part of a lagged range, the gap is reported as Missed."""
    hub, _ = make_hub(MemoryStore(keep=10), ring_capacity=4, rate=1000, burst=1000)
    alice, slow = await named(hub, "alice"), await named(hub, "slow")
    await ready(slow)  # #general seq 1-2 are the joins
    for i in range(30):
        await hub.handle(alice, Say(text=str(i)))  # seq 3-32
    got = await ready(slow)
    assert got[0] == Missed(room=GENERAL, first_seq=3, count=20)
    assert texts(got) == [str(i) for i in range(20, 30)]


async def test_lagging_private_messages_are_reported() -> None:
    """A user who falls behind its private-message ring is told how many it missed."""
    hub, _ = make_hub(inbox_capacity=2, rate=1000, burst=1000)
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    for i in range(5):
        await hub.handle(alice, PrivateMessage(to="bob", text=str(i)))
    got = await ready(bob)
    assert got[0] == Missed(room=None, first_seq=0, count=3)
    assert [e.text for e in got if isinstance(e, Private)] == ["3", "4"]
