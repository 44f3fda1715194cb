"""One encoding per message per wire format, shared by every connection of that format.

Every memo here is bounded twice: by entries, and by the bytes it holds (``max_bytes``).
The entry bounds alone let big messages cost a lot: with 4 KB messages, 4,096 encodings per
format and 256 joined runs of up to a batch (512 messages, 2 MB) each could hold hundreds of
megabytes. The byte bound (``DEFAULT_CACHE_BYTES``, ``--cache-bytes``) caps that, whatever
the messages' size. The newest entry is always kept, even one bigger than the whole bound
(a batch of the biggest messages): the members that read it in the same loop turn must
share it, or each would build it again. Forgetting an entry is never seen by a client: it
is encoded again when next asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar, cast

from roomcast.model import Event, Message

__all__ = ["DEFAULT_CACHE_BYTES", "ENTRY_OVERHEAD", "EncodedMessages", "Memo"]

# 4 MiB: about a room's ring (1,024 messages) of 4 KB messages, and 4,096 (the entry
# bound) ordinary ones of a few hundred bytes, so that ordinary traffic is cached as before;
# and two full batches of 4 KB messages for the runs. A server has three such caches (line
# with and without timestamps, JSON), each with its runs, and the WebSocket frames: 28 MiB
# at most, plus one entry each above its bound.
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024
ENTRY_OVERHEAD = 128  # bytes an entry costs besides its data: key, bytes header, dict slot

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """A dictionary that forgets its oldest entries past ``max_entries`` entries or
    ``max_bytes`` bytes (each entry's ``cost``, plus ``ENTRY_OVERHEAD``); the newest entry
    always stays."""

    __slots__ = ("_costs", "_data", "bytes", "get", "max_bytes", "max_entries")

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries  # entries kept
        self.max_bytes = max_bytes  # bytes kept (but the newest entry, whatever its size)
        self.bytes = 0  # what the entries cost now
        self._data: dict[K, V] = {}  # oldest first
        self._costs: dict[K, int] = {}  # what each entry counts for
        # The value under a key, or None: the dict's own get, so that a lookup (once per
        # member per delivery) costs no Python call.
        self.get: Callable[[K], V | None] = self._data.get

    def put(self, key: K, value: V, cost: int) -> None:
        """Keep ``value`` under ``key``, counting ``cost`` bytes; forget the oldest entries
        until the bounds hold or only this one is left."""
        data, costs = self._data, self._costs
        if key in data:
            self.bytes -= costs.pop(key)
            del data[key]
        cost += ENTRY_OVERHEAD
        data[key] = value
        costs[key] = cost
        self.bytes += cost
        while len(data) > 1 and (len(data) > self.max_entries or self.bytes > self.max_bytes):
            oldest = next(iter(data))
            del data[oldest]
            self.bytes -= costs.pop(oldest)

    def __len__(self) -> int:
        return len(self._data)


class EncodedMessages:
    """A bounded memo of ``encode(message)`` keyed by message id: a room message is encoded
    once and the same bytes go to every member. The oldest entry goes first when full.

    Runs are memoized too: members that read the same slice of a room's ring in one loop
    turn (the usual case in a busy room) get the very same joined bytes, built once, so a
    delivery costs a dictionary lookup per member, not work per message per member.

    Messages and runs are each bounded by ``size`` and 256 entries and by ``max_bytes``.
    """

    def __init__(
        self,
        encode: Callable[[Message], bytes],
        *,
        size: int = 4096,
        max_bytes: int = DEFAULT_CACHE_BYTES,
        join: Callable[[list[bytes]], bytes] = b"".join,
    ) -> None:
        self._encode = encode  # the format's encoder for one room message
        self._join = join  # how the format puts several encoded messages in one write
        self.messages = Memo[str, bytes](max_entries=size, max_bytes=max_bytes)  # id -> bytes
        # (first id, length) -> joined bytes: those of the last few loop turns
        self.runs = Memo[tuple[str, int], bytes](max_entries=min(size, 256), max_bytes=max_bytes)

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
        data = self.runs.get(key)
        if data is None:
            messages = cast(Sequence[Message], events)  # checked above: one room's run
            data = self._join([self(m) for m in messages])
            self.runs.put(key, data, len(data))
        return data

    def __call__(self, message: Message) -> bytes:
        data = self.messages.get(message.id)
        if data is None:
            data = self._encode(message)
            self.messages.put(message.id, data, len(data))
        return data
