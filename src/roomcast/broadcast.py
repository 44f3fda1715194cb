"""A bounded, multi-producer, multi-consumer broadcast channel for asyncio.

Theory of operation
-------------------
One private ``_Shared`` state holds a ring of at most ``capacity`` slots (it grows as values
come, so an idle channel costs nothing, then wraps). Every sent value is stored exactly once,
in slot ``(seq - first_seq) % capacity``, and gets the next gap-free sequence number. The
ring holds the newest ``capacity`` values: the oldest held value is
``max(first_seq, tail - capacity)`` where ``tail`` is the next sequence number to assign.

A ``Receiver`` is nothing but a cursor (the next sequence number it will read) into that ring.
Receivers never copy values and never hold a queue, so memory is bounded by ``capacity``
whatever the number of receivers or how slow they are. A receiver whose cursor has been
overtaken by the ring (its next value was overwritten) gets ``Lagged`` with the exact missed
range, and its cursor jumps to the oldest value still held: loss is never silent.

Senders never wait. ``send`` writes one slot, bumps ``tail`` and wakes the receivers that are
parked waiting for a value (each parked receiver registered one callback). The cost is O(1)
plus one call per parked receiver; receivers that are busy elsewhere cost nothing.

Waiting is cancel-safe: ``recv`` parks on a future of its own and consumes a value only after
it resumes, so a cancelled ``recv`` consumes nothing. The same parking mechanism is public as
``Receiver.notify``, so one task can wait on many receivers with a single ``asyncio.Event``.

The channel is closed when every ``Sender`` handle is closed. Receivers then drain what the
ring still holds for them and get ``Closed``. Values must be immutable for receivers to be
isolated from each other: the channel hands the same object to every receiver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

__all__ = [
    "BroadcastError",
    "Closed",
    "Empty",
    "Lagged",
    "Receiver",
    "Sender",
    "Statistics",
    "channel",
]

T = TypeVar("T")


# --- errors -------------------------------------------------------------------------------


class BroadcastError(Exception):
    """Root of the errors this module raises."""


class Closed(BroadcastError):
    """The channel (or this endpoint) is closed and nothing is left to read."""

    def __str__(self) -> str:
        return "the broadcast channel is closed"


class Empty(BroadcastError):
    """``try_recv`` found no value ready; ``recv`` would have waited."""

    def __str__(self) -> str:
        return "no value is ready"


class Lagged(BroadcastError):
    """This receiver fell behind: ``count`` values from ``first_missed_seq`` were overwritten.

    The receiver has already moved on: its next value is ``next_seq``, the oldest one held.
    """

    def __init__(self, first_missed_seq: int, count: int) -> None:
        super().__init__(first_missed_seq, count)
        self.first_missed_seq = first_missed_seq  # sequence number of the first lost value
        self.count = count  # how many consecutive values were lost

    @property
    def next_seq(self) -> int:
        """The sequence number the receiver reads next."""
        return self.first_missed_seq + self.count

    def __str__(self) -> str:
        last = self.first_missed_seq + self.count - 1
        return f"receiver lagged: missed {self.count} values (seq {self.first_missed_seq}-{last})"


# --- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """A snapshot of a channel's state."""

    capacity: int  # ring size, fixed at creation
    held: int  # values currently held in the ring
    receivers: int  # open receivers
    senders: int  # open sender handles
    sent: int  # values sent since creation
    lag_events: int  # times any receiver was told it lagged
    next_seq: int  # sequence number the next value will get


# --- shared state -------------------------------------------------------------------------


class _Shared(Generic[T]):
    """State shared by every endpoint of one channel. Private: use the endpoints."""

    __slots__ = (
        "capacity",
        "first_seq",
        "lag_events",
        "parked",
        "receivers",
        "ring",
        "senders",
        "tail",
    )

    def __init__(self, capacity: int, first_seq: int) -> None:
        self.capacity = capacity  # number of slots in the ring
        # the value of seq s is ring[(s - first_seq) % capacity]; the list grows as values
        # come, up to capacity (an idle channel costs no slots), then wraps
        self.ring: list[T] = []
        self.first_seq = first_seq  # sequence number of the first value ever sent
        self.tail = first_seq  # sequence number the next sent value gets
        self.senders = 1  # open Sender handles; 0 means closed
        self.receivers = 0  # open Receivers
        self.lag_events = 0  # Lagged raised so far, all receivers together
        # receivers waiting for the next value -> the callback that wakes each one
        self.parked: dict[Receiver[T], Callable[[], None]] = {}

    @property
    def oldest(self) -> int:
        """Sequence number of the oldest value still held."""
        return max(self.first_seq, self.tail - self.capacity)

    def wake_all(self) -> None:
        if self.parked:
            parked, self.parked = self.parked, {}
            for wake in parked.values():
                wake()


