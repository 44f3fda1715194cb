"""The chat core, driven directly: sessions in memory, a fake clock, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from roomcast.auth import Cost, Passwords
from roomcast.errors import Broken, ClientError, Closed
from roomcast.hub import GENERAL, Hub, Limits
from roomcast.model import (
    Action,
    Authenticated,
    Draft,
    Error,
    Event,
    FetchHistory,
    History,
    Info,
    Join,
    Kind,
    Leave,
    Login,
    Logout,
    Message,
    Missed,
    Nick,
    Private,
    PrivateHistory,
    PrivateMessage,
    Quit,
    Register,
    RoomEntry,
    RoomList,
    Rooms,
    Say,
    Search,
    SearchResults,
    SetName,
    Summary,
    Unread,
    Welcome,
    Who,
    WhoList,
)
from roomcast.session import Session, State
from roomcast.store import MemoryStore, Said, Storage
from roomcast.store.base import Account
from roomcast.store.sqlite import SqliteStore

CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, test-sized


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_hub(
    store: Storage | None = None, clock: FakeClock | None = None, **limits: int
) -> tuple[Hub, FakeClock]:
    clock = clock or FakeClock()
    ids = itertools.count(1)
    hub = Hub(
        store or MemoryStore(),
        passwords=Passwords(CHEAP),
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
    assert await hub.handle(session, Quit(reason="bye")) == []
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
    assert await hub.handle(alice, Leave()) == [
        Info(text="you left #rust; text now goes to #general")
    ]
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


async def test_leaving_another_room_keeps_the_current_one_and_says_nothing_of_it() -> None:
    """Leaving a room that is not the current one answers 'you left #x' alone."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    assert await hub.handle(alice, Leave(room=GENERAL)) == [Info(text="you left #general")]
    assert alice.current == "#rust"
    assert await hub.handle(alice, Leave()) == [
        Info(text="you left #rust; you are in no room now: /join #room to talk")
    ]


async def test_leaving_the_current_room_of_another_session_tells_that_session() -> None:
    """When one session of an account leaves a room, each other session whose current room
    it was is told where its text goes now."""
    hub, _ = make_hub(rate=1000, burst=1000)
    first = await registered(hub, "alice")
    await hub.handle(first, Join(room="#rust"))
    second, _ = await login(hub, "alice")
    await hub.handle(second, Join(room="#rust"))
    await ready(first), await ready(second)
    await hub.handle(first, Join(room=GENERAL))  # first's current room: #general
    await hub.handle(second, Leave(room="#rust"))
    assert first.current == GENERAL and second.current == GENERAL
    assert [e for e in await ready(second) if isinstance(e, Info)] == []
    assert [e for e in await ready(first) if isinstance(e, Info)] == []
    await hub.handle(first, Join(room="#go"))
    await hub.handle(second, Join(room="#go"))  # current in both sessions
    await ready(first)
    await hub.handle(second, Leave())
    assert [e for e in await ready(first) if isinstance(e, Info)] == [
        Info(text="you left #go from another connection; text now goes to #general")
    ]


