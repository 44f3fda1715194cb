"""The latency a Redis hop adds: roomcast's bus against plain redis-py, in the same run.

Node A publishes a room message on its ``RedisBus``; node B, another ``RedisBus`` on the
same prefix and subscribed to the room, receives it: the time from ``publish`` to B's
handler (encode, queue, the writer's pipeline, Redis, B's read loop, decode, dispatch).
Beside it, the baseline: a plain redis-py client ``PUBLISH``es the same payload bytes and
a plain redis-py ``PubSub`` (``listen()``) receives them, with no codec. For reference,
the local bus (one process): ``publish`` to the other node's handler on the next turn.

The three are interleaved, one message every ``--pace`` ms (default 1), round robin, so
that they see the same machine. Each latency is ``time.perf_counter`` at the receiver minus
at the publish call, in one process. Redis is ``--redis`` (default
``$ROOMCAST_BENCH_REDIS`` or 127.0.0.1:6379), on a prefix unique to the run.

Run ``python bench/bus.py`` (5,000 messages of each, about 15 s) or ``--quick``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import redis
import redis.asyncio
from redis.utils import HIREDIS_AVAILABLE

from roomcast.bus import LocalBroker, Outage, Topic, room_topic
from roomcast.bus.redis import RedisBus
from roomcast.model import Kind, Message, Private
from roomcast.wire.bus import encode

TEXT = "a chat message of ordinary length, some forty to sixty characters"


class Clock:
    """Receipt times by message id (a bus handler); ``done`` once ``count`` arrived."""

    def __init__(self, count: int) -> None:
        self.times: dict[str, float] = {}  # id -> perf_counter at receipt
        self.count = count  # expected
        self.done = asyncio.Event()

    def note(self, key: str) -> None:
        self.times[key] = time.perf_counter()
        if len(self.times) >= self.count:
            self.done.set()

    def received(self, topic: Topic, message: Message | Private, origin: str) -> None:
        self.note(message.id)

    def lost(self, reason: str) -> None:
        print(f"  the bus lost Redis: {reason}", file=sys.stderr)

    def resumed(self, outage: Outage) -> None:
        print(f"  the bus is back after {outage.seconds:.3f} s", file=sys.stderr)


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    """p50, p99 and max, in microseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return statistics.median(ordered) * 1e6, p99 * 1e6, ordered[-1] * 1e6


async def run(url: str, count: int, pace: float) -> None:
    prefix = f"roomcast-bench-{uuid.uuid4().hex[:12]}:"
    topic = room_topic("#bench")
    query = f"{'&' if '?' in url else '?'}prefix={prefix}"
    a = await RedisBus.open(url + query, node="bench-a")
    b = await RedisBus.open(url + query, node="bench-b")
    broker = LocalBroker()
    local_a, local_b = broker.bus("local-a"), broker.bus("local-b")
    client = redis.asyncio.Redis.from_url(url)
    pubsub = client.pubsub()
    channel = f"{prefix}plain".encode()

    sent: dict[str, dict[str, float]] = {"bus": {}, "plain": {}, "local": {}}
    clocks = {kind: Clock(count) for kind in sent}
    b.listen(clocks["bus"])
    local_b.listen(clocks["local"])
    await b.subscribe(topic)
    await local_b.subscribe(topic)
    await pubsub.subscribe(channel)
    # the confirmation of SUBSCRIBE comes first through listen()
    first = await pubsub.get_message(timeout=5)
    assert first is not None and first["type"] == "subscribe", first

    async def plain_listener() -> None:
        async for item in pubsub.listen():
            if item["type"] == "message":
                clocks["plain"].note(item["data"][:24].decode())

    listener = asyncio.create_task(plain_listener())

    def message(kind: str, i: int) -> Message:
        return Message(
            id=f"{kind}-{i:08d}",
            room="#bench",
            seq=i + 1,
            sender="bench",
            kind=Kind.MESSAGE,
            text=TEXT,
            ts=time.time(),
        )

    def via_bus(i: int) -> None:
        m = message("bus", i)
        sent["bus"][m.id] = time.perf_counter()
        a.publish(topic, m)

    def via_local(i: int) -> None:
        m = message("local", i)
        sent["local"][m.id] = time.perf_counter()
        local_a.publish(topic, m)

    async def via_plain(i: int) -> None:
        m = message("plain", i)
        key = f"{m.id:<24}"  # the first 24 bytes of the payload name the message
        payload = key.encode() + encode("bench-p", m)
        sent["plain"][key] = time.perf_counter()
        await client.publish(channel, payload)

    senders: list[Callable[[int], object]] = [via_bus, via_plain, via_local]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(count * len(senders)):
        delay = start + i * pace - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        send = senders[i % len(senders)]
        result = send(i // len(senders))
        if asyncio.iscoroutine(result):
            await result
    try:  # the last ones, bounded: what has not come in 10 s is counted lost
        async with asyncio.timeout(10):
            for clock in clocks.values():
                await clock.done.wait()
    except TimeoutError:
        pass

    listener.cancel()
    try:
        await listener
    except asyncio.CancelledError:
        pass
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    await client.aclose()
    for bus in (a, b, local_a, local_b):
        await bus.close()

    print(
        f"Python {platform.python_version()}, {type(loop).__module__}, redis-py "
        f"{redis.__version__}, hiredis {'yes' if HIREDIS_AVAILABLE else 'no'}, "
        f"{count:,} messages of each, one every {pace * 1e3:g} ms, interleaved"
    )
    print(f"  {'path':<34} {'p50 us':>8} {'p99 us':>8} {'max us':>9} {'lost':>5}")
    results = {}
    for kind, label in (
        ("plain", "redis-py PUBLISH -> PubSub.listen"),
        ("bus", "RedisBus A.publish -> B handler"),
        ("local", "LocalBus A.publish -> B handler"),
    ):
        times = clocks[kind].times
        samples = [times[k] - t for k, t in sent[kind].items() if k in times]
        p50, p99, top = percentiles(samples)
        results[kind] = (p50, p99)
        lost = count - len(samples)
        print(f"  {label:<34} {p50:8.1f} {p99:8.1f} {top:9.1f} {lost:5d}")
    (bus50, bus99), (plain50, plain99) = results["bus"], results["plain"]
    print(
        f"  added by the bus over plain redis-py: p50 {bus50 - plain50:+.1f} us, "
        f"p99 {bus99 - plain99:+.1f} us"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="500 messages of each")
    parser.add_argument("--count", type=int, help="messages of each kind (default 5,000)")
    parser.add_argument("--pace", type=float, default=1.0, help="ms between two messages")
    parser.add_argument(
        "--redis",
        default=os.environ.get("ROOMCAST_BENCH_REDIS", "redis://127.0.0.1:6379/0"),
        help="the Redis server (a prefix unique to the run is used)",
    )
    parser.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    args = parser.parse_args()
    count: int = args.count or (500 if args.quick else 5000)

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(run(args.redis, count, args.pace / 1e3))


if __name__ == "__main__":
    main()
