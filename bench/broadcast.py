"""Benchmark: fan-out deliveries per second, roomcast's broadcast channel against asyncio.Queue.

Run ``python bench/broadcast.py`` (about a minute) or ``python bench/broadcast.py --quick``
(a few seconds). For 1, 100, 1,000 and 10,000 receivers, each receiver a task, it measures:

* ``recv``       one roomcast channel; each receiver calls ``recv()`` once per message;
* ``recv_many``  the same channel; each receiver takes every ready message with ``recv_many``;
* ``Queue``      the baseline: one ``asyncio.Queue`` per receiver, the sender puts every
                 message into every queue and each receiver calls ``get()`` once per message.

The sender sends bursts of ``capacity // 2`` messages and then yields one loop step
(``await asyncio.sleep(0)``), so that receivers keep up and none lags; lags are counted and
printed if any happen. The message count of each cell is calibrated so that the cell takes
about ``--seconds``; the best of ``--repeat`` runs is reported. Figures only: nothing here
asserts anything about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from roomcast.broadcast import Closed, Lagged, Receiver, Sender, channel

RECEIVERS = (1, 100, 1_000, 10_000)
VARIANTS = ("recv", "recv_many", "Queue")


@dataclass(frozen=True, slots=True)
class Run:
    """The outcome of one timed run of one cell."""

    messages: int  # messages sent
    delivered: int  # messages received, all receivers together
    lagged: int  # messages lost to lag, all receivers together
    seconds: float  # from the first send to the last receiver done (wall clock)
    cpu: float  # CPU seconds this process used meanwhile

    @property
    def rate(self) -> float:
        """Deliveries per second."""
        return self.delivered / self.seconds


# --- the three variants -------------------------------------------------------------------


async def recv_each(rx: Receiver[int]) -> tuple[int, int]:
    """Receive one message per call until the channel closes: (delivered, lost)."""
    delivered = lost = 0
    while True:
        try:
            await rx.recv()
        except Lagged as lag:
            lost += lag.count
        except Closed:
            return delivered, lost
        else:
            delivered += 1


async def recv_batches(rx: Receiver[int], max_count: int) -> tuple[int, int]:
    """Receive every ready message per call until the channel closes: (delivered, lost)."""
    delivered = lost = 0
    while True:
        try:
            _, values = await rx.recv_many(max_count)
        except Lagged as lag:
            lost += lag.count
        except Closed:
            return delivered, lost
        else:
            delivered += len(values)


async def get_each(queue: asyncio.Queue[int | None]) -> tuple[int, int]:
    """Get one message per call until the ``None`` sentinel: (delivered, 0)."""
    delivered = 0
    while await queue.get() is not None:
        delivered += 1
    return delivered, 0


async def run_channel(receivers: int, messages: int, capacity: int, batch: bool) -> Run:
    """One run of the ``recv`` (or, with ``batch``, the ``recv_many``) variant."""
    burst = max(1, capacity // 2)
    tx: Sender[int]
    tx, first = channel(capacity)
    rxs = [first] + [tx.subscribe() for _ in range(receivers - 1)]
    readers = [
        asyncio.create_task(recv_batches(rx, capacity) if batch else recv_each(rx)) for rx in rxs
    ]
    await asyncio.sleep(0)  # every reader parks on its empty receiver
    start, cpu = time.perf_counter(), time.process_time()
    for sent in range(messages):
        tx.send(sent)
        if sent % burst == burst - 1:
            await asyncio.sleep(0)
    tx.close()
    results = await asyncio.gather(*readers)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    delivered, lost = sum(d for d, _ in results), sum(lost for _, lost in results)
    return Run(messages, delivered, lost, seconds, cpu)


async def run_queues(receivers: int, messages: int, capacity: int) -> Run:
    """One run of the baseline: one unbounded ``asyncio.Queue`` per receiver."""
    burst = max(1, capacity // 2)
    queues: list[asyncio.Queue[int | None]] = [asyncio.Queue() for _ in range(receivers)]
    readers = [asyncio.create_task(get_each(queue)) for queue in queues]
    await asyncio.sleep(0)  # every reader parks on its empty queue
    start, cpu = time.perf_counter(), time.process_time()
    for sent in range(messages):
        for queue in queues:
            queue.put_nowait(sent)
        if sent % burst == burst - 1:
            await asyncio.sleep(0)
    for queue in queues:
        queue.put_nowait(None)
    results = await asyncio.gather(*readers)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Run(messages, sum(d for d, _ in results), 0, seconds, cpu)


def runner_for(variant: str, receivers: int, capacity: int) -> Callable[[int], Awaitable[Run]]:
    """The coroutine function that runs ``variant`` for a given message count."""
    if variant == "Queue":
        return lambda messages: run_queues(receivers, messages, capacity)
    batch = variant == "recv_many"
    return lambda messages: run_channel(receivers, messages, capacity, batch)


# --- measuring ----------------------------------------------------------------------------


async def measure(
    run: Callable[[int], Awaitable[Run]], receivers: int, capacity: int, seconds: float, repeat: int
) -> Run:
    """Calibrate the message count so a run takes about ``seconds``; return the best run.

    A run sends at least one burst, so that every cell measures the same regime: receivers
    woken once per burst, not once per run.
    """
    burst = max(1, capacity // 2)
    messages = max(burst, 4096 // receivers)
    gc.collect()
    trial = await run(messages)
    while trial.seconds < seconds / 5:  # grow until a run is long enough to extrapolate from
        messages *= 4
        gc.collect()
        trial = await run(messages)
    target = max(burst, round(messages * seconds / trial.seconds))
    runs: list[Run] = []
    if target <= messages:  # the trial already took a cell's time: it counts as a run
        target, runs = messages, [trial]
    while len(runs) < repeat:
        gc.collect()
        runs.append(await run(target))
    return max(runs, key=lambda r: r.rate)


def human(rate: float) -> str:
    """A rate with three significant figures and an SI suffix: ``12.3 M``."""
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= factor:
            return f"{rate / factor:.3g} {suffix}"
    return f"{rate:.3g}"


async def main_async(
    receiver_counts: list[int], capacity: int, seconds: float, repeat: int
) -> None:
    loop = type(asyncio.get_running_loop())
    print(f"event loop: {loop.__module__}.{loop.__qualname__}")
    print(
        f"python {platform.python_version()}; capacity {capacity}, bursts of "
        f"{max(1, capacity // 2)}; ~{seconds:g} s per cell, best of {repeat}"
    )
    print()
    header = (
        f"{'receivers':>9}  {'recv/s':>9}  {'recv_many/s':>11}  {'Queue/s':>9}  "
        f"{'recv:Queue':>10}  {'many:Queue':>10}  {'cpu%':>4}  {'messages (recv/many/Queue)':>26}"
    )
    print(header)
    print("-" * len(header))
    lags: list[str] = []
    for receivers in receiver_counts:
        runs: dict[str, Run] = {}
        for variant in VARIANTS:
            run = runner_for(variant, receivers, capacity)
            runs[variant] = await measure(run, receivers, capacity, seconds, repeat)
            if runs[variant].lagged:
                lags.append(f"{variant} x{receivers}: {runs[variant].lagged} messages lost")
        recv, many, queue = runs["recv"], runs["recv_many"], runs["Queue"]
        counts = f"{recv.messages}/{many.messages}/{queue.messages}"
        cpu_share = min(100 * r.cpu / r.seconds for r in runs.values())
        print(
            f"{receivers:>9,}  {human(recv.rate):>9}  {human(many.rate):>11}  "
            f"{human(queue.rate):>9}  {recv.rate / queue.rate:>9.2f}x  "
            f"{many.rate / queue.rate:>9.2f}x  {cpu_share:>4.0f}  {counts:>26}",
            flush=True,
        )
    print()
    print("deliveries/s: messages received per second, all receivers together (wall clock)")
    print("cpu%: least share of a row's wall time the process ran; under ~90, other load skews it")
    print("lags: " + ("; ".join(lags) if lags else "none (every receiver kept up)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--capacity", type=int, default=256, help="ring size (default 256)")
    parser.add_argument("--seconds", type=float, help="target seconds per cell (default 1)")
    parser.add_argument("--repeat", type=int, help="runs per cell, best kept (default 3)")
    parser.add_argument(
        "--receivers", type=int, nargs="+", default=list(RECEIVERS), help="receiver counts"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    seconds: float = args.seconds or (0.2 if args.quick else 1.0)
    repeat: int = args.repeat or (1 if args.quick else 3)

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main_async(args.receivers, args.capacity, seconds, repeat))


if __name__ == "__main__":
    main()
