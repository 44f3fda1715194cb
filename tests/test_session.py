"""The session (``roomcast.session``): what one connection reads, every room message once and
in order. ``take_ready`` takes ring slices; a lag, a replay and a login's private messages are
refilled from the store; what the store no longer holds is reported exactly. And what the
session's listener (a connection) is told of its life. Driven by hand (a channel, a memory
store, no hub) and through the hub; no sleeps, no sockets."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import pytest

from roomcast.broadcast import Sender, channel
from roomcast.errors import Closed
from roomcast.hub import GENERAL, Hub
from roomcast.model import (
    Draft,
    Event,
    Info,
    Kind,
    Logout,
    Message,
    Missed,
    Private,
    PrivateDraft,
    PrivateMessage,
    Quit,
    Say,
    SetName,
    Summary,
)
from roomcast.session import Session, User
from roomcast.store import MemoryStore, Page
from tests.helpers import (
    login,
    make_hub,
    named,
    ready,
    registered,
    texts,
)

# --- delivery, driven through the hub -----------------------------------------------------


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


# --- delivery, driven by hand: a channel and a store kept in step, as the hub keeps them ---


class Reads(MemoryStore):
    """A memory store that records the reads a session makes of it."""

    def __init__(self, *, keep: int = 10_000) -> None:
        super().__init__(keep=keep)
        self.reads: list[tuple[str, int]] = []  # (what was read, the limit asked)

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        self.reads.append((room, limit))
        return await super().history(room, before=before, after=after, limit=limit)

    async def privates(self, name: str, *, after: int, limit: int) -> Sequence[Private]:
        self.reads.append((f"privates of {name}", limit))
        return await super().privates(name, after=after, limit=limit)


class Line:
    """A room's channel and its stored history: each message is stored, then sent."""

    def __init__(self, store: MemoryStore, room: str, capacity: int = 4) -> None:
        self.store = store
        self.room = room
        self.tx: Sender[Message]
        self.tx, first = channel(capacity, first_seq=1)
        first.close()  # the hub holds the sender only
        self._ids = itertools.count(1)

    async def say(self, *texts: str) -> list[Message]:
        """Store ``texts`` as messages of the room, then send them into its channel."""
        drafts = [
            Draft(
                id=f"{self.room}-{next(self._ids)}",
                room=self.room,
                sender="bob",
                kind=Kind.MESSAGE,
                text=text,
                ts=0.0,
            )
            for text in texts
        ]
        messages = await self.store.append_many(drafts)
        for message in messages:
            self.tx.send(message)
        return messages


class Inbox:
    """A user's private channel and the stored private messages: each stored, then sent."""

    def __init__(self, store: MemoryStore, to: str, capacity: int = 4) -> None:
        self.store = store
        self.to = to
        self.tx: Sender[Private]
        self.tx, first = channel(capacity)
        first.close()
        self._ids = itertools.count(1)

    async def send(self, *texts: str, live: bool = True) -> list[Private]:
        """Store private messages from bob to the user; send them too when ``live``."""
        sent = []
        for text in texts:
            draft = PrivateDraft(
                id=f"p{next(self._ids)}",
                sender="bob",
                recipient=self.to,
                kind=Kind.MESSAGE,
                text=text,
                ts=0.0,
            )
            private = await self.store.append_private(draft)
            if live:
                self.tx.send(private)
            sent.append(private)
        return sent


def session_of(
    store: MemoryStore, name: str = "ann", *, registered: bool = False, refill_page: int = 500
) -> Session:
    """A session attached to a new user ``name``."""
    session = Session(f"10.0.0.1:{name}", store, refill_page=refill_page)
    session.attach(User(name, registered=registered))
    return session


async def drain(session: Session, max_count: int = 512) -> list[Event]:
    """Everything the session has, store reads included, in batches of ``max_count``."""
    out: list[Event] = []
    for _ in range(1000):
        batch = await session.take(max_count)
        assert len(batch) <= max_count
        if not batch:
            return out
        out += batch
    raise AssertionError("session never ran dry")


def seqs(events: Sequence[Event], room: str) -> list[int]:
    """The sequence numbers of ``room``'s messages among ``events``."""
    return [e.seq for e in events if isinstance(e, Message) and e.room == room]


