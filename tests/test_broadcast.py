"""One test per rule of the broadcast channel (``roomcast.broadcast``)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from typing import Any

import pytest

from roomcast.broadcast import (
    BroadcastError,
    Closed,
    Empty,
    Lagged,
    Receiver,
    Sender,
    Statistics,
    channel,
)

pytestmark = pytest.mark.timeout(10)


def make(capacity: int, first_seq: int = 0) -> tuple[Sender[int], Receiver[int]]:
    """A channel of ints, typed for mypy."""
    return channel(capacity, first_seq=first_seq)


def fill(tx: Sender[int], values: range) -> None:
    """Send every value of ``values`` in order."""
    for value in values:
        tx.send(value)


async def parked(task: asyncio.Task[Any]) -> None:
    """Let ``task`` run until it parks, and check that it did."""
    await asyncio.sleep(0)
    assert not task.done()


# --- creation -----------------------------------------------------------------------------


def test_channel_returns_sender_and_receiver_at_first_value() -> None:
    """channel() returns an open sender and a receiver that reads the first value sent."""
    tx, rx = make(4)
    assert isinstance(tx, Sender)
    assert isinstance(rx, Receiver)
    assert not tx.closed and not rx.closed
    assert rx.next_seq == 0
    tx.send(10)
    assert rx.try_recv() == (0, 10)


@pytest.mark.parametrize("capacity", [0, -1, -100])
def test_capacity_below_one_is_rejected(capacity: int) -> None:
    """A capacity under one is a ValueError."""
    with pytest.raises(ValueError, match="capacity"):
        make(capacity)


def test_negative_first_seq_is_rejected() -> None:
    """A negative first_seq is a ValueError."""
    with pytest.raises(ValueError, match="first_seq"):
        make(4, first_seq=-1)


def test_each_value_is_stored_once_and_shared_by_every_receiver() -> None:
    """Every receiver gets the very same object that was sent, not a copy."""
    tx: Sender[tuple[str, ...]]
    tx, rx1 = channel(4)
    rx2 = tx.subscribe(from_seq=0)
    value = ("hello", "world")
    tx.send(value)
    assert rx1.try_recv()[1] is value
    assert rx2.try_recv()[1] is value


def test_errors_share_one_root() -> None:
    """Closed, Empty and Lagged all derive from BroadcastError."""
    for error in (Closed, Empty, Lagged):
        assert issubclass(error, BroadcastError)


# --- sending ------------------------------------------------------------------------------


def test_send_returns_the_number_of_subscribed_receivers() -> None:
    """send() is synchronous and returns how many open receivers the channel has."""
    assert not inspect.iscoroutinefunction(Sender.send)
    tx, rx = make(4)
    assert tx.send(1) == 1
    rx2 = tx.subscribe()
    assert tx.send(2) == 2
    rx.close()
    assert tx.send(3) == 1
    rx2.close()
    assert tx.send(4) == 0


def test_send_assigns_gap_free_sequence_numbers() -> None:
    """Each send gets next_seq, which then grows by exactly one, across clones too."""
    tx, rx = make(2)
    tx2 = tx.clone()
    seen = []
    for i in range(10):
        sender = tx if i % 3 else tx2
        assert sender.next_seq == tx.next_seq == tx2.next_seq == i
        sender.send(i * 10)
        seen.append(rx.try_recv())
    assert seen == [(i, i * 10) for i in range(10)]


def test_send_with_no_receivers_keeps_the_value_for_from_seq() -> None:
    """A value sent to nobody is still held and readable by subscribe(from_seq=...)."""
    tx, rx = make(4)
    rx.close()
    assert tx.send(7) == 0
    late = tx.subscribe(from_seq=0)
    assert late.try_recv() == (0, 7)


# --- senders: clone, close ----------------------------------------------------------------


def test_clone_returns_another_open_handle_to_the_same_channel() -> None:
    """A clone sends into the same channel and counts as one more sender."""
    tx, rx = make(4)
    tx2 = tx.clone()
    assert tx2 is not tx
    assert tx.statistics().senders == 2
    tx2.send(5)
    assert rx.try_recv() == (0, 5)
    assert tx.next_seq == 1


def test_sender_close_is_idempotent() -> None:
    """Closing a handle twice counts it once."""
    tx, _ = make(4)
    tx2 = tx.clone()
    tx2.close()
    tx2.close()
    assert tx2.closed
    assert tx.statistics().senders == 1
    assert not tx.closed


def test_sender_context_manager_closes_the_handle() -> None:
    """Leaving ``with sender`` closes that handle, even on an exception."""
    tx, rx = make(4)
    with tx.clone() as tx2:
        assert tx2.send(1) == 1
    assert tx2.closed
    with pytest.raises(KeyError), tx as same:
        assert same is tx
        raise KeyError("boom")
    assert tx.closed
    assert rx.try_recv() == (0, 1)
    with pytest.raises(Closed):
        rx.try_recv()


def test_channel_closes_only_when_every_sender_is_closed() -> None:
    """Receivers see Empty while any sender is open and Closed after the last one closes."""
    tx, rx = make(4)
    tx2 = tx.clone()
    tx3 = tx2.clone()
    tx.close()
    tx3.close()
    with pytest.raises(Empty):
        rx.try_recv()
    tx2.send(1)
    assert rx.try_recv() == (0, 1)
    tx2.close()
    with pytest.raises(Closed):
        rx.try_recv()
    assert tx.statistics().senders == 0


async def test_receivers_drain_remaining_values_then_get_closed() -> None:
    """After the channel closes, each receiver still reads what is held for it, then Closed."""
    tx, rx = make(8)
    other = tx.subscribe()
    fill(tx, range(3))
    assert rx.try_recv() == (0, 0)
    tx.close()
    assert await rx.recv() == (1, 1)
    assert await rx.recv_many(10) == (2, [2])
    with pytest.raises(Closed):
        await rx.recv()
    assert other.try_recv_many(10) == (0, [0, 1, 2])
    with pytest.raises(Closed):
        other.try_recv_many(10)
    with pytest.raises(Closed):
        await other.recv_many(10)


def test_send_on_a_closed_handle_raises_closed() -> None:
    """A closed handle cannot send, even while a clone keeps the channel open."""
    tx, rx = make(4)
    tx2 = tx.clone()
    tx.close()
    with pytest.raises(Closed):
        tx.send(1)
    assert tx2.next_seq == 0
    assert len(rx) == 0


def test_clone_of_a_closed_handle_raises_closed() -> None:
    """A closed handle cannot be cloned (that would reopen a closed channel)."""
    tx, _ = make(4)
    tx.close()
    with pytest.raises(Closed):
        tx.clone()
    assert tx.statistics().senders == 0


async def test_last_sender_close_wakes_a_parked_recv_with_closed() -> None:
    """A recv parked on an empty channel raises Closed when the last sender closes."""
    tx, rx = make(4)
    task = asyncio.create_task(rx.recv())
    await parked(task)
    tx.close()
    with pytest.raises(Closed):
        await task


# --- subscribing --------------------------------------------------------------------------


def test_subscribe_starts_at_the_next_value() -> None:
    """A fresh subscriber skips the values already sent and reads the next one."""
    tx, _ = make(4)
    fill(tx, range(3))
    rx = tx.subscribe()
    assert rx.next_seq == 3
    assert len(rx) == 0
    with pytest.raises(Empty):
        rx.try_recv()
    tx.send(3)
    assert rx.try_recv() == (3, 3)


def test_subscribe_from_a_held_past_seq_reads_from_there() -> None:
    """subscribe(from_seq=n) for a held value reads n and everything after it."""
    tx, _ = make(4)
    fill(tx, range(6))  # holds 2..5
    rx = tx.subscribe(from_seq=3)
    assert len(rx) == 3
    assert rx.try_recv_many(10) == (3, [3, 4, 5])
    assert tx.subscribe(from_seq=6).next_seq == 6  # next_seq itself is allowed


def test_subscribe_from_a_seq_no_longer_held_lags_with_the_exact_range() -> None:
    """The first read of a receiver that starts before the oldest held value raises Lagged."""
    tx, _ = make(4)
    fill(tx, range(10))  # holds 6..9
    rx = tx.subscribe(from_seq=1)
    assert len(rx) == 4
    with pytest.raises(Lagged) as info:
        rx.try_recv()
    assert (info.value.first_missed_seq, info.value.count) == (1, 5)
    assert rx.try_recv() == (6, 6)


@pytest.mark.parametrize("from_seq", [11, 100])
def test_subscribe_from_a_future_seq_is_rejected(from_seq: int) -> None:
    """from_seq past next_seq is a ValueError."""
    tx, _ = make(4)
    fill(tx, range(10))
    with pytest.raises(ValueError, match="from_seq"):
        tx.subscribe(from_seq=from_seq)


# --- receiving ----------------------------------------------------------------------------


async def test_recv_waits_for_the_next_send() -> None:
    """recv() on an empty channel parks until a value is sent, then returns it."""
    tx, rx = make(4)
    task = asyncio.create_task(rx.recv())
    await parked(task)
    tx.send(42)
    assert await task == (0, 42)


async def test_recv_returns_a_ready_value_without_waiting() -> None:
    """recv() returns at once when a value is held for the receiver."""
    tx, rx = make(4)
    tx.send(1)
    assert await rx.recv() == (0, 1)


def test_try_recv_raises_empty_when_nothing_is_ready() -> None:
    """try_recv() never waits: Empty when the receiver has read everything."""
    tx, rx = make(4)
    with pytest.raises(Empty):
        rx.try_recv()
    tx.send(1)
    rx.try_recv()
    with pytest.raises(Empty):
        rx.try_recv()
    with pytest.raises(Empty):
        rx.try_recv_many(3)


async def test_recv_many_returns_every_ready_value_up_to_max() -> None:
    """recv_many(max) returns the ready values, never more than max, in consecutive seqs."""
    tx, rx = make(8)
    fill(tx, range(5))
    assert await rx.recv_many(3) == (0, [0, 1, 2])
    assert await rx.recv_many(10) == (3, [3, 4])


async def test_recv_many_waits_then_returns_the_batch() -> None:
    """recv_many() parks on an empty channel and returns everything sent before it resumes."""
    tx, rx = make(8)
    task = asyncio.create_task(rx.recv_many(10))
    await parked(task)
    fill(tx, range(3))
    assert await task == (0, [0, 1, 2])


@pytest.mark.parametrize("max_count", [0, -1])
def test_recv_many_rejects_a_max_below_one(max_count: int) -> None:
    """max_count under one is a ValueError."""
    tx, rx = make(4)
    tx.send(1)
    with pytest.raises(ValueError, match="max_count"):
        rx.try_recv_many(max_count)


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 8])
async def test_recv_many_wraps_around_the_ring_at_every_offset(capacity: int) -> None:
    """Batches that start at any ring offset and cross the end come back whole and in order."""
    for offset in range(2 * capacity + 1):
        for count in range(1, capacity + 1):
            for max_count in (count, count + 1, 100):
                tx, _ = make(capacity)
                fill(tx, range(offset))
                rx = tx.subscribe()
                fill(tx, range(offset, offset + count))
                want = (offset, list(range(offset, offset + count)))
                if max_count == count:
                    assert rx.try_recv_many(max_count) == want
                else:
                    assert await rx.recv_many(max_count) == want


def test_start_seq_is_where_a_receiver_began() -> None:
    """``start_seq`` stays the sequence number the receiver was subscribed at."""
    tx, first = make(4)
    fill(tx, range(3))
    rx = tx.subscribe()
    fill(tx, range(3, 5))
    assert rx.take(10) == [3, 4]
    assert (first.start_seq, rx.start_seq, rx.next_seq) == (0, 3, 5)


def test_take_returns_what_is_ready_and_raises_only_lagged() -> None:
    """``take`` reads like ``try_recv_many`` but says "nothing" with an empty list, whether the
    channel is open or closed; a lag is still raised, exactly."""
    tx, rx = make(4)
    assert rx.take(10) == []
    fill(tx, range(3))
    assert rx.take(2) == [0, 1]
    assert rx.take(10) == [2]
    fill(tx, range(3, 10))  # 3..5 are overwritten
    with pytest.raises(Lagged) as lag:
        rx.take(10)
    assert (lag.value.first_missed_seq, lag.value.count) == (3, 3)
    assert rx.take(10) == [6, 7, 8, 9]
    tx.close()
    assert rx.take(10) == []
    with pytest.raises(ValueError, match="max_count"):
        rx.take(0)


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 8])
def test_take_wraps_around_the_ring_at_every_offset(capacity: int) -> None:
    """Like try_recv_many: any start offset, any count, across the end of the ring."""
    for offset in range(2 * capacity + 1):
        for count in range(1, capacity + 1):
            tx, _ = make(capacity)
            fill(tx, range(offset))
            rx = tx.subscribe()
            fill(tx, range(offset, offset + count))
            assert rx.take(100) == list(range(offset, offset + count))


async def test_async_for_yields_seq_and_value_and_ends_on_close() -> None:
    """``async for`` yields (seq, value) pairs and stops once the channel is closed and drained."""
    tx, rx = make(8)
    fill(tx, range(3))
    tx.close()
    assert [item async for item in rx] == [(0, 0), (1, 1), (2, 2)]


async def test_async_for_lets_lagged_propagate_and_can_resume() -> None:
    """A lag escapes ``async for``; iterating again continues from the oldest held value."""
    tx, rx = make(2)
    fill(tx, range(5))
    tx.close()
    with pytest.raises(Lagged):
        async for _ in rx:
            pass
    assert [item async for item in rx] == [(3, 3), (4, 4)]


def test_len_counts_held_values_not_yet_read() -> None:
    """len(receiver) is the number of held values it has not read, lost ones excluded."""
    tx, rx = make(4)
    assert len(rx) == 0
    fill(tx, range(3))
    assert len(rx) == 3
    rx.try_recv()
    assert len(rx) == 2
    fill(tx, range(10))  # overtaken: only 4 held
    assert len(rx) == 4


def test_receiver_close_releases_it() -> None:
    """A closed receiver no longer counts, reads raise Closed, and closing again is harmless."""
    tx, rx = make(4)
    tx.send(1)
    assert tx.statistics().receivers == 1
    rx.close()
    rx.close()
    assert rx.closed
    assert tx.statistics().receivers == 0
    with pytest.raises(Closed):
        rx.try_recv()
    with pytest.raises(Closed):
        rx.try_recv_many(4)


async def test_receiver_close_wakes_its_parked_recv_with_closed() -> None:
    """A recv parked on a receiver raises Closed when that receiver is closed."""
    tx, rx = make(4)
    task = asyncio.create_task(rx.recv())
    await parked(task)
    rx.close()
    with pytest.raises(Closed):
        await task
    with pytest.raises(Closed):
        await rx.recv()
    assert tx.send(1) == 0


# --- lag ----------------------------------------------------------------------------------


def test_lagged_carries_the_exact_range_and_the_receiver_continues_from_the_oldest() -> None:
    """Lagged names the first lost seq and the count; the next read is the oldest held value."""
    tx, rx = make(3)
    fill(tx, range(2))
    assert rx.try_recv() == (0, 0)
    fill(tx, range(2, 9))  # holds 6..8; 1..5 lost for rx
    with pytest.raises(Lagged) as info:
        rx.try_recv()
    lag = info.value
    assert (lag.first_missed_seq, lag.count, lag.next_seq) == (1, 5, 6)
    assert rx.next_seq == 6
    assert rx.try_recv_many(10) == (6, [6, 7, 8])
    assert tx.statistics().lag_events == 1


async def test_lagged_is_raised_by_every_read_method() -> None:
    """recv, recv_many, try_recv and try_recv_many all report a lag before reading on."""
    tx, rx = make(2)
    fill(tx, range(4))
    with pytest.raises(Lagged):
        await rx.recv()
    fill(tx, range(4, 8))
    with pytest.raises(Lagged):
        await rx.recv_many(5)
    fill(tx, range(8, 12))
    with pytest.raises(Lagged):
        rx.try_recv_many(5)
    assert rx.try_recv_many(5) == (10, [10, 11])


def test_lagged_is_reported_before_closed() -> None:
    """A receiver that lagged on a closed channel hears of the lag, drains, then gets Closed."""
    tx, rx = make(2)
    fill(tx, range(5))
    tx.close()
    with pytest.raises(Lagged) as info:
        rx.try_recv()
    assert (info.value.first_missed_seq, info.value.count) == (0, 3)
    assert rx.try_recv_many(5) == (3, [3, 4])
    with pytest.raises(Closed):
        rx.try_recv()


def test_lagged_str_reads_as_a_sentence() -> None:
    """str(Lagged) says how many values were missed and which seqs."""
    assert str(Lagged(1, 5)) == "receiver lagged: missed 5 values (seq 1-5)"
    assert str(Closed()) == "the broadcast channel is closed"
    assert str(Empty()) == "no value is ready"


# --- cancel-safety and waiting ------------------------------------------------------------


async def test_cancelled_recv_consumes_nothing() -> None:
    """The value sent after a parked recv was cancelled goes to the next recv."""
    tx, rx = make(4)
    task = asyncio.create_task(rx.recv())
    await parked(task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tx.send(1)
    assert await rx.recv() == (0, 1)


async def test_recv_cancelled_after_its_wake_up_consumes_nothing() -> None:
    """A recv woken by a send but cancelled before it resumes leaves the value for the next."""
    tx, rx = make(4)
    task = asyncio.create_task(rx.recv_many(4))
    await parked(task)
    tx.send(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rx.try_recv() == (0, 1)


async def test_cancelling_one_receivers_recv_leaves_the_others_waiting() -> None:
    """Cancelling one receiver's parked recv neither wakes nor starves the other receivers."""
    tx, rx = make(4)
    others = [tx.subscribe() for _ in range(3)]
    victim = asyncio.create_task(rx.recv())
    waiters = [asyncio.create_task(other.recv()) for other in others]
    await asyncio.sleep(0)
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    tx.send(9)
    assert await asyncio.gather(*waiters) == [(0, 9)] * 3
    assert rx.try_recv() == (0, 9)


