"""One encoding per message per wire format, shared by every connection of that format."""

from __future__ import annotations

from collections.abc import Callable

from roomcast.model import Message

__all__ = ["EncodedMessages"]


class EncodedMessages:
    """A bounded memo of ``encode(message)`` keyed by message id: a room message is encoded
    once and the same bytes go to every member. The oldest entry goes first when full."""

    def __init__(self, encode: Callable[[Message], bytes], size: int = 4096) -> None:
        self._encode = encode  # the format's encoder for one room message
        self._size = size  # entries kept
        self._cache: dict[str, bytes] = {}  # message id -> its bytes, oldest first

    def __call__(self, message: Message) -> bytes:
        data = self._cache.get(message.id)
        if data is None:
            data = self._encode(message)
            cache = self._cache
            if len(cache) >= self._size:
                del cache[next(iter(cache))]
            cache[message.id] = data
        return data
