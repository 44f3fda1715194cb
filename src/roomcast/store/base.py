"""The store interface: the hub's only view of durable storage.

The hub never sees SQL. It talks to a ``Store``; each implementation (``memory``, ``sqlite``,
later ``postgresql``) lives in its own module, is chosen by URL scheme (``open_store``), and
translates its driver's exceptions into ``roomcast.errors.Broken`` at this seam.

Sequence numbers: the store gives each room message the room's next gap-free sequence number
(from 1) when it appends it, and ``append`` returns only once the message is durable, so a
sender's echo (its acknowledgement) always names a stored message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from roomcast.model import Draft, Message, Private, PrivateDraft

__all__ = ["Page", "RoomInfo", "Store"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInfo:
    """Where a room's stored history stands."""

    room: str  # '#name'
    latest_seq: int  # sequence number of the newest message; 0 when there is none
    oldest_seq: int  # sequence number of the oldest message still kept; latest_seq + 1 if none


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """A slice of a room's history, oldest first."""

    room: str
    messages: tuple[Message, ...]  # in sequence order
    oldest_seq: int  # oldest message still kept: anything below was cut by retention
    latest_seq: int  # newest message in the room


class Store(Protocol):
    """Durable room history. Every method may raise ``Broken`` when the storage fails."""

    async def room(self, room: str) -> RoomInfo:
        """Where ``room``'s history stands (a room never written to has ``latest_seq`` 0)."""
        ...

    async def append(self, draft: Draft) -> Message:
        """Store ``draft`` under its room's next sequence number; return once it is durable."""
        ...

    async def append_private(self, draft: PrivateDraft) -> Private:
        """Store a private message under the next store-wide private sequence number."""
        ...

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        """Up to ``limit`` messages with ``seq < before``, or ``seq > after``, oldest first.

        With neither bound, the newest ``limit`` messages. ``before`` and ``after`` together
        are a range. The page is always returned in sequence order.
        """
        ...

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        """Up to ``limit`` messages of ``room`` containing ``words``, newest first."""
        ...

    async def close(self) -> None:
        """Flush what is pending and release the storage. Idempotent."""
        ...
