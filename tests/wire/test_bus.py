"""The bus codec, without I/O: stored messages to payloads and back, and what it refuses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.model import MAX_SEQ, MAX_TEXT, Kind, Message, Private
from roomcast.wire.bus import (
    MAX_PAYLOAD,
    BadPayload,
    Envelope,
    PayloadTooLarge,
    decode,
    encode,
    node_name,
    own_prefix,
)

names = st.from_regex(r"[A-Za-z0-9_.\-]{1,32}", fullmatch=True)
nodes = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
rooms = st.from_regex(r"#[a-z0-9_.\-]{1,32}", fullmatch=True)
# Any text a stored message can hold: Python strings from UTF-8 never hold surrogates.
texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=MAX_TEXT)
seqs = st.integers(min_value=1, max_value=MAX_SEQ)
times = st.floats(allow_nan=False, allow_infinity=False)
ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=128)

messages = st.builds(
    Message,
    id=ids,
    room=rooms,
    seq=seqs,
    sender=names,
    kind=st.sampled_from(Kind),
    text=texts,
    ts=times,
    signed=st.booleans(),
)
privates = st.builds(
    Private,
    id=ids,
    seq=seqs,
    sender=names,
    recipient=names,
    kind=st.sampled_from([Kind.MESSAGE, Kind.ACTION]),
    text=texts,
    ts=times,
    signed=st.booleans(),
    recipient_signed=st.booleans(),
)


def room_message(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "id": "x1",
        "room": "#a",
        "seq": 1,
        "sender": "ann",
        "kind": Kind.MESSAGE,
        "text": "hi",
        "ts": 1.5,
        "signed": False,
    }
    return Message(**(fields | changes))


@given(origin=nodes, message=st.one_of(messages, privates))
def test_every_stored_message_survives_the_trip(origin: str, message: Message | Private) -> None:
    """Whatever a stored message holds, decoding its payload gives it back, equal, with
    its origin; and the payload starts with its origin's prefix."""
    payload = encode(origin, message)
    assert decode(payload) == Envelope(origin=origin, message=message)
    assert payload.startswith(own_prefix(origin))
    assert len(payload) <= MAX_PAYLOAD


@given(origin=nodes, other=nodes)
def test_a_payload_starts_with_its_own_origins_prefix_only(origin: str, other: str) -> None:
    """A node tells its own payloads by their first bytes: another node's never match."""
    payload = encode(other, room_message())
    assert payload.startswith(own_prefix(origin)) == (origin == other)


def test_the_form_is_a_compact_array() -> None:
    """A room message is a JSON array, origin first: no key names repeated per message."""
    payload = encode("n1", room_message(text="hi\nthere", signed=True))
    assert orjson.loads(payload) == [
        "n1",
        "m",
        "x1",
        "#a",
        1,
        "ann",
        "message",
        "hi\nthere",
        1.5,
        True,
    ]


def test_a_whole_number_time_is_read_as_a_time() -> None:
    """A time written without a fraction (another writer's) is a time all the same."""
    payload = orjson.dumps(["n1", "m", "x1", "#a", 1, "ann", "message", "hi", 2, False])
    assert decode(payload).message.ts == 2.0


def test_a_payload_past_the_bound_is_too_large() -> None:
    """The size is checked before anything is parsed."""
    payload = encode("n1", room_message())
    with pytest.raises(PayloadTooLarge, match=f"{len(payload)} bytes; at most 10"):
        decode(payload, max_size=10)
    assert issubclass(PayloadTooLarge, BadPayload)


def good() -> list[Any]:
    return ["n1", "m", "x1", "#a", 1, "ann", "message", "hi", 1.5, False]


def good_private() -> list[Any]:
    return ["n1", "p", "p1", 4, "ann", "bob", "action", "waves", 1.5, True, False]


@pytest.mark.parametrize(
    ("index", "value", "why"),
    [
        (0, "two words", "not a node name"),
        (0, 7, "not a node name"),
        (1, "z", "unknown form"),
        (1, None, "unknown form"),
        (2, "", "an id has 1 to 128"),
        (2, "x" * 129, "an id has 1 to 128"),
        (2, 5, "the id must be a string"),
        (3, "#A", "not spelled as rooms are"),
        (3, "a", "not spelled as rooms are"),
        (3, "#no way", "not a valid room"),
        (4, 0, "sequence number"),
        (4, MAX_SEQ + 1, "sequence number"),
        (4, True, "sequence number"),
        (4, 1.0, "sequence number"),
        (5, "not a name", "not a valid name"),
        (5, None, "the sender must be a string"),
        (6, "shout", "unknown kind"),
        (6, 1, "unknown kind"),
        (7, "x" * (MAX_TEXT + 1), f"at most {MAX_TEXT}"),
        (7, ["hi"], "the text must be a string"),
        (8, "now", "the time must be a finite number"),
        (8, True, "the time must be a finite number"),
        (9, 1, "'signed' must be true or false"),
    ],
)
def test_a_room_message_with_a_bad_field_is_refused(index: int, value: Any, why: str) -> None:
    """Each field is checked as the model checks it: a payload that decodes is a message a
    node could have stored."""
    items = good()
    items[index] = value
    with pytest.raises(BadPayload, match=why):
        decode(orjson.dumps(items))


@pytest.mark.parametrize(
    ("index", "value", "why"),
    [
        (3, -1, "sequence number"),
        (4, "a b", "not a valid name"),
        (5, "", "not a valid name"),
        (6, "join", "cannot be of kind 'join'"),
        (10, "yes", "'recipient_signed' must be true or false"),
    ],
)
def test_a_private_message_with_a_bad_field_is_refused(index: int, value: Any, why: str) -> None:
    """A private message's fields are checked too; it is a message or an action only."""
    items = good_private()
    items[index] = value
    with pytest.raises(BadPayload, match=why):
        decode(orjson.dumps(items))


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"", "not JSON"),
        (b"[1,", "not JSON"),
        (b'{"origin": "n1"}', "a JSON array"),
        (b'["n1"]', "a JSON array"),
        (orjson.dumps([*good(), "extra"]), "a room message has 10 items, not 11"),
        (orjson.dumps(good()[:-1]), "a room message has 10 items, not 9"),
        (orjson.dumps(good_private()[:-1]), "a private message has 11 items, not 10"),
        (b'["n1","m","x1","#a",1,"ann","message","hi",1e999,false]', "not JSON|finite"),
    ],
)
def test_a_payload_of_another_shape_is_refused(payload: bytes, why: str) -> None:
    """What is not one of the two arrays is refused, saying why."""
    with pytest.raises(BadPayload, match=why):
        decode(payload)


def test_a_private_message_decodes_as_one() -> None:
    """The private form gives a Private, every field in place."""
    envelope = decode(orjson.dumps(good_private()))
    assert envelope.origin == "n1"
    assert envelope.message == Private(
        id="p1",
        seq=4,
        sender="ann",
        recipient="bob",
        kind=Kind.ACTION,
        text="waves",
        ts=1.5,
        signed=True,
        recipient_signed=False,
    )


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "é", 'a"b'])
def test_a_node_name_is_checked(name: str) -> None:
    """A node's name goes into payloads as it is: only the characters that need no
    escaping, at most 64."""
    with pytest.raises(ValueError, match="cannot name a node"):
        node_name(name)
    assert node_name("web-1.example_2") == "web-1.example_2"
