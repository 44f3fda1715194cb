"""Values cannot be built invalid, and cannot be changed once built."""

from __future__ import annotations

import dataclasses

import pytest

from roomcast.errors import ClientError
from roomcast.model import (
    MAX_SEQ,
    MAX_TEXT,
    Draft,
    Join,
    Kind,
    PrivateMessage,
    Quit,
    Say,
    Search,
    SetName,
    clean_text,
    fold,
    room_name,
    seq_text,
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


@pytest.mark.parametrize(
    ("text", "value"),
    [("0", 0), ("42", 42), ("007", 7), (str(MAX_SEQ), MAX_SEQ), ("0" * 5000 + "5", 5)],
)
def test_seq_text_reads_ascii_digits(text: str, value: int) -> None:
    """ASCII digits spell a sequence number, leading zeros and all."""
    assert seq_text(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.5", "1e3", " 1", "\u00b2", "\u0661"])
def test_seq_text_is_none_for_what_is_not_ascii_digits(text: str) -> None:
    """A sign, a point, a space or a non-ASCII digit make no number: the caller says why."""
    assert seq_text(text) is None


@pytest.mark.parametrize("text", [str(MAX_SEQ + 1), "9" * 20, "9" * 5000, "1" + "0" * 100_000])
def test_seq_text_refuses_numbers_too_big_before_converting_them(text: str) -> None:
    """Past MAX_SEQ, and past the 4,300 digits int() takes, it is bad_seq, not ValueError."""
    with pytest.raises(ClientError) as caught:
        seq_text(text)
    assert caught.value.code == "bad_seq"


@pytest.mark.parametrize(
    ("words", "cleaned"),
    [("a\x00b", "a b"), ("  two\t words\n", "two words"), ("x\x1b[0m", "x [0m")],
)
def test_search_words_lose_control_characters(words: str, cleaned: str) -> None:
    """Control characters in search words separate words, like punctuation; runs of blanks
    become one space."""
    assert Search(room=None, words=words).words == cleaned


def test_search_words_of_control_characters_only_are_refused() -> None:
    """Words with nothing but control characters and blanks are bad_search."""
    with pytest.raises(ClientError) as caught:
        Search(room=None, words="\x00\x01 \x7f")
    assert caught.value.code == "bad_search"
