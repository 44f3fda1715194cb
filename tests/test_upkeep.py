"""Upkeep (``roomcast.upkeep``): read markers written in batches, retention, and the account
check that ends the sessions of accounts changed beside the server."""

from __future__ import annotations

from roomcast.model import (
    FetchHistory,
    History,
    RoomList,
    Rooms,
    Say,
)
from roomcast.session import State
from tests.helpers import (
    login,
    make_hub,
    named,
    ready,
    registered,
    say_many,
    texts,
)


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


async def test_retention_cuts_history_and_says_where() -> None:
    """Retention by count drops the oldest messages; history reports the cut."""
    hub, _ = make_hub(rate=1000, burst=1000, retain_count=5)
    alice = await named(hub, "alice")
    await say_many(hub, alice, 10)
    assert await hub.apply_retention() == 6
    [page] = await hub.handle(alice, FetchHistory(limit=50))
    assert isinstance(page, History) and page.oldest_seq == 7
    assert [m.seq for m in page.messages] == [7, 8, 9, 10, 11]


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