async def test_a_second_task_waiting_on_the_same_receiver_raises_runtime_error() -> None:
    """Only one task may wait on a receiver; the first one is left undisturbed."""
    tx, rx = make(4)
    first = asyncio.create_task(rx.recv())
    await parked(first)
    with pytest.raises(RuntimeError, match="already waiting"):
        await rx.recv()
    tx.send(1)
    assert await first == (0, 1)
    second = asyncio.create_task(rx.recv())  # the first is done: waiting is allowed again
    await parked(second)
    tx.send(2)
    assert await second == (1, 2)


# --- notify -------------------------------------------------------------------------------


def test_notify_is_called_at_once_when_a_read_would_not_wait() -> None:
    """notify calls back at once for a ready value, a pending lag, a closed channel or receiver."""
    calls: list[str] = []
    tx, rx = make(2)
    tx.send(1)
    rx.notify(lambda: calls.append("value"))
    fill(tx, range(5))
    lagging = tx.subscribe(from_seq=0)
    lagging.notify(lambda: calls.append("lag"))
    closed_rx = tx.subscribe()
    closed_rx.close()
    closed_rx.notify(lambda: calls.append("receiver closed"))
    drained = tx.subscribe()
    tx.close()
    drained.notify(lambda: calls.append("channel closed"))
    assert calls == ["value", "lag", "receiver closed", "channel closed"]


