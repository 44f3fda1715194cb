"""Messages (``roomcast.messages``): room messages from draft to every member, private
messages, posts, and who said them. Driven through the hub, sessions in memory."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from roomcast.hub import GENERAL
from roomcast.model import (
    Action,
    Error,
    Info,
    Join,
    Kind,
    Message,
    Nick,
    Private,
    PrivateMessage,
    Quit,
    Say,
)
from roomcast.store import MemoryStore
from roomcast.store.base import Account
from roomcast.store.sqlite import SqliteStore
from tests.helpers import (
    login,
    make_hub,
    named,
    private_page,
    ready,
    registered,
    said,
    texts,
)

# --- room messages ------------------------------------------------------------------------


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


async def test_multi_line_messages_keep_their_line_feeds() -> None:
    """A message may span lines; other control characters still go."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await ready(alice)
    await hub.handle(alice, Say(text="first line\r\nsecond\x1b line"))
    assert texts(await ready(alice)) == ["first line\nsecond line"]


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
