"""WebSocket frames from the server, sans I/O: the JSON protocol's payloads, framed once.

Frames from a server are not masked (RFC 6455, 5.1), so the frame of a payload is the same
bytes on every connection. A room's run of messages is encoded once for every member
(``EncodedMessages.run``); ``Frames`` frames that shared payload once too, and every member is
written the very same bytes: the fan-out's cost per member is a lookup and a write, whatever
the protocol. The framing itself is the ``websockets`` library's (``Frame.serialize``).
"""

from __future__ import annotations

from collections.abc import Sequence

from websockets.frames import Close, Frame, Opcode

from roomcast.model import Event
from roomcast.wire.cache import DEFAULT_CACHE_BYTES, EncodedMessages, Memo
from roomcast.wire.json import JsonCodec

__all__ = ["MAX_CLOSE_REASON", "Frames", "close_frame", "text_frame"]

MAX_CLOSE_REASON = 123  # bytes of reason a close frame holds (a control frame's 125, less the code)


def text_frame(payload: bytes) -> bytes:
    """One unmasked text frame holding ``payload`` (UTF-8 JSON)."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False)


def close_frame(code: int, reason: str) -> bytes:
    """One unmasked close frame with ``code`` and ``reason`` (cut to ``MAX_CLOSE_REASON`` bytes,
    on a character boundary)."""
    text = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
    return Frame(Opcode.CLOSE, Close(code, text).serialize()).serialize(mask=False)


class Frames:
    """The text frame of a list of events, for one connection or, shared, for many.

    A run of one room's messages is a payload shared by every member that reads it
    (``EncodedMessages.run``): its frame is built once and kept in a small memo keyed by that
    payload. Anything else (replies, private messages, mixed batches) is framed on its own.
    """

    def __init__(
        self,
        codec: JsonCodec,
        messages: EncodedMessages,
        size: int = 64,
        max_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._codec = codec  # encodes what is not shared
        self._messages = messages  # the shared encodings of room messages and runs
        # id(shared payload) -> (that payload, its frame), for the last few loop turns: at
        # most ``size`` frames and ``max_bytes`` of frames and payloads (roomcast.wire.cache).
        # The payload is held, so the id cannot be reused by another object while the
        # entry lives.
        self._memo = Memo[int, tuple[bytes, bytes]](max_entries=size, max_bytes=max_bytes)

    def __call__(self, events: Sequence[Event]) -> bytes:
        """The frame of ``events`` (one event, or a ``batch`` of several)."""
        shared = self._messages.run(events)
        if shared is None:
            return text_frame(self._codec.encode(events))
        hit = self._memo.get(id(shared))
        if hit is not None and hit[0] is shared:
            return hit[1]
        frame = text_frame(shared)
        self._memo.put(id(shared), (shared, frame), len(shared) + len(frame))
        return frame

    def replies(self, payloads: Sequence[bytes]) -> bytes:
        """The frames of ``payloads``, one each, as one write."""
        if len(payloads) == 1:
            return text_frame(payloads[0])
        return b"".join([text_frame(p) for p in payloads])