# --- endpoints ----------------------------------------------------------------------------


def channel(capacity: int, *, first_seq: int = 0) -> tuple[Sender[T], Receiver[T]]:
    """Create a channel holding the newest ``capacity`` values.

    Returns the first sender and a receiver that starts at the first value. ``first_seq`` is the
    sequence number the first value gets (a chat room continues from its stored history).
    """
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")
    if first_seq < 0:
        raise ValueError(f"first_seq must not be negative, got {first_seq}")
    shared: _Shared[T] = _Shared(capacity, first_seq)
    return Sender(shared), Receiver(shared, first_seq)


class Sender(Generic[T]):
    """A handle that sends into the channel. Clone it to have many producers.

    Each handle is closed once; the channel closes when the last open handle closes.
    """

    __slots__ = ("_closed", "_shared")

    def __init__(self, shared: _Shared[T]) -> None:
        self._shared = shared  # the channel this handle sends into
        self._closed = False  # this handle was closed (the channel may still be open)

    def send(self, value: T) -> int:
        """Store ``value`` under the next sequence number and wake the waiting receivers.

        Never waits. Returns the number of receivers subscribed when it was sent: 0 is allowed
        (the value is still held for receivers that subscribe from a past sequence number).
        Raises ``Closed`` if this handle is closed.
        """
        if self._closed:
            raise Closed
        s = self._shared
        k = s.tail - s.first_seq
        if k < s.capacity:  # the ring is still filling: it grows to its capacity, then wraps
            s.ring.append(value)
        else:
            s.ring[k % s.capacity] = value
        s.tail += 1
        if s.parked:
            s.wake_all()
        return s.receivers

    @property
    def next_seq(self) -> int:
        """The sequence number the next sent value gets."""
        return self._shared.tail

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest value still held (``next_seq`` when none is)."""
        return self._shared.oldest

    @property
    def closed(self) -> bool:
        """Whether this handle is closed."""
        return self._closed

    def clone(self) -> Sender[T]:
        """Return a new open handle to the same channel."""
        if self._closed:
            raise Closed
        self._shared.senders += 1
        return Sender(self._shared)

    def subscribe(self, from_seq: int | None = None) -> Receiver[T]:
        """Return a receiver that starts at the next value, or at ``from_seq``.

        ``from_seq`` may name a past value; if it is no longer held, the receiver's first read
        raises ``Lagged`` for the values between ``from_seq`` and the oldest held one.
        It may not be in the future: ``ValueError``.
        """
        s = self._shared
        start = s.tail if from_seq is None else from_seq
        if not s.first_seq <= start <= s.tail:
            raise ValueError(
                f"from_seq must be between {s.first_seq} and {s.tail} (next_seq), got {start}"
            )
        return Receiver(s, start)

    def close(self) -> None:
        """Close this handle. Closing the last open one closes the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        s = self._shared
        s.senders -= 1
        if s.senders == 0:
            s.wake_all()

    def statistics(self) -> Statistics:
        """A snapshot of the channel's state."""
        s = self._shared
        return Statistics(
            capacity=s.capacity,
            held=s.tail - s.oldest,
            receivers=s.receivers,
            senders=s.senders,
            sent=s.tail - s.first_seq,
            lag_events=s.lag_events,
            next_seq=s.tail,
        )

    def __enter__(self) -> Sender[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Sender {state} next_seq={self._shared.tail}>"


class Receiver(Generic[T]):
    """A cursor into the channel: reads every value in sequence order, once.

    Only one task may wait on a receiver at a time.
    """

    __slots__ = ("_closed", "_next", "_shared", "start_seq", "__weakref__")

    def __init__(self, shared: _Shared[T], start: int) -> None:
        self._shared = shared  # the channel this receiver reads from
        self._next = start  # sequence number of the next value to read
        self.start_seq = start  # the sequence number it started reading at
        self._closed = False  # released by close()
        shared.receivers += 1

    # -- reading without waiting --

    def _check_lag(self) -> None:
        s = self._shared
        oldest = s.oldest
        if self._next < oldest:
            missed = Lagged(self._next, oldest - self._next)
            self._next = oldest
            s.lag_events += 1
            raise missed

    def try_recv(self) -> tuple[int, T]:
        """Return the next ``(seq, value)`` without waiting.

        Raises ``Lagged`` if values were lost (the next call reads on), ``Empty`` if nothing is
        ready, ``Closed`` if the channel is closed and drained or this receiver is closed.
        """
        if self._closed:
            raise Closed
        self._check_lag()
        s = self._shared
        seq = self._next
        if seq < s.tail:
            self._next = seq + 1
            return seq, s.ring[(seq - s.first_seq) % s.capacity]
        if s.senders == 0:
            raise Closed
        raise Empty

    def try_recv_many(self, max_count: int) -> tuple[int, list[T]]:
        """Return ``(first_seq, values)``: up to ``max_count`` consecutive ready values.

        The values have sequence numbers ``first_seq, first_seq + 1, ...``. Raises like
        ``try_recv`` when no value is ready.
        """
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {max_count}")
        if self._closed:
            raise Closed
        self._check_lag()
        s = self._shared
        first = self._next
        stop = min(s.tail, first + max_count)
        if first == stop:
            if s.senders == 0:
                raise Closed
            raise Empty
        self._next = stop
        cap = s.capacity
        lo, hi = (first - s.first_seq) % cap, (stop - s.first_seq) % cap
        ring = s.ring
        if lo < hi or hi == 0:
            values = ring[lo : hi or cap]
        else:
            values = ring[lo:] + ring[:hi]
        return first, values

    def take(self, max_count: int) -> list[T]:
        """Up to ``max_count`` consecutive ready values, oldest first; an empty list when none
        is ready, the channel being open or closed. Raises ``Lagged`` like ``try_recv``.

        ``try_recv_many`` for loops over many receivers (the fan-out's fast path): nothing is
        raised for a receiver with nothing to read, and the sequence number is not returned.
        """
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, got {max_count}")
        s = self._shared
        first, tail = self._next, s.tail
        if first >= tail or self._closed:
            return []
        if first < tail - s.capacity or first < s.first_seq:
            self._check_lag()  # raises: values were lost
        stop = min(tail, first + max_count)
        self._next = stop
        cap = s.capacity
        lo, hi = (first - s.first_seq) % cap, (stop - s.first_seq) % cap
        ring = s.ring
        if lo < hi or hi == 0:
            return ring[lo : hi or cap]
        return ring[lo:] + ring[:hi]

    # -- waiting --

    def notify(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, as soon as a value is ready or the channel closes.

        If one is ready now (or a lag or close is pending), it is called at once. Otherwise it is
        called from the next ``send`` or the last sender's ``close``. A later ``notify`` or
        ``recv`` on this receiver replaces it. This lets one task wait on many receivers.
        """
        s = self._shared
        if self._closed or self._next < s.tail or s.senders == 0:  # self.ready(), inlined
            callback()
        else:
            s.parked[self] = callback

    def ready(self) -> bool:
        """Whether a read would not wait: a value, a lag or a close is pending."""
        s = self._shared
        return self._closed or self._next < s.tail or s.senders == 0

    async def _wait(self) -> None:
        s = self._shared
        current = s.parked.get(self)
        if isinstance(current, _Wake) and not current.fut.done():
            raise RuntimeError("another task is already waiting on this receiver")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wake = _Wake(fut)
        s.parked[self] = wake
        try:
            await fut
        finally:
            if s.parked.get(self) is wake:
                del s.parked[self]

    async def recv(self) -> tuple[int, T]:
        """Wait for the next value and return ``(seq, value)``.

        Raises ``Lagged`` (then reads on), or ``Closed``. Cancel-safe: a cancelled call
        consumes nothing.
        """
        while True:
            try:
                return self.try_recv()
            except Empty:
                await self._wait()

    async def recv_many(self, max_count: int) -> tuple[int, list[T]]:
        """Wait until a value is ready, then return every ready value, up to ``max_count``.

        Returns ``(first_seq, values)`` as ``try_recv_many``. Cancel-safe.
        """
        while True:
            try:
                return self.try_recv_many(max_count)
            except Empty:
                await self._wait()

    # -- bookkeeping --

    @property
    def next_seq(self) -> int:
        """The sequence number this receiver reads next."""
        return self._next

    def __len__(self) -> int:
        """How many values are held and not yet read by this receiver."""
        s = self._shared
        return s.tail - max(self._next, s.oldest)

    def close(self) -> None:
        """Release this receiver. Idempotent; later reads raise ``Closed``."""
        if self._closed:
            return
        self._closed = True
        s = self._shared
        s.receivers -= 1
        wake = s.parked.pop(self, None)
        if wake is not None:
            wake()

    @property
    def closed(self) -> bool:
        """Whether this receiver was closed."""
        return self._closed

    def __aiter__(self) -> Receiver[T]:
        return self

    async def __anext__(self) -> tuple[int, T]:
        """Next ``(seq, value)``; iteration ends when the channel is closed and drained.

        ``Lagged`` propagates out of the ``async for``; the receiver has moved on, so the caller
        may note the gap and iterate again.
        """
        try:
            return await self.recv()
        except Closed:
            raise StopAsyncIteration from None

    def __repr__(self) -> str:
        return f"<Receiver next_seq={self._next} ready={len(self)}>"


class _Wake:
    """The callback a parked ``recv`` registers: resolves its own future once."""

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut  # the future the waiting task awaits

    def __call__(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)
