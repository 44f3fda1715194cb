"""Server memory per idle connection: RSS growth from connecting 10,000 named clients.

For each server (roomcast on the line protocol and on WebSocket; the naive asyncio chat
(baseline a of ``bench/fanout.py``) and the minimal uvloop chat (b) on the line protocol; the
``websockets`` broadcast server (d) on WebSocket), in a fresh process pinned to core 0:

1. start it, connect one sender and one probe, check that they are in ``#general`` (a marked
   message reaches the probe) and wait until no byte moves for half a second: the server has
   made its one-off allocations (aiohttp's first request, the store, the room);
2. read its RSS (``VmRSS``), connect N (10,000) clients, each named (line: a name line;
   WebSocket: ``hello``), again send one message until every client has it (all are in the
   room), wait until no byte moves for a second (roomcast tells every member of every join:
   the join lines must be delivered before the count is fair), read ``VmRSS`` again;
3. print (after - before) / N in KiB per connection, the peak RSS (``VmHWM``) and the
   seconds the connecting and settling took.

The clients are the C epoll reader of ``bench/fanout.py`` above ``--python-max`` (2,000)
connections, else asyncio protocols; the load generator is pinned to core 1. The ratios are
to the naive asyncio chat (line) within the same run. Run ``python bench/idle.py``
(``--connections 1000`` for a quick look; roomcast's join storm makes 10,000 take minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fanout  # this directory, put first on sys.path just above
from machine import pin, proc_status_bytes, raise_fd_limit

TARGETS = (
    fanout.Target("roomcast", "line"),
    fanout.Target("naive", "line"),
    fanout.Target("uvloop", "line"),
    fanout.Target("roomcast", "ws"),
    fanout.Target("websockets", "ws"),
)
BASELINE = fanout.Target("naive", "line")


@dataclass(frozen=True, slots=True)
class Idle:
    """What one server's run measured."""

    target: fanout.Target
    connections: int
    before: int  # VmRSS, bytes, with one sender and one probe
    after: int  # VmRSS, bytes, with every client connected and the room quiet
    peak: int  # VmHWM, bytes
    connect: float  # s until every connection had the server's first bytes
    settle: float  # s until every client had a message and no byte moved for 1 s

    @property
    def per_connection(self) -> float:
        return (self.after - self.before) / self.connections


async def measure(
    target: fanout.Target,
    connections: int,
    tmpdir: str,
    reader: str | None,
    args: argparse.Namespace,
) -> Idle:
    shape = fanout.Shape(
        receivers=connections + 1,
        senders=1,
        probes=1,
        duration=0.0,
        grace=0.0,
        python_max=args.python_max,
        setup_timeout=args.setup_timeout,
    )
    session = fanout.Session(target, shape, tmpdir, reader)
    try:
        await session.open_base()
        assert session.server is not None
        pid = session.server.pid
        before = proc_status_bytes(pid, "VmRSS")
        await session.add_bulk(connections)
        after = proc_status_bytes(pid, "VmRSS")
        peak = proc_status_bytes(pid, "VmHWM")
        return Idle(
            target, connections, before, after, peak, session.connect_time, session.settle_time
        )
    finally:
        problems = await session.close()
        for line in problems[:3]:
            print(f"    {target.label} logged: {line[:160]}")


async def bench(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # finally runs
    tmpdir = tempfile.mkdtemp(prefix="roomcast-idle-")
    try:
        reader = fanout.build_reader(tmpdir) if args.connections > args.python_max else None
        results: list[Idle] = []
        targets = [t for t in TARGETS if not args.only or any(o in t.label for o in args.only)]
        print(
            f"\n  {'server':<14} {'conns':>7} {'before MiB':>10} {'after MiB':>9} "
            f"{'peak MiB':>8} {'KiB/conn':>8} {'vs naive':>8} {'connect s':>9} {'settle s':>8}"
        )
        for target in targets:
            try:
                r = await measure(target, args.connections, tmpdir, reader, args)
            except (RuntimeError, OSError, TimeoutError) as e:
                print(f"  {target.label:<14} ERROR {type(e).__name__}: {e}", flush=True)
                continue
            results.append(r)
            base = next((b for b in results if b.target == BASELINE), None)
            vs = f"{r.per_connection / base.per_connection:7.2f}x" if base else f"{'-':>8}"
            print(
                f"  {target.label:<14} {r.connections:>7,} {r.before / 2**20:>10.1f} "
                f"{r.after / 2**20:>9.1f} {r.peak / 2**20:>8.1f} {r.per_connection / 1024:>8.2f} "
                f"{vs} {r.connect:>9.1f} {r.settle:>8.1f}",
                flush=True,
            )
        base = next((b for b in results if b.target == BASELINE), None)
        if base is not None:
            print("\n  KiB per connection, ratio to the naive asyncio chat (same run):")
            for r in results:
                print(
                    f"    {r.target.label:<14} {r.per_connection / 1024:6.2f} KiB  "
                    f"{r.per_connection / base.per_connection:5.2f}x"
                )
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=10_000, help="N (10,000)")
    parser.add_argument("--only", nargs="+", help="servers whose label has one of these")
    parser.add_argument(
        "--python-max", type=int, default=2000, help="clients above this: the C reader"
    )
    parser.add_argument("--setup-timeout", type=float, default=600.0, help="s to connect+settle")
    args = parser.parse_args(argv)
    pinned = pin(fanout.LOADGEN_CPU)
    fds = raise_fd_limit()
    if fds < args.connections + 100:
        parser.error(f"only {fds} file descriptors allowed for {args.connections} connections")
    print(
        f"idle connections: RSS per connection at {args.connections:,} named clients; "
        f"{time.strftime('%Y-%m-%d %H:%M')}; python {platform.python_version()}, uvloop "
        f"{version('uvloop')}, aiohttp {version('aiohttp')}, websockets {version('websockets')}; "
        f"servers on cpu {fanout.SERVER_CPU}, clients on cpu {fanout.LOADGEN_CPU}"
        + ("" if pinned else " (NOT pinned)")
    )
    print(fanout.source_state())
    print(
        "roomcast: "
        + " ".join(f"{flag} {value}" for flag, value, _ in fanout.ROOMCAST_CHANGES[:4])
        + " (the fan-out bench's settings; idle clients do not reach them)"
    )
    start = time.perf_counter()
    try:
        uvloop.run(bench(args))
    except asyncio.CancelledError:  # SIGTERM
        print("\ninterrupted (SIGTERM): servers stopped")
        return 130
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
