"""Benchmark: the chat core's hot path, ``Hub.say``, into a room of many sessions.

Run ``python bench/say.py`` (about ten seconds). It opens a hub on a ``MemoryStore``,
names ``--members`` sessions (all in #general), then has one of them say ``--messages``
messages, ``--run`` at a time (one call of ``Hub.say`` per run, as the line listener hands
over a run of pasted lines), and reports the CPU time per message, best of ``--repeat``
(CPU time, so that other processes on a shared machine count less): what the hub costs
per message (state check, flood bucket, draft, store write with its settle callback, one
send into the room's channel), without the delivery to the members, which
``bench/broadcast.py`` and ``bench/fanout.py`` measure: nobody reads, so nobody is parked
and the send wakes nobody. A loop turn every 64 calls runs what the stored futures
scheduled, as a server's loop would.

It uses only the hub's public API, so one script times two versions of the code: run it
with ``PYTHONPATH`` set to each source tree in turn, interleaved. Figures only: nothing
here asserts anything about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import time

from roomcast.hub import Hub, Limits
from roomcast.model import Say, SetName
from roomcast.store import MemoryStore


async def measure(members: int, messages: int, run: int, repeat: int) -> list[float]:
    """Microseconds per message of each of ``repeat`` timed passes."""
    limits = Limits(rate=1e9, burst=1_000_000_000, ring_capacity=1024)
    hub = Hub(MemoryStore(keep=10_000), limits=limits)  # bounded, like the ring
    sessions = []
    for i in range(members):
        session = hub.connect(f"127.0.0.1:{i}")
        await hub.handle(session, SetName(name=f"user{i}"))
        sessions.append(session)
    speaker = sessions[0]
    batch = [Say(text=f"message {i}") for i in range(run)]
    await hub.say(speaker, batch)  # warm up
    figures = []
    for _ in range(repeat):
        gc.collect()
        start = time.process_time()  # CPU time: the machine may be shared
        for i in range(messages // run):
            errors = await hub.say(speaker, batch)
            assert not errors, errors
            if i % 64 == 63:  # a loop turn runs the callbacks of the stored futures, as
                await asyncio.sleep(0)  # a server's loop would between reads
        figures.append((time.process_time() - start) / (messages // run * run) * 1e6)
    await hub.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=1000, help="sessions in the room")
    parser.add_argument("--messages", type=int, default=50_000, help="messages per pass")
    parser.add_argument("--run", type=int, nargs="+", default=[1, 20], help="messages per say")
    parser.add_argument("--repeat", type=int, default=5, help="timed passes; the best counts")
    args = parser.parse_args()
    print(f"# Python {platform.python_version()}, {args.members} members, memory store")
    for run in args.run:
        figures = asyncio.run(measure(args.members, args.messages, run, args.repeat))
        spread = ", ".join(f"{f:.2f}" for f in sorted(figures))
        print(f"say run={run:<3} {min(figures):6.2f} us/message  (passes: {spread})")


if __name__ == "__main__":
    main()
