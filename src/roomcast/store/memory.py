"""A store that keeps history in memory only: the ephemeral mode, and the hub's tests.

Each room keeps its newest ``keep`` messages; everything is gone when the process ends.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from roomcast.model import Draft, Message, Private, PrivateDraft
from roomcast.store.base import Page, RoomInfo

__all__ = ["MemoryStore"]


class _Room:
    __slots__ = ("latest", "messages")

    def __init__(self, keep: int) -> None:
        self.messages: deque[Message] = deque(maxlen=keep)  # newest `keep`, oldest first
        self.latest = 0  # seq of the newest message ever appended

    @property
    def oldest(self) -> int:
        return self.messages[0].seq if self.messages else self.latest + 1


class MemoryStore:
    """An in-process ``Store``: same contract, no durability."""

    def __init__(self, *, keep: int = 10_000) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._keep = keep  # messages kept per room
        self._rooms: dict[str, _Room] = {}  # room name -> its history
        self._privates: deque[Private] = deque(maxlen=keep)  # newest private messages
        self._private_seq = 0  # seq of the newest private message

    def _room(self, room: str) -> _Room:
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = _Room(self._keep)
        return r

    async def room(self, room: str) -> RoomInfo:
        r = self._room(room)
        return RoomInfo(room=room, latest_seq=r.latest, oldest_seq=r.oldest)

    async def append(self, draft: Draft) -> Message:
        r = self._room(draft.room)
        r.latest += 1
        message = draft.with_seq(r.latest)
        r.messages.append(message)
        return message

    async def append_private(self, draft: PrivateDraft) -> Private:
        self._private_seq += 1
        private = draft.with_seq(self._private_seq)
        self._privates.append(private)
        return private

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        r = self._room(room)
        oldest = r.oldest
        lo = oldest if after is None else max(oldest, after + 1)
        hi = r.latest + 1 if before is None else min(r.latest + 1, before)
        if after is None:
            lo = max(lo, hi - limit)
        else:
            hi = min(hi, lo + limit)
        held = list(r.messages)
        picked = tuple(held[lo - oldest : hi - oldest]) if lo < hi else ()
        return Page(room=room, messages=picked, oldest_seq=oldest, latest_seq=r.latest)

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        terms = words.lower().split()
        found = [
            m
            for m in reversed(self._room(room).messages)
            if all(t in m.text.lower() for t in terms)
        ]
        return found[:limit]

    async def close(self) -> None:
        return None
