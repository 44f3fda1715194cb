"""History (``roomcast.history``): pages of a room's history, search, and the private
conversations each side reads as the identity it has now. Driven through the hub."""

from __future__ import annotations

from roomcast.model import (
    Error,
    FetchHistory,
    History,
    Nick,
    PrivateHistory,
    PrivateMessage,
    Quit,
    Register,
    Say,
    Search,
    SearchResults,
)
from tests.helpers import (
    login,
    make_hub,
    named,
    private_page,
    registered,
    said,
    say_many,
)

# --- room history and search --------------------------------------------------------------


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


# --- private history ----------------------------------------------------------------------


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
