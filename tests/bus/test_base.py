"""Topics and node names: what the bus layer's interface module defines."""

from __future__ import annotations

import pytest

from roomcast.bus import room_topic, topic_fits, topic_of, user_topic
from roomcast.bus.base import Outage, check_fit, new_node_name
from roomcast.errors import ClientError
from roomcast.wire.bus import node_name
from tests.bus.conftest import message, private


def test_a_rooms_topic_is_its_name_as_rooms_are_spelled() -> None:
    """Rooms are case-insensitive, so is their topic; a bad name is refused."""
    assert room_topic("#General") == room_topic("general") == "room:#general"
    assert topic_of(message("#general")) == room_topic("#general")
    with pytest.raises(ClientError):
        room_topic("#no way")


def test_a_users_topic_ignores_case() -> None:
    """Names compare ignoring case, so the sessions of Ann and ann share a topic."""
    assert user_topic("Ann") == user_topic("ann") == "user:ann"
    with pytest.raises(ClientError):
        user_topic("a b")


def test_messages_fit_their_own_topics_only() -> None:
    """A room message fits its room's topic; a private one its sender's and recipient's."""
    assert topic_fits(room_topic("#a"), message("#a"))
    assert not topic_fits(room_topic("#b"), message("#a"))
    assert not topic_fits(user_topic("ann"), message("#a"))
    dm = private("Ann", "BOB")
    assert topic_fits(user_topic("ann"), dm)
    assert topic_fits(user_topic("bob"), dm)
    assert not topic_fits(user_topic("cid"), dm)
    assert not topic_fits(room_topic("#a"), dm)
    with pytest.raises(ValueError, match="Ann to BOB does not go on 'user:cid'"):
        check_fit(user_topic("cid"), dm)


def test_a_fresh_node_name_is_fit_and_new() -> None:
    """A node named by default gets a valid name, different each time."""
    names = {new_node_name() for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert node_name(name) == name


def test_an_outage_lasts_from_lost_to_resumed() -> None:
    """An outage's length is the time between the two, never below zero."""
    assert Outage(reason="x", lost_at=10.0, resumed_at=12.5, attempts=2).seconds == 2.5
    assert Outage(reason="x", lost_at=10.0, resumed_at=9.0, attempts=1).seconds == 0.0
