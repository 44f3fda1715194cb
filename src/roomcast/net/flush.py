"""Flushing: how the line and WebSocket listeners deliver, without a task per connection.

A connection whose session has something ready is marked; ``Flusher.flush`` then pumps
every marked connection, once per loop turn at most, in the order they were marked: each
pump writes everything ready for that connection in one write. After a flush that took t
seconds the next one waits min(t, gap): with thousands of members a flush takes
milliseconds, and flushes back to back would make every other step of every message
(reading it, storing it, broadcasting it) wait for a whole flush. The gap lets those steps
run, and the next flush carries more per write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, Protocol, TypeVar

__all__ = ["Flusher", "Pumped"]


class Pumped(Hashable, Protocol):
    """A connection the flusher can pump."""

    def pump(self) -> None:
        """Write what is ready for this connection, in one write."""
        ...


C = TypeVar("C", bound=Pumped)


class Flusher(Generic[C]):
    """The connections to pump at the next flush, and when that flush runs."""

    def __init__(self, gap: float, failed: Callable[[C, Exception], None]) -> None:
        self._gap = gap  # most seconds between two flushes, as long as the last one took
        self._failed = failed  # told of a pump that raised: a bug costs that connection only
        self._marked: dict[C, None] = {}  # to pump at the next flush, in the order marked
        self._scheduled = False  # a flush is due
        self._next = 0.0  # loop time before which no flush starts

    def mark(self, conn: C) -> None:
        """Pump ``conn`` at the next flush."""
        self._marked[conn] = None
        if not self._scheduled:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            wait = self._next - loop.time()
            if wait > 0:
                loop.call_later(wait, self.flush)
            else:
                loop.call_soon(self.flush)

    def forget(self, conn: C) -> None:
        """Do not pump ``conn`` (it closed)."""
        self._marked.pop(conn, None)

    def flush(self) -> None:
        """Pump every marked connection: one write each."""
        marked, self._marked = self._marked, {}
        self._scheduled = False
        loop = asyncio.get_running_loop()
        start = loop.time()
        for conn in marked:
            try:
                conn.pump()
            except Exception as e:
                self._failed(conn, e)
        took = loop.time() - start
        self._next = start + took + min(took, self._gap)
