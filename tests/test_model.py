"""Values cannot be built invalid, and cannot be changed once built."""

from __future__ import annotations

import dataclasses
import unicodedata

import pytest

from roomcast.errors import ClientError
from roomcast.model import (
    MAX_SEQ,
    MAX_TEXT,
    Draft,
    FetchHistory,
    Join,
    Kind,
    PrivateDraft,
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


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("open \u202egnp.exe", "open gnp.exe"),  # right-to-left override
        ("\u2066a\u2069 \u202ab\u202c \u200ec\u200f \u061cd", "a b c d"),  # other bidi
        ("ad\u200bm\u2060i\ufeffn\u00ad\u180e", "admin"),  # zero-width and invisible
        ("a\u2028b\u2029c", "a\nb\nc"),  # line and paragraph separators
        ("\U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", None),
        ("\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f", None),
    ],
)
def test_text_loses_bidi_controls_and_invisible_characters(text: str, cleaned: str | None) -> None:
    """Bidi controls and invisible characters go; separators are line feeds; joiners (emoji
    sequences, Persian) and emoji tags (a subdivision flag) stay. ``None``: unchanged."""
    assert clean_text(text) == (text if cleaned is None else cleaned)


def test_invisible_characters_are_exactly_the_format_characters_nobody_needs() -> None:
    """What clean_text strips of category Cf (format) is every one of them but those that
    join, tag or show: the list in model.py stays true to the Unicode database."""
    kept = {0x200C, 0x200D} | set(range(0xE0020, 0xE0080))  # joiners, emoji tags
    shown = {0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605, 0x06DD, 0x070F, 0x0890, 0x0891}
    shown |= {0x08E2, 0x110BD, 0x110CD}  # number signs and marks that render
    scripts = set(range(0x13430, 0x13440)) | set(range(0x1BCA0, 0x1BCA4))  # hieroglyph,
    scripts |= set(range(0x1D173, 0x1D17B))  # shorthand and musical format controls
    for code in range(0x110000):
        char = chr(code)
        if unicodedata.category(char) != "Cf":
            continue
        stripped = clean_text(f"a{char}b") == "ab"
        assert stripped != (code in kept | shown | scripts), f"U+{code:04X}"

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
