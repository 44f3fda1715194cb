"""The chat core when the store fails half-way through a command: nothing is left half done.

Every command that changes the online state and writes to the store either writes first or
undoes what it changed when the write fails, so the session is exactly as it was and the
client may simply retry. The store here is a real ``MemoryStore`` whose chosen methods fail
on demand, as a full disk would make them; no sockets (tests/e2e/test_storage.py has those).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from roomcast.broadcast import Sender, channel
from roomcast.errors import Broken, Unwritable
from roomcast.hub import GENERAL, NOT_WRITABLE, UNAVAILABLE, Hub
from roomcast.model import (
    Draft,
    Error,
    Event,
    Info,
    Join,
    Kind,
    Leave,
    Login,
    Message,
    Nick,
    PrivateMessage,
    Quit,
    Register,
    Say,
    SetName,
    Welcome,
    Who,
    WhoList,
)
from roomcast.session import Session, State
from roomcast.store import MemoryStore
from roomcast.store.base import Account
from tests.helpers import login, make_hub, named, ready, registered, texts


class Breakable(MemoryStore):
    """A memory store whose methods named in ``failing`` raise ``Unwritable`` (or ``Broken``
    when ``unwritable`` is false), as a full disk or a lost database would; the others work."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: set[str] = set()  # names of the methods that fail now
        self.unwritable = True  # fail as a store that cannot take writes, or as any failure
        self.calls: Counter[str] = Counter()  # calls made to each method, failed or not

    def _check(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.failing:
            if self.unwritable:
                raise Unwritable(f"{method}: database or disk is full")
            raise Broken(f"{method}: the connection was lost")

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        try:
            self._check("append_many")
        except Broken as e:
            failed: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
            failed.set_exception(e)
            return failed
        return super().append_many(drafts, then=then)

    async def create_account(self, name: str, password_hash: str, *, now: float) -> Account:
        self._check("create_account")
        return await super().create_account(name, password_hash, now=now)

    async def delete_account(self, name: str) -> bool:
        self._check("delete_account")
        return await super().delete_account(name)

    async def memberships(self, name: str) -> Mapping[str, int]:
        self._check("memberships")
        return await super().memberships(name)

    async def set_membership(self, name: str, room: str, *, read_seq: int | None) -> None:
        self._check("set_membership")
        await super().set_membership(name, room, read_seq=read_seq)


def breakable_hub() -> tuple[Hub, Breakable]:
    store = Breakable()
    hub, _ = make_hub(store, rate=1000, burst=1000)
    return hub, store


def refused(replies: list[Event]) -> None:
    """``replies`` is the one error of a store that cannot take writes."""
    assert replies == [NOT_WRITABLE], replies


def joins(events: list[Event], room: str) -> list[str]:
    """Who joined ``room`` in ``events`` (the askers of ``who`` left out)."""
    return [
        e.sender
        for e in events
        if isinstance(e, Message)
        and e.kind is Kind.JOIN
        and e.room == room
        and not e.sender.startswith("who")
    ]


async def who(hub: Hub, asking: str, room: str) -> tuple[str, ...]:
    """The members of ``room``, as another guest (``who`` + ``asking``) sees them."""
    session = hub.connect(f"test:who-{asking}")
    await hub.handle(session, SetName(name=f"who{asking}"))
    [answer] = await hub.handle(session, Who(room=room))
    await hub.handle(session, Quit())
    assert isinstance(answer, WhoList), answer
    return tuple(n for n in answer.names if not n.startswith("who"))


# --- naming -------------------------------------------------------------------------------


async def test_a_name_whose_join_cannot_be_stored_is_undone_and_can_be_given_again() -> None:
    """A guest whose join to #general cannot be stored is told so and stays unnamed, seen by
    nobody; the same name then works, and the room hears of it once."""
    hub, store = breakable_hub()
    bob = await named(hub, "bob")
    await ready(bob)
    session = hub.connect("test:alice")
    store.failing = {"append_many"}
    refused(await hub.handle(session, SetName(name="alice")))
    assert session.state is State.NEW and session.user is None and session.rooms == []
    assert hub.online == 1
    assert await ready(session) == []
    store.failing = set()
    assert await who(hub, "1", GENERAL) == ("bob",)
    replies = await hub.handle(session, SetName(name="alice"))
    assert replies[0] == Welcome(name="alice")
    assert joins(await ready(bob), GENERAL) == ["alice"]


async def test_a_name_undone_leaves_no_lookalike_behind() -> None:
    """A guest whose name the store failed leaves nothing in the way: a name that looks
    like it (a1ice for alice) is free at once."""
    hub, store = breakable_hub()
    session = hub.connect("test:alice")
    store.failing = {"append_many"}
    refused(await hub.handle(session, SetName(name="alice")))
    store.failing = set()
    other = hub.connect("test:a1ice")
    assert (await hub.handle(other, SetName(name="a1ice")))[0] == Welcome(name="a1ice")


async def test_another_store_failure_is_unavailable_and_undone_the_same() -> None:
    """A store failure that is not about writability gets the general 'unavailable' text;
    the name is undone all the same."""
    hub, store = breakable_hub()
    store.unwritable = False
    store.failing = {"append_many"}
    session = hub.connect("test:alice")
    assert await hub.handle(session, SetName(name="alice")) == [UNAVAILABLE]
    assert session.state is State.NEW and hub.online == 0


async def test_a_login_whose_joins_cannot_be_stored_leaves_the_session_unnamed() -> None:
    """A returning user whose joins cannot be stored stays logged out and no room hears of
    it; its next login is announced once in every room, in one store write."""
    hub, store = breakable_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await hub.handle(alice, Quit())
    bob = await named(hub, "bob")
    await hub.handle(bob, Join(room="#rust"))
    await ready(bob)
    store.failing = {"append_many"}
    session, replies = await login(hub, "alice")
    refused(replies)
    assert session.state is State.NEW and session.rooms == [] and await ready(session) == []
    assert hub.online == 1
    store.failing = set()
    assert await who(hub, "1", "#rust") == ("bob",)
    await ready(bob)
    writes = store.calls["append_many"]
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")
    assert store.calls["append_many"] == writes + 1
    got = await ready(bob)
    assert joins(got, GENERAL) == ["alice"] and joins(got, "#rust") == ["alice"]


async def test_a_login_whose_rooms_cannot_be_read_leaves_the_session_unnamed() -> None:
    """When the store cannot say which rooms a user is in, its login is undone."""
    hub, store = breakable_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    store.failing = {"memberships"}
    session, replies = await login(hub, "alice")
    refused(replies)
    assert session.state is State.NEW and hub.online == 0
    store.failing = set()
    session, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice") and session.state is State.ACTIVE


async def test_a_second_session_whose_login_fails_leaves_the_first_as_it_was() -> None:
    """A user online on one connection whose login on another fails keeps its first
    connection, its rooms and its name."""
    hub, store = breakable_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    store.failing = {"memberships"}
    session, replies = await login(hub, "alice")
    refused(replies)
    assert session.state is State.NEW
    assert alice.state is State.ACTIVE and alice.rooms == [GENERAL, "#rust"]
    store.failing = set()
    assert await who(hub, "1", "#rust") == ("alice",)
    await hub.handle(alice, Say(text="still here", room="#rust"))
    assert texts(await ready(alice), "#rust") == ["still here"]


# --- rooms --------------------------------------------------------------------------------


async def test_a_join_that_cannot_be_stored_leaves_the_user_out_of_the_room() -> None:
    """A join whose announcement cannot be stored is undone: not a member, the current room
    as before; retried, it is announced."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    await ready(alice)
    store.failing = {"append_many"}
    refused(await hub.handle(alice, Join(room="#rust")))
    assert alice.rooms == [GENERAL] and alice.current == GENERAL
    store.failing = set()
    [error] = await hub.handle(alice, Say(text="hi", room="#rust"))
    assert isinstance(error, Error) and error.code == "not_member"
    [members] = await hub.handle(alice, Join(room="#rust"))
    assert members == WhoList(room="#rust", names=("alice",))
    assert joins(await ready(alice), "#rust") == ["alice"]


async def test_a_registered_join_whose_membership_cannot_be_stored_is_not_announced() -> None:
    """A registered user's join is stored as a membership before it is announced: when that
    fails, the room hears nothing and the user is not in it."""
    hub, store = breakable_hub()
    bob = await named(hub, "bob")
    await hub.handle(bob, Join(room="#rust"))
    alice = await registered(hub, "alice")
    await ready(bob)
    store.failing = {"set_membership"}
    refused(await hub.handle(alice, Join(room="#rust")))
    assert alice.rooms == [GENERAL]
    assert joins(await ready(bob), "#rust") == []
    assert "#rust" not in await store.memberships("alice")


async def test_a_registered_join_whose_announcement_fails_is_taken_out_of_the_store() -> None:
    """When the announcement of a registered user's join fails after its membership was
    stored, the membership is deleted again: the next login does not put it in the room."""
    hub, store = breakable_hub()
    alice = await registered(hub, "alice")
    store.failing = {"append_many"}
    refused(await hub.handle(alice, Join(room="#rust")))
    assert alice.rooms == [GENERAL]
    assert set(await store.memberships("alice")) == {GENERAL}


async def test_a_leave_that_cannot_be_stored_keeps_the_user_in_the_room() -> None:
    """A leave whose announcement cannot be stored changes nothing: still a member, the
    current room as before."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    store.failing = {"append_many"}
    refused(await hub.handle(alice, Leave(room="#rust")))
    assert alice.rooms == [GENERAL, "#rust"] and alice.current == "#rust"
    store.failing = set()
    await hub.handle(alice, Say(text="still here"))
    assert texts(await ready(alice), "#rust") == ["still here"]


async def test_a_registered_leave_whose_membership_cannot_be_stored_is_not_announced() -> None:
    """A registered user's leave deletes its membership first: when that fails, the room
    hears nothing and the user is still in it, in memory and in the store."""
    hub, store = breakable_hub()
    bob = await named(hub, "bob")
    await hub.handle(bob, Join(room="#rust"))
    alice = await registered(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await ready(bob)
    store.failing = {"set_membership"}
    refused(await hub.handle(alice, Leave(room="#rust")))
    assert alice.rooms == [GENERAL, "#rust"]
    assert [e for e in await ready(bob) if isinstance(e, Message) and e.kind is Kind.LEAVE] == []
    assert "#rust" in await store.memberships("alice")


async def test_a_registered_leave_whose_announcement_fails_keeps_the_membership() -> None:
    """When the announcement of a registered user's leave fails, the membership it deleted
    is stored again with its read marker: the next login still finds the room."""
    hub, store = breakable_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await ready(alice)
    store.failing = {"append_many"}
    refused(await hub.handle(alice, Leave(room="#rust")))
    assert alice.rooms == [GENERAL, "#rust"]
    marks = await store.memberships("alice")
    assert set(marks) == {GENERAL, "#rust"} and marks["#rust"] >= 1


# --- names and accounts -------------------------------------------------------------------


async def test_a_nick_that_cannot_be_announced_keeps_the_old_name() -> None:
    """A new name whose announcement cannot be stored is given back: the user keeps its old
    name everywhere, and the new one is free for anyone."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    bob = await named(hub, "bob")
    await hub.handle(alice, Join(room="#rust"))
    await ready(bob)
    store.failing = {"append_many"}
    refused(await hub.handle(alice, Nick(name="alicia")))
    assert alice.name == "alice"
    store.failing = set()
    assert await who(hub, "1", GENERAL) == ("alice", "bob")
    assert await who(hub, "2", "#rust") == ("alice",)
    await hub.handle(alice, Say(text="hi", room=GENERAL))
    said = [e for e in await ready(bob) if isinstance(e, Message) and e.kind is Kind.MESSAGE]
    assert [(m.sender, m.text) for m in said] == [("alice", "hi")]
    carol = hub.connect("test:carol")
    assert isinstance((await hub.handle(carol, SetName(name="alicia")))[0], Welcome)


async def test_a_nick_undone_gives_back_the_lookalikes_of_both_names() -> None:
    """After a nick the store failed, a name like the old one is refused again and a name
    like the new one is free."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    store.failing = {"append_many"}
    refused(await hub.handle(alice, Nick(name="bob")))
    store.failing = set()
    carol = hub.connect("test:carol")
    [error] = await hub.handle(carol, SetName(name="a1ice"))
    assert isinstance(error, Error) and error.code == "lookalike"
    assert (await hub.handle(carol, SetName(name="b0b")))[0] == Welcome(name="b0b")


async def test_a_nick_is_told_to_every_room_in_one_write() -> None:
    """The rooms of a user who changes its name hear of it in one store write: all of them
    or, when it fails, none."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    await hub.handle(alice, Join(room="#go"))
    await ready(alice)
    writes = store.calls["append_many"]
    assert await hub.handle(alice, Nick(name="alicia")) == [
        Info(text="you are now known as alicia")
    ]
    assert store.calls["append_many"] == writes + 1
    nicks = [e for e in await ready(alice) if isinstance(e, Message) and e.kind is Kind.NICK]
    assert {(m.room, m.sender, m.text) for m in nicks} == {
        (room, "alice", "alicia") for room in (GENERAL, "#rust", "#go")
    }


async def test_a_registration_whose_rooms_cannot_be_stored_leaves_a_guest() -> None:
    """When a new account's rooms cannot be stored, the account is deleted again and the
    user stays the guest it was; registering again then works."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Join(room="#rust"))
    store.failing = {"set_membership"}
    refused(await hub.handle(alice, Register(password="correct horse")))
    assert alice.user is not None and not alice.user.registered
    assert await store.account("alice") is None
    store.failing = set()
    [info] = await hub.handle(alice, Register(password="correct horse"))
    assert isinstance(info, Info) and info.text.startswith("registered alice")
    assert set(await store.memberships("alice")) == {GENERAL, "#rust"}


async def test_a_registration_refused_by_the_store_changes_nothing() -> None:
    """When the account itself cannot be stored, the user stays a guest."""
    hub, store = breakable_hub()
    alice = await named(hub, "alice")
    store.failing = {"create_account"}
    refused(await hub.handle(alice, Register(password="correct horse")))
    assert alice.user is not None and not alice.user.registered
    assert await store.account("alice") is None


async def test_a_login_after_a_failed_one_is_not_a_second_name() -> None:
    """The line protocol's retry: after a refused login, the same login is a login (not
    has_name), and what the session then says is a message of its own."""
    hub, store = breakable_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    session = hub.connect("10.0.0.1:alice")
    store.failing = {"append_many"}
    refused(await hub.handle(session, Login(name="alice", password="correct horse")))
    store.failing = set()
    replies = await hub.handle(session, Login(name="alice", password="correct horse"))
    assert replies[0] == Welcome(name="alice")


# --- the session's side of an undo -------------------------------------------------------


def _message(seq: int, text: str) -> Message:
    return Message(
        id=f"m{seq}", room="#rust", seq=seq, sender="bob", kind=Kind.MESSAGE, text=text, ts=1.0
    )


async def test_a_session_that_leaves_a_room_still_delivers_what_it_said() -> None:
    """Unsubscribing keeps what the room said up to then: it is delivered after."""
    tx: Sender[Message]
    tx, rx = channel(8, first_seq=1)
    rx.close()
    session = Session("test:alice", MemoryStore(), refill_page=10)
    session.subscribe("#rust", tx)
    tx.send(_message(1, "before"))
    session.unsubscribe("#rust")
    assert texts(await ready(session)) == ["before"]


async def test_a_session_whose_join_is_undone_delivers_nothing_of_the_room() -> None:
    """Unsubscribing with ``keep`` false drops what the room said meanwhile: the join
    never happened, so nothing of the room reaches the client."""
    tx: Sender[Message]
    tx, rx = channel(8, first_seq=1)
    rx.close()
    session = Session("test:alice", MemoryStore(), refill_page=10)
    session.subscribe("#rust", tx)
    session.current = "#rust"
    tx.send(_message(1, "meanwhile"))
    session.unsubscribe("#rust", keep=False)
    assert await ready(session) == [] and session.rooms == [] and session.current is None


async def test_a_session_whose_name_is_undone_delivers_nothing_of_it() -> None:
    """Detaching with ``keep`` false drops what its rooms and private channel had ready:
    the session is NEW, as before it was named."""
    hub, _ = make_hub()
    bob = await named(hub, "bob")
    alice = await named(hub, "alice")
    await hub.handle(bob, Say(text="hi all"))
    await hub.handle(bob, PrivateMessage(to="alice", text="hi you"))
    alice.detach(keep=False)
    assert alice.state is State.NEW and await ready(alice) == []
