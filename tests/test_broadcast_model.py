"""Model-based tests of the broadcast channel (``roomcast.broadcast``).

``ChannelMachine`` drives the synchronous API through any interleaving of sends, reads,
subscribes and closes, and predicts every outcome with a reference model a few lines long.
``test_cancelled_reads_consume_nothing`` plays a drawn schedule of ``recv``/``recv_many`` tasks,
cancels, sends and single loop steps, so reads are cancelled at any point of their life (not
started, parked, woken but not resumed).

Both check the channel's promise to each receiver through ``Cover``: the seqs it reads and the
ranges ``Lagged`` reports form one contiguous run from where it started, in order, each value
at most once; nothing is lost silently and a cancelled read consumes nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)

from roomcast.broadcast import Closed, Empty, Lagged, Receiver, Sender, channel

SETTINGS = settings(max_examples=200, stateful_step_count=40, deadline=None)

index = st.integers(min_value=0, max_value=1_000)  # taken modulo the length of a list


class Cover:
    """What one receiver has been told so far: a contiguous run of seqs from its start."""

    def __init__(self, start: int, values: dict[int, object]) -> None:
        self.start = start  # the seq the receiver started at
        self.until = start  # every seq below this was either read or reported lost
        self.values = values  # seq -> the object sent under it (shared with the test)
        self.lost = 0  # values reported lost by Lagged

    def got(self, seq: int, value: object) -> None:
        """The receiver read ``value`` as ``seq``: it must be the next seq and the object sent."""
        assert seq == self.until, f"read seq {seq}, expected {self.until}"
        assert value is self.values[seq], f"seq {seq} carried the wrong object"
        self.until += 1

    def got_many(self, first: int, values: list[object]) -> None:
        """The receiver read a batch starting at ``first``."""
        assert values, "a batch is never empty"
        for offset, value in enumerate(values):
            self.got(first + offset, value)

    def lagged(self, lag: Lagged, oldest: int) -> None:
        """The receiver was told it lost values: exactly those from ``until`` to ``oldest``."""
        assert lag.first_missed_seq == self.until, f"{lag} but expected seq {self.until} next"
        assert lag.count >= 1
        assert lag.next_seq == oldest, f"{lag} but the oldest held value is {oldest}"
        self.until = lag.next_seq
        self.lost += lag.count


# --- the synchronous API against a reference model ----------------------------------------


@dataclass
class ModelReceiver:
    """A receiver under test and what the model says about it."""

    rx: Receiver[object]
    cover: Cover
    closed: bool = False  # the model's view: close() was called


@dataclass
class ModelSender:
    """A sender handle under test and whether the model says it is open."""

    tx: Sender[object]
    open: bool = True


@dataclass
class Expect:
    """The outcome the model predicts for a read."""

    kind: str  # "closed", "lagged", "values" or "empty"
    first: int = 0  # first seq lost or read
    count: int = 0  # how many seqs lost or read


class ChannelMachine(RuleBasedStateMachine):
    """Any interleaving of the synchronous operations matches the reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[int, object] = {}  # seq -> object sent
        self.senders: list[ModelSender] = []
        self.receivers: list[ModelReceiver] = []
        self.capacity = 1
        self.first_seq = 0
        self.tail = 0  # model's next seq
        self.lag_events = 0  # model's count of Lagged raised

    @initialize(
        capacity=st.integers(min_value=1, max_value=8),
        first_seq=st.integers(min_value=0, max_value=20),
        k=st.integers(min_value=1, max_value=4),
    )
    def create(self, capacity: int, first_seq: int, k: int) -> None:
        tx: Sender[object]
        tx, rx = channel(capacity, first_seq=first_seq)
        self.capacity, self.first_seq, self.tail = capacity, first_seq, first_seq
        self.senders.append(ModelSender(tx))
        self.receivers.append(ModelReceiver(rx, Cover(first_seq, self.values)))
        for _ in range(k - 1):
            self.receivers.append(ModelReceiver(tx.subscribe(), Cover(first_seq, self.values)))

    # -- model --

    @property
    def oldest(self) -> int:
        return max(self.first_seq, self.tail - self.capacity)

    @property
    def open_senders(self) -> int:
        return sum(s.open for s in self.senders)

    @property
    def open_receivers(self) -> int:
        return sum(not r.closed for r in self.receivers)

    def expect(self, r: ModelReceiver, max_count: int) -> Expect:
        """What a read of up to ``max_count`` values on ``r`` must do."""
        if r.closed:
            return Expect("closed")
        start = r.cover.until
        if start < self.oldest:
            return Expect("lagged", start, self.oldest - start)
        if start < self.tail:
            return Expect("values", start, min(self.tail - start, max_count))
        if self.open_senders == 0:
            return Expect("closed")
        return Expect("empty")

    def check_read(self, r: ModelReceiver, max_count: int, how: str) -> None:
        """Read from ``r`` (``try_recv``, ``try_recv_many`` or ``take``) and check the outcome
        against the model."""
        want = self.expect(r, max_count)
        try:
            if how == "take":
                values = r.rx.take(max_count)
                if not values:  # take's word for both "empty" and "closed"
                    assert want.kind in ("empty", "closed"), f"take gave [], expected {want}"
                    return
                first = want.first
            elif how == "many":
                first, values = r.rx.try_recv_many(max_count)
            else:
                seq, value = r.rx.try_recv()
                first, values = seq, [value]
        except Lagged as lag:
            assert want.kind == "lagged", f"{lag}, expected {want}"
            assert (lag.first_missed_seq, lag.count) == (want.first, want.count)
            r.cover.lagged(lag, self.oldest)
            self.lag_events += 1
        except Closed:
            assert want.kind == "closed", f"Closed, expected {want}"
        except Empty:
            assert want.kind == "empty", f"Empty, expected {want}"
        else:
            assert want.kind == "values", f"read {first}, expected {want}"
            assert (first, len(values)) == (want.first, want.count)
            r.cover.got_many(first, values)

    # -- rules --

    @rule(i=index, n=st.integers(min_value=1, max_value=10))
    def send(self, i: int, n: int) -> None:
        s = self.senders[i % len(self.senders)]
        if not s.open:
            try:
                s.tx.send(object())
            except Closed:
                return
            raise AssertionError("send on a closed handle did not raise Closed")
        for _ in range(n):
            value = object()
            assert s.tx.next_seq == self.tail
            self.values[self.tail] = value
            assert s.tx.send(value) == self.open_receivers
            self.tail += 1

    @rule(
        i=index,
        max_count=st.integers(min_value=1, max_value=10),
        how=st.sampled_from(["one", "many", "take"]),
    )
    def read(self, i: int, max_count: int, how: str) -> None:
        """``try_recv``, ``try_recv_many`` or ``take`` on one receiver."""
        r = self.receivers[i % len(self.receivers)]
        self.check_read(r, 1 if how == "one" else max_count, how)

    @rule(i=index, offset=st.none() | st.integers(min_value=-30, max_value=3))
    def subscribe(self, i: int, offset: int | None) -> None:
        """Subscribe at the next value (``offset`` None) or from ``next_seq + offset``."""
        tx = self.senders[i % len(self.senders)].tx
        if offset is None:
            start, rx = self.tail, tx.subscribe()
            assert rx.next_seq == start
        elif offset > 0:
            try:
                tx.subscribe(from_seq=self.tail + offset)
            except ValueError:
                return
            raise AssertionError("subscribe from a future seq was accepted")
        else:
            start = max(self.first_seq, self.tail + offset)
            rx = tx.subscribe(from_seq=start)
        self.receivers.append(ModelReceiver(rx, Cover(start, self.values)))

    @rule(i=index)
    def close_receiver(self, i: int) -> None:
        r = self.receivers[i % len(self.receivers)]
        r.rx.close()
        r.closed = True

    @rule(i=index)
    def clone_sender(self, i: int) -> None:
        s = self.senders[i % len(self.senders)]
        try:
            tx = s.tx.clone()
        except Closed:
            assert not s.open
            return
        assert s.open
        self.senders.append(ModelSender(tx))

    @rule(i=index)
    def close_sender(self, i: int) -> None:
        s = self.senders[i % len(self.senders)]
        s.tx.close()
        s.open = False

    # -- invariants --

    @invariant()
    def statistics_match_the_model(self) -> None:
        if not self.senders:
            return
        stats = self.senders[0].tx.statistics()
        assert stats.capacity == self.capacity
        assert stats.held == self.tail - self.oldest
        assert stats.receivers == self.open_receivers
        assert stats.senders == self.open_senders
        assert stats.sent == self.tail - self.first_seq
        assert stats.lag_events == self.lag_events
        assert stats.next_seq == self.tail
        assert self.senders[0].tx.oldest_seq == self.oldest

    @invariant()
    def cursors_match_the_model(self) -> None:
        for r in self.receivers:
            if r.closed:
                assert r.rx.closed and r.rx.ready()
                continue
            assert r.rx.next_seq == r.cover.until
            assert len(r.rx) == self.tail - max(r.cover.until, self.oldest)
            assert r.rx.ready() == (r.cover.until < self.tail or self.open_senders == 0)

    def teardown(self) -> None:
        """Close the channel; every open receiver drains to a cover ending at the last seq."""
        for s in self.senders:
            s.tx.close()
            s.open = False
        for r in self.receivers:
            if r.closed:
                continue
            while self.expect(r, self.capacity).kind != "closed":
                self.check_read(r, self.capacity, "many")
            self.check_read(r, self.capacity, "many")
            assert r.cover.until == self.tail
            assert r.cover.until - r.cover.start >= r.cover.lost