async def test_take_ready_hands_out_each_rooms_messages_once_from_the_rings_alone() -> None:
    """take_ready gives what is pending, then each room's ready messages in order (the very
    objects sent), at most max_count, each once, and never reads the store."""
    store = Reads()
    a, b = Line(store, "#a"), Line(store, "#b")
    session = session_of(store)
    session.subscribe("#a", a.tx)
    session.subscribe("#b", b.tx)
    sent_a, sent_b = await a.say("a1", "a2"), await b.say("b1")
    session.tell(Info(text="news"))
    first = session.take_ready(2)
    assert first[0] == Info(text="news") and first[1] is sent_a[0]
    rest = session.take_ready()
    assert rest[0] is sent_a[1] and rest[1] is sent_b[0] and len(rest) == 2
    assert session.take_ready() == [] and store.reads == []


async def test_a_lagged_room_is_refilled_from_the_store_while_the_others_go_on() -> None:
    """A receiver overtaken by its ring is left for the store: take_ready goes on with the
    other rooms, then take reads exactly the missed range, and the ring the rest, each
    message once and in order."""
    store = Reads()
    a, b = Line(store, "#a", capacity=4), Line(store, "#b")
    session = session_of(store)
    session.subscribe("#a", a.tx)
    session.subscribe("#b", b.tx)
    await a.say(*(f"a{i}" for i in range(10)))  # the ring holds 7-10: 1-6 are missed
    await b.say("b1")
    assert seqs(session.take_ready(), "#b") == [1]
    assert session.needs_store() and session.delivered("#a") == 0
    got = await drain(session)
    assert seqs(got, "#a") == list(range(1, 11))
    assert not any(isinstance(e, Missed) for e in got)
    assert store.reads == [("#a", 6)] and not session.needs_store()
    assert session.delivered("#a") == 10 and session.delivered("#nowhere") is None


async def test_a_refill_reads_the_store_in_pages_within_each_batch() -> None:
    """A long lag is read a page at a time (refill_page), never more than the batch asks."""
    store = Reads()
    a = Line(store, "#a", capacity=4)
    session = session_of(store, refill_page=3)
    session.subscribe("#a", a.tx)
    await a.say(*(f"a{i}" for i in range(20)))  # 1-16 come from the store
    got = await drain(session, max_count=5)
    assert seqs(got, "#a") == list(range(1, 21))
    limits = [limit for _, limit in store.reads]
    assert all(limit <= 3 for limit in limits) and sum(limits) == 16 and len(limits) == 6


async def test_what_the_store_no_longer_keeps_of_a_lag_is_reported_exactly() -> None:
    """A lagged range that retention cut in part is a Missed of exactly the lost messages,
    then the ones kept, then live ones."""
    store = Reads(keep=5)
    a = Line(store, "#a", capacity=4)
    session = session_of(store)
    session.subscribe("#a", a.tx)
    await a.say(*(f"a{i}" for i in range(10)))  # the store keeps 6-10, the ring 7-10
    got = await drain(session)
    assert got[0] == Missed(room="#a", first_seq=1, count=5)
    assert seqs(got, "#a") == list(range(6, 11))


async def test_a_replay_comes_before_live_messages_with_its_header_first() -> None:
    """replay delivers the stored range from ``first`` up to where the session began to
    read live, after its header (a login's summary), then the live messages: no seam."""
    store = Reads()
    a = Line(store, "#a", capacity=4)
    await a.say(*(f"old{i}" for i in range(5)))  # 1-5, before the session
    session = session_of(store)
    session.subscribe("#a", a.tx)  # live from 6
    summary = Summary(room="#a", missed=4, replayed=4, first_seq=2, first_unread=2)
    session.replay("#a", 2, summary)
    await a.say("live")
    early = session.take_ready()  # a writer pumping now: the room waits for its replay
    assert early == []
    got = await drain(session)
    assert got[0] == summary
    assert seqs(got, "#a") == [2, 3, 4, 5, 6]


