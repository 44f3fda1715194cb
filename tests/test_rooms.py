"""Rooms (``roomcast.rooms``): joining and leaving, who, the lists of rooms, big rooms, and
the login catch-up that puts a returning user back in its rooms. Driven through the hub."""

from __future__ import annotations

import asyncio
from pathlib import Path

from roomcast.hub import GENERAL, Hub, Limits
from roomcast.model import (
    Error,
    Info,
    Join,
    Kind,
    Leave,
    Login,
    Message,
    Quit,
    RoomEntry,
    RoomList,
    Rooms,
    Say,
    SetName,
    Summary,
    Unread,
    Welcome,
    Who,
    WhoList,
)
from roomcast.store import MemoryStore, Said
from roomcast.store.sqlite import SqliteStore
from tests.helpers import (
    FakeClock,
    login,
    make_hub,
    named,
    ready,
    registered,
    say_many,
    texts,
)

# --- joining and leaving ------------------------------------------------------------------


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


async def test_room_limit() -> None:
    """A user cannot be in more rooms than the limit."""
    hub, _ = make_hub(max_rooms=2)
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#one"))
    [error] = await hub.handle(alice, Join(room="#two"))
    assert isinstance(error, Error) and error.code == "too_many_rooms"


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


# --- who, and the lists of rooms ----------------------------------------------------------


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


# --- big rooms ----------------------------------------------------------------------------


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


# --- login catch-up: back in one's rooms --------------------------------------------------


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