ChannelMachine.TestCase.settings = SETTINGS
TestChannelMachine = ChannelMachine.TestCase


# --- cancellation of parked reads ---------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Start a task doing one ``recv`` (``max_count`` None) or ``recv_many`` on an idle reader."""

    reader: int
    max_count: int | None


@dataclass(frozen=True)
class Cancel:
    """Cancel the read task running on a busy reader."""

    reader: int


@dataclass(frozen=True)
class Send:
    """Send ``count`` values."""

    count: int


@dataclass(frozen=True)
class Step:
    """Let the event loop run one step: ``await asyncio.sleep(0)``."""


@dataclass(frozen=True)
class CatchUp:
    """Read everything ready without waiting, beside the reader's task if one is running."""

    reader: int


@dataclass(frozen=True)
class CloseReceiver:
    """Close a reader's receiver."""

    reader: int


@dataclass(frozen=True)
class Subscribe:
    """Add a reader that starts at the next value."""


Op = Start | Cancel | Send | Step | CatchUp | CloseReceiver | Subscribe

start = st.builds(Start, index, st.none() | st.sampled_from([1, 2, 100]))
cancel = st.builds(Cancel, index)
send = st.builds(Send, st.integers(min_value=1, max_value=2))
step = st.just(Step())
catch_up = st.builds(CatchUp, index)
# Weights: a read must often find its reader caught up, so that it parks and can be woken
# by a send and cancelled before it resumes, the case that cancel-safety is about.
ops: st.SearchStrategy[Op] = st.one_of(
    start,
    start,
    cancel,
    cancel,
    send,
    send,
    step,
    step,
    step,
    catch_up,
    catch_up,
    st.builds(CloseReceiver, index),
    st.just(Subscribe()),
)


