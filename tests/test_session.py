"""The session (``roomcast.session``): what one connection reads, every room message once and
in order. ``take_ready`` takes ring slices; a lag, a replay and a login's private messages are
refilled from the store; what the store no longer holds is reported exactly. Driven by hand
(a channel, a memory store, no hub) and through the hub; no sleeps, no sockets."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.errors import Closed
from roomcast.hub import GENERAL
from roomcast.model import (
    Event,
    Missed,
    Private,
    PrivateMessage,
    Quit,
    Say,
)
from roomcast.store import MemoryStore
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
