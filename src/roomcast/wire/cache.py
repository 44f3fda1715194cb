"""One encoding per message per wire format, shared by every connection of that format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from roomcast.model import Event, Message

__all__ = ["EncodedMessages"]


class EncodedMessages:
    """A bounded memo of ``encode(message)`` keyed by message id: a room message is encoded
    once and the same bytes go to every member. The oldest entry goes first when full.

    Runs are memoized too: members that read the same slice of a room's ring in one loop
    turn (the usual case in a busy room) get the very same joined bytes, built once, so a
    delivery costs a dictionary lookup per member, not work per message per member.
    """

    def __init__(
        self,
        encode: Callable[[Message], bytes],
        size: int = 4096,
        *,
        join: Callable[[list[bytes]], bytes] = b"".join,
    ) -> None:
        self._encode = encode  # the format's encoder for one room message
        self._join = join  # how the format puts several encoded messages in one write
        self._size = size  # entries kept
        self._cache: dict[str, bytes] = {}  # message id -> its bytes, oldest first
        self._runs: dict[tuple[str, int], bytes] = {}  # (first id, length) -> joined bytes
        self._runs_size = min(size, 256)  # runs kept: those of the last few loop turns

    def run(self, events: Sequence[Event]) -> bytes | None:
        """The joined bytes of ``events`` if they are consecutive messages of one room (so
        the first message and the length name them), else ``None``."""
        first, last = events[0], events[-1]
        if type(first) is not Message or type(last) is not Message:
            return None
        count = len(events)
        if count == 1:
            return self(first)
        if first.room != last.room or last.seq - first.seq + 1 != count:
            return None
        key = (first.id, count)
        data = self._runs.get(key)
        if data is None:
            messages = cast(Sequence[Message], events)  # checked above: one room's run
            data = self._join([self(m) for m in messages])
            runs = self._runs
            if len(runs) >= self._runs_size:
                del runs[next(iter(runs))]
            runs[key] = data
        return data

    def __call__(self, message: Message) -> bytes:
        data = self._cache.get(message.id)
        if data is None:
            data = self._encode(message)
            cache = self._cache
            if len(cache) >= self._size:
                del cache[next(iter(cache))]
            cache[message.id] = data
        return data