@dataclass
class Reader:
    """A receiver, what it was told, and the read task currently running on it (if any)."""

    rx: Receiver[object]
    cover: Cover
    task: asyncio.Task[None] | None = None
    cancelled: bool = False  # cancel() on the current task returned True
    closed: bool = False  # close() was called on the receiver


class Schedule:
    """Plays a schedule of operations against one channel and checks every reader's cover."""

    def __init__(self, capacity: int, k: int) -> None:
        self.values: dict[int, object] = {}  # seq -> object sent
        self.tx: Sender[object]
        self.tx, rx = channel(capacity)
        self.readers = [Reader(rx, Cover(0, self.values))]
        for _ in range(k - 1):
            self.subscribe()

    def subscribe(self) -> None:
        self.readers.append(Reader(self.tx.subscribe(), Cover(self.tx.next_seq, self.values)))

    async def read(self, reader: Reader, max_count: int | None) -> None:
        """One ``recv`` (or ``recv_many`` when ``max_count`` is set), recorded as it returns."""
        try:
            if max_count is None:
                seq, value = await reader.rx.recv()
                reader.cover.got(seq, value)
            else:
                first, values = await reader.rx.recv_many(max_count)
                reader.cover.got_many(first, values)
        except Lagged as lag:
            reader.cover.lagged(lag, self.tx.oldest_seq)
        except Closed:
            assert reader.closed or self.tx.closed

    def catch_up(self, reader: Reader) -> None:
        while True:
            try:
                first, values = reader.rx.try_recv_many(100)
            except Lagged as lag:
                reader.cover.lagged(lag, self.tx.oldest_seq)
            except (Empty, Closed):
                return
            else:
                reader.cover.got_many(first, values)

    async def step(self) -> None:
        """Run the loop one step, collect finished reads and check that none missed a wake-up."""
        await asyncio.sleep(0)
        for reader in self.readers:
            task = reader.task
            if task is None:
                continue
            if not task.done():
                # still running means parked, and only while nothing is ready for it
                assert not reader.rx.ready(), "a parked read was not woken"
                continue
            if reader.cancelled:
                assert task.cancelled(), "a read whose cancel() returned True ran to the end"
            else:
                task.result()  # re-raises a failed check
            reader.task, reader.cancelled = None, False

    async def play(self, schedule: list[Op]) -> None:
        for op in schedule:
            match op:
                case Start(i, max_count):
                    idle = [r for r in self.readers if r.task is None]
                    if idle:
                        reader = idle[i % len(idle)]
                        reader.task = asyncio.create_task(self.read(reader, max_count))
                case Cancel(i):
                    busy = [r for r in self.readers if r.task is not None and not r.cancelled]
                    if busy:
                        reader = busy[i % len(busy)]
                        assert reader.task is not None
                        reader.cancelled = reader.task.cancel()
                case Send(count):
                    for _ in range(count):
                        value = object()
                        self.values[self.tx.next_seq] = value
                        self.tx.send(value)
                case Step():
                    await self.step()
                case CatchUp(i):
                    self.catch_up(self.readers[i % len(self.readers)])
                case CloseReceiver(i):
                    reader = self.readers[i % len(self.readers)]
                    reader.closed = True
                    reader.rx.close()
                case Subscribe():
                    self.subscribe()
        # closing the channel wakes every parked read; then each open reader drains to the end
        self.tx.close()
        await self.step()
        assert all(r.task is None for r in self.readers), "a parked read missed the close"
        for reader in self.readers:
            if not reader.closed:
                self.catch_up(reader)
                assert reader.cover.until == self.tx.next_seq, "a value went missing"


@SETTINGS
@given(
    capacity=st.integers(min_value=1, max_value=8),
    k=st.integers(min_value=1, max_value=3),
    schedule=st.lists(ops, min_size=20, max_size=80),
)
def test_cancelled_reads_consume_nothing(capacity: int, k: int, schedule: list[Op]) -> None:
    """Under any schedule, reads cancelled at any point consume nothing and miss no wake-up."""
    asyncio.run(Schedule(capacity, k).play(schedule))