def test_notify_is_called_once_on_the_next_send() -> None:
    """A notify registered on an empty receiver fires on the next send, and only once."""
    calls: list[int] = []
    tx, rx = make(4)
    rx.notify(lambda: calls.append(tx.next_seq))
    assert calls == []
    tx.send(1)
    tx.send(2)
    assert calls == [1]


def test_notify_is_called_when_the_last_sender_closes() -> None:
    """A pending notify fires when the channel closes, not when a clone closes."""
    calls: list[str] = []
    tx, rx = make(4)
    tx2 = tx.clone()
    rx.notify(lambda: calls.append("closed"))
    tx2.close()
    assert calls == []
    tx.close()
    assert calls == ["closed"]


def test_notify_is_called_when_the_receiver_closes() -> None:
    """A pending notify fires when its own receiver is closed."""
    calls: list[str] = []
    _tx, rx = make(4)
    rx.notify(lambda: calls.append("closed"))
    rx.close()
    assert calls == ["closed"]


def test_a_later_notify_replaces_the_earlier_one() -> None:
    """Only the most recent callback registered on a receiver is called."""
    calls: list[str] = []
    tx, rx = make(4)
    rx.notify(lambda: calls.append("first"))
    rx.notify(lambda: calls.append("second"))
    tx.send(1)
    assert calls == ["second"]