async def test_rooms_nobody_is_in_are_listed_and_keep_their_sequence() -> None:
    """A room nobody is in stays in the list (its history is kept) with 0 members and no
    unread count; rejoined, its numbering continues."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#tmp"))
    await hub.handle(alice, Leave(room="#tmp"))
    await ready(alice)
    assert await hub.handle(alice, Rooms()) == [
        RoomList(
            rooms=(
                RoomEntry(name=GENERAL, members=1, unread=0),
                RoomEntry(name="#tmp", members=0),
            ),
            current=GENERAL,
        )
    ]
    await hub.handle(alice, Join(room="#tmp"))
    joins = [e for e in await ready(alice) if isinstance(e, Message) and e.room == "#tmp"]
    assert [m.seq for m in joins] == [3]


async def test_rooms_lists_member_counts_unread_counts_and_the_current_room() -> None:
    """Rooms lists every room, sorted, with how many are in it, and for the asker's own rooms
    how many messages it has not been sent yet (a guest's too), and its current room."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await hub.handle(bob, Join(room="#b"))
    await hub.handle(alice, Join(room="#a"))
    await ready(alice)
    await hub.handle(bob, Say(text="one", room=GENERAL))
    await hub.handle(bob, Say(text="two", room=GENERAL))
    assert await hub.handle(alice, Rooms()) == [
        RoomList(
            rooms=(
                RoomEntry(name="#a", members=1, unread=0),
                RoomEntry(name="#b", members=1),
                RoomEntry(name=GENERAL, members=2, unread=2),
            ),
            current="#a",
        )
    ]
    await ready(alice)
    [rooms] = await hub.handle(alice, Rooms())
    assert isinstance(rooms, RoomList) and [r.unread for r in rooms.rooms] == [0, None, 0]


async def test_rooms_with_history_in_the_store_are_listed_without_being_opened(
    tmp_path: Path,
) -> None:
    """Rooms only the store knows (after a restart) are listed with 0 members; listing them
    opens none, and /who of one answers an empty list."""
    store = await SqliteStore.open(tmp_path / "rc.db")
    try:
        hub, _ = make_hub(store)
        alice = await named(hub, "alice")
        await hub.handle(alice, Join(room="#old"))
        await hub.close()
        hub = Hub(store, limits=Limits(), clock=FakeClock())  # a restart: ids of its own
        bob = await named(hub, "bob")
        await ready(bob)
        [rooms] = await hub.handle(bob, Rooms())
        assert isinstance(rooms, RoomList)
        assert [(r.name, r.members, r.unread) for r in rooms.rooms] == [
            (GENERAL, 1, 0),
            ("#old", 0, None),
        ]
        assert "#old" not in hub.core.rooms
        assert await hub.handle(bob, Who(room="#old")) == [WhoList(room="#old", names=(), total=0)]
        assert "#old" not in hub.core.rooms
    finally:
        await store.close()


async def test_who_lists_a_room_and_refuses_an_unknown_one() -> None:
    """Who names the members, sorted case-insensitively; an unknown room is no_such_room."""
    hub, _ = make_hub()
    await named(hub, "bob")
    alice = await named(hub, "Alice")
    assert await hub.handle(alice, Who()) == [WhoList(room=GENERAL, names=("Alice", "bob"))]
    [error] = await hub.handle(alice, Who(room="#nowhere"))
    assert isinstance(error, Error) and error.code == "no_such_room"


async def test_history_and_search_of_an_unknown_room_are_no_such_room() -> None:
    """History and search of a room that has no history and is not open are refused as who
    refuses it; an open room with no message yet answers an empty page."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    for command in (FetchHistory(room="#nowhere"), Search(room="#nowhere", words="x")):
        [error] = await hub.handle(alice, command)
        assert error == Error(
            code="no_such_room", message="there is no room #nowhere: /rooms lists them"
        )
    watcher = await hub.watch("peer", "#watched", None)
    try:
        [page] = await hub.handle(alice, FetchHistory(room="#watched"))
        assert isinstance(page, History) and page.messages == () and page.latest_seq == 0
        [found] = await hub.handle(alice, Search(room="#watched", words="x"))
        assert isinstance(found, SearchResults) and found.messages == ()
    finally:
        hub.unwatch(watcher)


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


# --- big rooms ------------------------------------------------------------------------------


async def test_big_rooms_do_not_announce_joins_leaves_and_quits() -> None:
    """Above ``quiet_above`` members a room stays quiet about comings and goings (nothing is
    stored either); at or below it they are announced; messages always go out."""
    hub, _ = make_hub(quiet_above=2)
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(alice)
    carol = await named(hub, "carol")  # the third member: quiet
    await hub.handle(carol, Say(text="hi"))
    got = [(m.kind, m.sender) for m in await ready(alice) if isinstance(m, Message)]
    assert got == [(Kind.MESSAGE, "carol")]
    await hub.handle(carol, Leave(room=GENERAL))  # 3 members as it leaves: quiet
    await hub.disconnect(bob, "bye")  # 2 members: announced
    got = [(m.kind, m.sender) for m in await ready(alice) if isinstance(m, Message)]
    assert got == [(Kind.QUIT, "bob")]
    page = await hub.store.history(GENERAL, limit=10)
    assert [(m.kind, m.sender) for m in page.messages] == [
        (Kind.JOIN, "alice"),
        (Kind.JOIN, "bob"),
        (Kind.MESSAGE, "carol"),
        (Kind.QUIT, "bob"),
    ]


async def test_joining_a_big_room_marks_it_read_up_to_the_join() -> None:
    """With no join message to take its number from, a registered user's marker is the
    room's newest message: on return it misses exactly what came after."""
    hub, _ = make_hub(quiet_above=1, rate=1000, burst=1000)
    bob = await named(hub, "bob")
    await hub.handle(bob, Join(room="#big"))
    await hub.handle(bob, Say(text="before", room="#big"))
    alice = await registered(hub, "alice")
    await hub.handle(alice, Join(room="#big"))  # 2 members: quiet
    await hub.handle(alice, Quit(reason="lunch"))
    await hub.handle(bob, Say(text="after", room="#big"))
    session, _ = await login(hub, "alice")
    got = [e for e in await ready(session) if getattr(e, "room", None) == "#big"]
    assert isinstance(got[0], Summary) and got[0].missed == 1
    assert texts(got) == ["after"]


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


async def test_a_message_whose_sender_was_cancelled_while_storing_is_still_sent(
    tmp_path: Path,
) -> None:
    """The store has the message once it commits, so the room gets it too, even when the
    task that said it was cancelled meanwhile (its client went away); the next message
    follows it in sequence."""
    store = await SqliteStore.open(tmp_path / "store.db")
    try:
        hub, _ = make_hub(store, rate=1000, burst=1000)
        alice, bob = await named(hub, "alice"), await named(hub, "bob")
        await ready(bob)
        saying = asyncio.create_task(hub.say(alice, [Say(text="one")]))
        await asyncio.sleep(0)  # the write is queued
        saying.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await saying
        assert await hub.say(alice, [Say(text="two")]) == []
        assert texts(await ready(bob)) == ["one", "two"]
    finally:
        await hub.close()
        await store.close()


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


# --- accounts -----------------------------------------------------------------------------


async def registered(hub: Hub, name: str, password: str = "correct horse") -> Session:
    session = await named(hub, name)
    [info] = await hub.handle(session, Register(password=password))
    assert isinstance(info, Info) and info.text.startswith(f"registered {name}")
    return session


async def login(
    hub: Hub, name: str, password: str = "correct horse"
) -> tuple[Session, list[Event]]:
    session = hub.connect(f"10.0.0.1:{name}")
    replies = await hub.handle(session, Login(name=name, password=password))
    return session, replies


async def test_a_registered_name_cannot_be_taken_by_a_guest() -> None:
    """Once registered, the name is refused to guests even when its owner is away."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    guest = hub.connect("peer")
    [error] = await hub.handle(guest, SetName(name="ALICE"))
    assert isinstance(error, Error) and error.code == "registered"
    assert "/login alice" in error.message


async def test_registering_twice_or_with_a_short_password_is_refused() -> None:
    """A second register and a password under 8 characters get clear errors."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    [error] = await hub.handle(alice, Register(password="short"))
    assert isinstance(error, Error) and error.code == "bad_password"
    await hub.handle(alice, Register(password="long enough"))
    [error] = await hub.handle(alice, Register(password="long enough"))
    assert isinstance(error, Error) and error.code == "registered"


async def test_login_with_the_wrong_password_is_refused_and_throttled() -> None:
    """Wrong passwords get bad_login; after five a name must wait; time lifts it."""
    hub, clock = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    for _ in range(5):
        _, [error] = await login(hub, "alice", "wrong password")
        assert isinstance(error, Error) and error.code == "bad_login"
    _, [error] = await login(hub, "alice")
    assert isinstance(error, Error) and error.code == "throttled"
    clock.advance(301)
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_failed_logins_are_throttled_per_address_too() -> None:
    """One address guessing many names is stopped after twenty failures."""
    hub, _ = make_hub(rate=1000, burst=1000)
    for i in range(20):
        _, [error] = await login(hub, f"user{i}", "wrong password")
        assert isinstance(error, Error) and error.code == "bad_login"
    _, [error] = await login(hub, "user99", "wrong password")
    assert isinstance(error, Error) and error.code == "throttled"


async def test_an_unknown_name_fails_like_a_wrong_password() -> None:
    """Login does not tell whether the name exists."""
    hub, _ = make_hub()
    _, [error] = await login(hub, "nobody")
    assert error == Error(code="bad_login", message="wrong name or password")


async def test_registered_names_cannot_nick() -> None:
    """A registered user keeps its name."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    [error] = await hub.handle(alice, Nick(name="alicia"))
    assert isinstance(error, Error) and error.code == "registered"


async def test_returning_user_gets_summaries_then_missed_messages_in_order() -> None:
    """On login each room gives a summary line, then what was said while away, in order."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await ready(alice)
    await hub.handle(alice, Quit(reason="lunch"))
    bob = await named(hub, "bob")
    await hub.handle(bob, Join(room="#rust"))
    for i in range(3):
        await hub.handle(bob, Say(text=f"g{i}", room=GENERAL))
        await hub.handle(bob, Say(text=f"r{i}", room="#rust"))
    session, replies = await login(hub, "alice")
    assert replies == [Welcome(name="alice"), Unread(rooms=((GENERAL, 3), ("#rust", 3)))]
    got = await ready(session)
    general = [e for e in got if getattr(e, "room", None) == GENERAL]
    assert isinstance(general[0], Summary) and general[0].room == GENERAL
    # bob joined, then 3 messages: 4 events replayed, 3 messages new (alice's quit is read)
    assert (general[0].missed, general[0].replayed) == (3, 4)
    assert texts(general) == ["g0", "g1", "g2"]
    rust = [e for e in got if getattr(e, "room", None) == "#rust"]
    assert isinstance(rust[0], Summary) and texts(rust) == ["r0", "r1", "r2"]
    assert set(session.rooms) == {GENERAL, "#rust"}


async def test_replay_is_capped_and_points_to_history() -> None:
    """Past the cap, the latest messages are replayed and the summary says how many."""
    hub, _ = make_hub(rate=1000, burst=1000, replay_cap=5)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    bob = await named(hub, "bob")
    for i in range(20):
        await hub.handle(bob, Say(text=str(i)))
    session, _ = await login(hub, "alice")
    got = await ready(session)
    [summary] = [e for e in got if isinstance(e, Summary)]
    assert (summary.missed, summary.replayed) == (20, 5)
    assert summary.first_unread < summary.first_seq
    assert texts(got) == ["15", "16", "17", "18", "19"]


async def test_joins_and_quits_while_away_are_replayed_but_not_counted_as_new() -> None:
    """The login summary and unread count hold only what people wrote; the summary says
    where the first of those is, even when the replay starts after it."""
    hub, _ = make_hub(rate=1000, burst=1000, replay_cap=5)
    alice = await registered(hub, "alice")
    await ready(alice)
    await hub.handle(alice, Quit())  # #general: 1 alice joined, 2 alice quit
    bob = await named(hub, "bob")  # 3 bob joined
    await say_many(hub, bob, 2)  # 4-5
    for i in range(6):  # 6-17: six guests come and go
        guest = await named(hub, f"guest{i}")
        await hub.handle(guest, Quit())
    session, replies = await login(hub, "alice")
    assert replies == [Welcome(name="alice"), Unread(rooms=((GENERAL, 2),))]
    got = await ready(session)
    [summary] = [e for e in got if isinstance(e, Summary)]
    assert summary == Summary(room=GENERAL, missed=2, replayed=5, first_seq=13, first_unread=4)


class PausingStore(MemoryStore):
    """A memory store whose ``said`` waits to be released: the moment a login counts."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = asyncio.Event()  # set when said() is called
        self.release = asyncio.Event()  # said() answers once this is set

    async def said(self, room: str, *, after: int, before: int) -> Said:
        self.counting.set()
        await self.release.wait()
        return await super().said(room, after=after, before=before)


async def test_a_message_said_while_a_login_counts_comes_after_its_catch_up() -> None:
    """A message said while the store counts what a returning user missed comes after the
    summary and the replay, even to a session whose writer pulls meanwhile, and is not in
    the count (it is news after it)."""
    store = PausingStore()
    hub, _ = make_hub(store, rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    bob = await named(hub, "bob")
    await say_many(hub, bob, 2)
    session = hub.connect("10.0.0.1:alice")
    login_task = asyncio.create_task(
        hub.handle(session, Login(name="alice", password="correct horse"))
    )
    await store.counting.wait()
    await hub.handle(bob, Say(text="during"))
    early = session.take_ready()  # what a writer pumping now would send
    store.release.set()
    await login_task
    got = [e for e in early + await ready(session) if getattr(e, "room", None) == GENERAL]
    assert isinstance(got[0], Summary) and got[0].missed == 2
    assert texts(got) == ["m0", "m1", "during"]
    seqs = [m.seq for m in got if isinstance(m, Message)]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    during = next(m.seq for m in got if isinstance(m, Message) and m.text == "during")
    assert got[0].first_seq + got[0].replayed - 1 == during - 1  # counted live, not here


async def test_a_login_after_only_joins_and_quits_has_nothing_unread() -> None:
    """Joins and quits alone make no summary and no unread count, but are replayed."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    guest = await named(hub, "guest")
    await hub.handle(guest, Quit())
    session, replies = await login(hub, "alice")
    assert replies == [Welcome(name="alice")]
    got = await ready(session)
    assert not [e for e in got if isinstance(e, Summary)]
    kinds = [(m.kind, m.sender) for m in got if isinstance(m, Message)]
    assert kinds[:2] == [(Kind.JOIN, "guest"), (Kind.QUIT, "guest")]


async def test_private_messages_wait_for_an_away_user() -> None:
    """A private message to a registered user who is away is delivered at login, in order."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    bob = await named(hub, "bob")
    for i in range(3):
        [info] = await hub.handle(bob, PrivateMessage(to="alice", text=f"p{i}"))
        assert info == Info(text="alice is away: they will get it when they log in")
    session, _ = await login(hub, "alice")
    got = await ready(session)
    assert [e.text for e in got if isinstance(e, Private)] == ["p0", "p1", "p2"]
    await hub.handle(session, Quit())
    session, _ = await login(hub, "alice")
    assert [e for e in await ready(session) if isinstance(e, Private)] == []


async def test_read_markers_persist_and_unread_counts_show() -> None:
    """What reached the client is not replayed again; /rooms shows unread counts."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    bob = await named(hub, "bob")
    await hub.handle(bob, Say(text="seen"))
    await ready(alice)
    await hub.flush_markers()
    await hub.handle(bob, Say(text="unseen"))
    [rooms] = await hub.handle(alice, Rooms())
    assert isinstance(rooms, RoomList)
    assert [r.unread for r in rooms.rooms] == [1]
    await hub.disconnect(alice, "connection lost")
    session, _ = await login(hub, "alice")
    assert texts(await ready(session)) == ["unseen"]


async def test_every_session_of_an_account_gets_the_messages() -> None:
    """Two connections of one account both receive room and private messages."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    laptop, _ = await login(hub, "alice")
    phone, _ = await login(hub, "alice")
    for s in (laptop, phone):
        await ready(s)
    bob = await named(hub, "bob")
    await hub.handle(bob, Say(text="hi all"))
    await hub.handle(bob, PrivateMessage(to="alice", text="psst"))
    for s in (laptop, phone):
        got = await ready(s)
        assert texts(got) == ["hi all"]
        assert [e.text for e in got if isinstance(e, Private)] == ["psst"]
    assert hub.online == 2


async def test_a_session_that_comes_after_the_first_private_message_gets_the_next() -> None:
    """The private channel is made by the first private message; a later session of the
    same user receives on it too."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    laptop, _ = await login(hub, "alice")
    bob = await named(hub, "bob")
    await hub.handle(bob, PrivateMessage(to="alice", text="one"))
    phone, _ = await login(hub, "alice")
    await ready(phone)  # its login replay
    await hub.handle(bob, PrivateMessage(to="alice", text="two"))
    assert [e.text for e in await ready(laptop) if isinstance(e, Private)] == ["one", "two"]
    assert [e.text for e in await ready(phone) if isinstance(e, Private)] == ["two"]


async def test_a_private_message_sent_during_the_login_replay_is_not_lost() -> None:
    """While a new session's replay of stored private messages is pending, the user sends
    one (its copy comes live, with a lower number) and receives one (which the replay finds
    in the store): the session gets both, once each."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    bob = await named(hub, "bob")
    laptop, _ = await login(hub, "alice")
    phone, _ = await login(hub, "alice")  # its replay has not been read yet
    await hub.handle(laptop, PrivateMessage(to="bob", text="from alice"))
    await hub.handle(bob, PrivateMessage(to="alice", text="from bob"))
    got = [e.text for e in await ready(phone) if isinstance(e, Private)]
    assert sorted(got) == ["from alice", "from bob"]


async def test_logout_keeps_the_connection_without_a_name() -> None:
    """After logout the session is NEW again and can pick a guest name."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    [info] = await hub.handle(alice, Logout())
    assert isinstance(info, Info) and alice.state is State.NEW
    replies = await hub.handle(alice, SetName(name="guest1"))
    assert replies[0] == Welcome(name="guest1")


# --- tokens and logging out everywhere -----------------------------------------------------


async def account_of(hub: Hub, name: str) -> Account:
    account = await hub.store.account(name)
    assert account is not None
    return account


async def test_authenticate_takes_a_current_token_and_refuses_a_revoked_or_deleted_one() -> None:
    """A token's claims pass while the account has that id and generation; after a password
    change, or once the account is deleted (even if the name is registered again), they are
    bad_token with 'log in again'."""
    hub, _ = make_hub()
    await registered(hub, "alice")
    account = await account_of(hub, "alice")
    assert await hub.authenticate(account.id, account.generation) == account
    await hub.store.set_password("alice", "another hash")
    for claims in ((account.id, account.generation), ("nobody's id", 0)):
        with pytest.raises(ClientError) as caught:
            await hub.authenticate(*claims)
        assert caught.value.code == "bad_token" and "log in again" in caught.value.message
    assert (await hub.authenticate(account.id, account.generation + 1)).name == "alice"
    await hub.store.delete_account("alice")
    await hub.store.create_account("alice", "h", now=1.0)
    with pytest.raises(ClientError) as caught:
        await hub.authenticate(account.id, account.generation + 1)
    assert caught.value.code == "bad_token"


async def test_hello_with_the_claims_of_a_deleted_account_is_refused() -> None:
    """Authenticated with the id of a deleted account is bad_token; the session stays NEW."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    account = await account_of(hub, "alice")
    await hub.handle(alice, Quit())
    await hub.store.delete_account("alice")
    session = hub.connect("10.0.0.2:1")
    [error] = await hub.handle(session, Authenticated(account=account.id, generation=0))
    assert isinstance(error, Error) and error.code == "bad_token"
    assert session.state is State.NEW


async def test_logout_everywhere_ends_every_session_and_revokes_the_tokens() -> None:
    """Logout(everywhere) bumps the account's generation, closes its other sessions with
    'closing: logged out everywhere', and leaves this one NEW; a guest is told there is
    nothing to log out of everywhere."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    before = await account_of(hub, "alice")
    laptop, _ = await login(hub, "alice")
    phone, _ = await login(hub, "alice")
    await ready(phone)
    [info] = await hub.handle(laptop, Logout(everywhere=True))
    assert isinstance(info, Info) and info.text.startswith(
        "logged out everywhere: every session and token of alice ended"
    )
    assert laptop.state is State.NEW
    assert phone.state is State.CLOSED and phone.close_reason == "logged out everywhere"
    assert (await ready(phone))[-1] == Error(
        code="closed", message="closing: logged out everywhere"
    )
    assert (await account_of(hub, "alice")).generation == before.generation + 1
    assert hub.online == 0  # the session that registered alice was closed as well
    guest = await named(hub, "guest")
    [error] = await hub.handle(guest, Logout(everywhere=True))
    assert isinstance(error, Error) and error.code == "guest"


async def test_check_accounts_ends_the_sessions_of_accounts_changed_beside_the_hub() -> None:
    """A password changed or an account deleted straight in the store (by ``roomcast user``)
    ends the account's sessions at the next check_accounts, and no one else's."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    await registered(hub, "bob")
    alice, _ = await login(hub, "alice")
    bob, _ = await login(hub, "bob")
    guest = await named(hub, "guest")
    assert await hub.check_accounts() == 0
    await hub.store.set_password("alice", "changed")
    await hub.store.delete_account("bob")
    assert await hub.check_accounts() == 2
    assert alice.close_reason == "logged out everywhere"
    assert bob.close_reason == "logged out: the account was deleted"
    assert guest.state is State.ACTIVE
    assert hub.online == 1


async def test_a_login_after_a_password_change_ends_the_sessions_of_the_old_one() -> None:
    """The first login with a new password closes the sessions still open from before the
    change, without waiting for the account check: the new session is the account's."""
    hub, _ = make_hub(rate=1000, burst=1000)
    stolen = await registered(hub, "alice")
    await hub.store.set_password("alice", await hub.passwords.hash("new password"))
    session, replies = await login(hub, "alice", "new password")
    assert replies[0] == Welcome(name="alice")
    assert stolen.state is State.CLOSED and stolen.close_reason == "logged out everywhere"
    assert session.state is State.ACTIVE and hub.online == 1


# --- throttles ----------------------------------------------------------------------------


async def test_logins_sent_together_are_checked_five_at_most() -> None:
    """Twenty logins for alice from one address at once: five are checked (bad_login), the
    other fifteen are throttled before any password check."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    sessions = [hub.connect(f"10.0.0.1:{i}") for i in range(20)]
    answers = await asyncio.gather(
        *(hub.handle(s, Login(name="alice", password=f"guess {i}")) for i, s in enumerate(sessions))
    )
    codes = [a[0].code for a in answers if isinstance(a[0], Error)]
    assert codes.count("bad_login") == 5 and codes.count("throttled") == 15, codes


async def test_wrong_passwords_from_one_address_do_not_lock_out_another() -> None:
    """Five failures for alice from one address throttle that address; alice logs in from
    another address at once."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    attacker = [hub.connect(f"10.6.6.6:{i}") for i in range(6)]
    for s in attacker[:5]:
        [error] = await hub.handle(s, Login(name="alice", password="wrong password"))
        assert isinstance(error, Error) and error.code == "bad_login"
    [error] = await hub.handle(attacker[5], Login(name="alice", password="correct horse"))
    assert isinstance(error, Error) and error.code == "throttled"
    owner = hub.connect("10.1.1.1:1")
    replies = await hub.handle(owner, Login(name="alice", password="correct horse"))
    assert replies[0] == Welcome(name="alice")


async def test_the_name_limit_spares_addresses_the_name_logged_in_from() -> None:
    """Failures for alice from many addresses reach the name's own limit: a new address is
    then throttled, but an address alice logged in from before still gets in."""
    hub, clock = make_hub(rate=1000, burst=1000, name_failures=10)
    await registered(hub, "alice")
    home = hub.connect("10.1.1.1:1")
    assert (await hub.handle(home, Login(name="alice", password="correct horse")))[0] == Welcome(
        name="alice"
    )
    for i in range(10):  # two failures from each of five addresses
        s = hub.connect(f"10.6.6.{i // 2}:{i}")
        [error] = await hub.handle(s, Login(name="alice", password="wrong password"))
        assert isinstance(error, Error) and error.code == "bad_login"
    cafe = hub.connect("10.2.2.2:1")
    [error] = await hub.handle(cafe, Login(name="alice", password="correct horse"))
    assert isinstance(error, Error) and error.code == "throttled"
    again = hub.connect("10.1.1.1:2")
    assert (await hub.handle(again, Login(name="alice", password="correct horse")))[0] == Welcome(
        name="alice"
    )
    clock.advance(301)
    later = hub.connect("10.2.2.2:2")
    assert (await hub.handle(later, Login(name="alice", password="correct horse")))[0] == Welcome(
        name="alice"
    )


async def test_a_busy_refusal_is_not_counted_as_a_failed_login() -> None:
    """Logins refused busy (no worker free) do not count against the name: after many,
    the right password still logs in."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    hub.passwords = Passwords(CHEAP, workers=1, queue=0)
    sessions = [hub.connect(f"10.0.0.{i}:1") for i in range(12)]
    answers = await asyncio.gather(
        *(hub.handle(s, Login(name="alice", password="wrong password")) for s in sessions)
    )
    codes = sorted(a[0].code for a in answers if isinstance(a[0], Error))
    assert codes == ["bad_login"] + ["busy"] * 11
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_registrations_are_throttled_per_address() -> None:
    """An address registers at most ``registrations`` names in the window, counting those
    still hashing; another address may; the window passing lifts it."""
    hub, clock = make_hub(rate=1000, burst=1000, registrations=3)
    made = await asyncio.gather(
        *(hub.create_account(f"bot{i}", "correct horse", "10.6.6.6") for i in range(5)),
        return_exceptions=True,
    )
    refused = [e for e in made if isinstance(e, ClientError)]
    assert len(refused) == 2 and all(e.code == "throttled" for e in refused)
    assert refused[0].retry_after == 1  # three were hashing: they would end soon
    with pytest.raises(ClientError) as caught:
        await hub.create_account("bot5", "correct horse", "10.6.6.6")
    assert caught.value.retry_after == 3600  # three are recorded: the window must pass
    assert (await hub.create_account("human", "correct horse", "10.1.1.1")).name == "human"
    clock.advance(3601)
    assert (await hub.create_account("bot9", "correct horse", "10.6.6.6")).name == "bot9"


async def test_a_name_cannot_be_taken_while_its_registration_hashes() -> None:
    """While create_account hashes alice's password, a guest naming itself alice, another
    registration of alice and a guest's /nick alice are refused name_taken; alice then logs
    in."""
    hub, _ = make_hub(rate=1000, burst=1000)
    bob = await named(hub, "bob")
    guest = hub.connect("10.0.0.9:1")
    account, set_name, again, nick = await asyncio.gather(
        hub.create_account("alice", "correct horse", "10.0.0.1"),
        hub.handle(guest, SetName(name="ALICE")),
        hub.create_account("alice", "correct horse", "10.0.0.2"),
        hub.handle(bob, Nick(name="alice")),
        return_exceptions=True,
    )
    assert isinstance(account, Account) and account.name == "alice"
    assert isinstance(set_name, list) and isinstance(set_name[0], Error)
    assert set_name[0].code == "name_taken" and "being registered" in set_name[0].message
    assert isinstance(again, ClientError) and again.code == "name_taken"
    assert isinstance(nick, list) and isinstance(nick[0], Error) and nick[0].code == "name_taken"
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_a_guest_that_leaves_while_registering_keeps_its_name_reserved() -> None:
    """A guest's /register whose connection ends while the password hashes still reserves
    the name: no other guest gets it before the account exists."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await named(hub, "alice")
    registering = asyncio.create_task(hub.handle(alice, Register(password="correct horse")))
    await asyncio.sleep(0)  # one loop turn: the hash has started
    await hub.disconnect(alice, "connection lost")
    other = hub.connect("10.0.0.9:1")
    [error] = await hub.handle(other, SetName(name="alice"))
    assert isinstance(error, Error) and error.code == "name_taken"
    await registering
    [error] = await hub.handle(other, SetName(name="alice"))
    assert isinstance(error, Error) and error.code == "registered"


# --- history and search -------------------------------------------------------------------


async def say_many(hub: Hub, session: Session, count: int) -> None:
    for i in range(count):
        await hub.handle(session, Say(text=f"m{i}"))


async def test_history_pages_before_after_and_around() -> None:
    """History pages any room by sequence number, oldest first within a page."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await named(hub, "alice")  # seq 1 is the join
    await say_many(hub, alice, 20)  # seq 2-21
    [page] = await hub.handle(alice, FetchHistory(limit=3))
    assert isinstance(page, History) and [m.seq for m in page.messages] == [19, 20, 21]
    [page] = await hub.handle(alice, FetchHistory(before=10, limit=3))
    assert isinstance(page, History) and [m.seq for m in page.messages] == [7, 8, 9]
    [page] = await hub.handle(alice, FetchHistory(after=10, limit=3))
    assert isinstance(page, History) and [m.seq for m in page.messages] == [11, 12, 13]
    [page] = await hub.handle(alice, FetchHistory(around=10, limit=4))
    assert isinstance(page, History) and [m.seq for m in page.messages] == [8, 9, 10, 11]
    assert page.latest_seq == 21 and page.capped is None


async def test_history_is_capped_with_a_note() -> None:
    """Asking for a billion messages gets the cap, and says so."""
    hub, _ = make_hub(history_cap=5)
    alice = await named(hub, "alice")
    [page] = await hub.handle(alice, FetchHistory(limit=10**9))
    assert isinstance(page, History) and page.capped == 5


async def test_search_finds_words_newest_first() -> None:
    """Search returns the matching messages of a room, newest first."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await named(hub, "alice")
    for text in ("the borrow checker", "lunch?", "Borrow again"):
        await hub.handle(alice, Say(text=text))
    [found] = await hub.handle(alice, Search(room=None, words="borrow"))
    assert isinstance(found, SearchResults)
    assert [m.text for m in found.messages] == ["Borrow again", "the borrow checker"]


async def test_join_since_replays_then_goes_live_without_seam() -> None:
    """join since N replays everything after N, then live messages, each exactly once."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await named(hub, "alice")
    await say_many(hub, alice, 10)  # #general seq 2-11
    bob = await named(hub, "bob")
    await hub.handle(bob, Join(room=GENERAL, since=5))
    await hub.handle(alice, Say(text="live"))
    got = [e for e in await ready(bob) if isinstance(e, Message)]
    assert [m.seq for m in got] == list(range(6, got[-1].seq + 1))
    assert got[-1].text == "live"


async def test_retention_cuts_history_and_says_where() -> None:
    """Retention by count drops the oldest messages; history reports the cut."""
    hub, _ = make_hub(rate=1000, burst=1000, retain_count=5)
    alice = await named(hub, "alice")
    await say_many(hub, alice, 10)
    assert await hub.apply_retention() == 6
    [page] = await hub.handle(alice, FetchHistory(limit=50))
    assert isinstance(page, History) and page.oldest_seq == 7
    assert [m.seq for m in page.messages] == [7, 8, 9, 10, 11]


async def test_join_since_does_not_repeat_what_was_delivered_live() -> None:
    """A member asking to replay a room gets each message once, live ones not again."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await named(hub, "alice")
    await say_many(hub, alice, 5)  # #general seq 2-6
    bob = await named(hub, "bob")  # bob's join is seq 7, delivered live
    first = await ready(bob)
    await hub.handle(bob, Join(room=GENERAL, since=3))
    again = await ready(bob)
    seqs = [m.seq for m in first + again if isinstance(m, Message)]
    assert sorted(seqs) == list(range(4, 8)) and len(seqs) == len(set(seqs))


async def test_a_replay_asked_during_login_catch_up_keeps_its_summary() -> None:
    """join since right after login does not lose the catch-up's summary line."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    bob = await named(hub, "bob")
    await say_many(hub, bob, 3)
    session, _ = await login(hub, "alice")
    await hub.handle(session, Join(room=GENERAL, since=1))
    got = await ready(session)
    assert [e.missed for e in got if isinstance(e, Summary)] == [3]
    seqs = [m.seq for m in got if isinstance(m, Message)]
    assert len(seqs) == len(set(seqs))


async def test_multi_line_messages_keep_their_line_feeds() -> None:
    """A message may span lines; other control characters still go."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await ready(alice)
    await hub.handle(alice, Say(text="first line\r\nsecond\x1b line"))
    assert texts(await ready(alice)) == ["first line\nsecond line"]


async def test_a_registered_user_who_lags_gets_every_private_message_from_the_store() -> None:
    """Private messages overtaken in a registered user's ring are refilled from the store."""
    hub, _ = make_hub(inbox_capacity=4, rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    bob = await named(hub, "bob")
    await ready(alice)
    for i in range(20):
        await hub.handle(bob, PrivateMessage(to="alice", text=str(i)))
    got = await ready(alice)
    assert [e.text for e in got if isinstance(e, Private)] == [str(i) for i in range(20)]
    assert not any(isinstance(e, Missed) for e in got)


async def test_login_delivers_every_private_message_in_pages() -> None:
    """More private messages than one page all arrive at login, oldest first."""
    hub, _ = make_hub(rate=1000, burst=1000, refill_page=7)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    bob = await named(hub, "bob")
    for i in range(30):
        await hub.handle(bob, PrivateMessage(to="alice", text=str(i)))
    session, _ = await login(hub, "alice")
    got = await ready(session)
    assert [e.text for e in got if isinstance(e, Private)] == [str(i) for i in range(30)]


async def test_member_lists_of_big_rooms_are_cut_but_counted() -> None:
    """A join into a big room answers the first names and the total, not everyone."""
    hub, _ = make_hub()
    for i in range(120):
        await named(hub, f"user{i:03d}")
    late = hub.connect("peer")
    replies = await hub.handle(late, SetName(name="zed"))
    [who] = [r for r in replies if isinstance(r, WhoList)]
    assert who.total == 121 and len(who.names) == 100
    assert list(who.names) == sorted(who.names) and who.names[0] == "user000"
    [full] = await hub.handle(late, Who())
    assert isinstance(full, WhoList) and len(full.names) == full.total == 121


# --- who said it, and private history -----------------------------------------------------


async def test_messages_record_whether_their_sender_was_signed_in() -> None:
    """Room messages (said, actions, joins, nicks, quits) and private messages record
    whether their sender was signed in, and private ones whether they went to an account."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    guest = await named(hub, "bob")
    await hub.handle(alice, Say(text="from an account"))
    await hub.handle(guest, Action(text="waves"))
    await hub.handle(guest, Nick(name="bobby"))
    await hub.handle(guest, PrivateMessage(to="alice", text="to an account"))
    await hub.handle(alice, PrivateMessage(to="bobby", text="to a guest"))
    await hub.handle(guest, Quit())
    got = await ready(alice)
    signed = [(e.sender, e.kind, e.signed) for e in got if isinstance(e, Message)]
    assert signed == [
        ("alice", Kind.JOIN, False),  # she joined as a guest, then registered
        ("bob", Kind.JOIN, False),
        ("alice", Kind.MESSAGE, True),
        ("bob", Kind.ACTION, False),
        ("bob", Kind.NICK, False),
        ("bobby", Kind.QUIT, False),
    ]
    privates = [(e.text, e.signed, e.recipient_signed) for e in got if isinstance(e, Private)]
    assert privates == [("to an account", False, True), ("to a guest", True, False)]
    posted = await hub.post("alice", GENERAL, "by a script")
    assert posted.signed is True


async def private_page(
    hub: Hub,
    session: Session,
    other: str,
    *,
    before: int | None = None,
    after: int | None = None,
    around: int | None = None,
    limit: int = 50,
) -> PrivateHistory:
    """A page of ``session``'s private conversation with ``other``."""
    query = FetchHistory(user=other, before=before, after=after, around=around, limit=limit)
    [page] = await hub.handle(session, query)
    assert isinstance(page, PrivateHistory), page
    return page


def said(page: PrivateHistory) -> list[str]:
    return [p.text for p in page.messages]


async def test_an_account_reads_its_private_conversation_after_logging_in_again() -> None:
    """Two accounts find their private conversation, both ways, after logging in again:
    the newest page, before, after, around, capped; nobody else's messages are in it."""
    hub, _ = make_hub(rate=1000, burst=1000, history_cap=8)
    alice, bob = await registered(hub, "alice"), await registered(hub, "bob")
    carol = await named(hub, "carol")
    for i in range(12):
        speaker, to = (alice, "bob") if i % 2 else (bob, "ALICE")
        await hub.handle(speaker, PrivateMessage(to=to, text=f"t{i}"))
        await hub.handle(carol, PrivateMessage(to="alice", text=f"c{i}"))
    await hub.handle(alice, Quit())
    await hub.handle(bob, Quit())
    alice, _ = await login(hub, "alice")

    page = await private_page(hub, alice, "Bob", limit=4)
    assert said(page) == ["t8", "t9", "t10", "t11"] and page.user == "Bob"
    seqs = [p.seq for p in (await private_page(hub, alice, "bob", limit=8, after=0)).messages]
    assert (page.oldest_seq, page.capped) == (seqs[0], None)
    assert said(await private_page(hub, alice, "bob", before=page.messages[0].seq, limit=2)) == [
        "t6",
        "t7",
    ]
    assert said(await private_page(hub, alice, "bob", after=seqs[2], limit=2)) == ["t3", "t4"]
    assert said(await private_page(hub, alice, "bob", around=seqs[5], limit=4)) == [
        "t3",
        "t4",
        "t5",
        "t6",
    ]
    capped = await private_page(hub, alice, "bob", limit=100)
    assert capped.capped == 8 and said(capped) == [f"t{i}" for i in range(4, 12)]
    bob, _ = await login(hub, "bob")
    assert said(await private_page(hub, bob, "alice", limit=3)) == ["t9", "t10", "t11"]
    assert said(await private_page(hub, carol, "bob")) == []
    assert said(await private_page(hub, carol, "alice", limit=2)) == ["c10", "c11"]


async def test_a_guest_reads_only_what_it_said_and_was_sent_under_its_name() -> None:
    """A guest's private history starts at its first private message: an earlier guest of
    its name, or an account that had it, is not in it; the account reads only what it said
    and was sent signed in, while the other side, an account, reads everything it was in."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    first = await named(hub, "bob")
    assert await private_page(hub, first, "alice") == PrivateHistory(
        user="alice", messages=(), oldest_seq=1, latest_seq=0
    )
    await hub.handle(first, PrivateMessage(to="alice", text="first bob"))
    await hub.handle(alice, PrivateMessage(to="bob", text="to the first bob"))
    assert said(await private_page(hub, first, "alice")) == ["first bob", "to the first bob"]
    await hub.handle(first, Quit())

    second = await named(hub, "bob")
    assert said(await private_page(hub, second, "alice")) == []
    await hub.handle(alice, PrivateMessage(to="bob", text="to the second bob"))
    assert said(await private_page(hub, second, "alice")) == ["to the second bob"]
    await hub.handle(second, Register(password="correct horse"))
    assert said(await private_page(hub, second, "alice")) == []  # not the account's
    await hub.handle(second, PrivateMessage(to="alice", text="signed in"))
    assert said(await private_page(hub, second, "alice")) == ["signed in"]
    assert said(await private_page(hub, alice, "bob")) == [
        "first bob",
        "to the first bob",
        "to the second bob",
        "signed in",
    ]


async def test_a_guest_that_changes_its_name_starts_an_empty_private_history() -> None:
    """After /nick a guest reads nothing of what it said under its old name, nor what an
    earlier guest of the new name said, even when it takes its old name back."""
    hub, _ = make_hub(rate=1000, burst=1000)
    ann = await named(hub, "ann")
    guest = await named(hub, "bob")
    await hub.handle(guest, PrivateMessage(to="ann", text="as bob"))
    await hub.handle(guest, Nick(name="carl"))
    assert said(await private_page(hub, guest, "ann")) == []
    other = await named(hub, "bob")
    await hub.handle(other, PrivateMessage(to="ann", text="the other bob"))
    await hub.handle(other, Quit())
    await hub.handle(guest, Nick(name="bob"))
    assert said(await private_page(hub, guest, "ann")) == []
    await hub.handle(guest, Nick(name="Bob"))  # a change of case is the same name
    await hub.handle(ann, PrivateMessage(to="bob", text="to bob again"))
    assert said(await private_page(hub, guest, "ann")) == ["to bob again"]


class SlowAccounts(MemoryStore):
    """A memory store whose account lookups wait for ``go`` once ``hold`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False  # lookups wait for go
        self.asked = asyncio.Event()  # a held lookup is waiting
        self.go = asyncio.Event()  # let held lookups answer

    async def account(self, name: str) -> Account | None:
        if self.hold:
            self.asked.set()
            await self.go.wait()
        return await super().account(name)


async def test_a_private_message_from_a_guest_that_left_while_the_store_answered_is_not_sent() -> (
    None
):
    """A guest that disconnects while the server looks up the recipient's account sends
    nothing: the next guest of its name neither reads it in its history nor is taken for
    its sender."""
    store = SlowAccounts()
    hub, _ = make_hub(store, rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    carol = await named(hub, "carol")
    first = await named(hub, "bob")
    store.hold = True
    sending = asyncio.create_task(
        hub.handle(first, PrivateMessage(to="alice", text="from the first bob"))
    )
    await store.asked.wait()
    await hub.disconnect(first, "gone")
    store.hold = False
    second = await named(hub, "bob")
    await hub.handle(carol, PrivateMessage(to="bob", text="to the second bob"))
    store.go.set()
    [error] = await sending
    assert isinstance(error, Error) and error.code == "no_name"
    assert said(await private_page(hub, second, "alice")) == []
    alice, _ = await login(hub, "alice")
    assert [e for e in await ready(alice) if isinstance(e, Private)] == []
