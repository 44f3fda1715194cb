"""The chat core's shared state (``roomcast.core``): the room table and the lookups."""

from __future__ import annotations

import pytest

from roomcast.auth import Passwords
from roomcast.core import GENERAL, Core, Limits, member_room, new_id, room_name
from roomcast.errors import ClientError
from roomcast.session import Session, User
from roomcast.store import MemoryStore
from tests.helpers import CHEAP, FakeClock


def make_core() -> Core:
    """A core on a memory store, nothing online."""
    return Core(
        MemoryStore(), passwords=Passwords(CHEAP), limits=Limits(), clock=FakeClock(), new_id=new_id
    )


async def test_a_room_is_opened_once_and_forgotten_when_nothing_holds_it() -> None:
    """open_room gives the one open room of a name; drop_if_unused forgets it once it has
    no member, watcher or message being stored, but never #general."""
    core = make_core()
    room = await core.open_room("#a")
    assert await core.open_room("#a") is room and core.rooms["#a"] is room
    room.appending = 1
    core.drop_if_unused(room)
    assert "#a" in core.rooms
    room.appending = 0
    core.drop_if_unused(room)
    assert "#a" not in core.rooms and room.tx.closed
    general = await core.open_room(GENERAL)
    core.drop_if_unused(general)
    assert core.rooms[GENERAL] is general


async def test_the_user_table_and_its_look_alikes_change_together() -> None:
    """add_user puts a user online under its name, looked up in any case and by look-alike;
    remove_user frees both."""
    core = make_core()
    alice = User("Alice", registered=False)
    core.add_user(alice)
    assert core.users["alice"] is alice and core.looks.like("a1ice") == "Alice"
    core.remove_user(alice)
    assert core.users == {} and core.looks.like("a1ice") is None


async def test_a_command_names_its_room_or_the_current_one_which_must_be_joined() -> None:
    """room_name falls back on the session's current room (no_room without one);
    member_room also wants the user in it (not_member)."""
    core = make_core()
    session = Session("10.0.0.1:1", core.store, refill_page=10)
    session.attach(User("ann", registered=False))
    with pytest.raises(ClientError) as caught:
        room_name(session, None)
    assert caught.value.code == "no_room"
    session.current = "#a"
    assert room_name(session, None) == "#a" and room_name(session, "#b") == "#b"
    with pytest.raises(ClientError) as caught:
        member_room(session, None)
    assert caught.value.code == "not_member"
    assert session.user is not None
    room = session.user.rooms["#a"] = await core.open_room("#a")
    assert member_room(session, None) is room


def test_message_ids_differ() -> None:
    """new_id never gives the same id twice in a process."""
    ids = [new_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
