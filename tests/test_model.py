"""Values cannot be built invalid, and cannot be changed once built."""

from __future__ import annotations

import dataclasses

import pytest

from roomcast.errors import ClientError
from roomcast.model import (
    MAX_TEXT,
    Draft,
    FetchHistory,
    Join,
    Kind,
    PrivateDraft,
    PrivateMessage,
    Quit,
    Say,
    SetName,
    clean_text,
    fold,
    room_name,
    user_name,
)


@pytest.mark.parametrize("name", ["a", "alice", "Bob_2", "x.y-z", "a" * 32])
def test_valid_names(name: str) -> None:
    """Letters, digits, '_', '-' and '.' from 1 to 32 characters make a name."""
    assert user_name(name) == name


@pytest.mark.parametrize("name", ["", "a" * 33, "two words", "émile", "a#b", "semi;colon", "\x1b"])
def test_invalid_names(name: str) -> None:
    """Anything else is refused with bad_name."""
    with pytest.raises(ClientError) as caught:
        user_name(name)
    assert caught.value.code == "bad_name"


def test_room_names_get_a_hash_and_lower_case() -> None:
    """Rooms are '#name', case-insensitive, spelled in lower case."""
    assert room_name("Rust") == "#rust" and room_name("#RUST") == "#rust"
    with pytest.raises(ClientError) as caught:
        room_name("#")
    assert caught.value.code == "bad_room"


def test_fold_compares_names_without_case() -> None:
    """Two spellings of one name fold to the same key."""
    assert fold("Alice") == fold("aLICE")


def test_text_is_cleaned_and_bounded() -> None:
    """Control characters go, tabs become spaces, and size and emptiness are checked."""
    assert clean_text("\ta\x1b[0m\x7fb\x85 ") == "a[0mb"
    with pytest.raises(ClientError):
        clean_text("\x00\x01 ")
    with pytest.raises(ClientError) as caught:
        clean_text("x" * (MAX_TEXT + 1))
    assert caught.value.code == "bad_text"
    assert clean_text("😀" * 2000) == "😀" * 2000


def test_commands_validate_on_construction() -> None:
    """Commands clean and check their fields as they are built."""
    assert Say(text=" hi\x07 ").text == "hi"
    assert Join(room="General").room == "#general"
    with pytest.raises(ClientError):
        PrivateMessage(to="no one", text="hi")
    with pytest.raises(ClientError):
        SetName(name="")
    assert Quit(reason="\x1b").reason == "quit"
    assert len(Quit(reason="r" * 500).reason) == 200


def test_values_are_frozen() -> None:
    """A message cannot be changed after it is built: receivers are isolated."""
    draft = Draft(id="1", room="#a", sender="alice", kind=Kind.MESSAGE, text="hi", ts=0.0)
    message = draft.with_seq(7)
    assert (message.seq, message.text, message.room) == (7, "hi", "#a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.text = "changed"  # type: ignore[misc]


def test_history_of_a_private_conversation_names_a_valid_user_and_no_room() -> None:
    """A history request may name a user (a private conversation) instead of a room, not
    both, and only a valid name."""
    assert FetchHistory(user="Bob", before=5).user == "Bob"
    with pytest.raises(ClientError) as caught:
        FetchHistory(user="no one")
    assert caught.value.code == "bad_name"
    with pytest.raises(ClientError) as caught:
        FetchHistory(user="bob", room="#general")
    assert caught.value.code == "bad_history"


def test_a_message_is_a_guests_unless_said_signed_in() -> None:
    """A message (and a private one) records whether its sender was signed in; one built
    without saying so, like a row stored before it was recorded, is a guest's."""
    draft = Draft(id="x", room="#a", sender="bob", kind=Kind.MESSAGE, text="hi", ts=1.0)
    assert draft.with_seq(1).signed is False
    signed = dataclasses.replace(draft, signed=True)
    assert signed.with_seq(2).signed is True
    private = PrivateDraft(
        id="p",
        sender="bob",
        recipient="ann",
        kind=Kind.MESSAGE,
        text="hi",
        ts=1.0,
        signed=True,
        recipient_signed=False,
    ).with_seq(3)
    assert (private.signed, private.recipient_signed) == (True, False)