async def test_a_replay_asked_again_is_one_range_and_keeps_its_header() -> None:
    """A second replay of the same room while the first is pending widens it, keeps the
    first's header, and repeats nothing; a replay of nothing new is its header alone."""
    store = Reads()
    a = Line(store, "#a")
    await a.say(*(f"old{i}" for i in range(5)))
    session = session_of(store)
    session.subscribe("#a", a.tx)  # live from 6
    summary = Summary(room="#a", missed=2, replayed=2, first_seq=4, first_unread=4)
    session.replay("#a", 4, summary)
    session.replay("#a", 2)
    got = await drain(session)
    assert got[0] == summary and seqs(got, "#a") == [2, 3, 4, 5]
    nothing_new = Summary(room="#a", missed=0, replayed=0, first_seq=6, first_unread=6)
    session.replay("#a", 6, nothing_new)
    assert not session.needs_store() and session.take_ready() == [nothing_new]


async def test_a_guest_behind_its_private_channel_is_told_how_many_it_missed() -> None:
    """A guest's private messages are not kept for it: a lag is a Missed of the exact
    count, then the ones still held."""
    store = Reads()
    inbox = Inbox(store, "ann", capacity=2)
    session = session_of(store)
    session.open_inbox(inbox.tx)
    await inbox.send(*(f"p{i}" for i in range(5)))
    got = await drain(session)
    assert got[0] == Missed(room=None, first_seq=0, count=3)
    assert [e.text for e in got if isinstance(e, Private)] == ["p3", "p4"]
    assert store.reads == []


async def test_a_registered_user_behind_its_private_channel_gets_the_gap_from_the_store() -> None:
    """A registered user's lagged private messages are read from the store up to the ones
    the ring still held, then those, then live ones: each once, in order."""
    store = Reads()
    inbox = Inbox(store, "ann", capacity=2)
    session = session_of(store, registered=True)
    session.open_inbox(inbox.tx)
    await inbox.send(*(f"p{i}" for i in range(6)))
    assert session.take_ready() == []  # the gap is found: what follows waits for the store
    assert session.needs_store()
    await inbox.send("live")
    got = await drain(session)
    assert [e.text for e in got if isinstance(e, Private)] == [f"p{i}" for i in range(6)] + ["live"]
    assert not any(isinstance(e, Missed) for e in got)
    assert session.user is not None and session.user.private_mark == 7


async def test_a_login_replays_the_stored_private_messages_then_reads_on_live() -> None:
    """replay_privates delivers the private messages stored after the user's marker, in
    pages, before the live ones; one both stored and sent live comes once."""
    store = Reads()
    inbox = Inbox(store, "ann")
    await inbox.send(*(f"away{i}" for i in range(5)), live=False)  # 1-5: ann was away
    session = session_of(store, registered=True, refill_page=2)
    session.open_inbox(inbox.tx)
    session.replay_privates(1)  # ann had read the first
    await inbox.send("live")  # 6: stored, and sent while the replay waits
    got = await drain(session)
    assert [e.text for e in got if isinstance(e, Private)] == [
        "away1",
        "away2",
        "away3",
        "away4",
        "live",
    ]
    assert [limit for _, limit in store.reads] == [2, 2, 2]


async def test_leaving_keeps_what_was_said_before_and_an_undone_join_keeps_nothing() -> None:
    """unsubscribe hands out what the room said up to then; with keep false (a join that
    never happened) it drops it."""
    store = Reads()
    a, b = Line(store, "#a"), Line(store, "#b")
    session = session_of(store)
    session.subscribe("#a", a.tx)
    session.subscribe("#b", b.tx)
    await a.say("kept")
    await b.say("dropped")
    session.unsubscribe("#a")
    session.unsubscribe("#b", keep=False)
    await a.say("after")
    got = session.take_ready()
    assert [e.text for e in got if isinstance(e, Message)] == ["kept"]
    assert session.rooms == []


async def test_a_closed_session_delivers_what_was_ready_then_its_farewell_then_closed() -> None:
    """close keeps what was ready; receive returns it with the farewell last, then raises
    Closed."""
    store = Reads()
    a = Line(store, "#a")
    session = session_of(store)
    session.subscribe("#a", a.tx)
    await a.say("last words")
    session.close("bye", Info(text="goodbye"))
    got = await session.receive()
    assert [e.text for e in got if isinstance(e, Message)] == ["last words"]
    assert got[-1] == Info(text="goodbye")
    with pytest.raises(Closed):
        await session.receive()


