"""What travels on the bus between nodes, sans I/O: stored messages as compact JSON arrays.

A node publishes each message once the store has given it its sequence number; every node
with members in the room (or sessions of the user) receives it. The payload is a JSON array,
not the client protocol's object: no key is repeated in every message, and the node of origin
comes first, so a node recognises its own publications by their first bytes (``own_prefix``)
without decoding them::

    [origin, "m", id, room, seq, sender, kind, text, ts, signed]                 room message
    [origin, "p", id, seq, sender, recipient, kind, text, ts, signed, recipient_signed]

The tag (``"m"``, ``"p"``) names the form: a later change of the form takes a new tag, and a
node that does not know it refuses the payload (``BadPayload``) and recovers the message from
the store by sequence number, as it does anything else it missed.

Anybody who can reach the bus's Redis can publish on it, so ``decode`` checks everything a
value of ``roomcast.model`` promises (names, room, kinds, sizes, sequence numbers) and
refuses the rest: a payload that decodes is a message a node could have stored.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from roomcast.errors import ClientError
from roomcast.model import MAX_SEQ, MAX_TEXT, Kind, Message, Private, room_name, user_name

__all__ = [
    "MAX_NODE",
    "MAX_PAYLOAD",
    "BadPayload",
    "Envelope",
    "PayloadTooLarge",
    "decode",
    "encode",
    "node_name",
    "own_prefix",
]

MAX_NODE = 64  # characters in a node's name
# Bytes in one payload: the longest text (4,000 characters of up to 4 bytes in UTF-8, a line
# feed taking 2 as an escape) and the other fields fit in a quarter of it.
MAX_PAYLOAD = 64 * 1024
MAX_ID = 128  # characters in a message id (the hub's are 12 to 30)

_NODE = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_NODE}}}")
_KINDS: Final = {k.value: k for k in Kind}
_PRIVATE_KINDS: Final = frozenset({Kind.MESSAGE, Kind.ACTION})
_MESSAGE_FIELDS = 10  # items of a room message's array
_PRIVATE_FIELDS = 11  # items of a private message's array


class BadPayload(ValueError):
    """A payload from the bus is not a message this version can take; ``str`` says why."""


class PayloadTooLarge(BadPayload):
    """A payload from the bus is longer than the codec takes."""


def node_name(text: str) -> str:
    """Return ``text`` if it can name a node (1-64 ASCII letters, digits, ``_ - .``), else
    raise ``ValueError``: a node's name goes into payloads and Redis client names as is."""
    if not _NODE.fullmatch(text):
        raise ValueError(
            f"{text[:80]!r} cannot name a node: use 1-{MAX_NODE} letters, digits, '_', '-' or '.'"
        )
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A message received from the bus, and the node that published it."""

    origin: str  # the publishing node's name
    message: Message | Private  # as stored, with its sequence number


def own_prefix(node: str) -> bytes:
    """The first bytes of every payload ``node`` publishes: a node compares a payload's
    start with its own prefix to skip what it published itself, without decoding it."""
    return b'["' + node_name(node).encode("ascii") + b'",'


def encode(origin: str, message: Message | Private) -> bytes:
    """The payload for ``message`` published by the node ``origin``. ``origin`` must be a
    valid node name (``node_name``); the caller checks it once, not per message."""
    if isinstance(message, Message):
        return orjson.dumps(
            [
                origin,
                "m",
                message.id,
                message.room,
                message.seq,
                message.sender,
                message.kind.value,
                message.text,
                message.ts,
                message.signed,
            ]
        )
    return orjson.dumps(
        [
            origin,
            "p",
            message.id,
            message.seq,
            message.sender,
            message.recipient,
            message.kind.value,
            message.text,
            message.ts,
            message.signed,
            message.recipient_signed,
        ]
    )


def decode(payload: bytes, *, max_size: int = MAX_PAYLOAD) -> Envelope:
    """The message a payload carries, with its origin; ``BadPayload`` saying what is wrong
    when it is not one (``PayloadTooLarge`` past ``max_size`` bytes, checked first)."""
    if len(payload) > max_size:
        raise PayloadTooLarge(f"a payload of {len(payload)} bytes; at most {max_size}")
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise BadPayload(f"not JSON: {e}") from None
    if not isinstance(items, list) or len(items) < 2:
        raise BadPayload("a payload is a JSON array of at least two items")
    origin, tag = items[0], items[1]
    if not isinstance(origin, str) or not _NODE.fullmatch(origin):
        raise BadPayload(f"the origin {str(origin)[:80]!r} is not a node name")
    try:
        if tag == "m":
            return Envelope(origin=origin, message=_message(items))
        if tag == "p":
            return Envelope(origin=origin, message=_private(items))
    except ClientError as e:  # a name, a room or a sequence number was refused
        raise BadPayload(e.message) from None
    raise BadPayload(f"unknown form {str(tag)[:20]!r}")


def _message(items: list[Any]) -> Message:
    if len(items) != _MESSAGE_FIELDS:
        raise BadPayload(f"a room message has {_MESSAGE_FIELDS} items, not {len(items)}")
    _, _, id_, room, seq, sender, kind, text, ts, signed = items
    room = _str(room, "room")
    if room_name(room) != room:
        raise BadPayload(f"the room {room[:40]!r} is not spelled as rooms are")
    return Message(
        id=_id(id_),
        room=room,
        seq=_seq(seq),
        sender=user_name(_str(sender, "sender")),
        kind=_kind(kind),
        text=_text(text),
        ts=_ts(ts),
        signed=_bool(signed, "signed"),
    )


def _private(items: list[Any]) -> Private:
    if len(items) != _PRIVATE_FIELDS:
        raise BadPayload(f"a private message has {_PRIVATE_FIELDS} items, not {len(items)}")
    _, _, id_, seq, sender, recipient, kind, text, ts, signed, recipient_signed = items
    kind = _kind(kind)
    if kind not in _PRIVATE_KINDS:
        raise BadPayload(f"a private message cannot be of kind {kind.value!r}")
    return Private(
        id=_id(id_),
        seq=_seq(seq),
        sender=user_name(_str(sender, "sender")),
        recipient=user_name(_str(recipient, "recipient")),
        kind=kind,
        text=_text(text),
        ts=_ts(ts),
        signed=_bool(signed, "signed"),
        recipient_signed=_bool(recipient_signed, "recipient_signed"),
    )


def _str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadPayload(f"the {what} must be a string")
    return value


def _id(value: Any) -> str:
    text = _str(value, "id")
    if not 0 < len(text) <= MAX_ID:
        raise BadPayload(f"an id has 1 to {MAX_ID} characters, not {len(text)}")
    return text


def _seq(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEQ:
        raise BadPayload(f"a sequence number is a whole number from 1 to {MAX_SEQ}")
    return value


def _kind(value: Any) -> Kind:
    kind = _KINDS.get(value) if isinstance(value, str) else None
    if kind is None:
        raise BadPayload(f"unknown kind {str(value)[:20]!r}")
    return kind


def _text(value: Any) -> str:
    text = _str(value, "text")
    if len(text) > MAX_TEXT:
        raise BadPayload(f"a text of {len(text)} characters; at most {MAX_TEXT}")
    return text


def _ts(value: Any) -> float:
    # orjson reads 1.0 as a float and 1 as an int: both are times
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadPayload("the time must be a finite number")
    return float(value)


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadPayload(f"{what!r} must be true or false")
    return value