async def test_notify_lets_one_task_wait_on_many_receivers() -> None:
    """One asyncio.Event armed through notify on several receivers wakes on any send."""
    senders: list[Sender[int]] = []
    receivers: list[Receiver[int]] = []
    for _ in range(3):
        tx, rx = make(4)
        senders.append(tx)
        receivers.append(rx)
    event = asyncio.Event()
    for rx in receivers:
        rx.notify(event.set)

    async def wait_for_any() -> list[int]:
        await event.wait()
        return [i for i, rx in enumerate(receivers) if rx.ready()]

    task = asyncio.create_task(wait_for_any())
    await parked(task)
    senders[1].send(5)
    assert await task == [1]
    assert receivers[1].try_recv() == (0, 5)


# --- statistics and first_seq ------------------------------------------------------------


def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() reports every count at the time of the call and cannot be changed."""
    tx, rx = make(3, first_seq=10)
    tx2 = tx.clone()
    tx.subscribe()
    before = tx.statistics()
    assert before == Statistics(
        capacity=3, held=0, receivers=2, senders=2, sent=0, lag_events=0, next_seq=10
    )
    fill(tx2, range(5))
    with pytest.raises(Lagged):
        rx.try_recv()
    rx.close()
    tx2.close()
    assert tx.statistics() == Statistics(
        capacity=3, held=3, receivers=1, senders=1, sent=5, lag_events=1, next_seq=15
    )
    assert before.sent == 0  # a snapshot, not a view
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.sent = 1  # type: ignore[misc]


def test_first_seq_numbers_the_first_value() -> None:
    """channel(first_seq=n) numbers values from n; seqs before n cannot be subscribed to."""
    tx, rx = make(2, first_seq=100)
    assert tx.next_seq == tx.oldest_seq == rx.next_seq == 100
    fill(tx, range(3))
    assert tx.oldest_seq == 101
    with pytest.raises(Lagged) as info:
        rx.try_recv()
    assert (info.value.first_missed_seq, info.value.count) == (100, 1)
    assert rx.try_recv() == (101, 1)
    with pytest.raises(ValueError, match="from_seq"):
        tx.subscribe(from_seq=99)
    assert tx.subscribe(from_seq=100).next_seq == 100


def test_reprs_show_state() -> None:
    """The endpoints' reprs show whether open and where the cursor is."""
    tx, rx = make(4)
    tx.send(1)
    assert repr(tx) == "<Sender open next_seq=1>"
    assert repr(rx) == "<Receiver next_seq=0 ready=1>"
    tx.close()
    assert repr(tx) == "<Sender closed next_seq=1>"