async def test_arm_calls_back_at_once_when_something_is_ready_else_on_the_next_message() -> None:
    """A transport's callback runs at once if the session has something, or from the send
    of the next message into one of its rooms: no task, no wait."""
    store = Reads()
    a = Line(store, "#a")
    session = session_of(store)
    session.subscribe("#a", a.tx)
    calls: list[str] = []
    session.arm(lambda: calls.append("armed"))
    assert calls == []
    await a.say("hello")
    assert calls == ["armed"]
    session.arm(lambda: calls.append("again"))  # the message is still there
    assert calls == ["armed", "again"]


async def test_a_registered_users_read_markers_follow_what_is_handed_out() -> None:
    """Taking a room's messages moves a registered user's marker (from the ring and from
    the store alike) and marks it to be written; a guest keeps none."""
    store = Reads()
    a = Line(store, "#a", capacity=4)
    member = session_of(store, "ann", registered=True)
    guest = session_of(store, "cy")
    for s in (member, guest):
        s.subscribe("#a", a.tx)
    await a.say("a1", "a2")
    member.take_ready()
    assert member.user is not None and member.user.marks == {"#a": 2} and member.user.dirty
    member.user.dirty = False  # written
    await a.say(*(f"a{i}" for i in range(3, 9)))  # 3-8: the ring holds 5-8
    assert seqs(await member.take(), "#a") == [3, 4]  # from the store
    assert member.user.marks == {"#a": 4} and member.user.dirty
    await drain(member)
    assert member.user.marks == {"#a": 8}
    await drain(guest)
    assert guest.user is not None and guest.user.marks == {} and not guest.user.dirty


# --- the listener: what the hub tells a connection ------------------------------------------


class Heard:
    """A listener that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def ready(self) -> None:
        self.told.append(("ready", None))

    def named(self, named: bool) -> None:
        self.told.append(("named", named))

    def ended(self, reason: str) -> None:
        self.told.append(("ended", reason))


def listened() -> tuple[Hub, Session, Heard]:
    hub, _ = make_hub()
    heard = Heard()
    return hub, hub.connect("127.0.0.1:1", heard), heard


async def test_a_session_is_delivered_to_only_once_its_name_was_answered() -> None:
    """Nothing is said to be ready while a session is being named (its join, its room list):
    delivery starts as the answer is returned, after the name was told."""
    hub, session, heard = listened()
    assert not session.delivering
    await hub.handle(session, Say(text="too early"))  # refused: no name yet
    assert heard.told == []
    await hub.handle(session, SetName(name="alice"))
    assert heard.told == [("named", True), ("ready", None)]
    assert session.delivering


async def test_a_logout_says_the_session_has_no_name_and_delivery_goes_on() -> None:
    """After a logout the listener is told the session has no name, and still hears what is
    ready (the notice that it logged out)."""
    hub, session, heard = listened()
    await hub.handle(session, SetName(name="alice"))
    heard.told.clear()
    await hub.handle(session, Logout())
    assert ("named", False) in heard.told
    assert heard.told[-1] == ("ready", None)
    last = session.take_ready()[-1]
    assert isinstance(last, Info) and last.text.startswith("logged out")


async def test_the_end_is_told_once_with_its_reason() -> None:
    """A quit ends the session: the listener hears it once, with the quit's reason."""
    hub, session, heard = listened()
    await hub.handle(session, SetName(name="alice"))
    await hub.handle(session, Quit(reason="bye"))
    await hub.disconnect(session, "connection closed")  # too late: it has ended
    assert [t for t in heard.told if t[0] == "ended"] == [("ended", "bye")]
    assert ("named", False) in heard.told


async def test_a_session_that_never_had_a_name_hears_only_its_end() -> None:
    """A connection that closes before choosing a name is told the end, and nothing else."""
    hub, session, heard = listened()
    await hub.disconnect(session, "connection closed")
    assert heard.told == [("ended", "connection closed")]
