"""Fan-out benchmark of the two candidate HTTP/WebSocket stacks for roomcast, in one run.

One 100-byte text message fanned out to N WebSocket clients, M times as fast as the server
can, by:

* aiohttp (``aiohttp.web`` + ``web.WebSocketResponse``), three ways of writing to every
  client in the set: ``await ws.send_str(text)`` one client after the other; the same with
  ``await ws.send_frame(utf8, WSMsgType.TEXT)`` (public API, the payload encoded once rather
  than once per client); and ``asyncio.gather`` of every client's ``send_str``. aiohttp 3.14
  has no synchronous public send, but an uncompressed ``send_*`` writes the frame to the
  transport at once and only suspends to drain once the writer passed its limit (256 KiB)
  on a paused transport, so awaiting each client costs a coroutine, not a loop turn;
  ``gather`` (a Task per client) is the only public way not to await them one by one.
* websockets (``websockets.asyncio.server.serve``) with ``websockets.broadcast``, the
  library's own synchronous fan-out helper.

The first two are also run "batched": the same M messages coalesced into frames of 20 (a
JSON array), which is how roomcast writes (one frame per loop turn with every ready message).

Each server is a subprocess of this script (``--serve``), pinned to core 0, on uvloop, on
127.0.0.1 port 0 (it prints its port). The load generator runs here, pinned to core 1: raw
asyncio protocols that do the HTTP Upgrade by hand, then only parse frame headers to count
frames, and count bytes (checked against the exact expected total). Every client first
receives a "welcome" frame, sent once the server has registered it; when all have it, one
client sends ``go`` and the server runs the burst, yielding to the loop after each
broadcast. Per run: deliveries/s (N * M / wall time from ``go`` until the last client has
its last message), server CPU seconds (``/proc/<pid>/stat``), the server's peak RSS
(``VmHWM``), the lag between the server's last write call and the last delivery (about 0
when the clients keep up), the load generator's CPU share (``getrusage`` / wall time) and
the busy share of both cores. Configurations run interleaved, each run in a fresh server;
medians of the repeats, and ratios paired within each round. On a shared machine the
wall-clock rate moves with the other tenants' load; deliveries per server CPU-second does
much less.

Run ``python bench/ws_stacks.py`` (1,000 clients, M=300: about 1 minute on two idle cores,
3 when other tenants leave the server a fifth of its core) or ``--quick`` (200 clients,
M=300: 5 to 30 s). The per-delivery costs do not depend on M (nothing piles up: the
clients keep up), so ``--messages 2000`` only makes the run longer.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, cast

import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import (  # this directory, put first on sys.path just above
    core_busy,
    core_ticks,
    pin,
    proc_cpu_split,
    proc_status_bytes,
    raise_fd_limit,
    self_cpu,
)

if TYPE_CHECKING:  # imported where used, so that each server imports only its own stack
    from aiohttp import web
    from websockets.asyncio.server import ServerConnection

SERVER_CPU = 0  # core of the server subprocess
CLIENT_CPU = 1  # core of the load generator (this process)
MESSAGE_BYTES = 100  # one chat message, as the server writes it
BATCH = 20  # messages per frame in the batched variant
WELCOME = "welcome"  # first frame each client gets, once the server has registered it
GO = b"go"  # the control client's trigger
CONNECT_CONCURRENCY = 64  # handshakes in flight at once
SERVER_LIFETIME = 300.0  # a server exits on its own after this long, whatever happens
SCRIPT = os.path.abspath(__file__)  # run again as the server subprocess
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

STACKS = ("aiohttp", "websockets")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each run does."""

    clients: int
    messages: int  # M, fanned out to every client
    repeats: int
    burst_timeout: float  # seconds from go to the last delivery before giving up


FULL = Sizes(clients=1_000, messages=300, repeats=3, burst_timeout=120.0)
QUICK = Sizes(clients=200, messages=300, repeats=3, burst_timeout=60.0)


@dataclass(frozen=True, slots=True)
class Config:
    """One server configuration: a stack, its way of fanning out, messages per frame."""

    stack: str
    mode: str
    batch: int
    divisor: int = 1  # runs M / divisor messages (the slow variant, to fit the time budget)

    @property
    def label(self) -> str:
        shape = "1 msg/frame" if self.batch == 1 else f"{self.batch} msgs/frame"
        scale = f", M/{self.divisor}" if self.divisor > 1 else ""
        return f"{self.stack} {self.mode}, {shape}{scale}"


CONFIGS = (  # one round, interleaving the stacks
    Config("aiohttp", "send_str", 1),
    Config("websockets", "broadcast", 1),
    Config("aiohttp", "send_frame", 1, divisor=2),
    Config("aiohttp", "gather", 1, divisor=4),
    Config("aiohttp", "send_str", BATCH),
    Config("websockets", "broadcast", BATCH),
)
REFERENCE = {1: CONFIGS[1], BATCH: CONFIGS[5]}  # websockets broadcast, per batch size


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What one run measured."""

    wall: float  # seconds from go until the last client had its last message
    deliveries: int  # messages delivered (clients * M)
    server_cpu: float  # seconds, user + system
    server_sys: float  # seconds, system (the kernel's share: sockets, loopback TCP)
    client_cpu: float  # seconds, user + system, of this process during the burst
    send_loop: float  # seconds the server spent in its burst loop
    base_rss: int  # server RSS in bytes with one client connected
    idle_rss: int  # server RSS in bytes with every client connected, before the burst
    peak_rss: int  # server peak RSS (VmHWM) in bytes at the end
    server_core: float  # busy share of the server's core during the burst
    client_core: float  # busy share of the load generator's core during the burst

    @property
    def rate(self) -> float:
        return self.deliveries / self.wall

    @property
    def cpu_per_delivery(self) -> float:
        return self.server_cpu / self.deliveries

    @property
    def user_per_delivery(self) -> float:
        return (self.server_cpu - self.server_sys) / self.deliveries

    @property
    def lag(self) -> float:
        """Seconds between the server's last write call and the last delivery."""
        return max(self.wall - self.send_loop, 0.0)  # the two clocks start a hop apart


# Payloads, built the same way by the servers and by the load generator's byte check.


def messages(count: int) -> list[str]:
    """``count`` distinct JSON chat messages of exactly MESSAGE_BYTES bytes each."""
    out: list[str] = []
    for seq in range(count):
        head = f'{{"room":"bench","seq":"{seq:08d}","body":"'
        text = head + "x" * (MESSAGE_BYTES - len(head) - 2) + '"}'
        assert len(text.encode()) == MESSAGE_BYTES
        out.append(text)
    return out


def frames(count: int, batch: int) -> list[str]:
    """The text frames the server writes for ``count`` messages, ``batch`` per frame."""
    msgs = messages(count)
    if batch == 1:
        return msgs
    return ["[" + ",".join(msgs[i : i + batch]) + "]" for i in range(0, count, batch)]


def frame_size(payload_len: int) -> int:
    """Bytes on the wire for an unmasked frame with a payload of ``payload_len`` bytes."""
    if payload_len < 126:
        return 2 + payload_len
    if payload_len < 65536:
        return 4 + payload_len
    return 10 + payload_len


# Helpers shared by both processes.


def say(line: str) -> None:
    """One line to the parent on stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# The server subprocess.


async def burst_aiohttp(mode: str, targets: list[web.WebSocketResponse], texts: list[str]) -> None:
    """Fan every text out to every target, yielding to the loop after each broadcast."""
    from aiohttp import WSMsgType

    if mode == "send_str":
        for text in texts:
            for ws in targets:
                await ws.send_str(text)
            await asyncio.sleep(0)
    elif mode == "send_frame":
        for data in [text.encode() for text in texts]:
            for ws in targets:
                await ws.send_frame(data, WSMsgType.TEXT)
            await asyncio.sleep(0)
    elif mode == "gather":
        for text in texts:
            await asyncio.gather(*[ws.send_str(text) for ws in targets])
    else:
        raise ValueError(f"unknown aiohttp mode {mode!r}")


async def burst_websockets(mode: str, targets: list[ServerConnection], texts: list[str]) -> None:
    """Fan every text out to every target, yielding to the loop after each broadcast."""
    from websockets.asyncio.server import broadcast

    if mode != "broadcast":
        raise ValueError(f"unknown websockets mode {mode!r}")
    for text in texts:
        broadcast(targets, text)
        await asyncio.sleep(0)


async def run_burst(burst: Callable[[], Awaitable[None]]) -> None:
    """Run one burst, report its duration (or its failure) to the parent."""
    start = time.perf_counter()
    try:
        await burst()
    except Exception as exc:  # reported to the parent, which fails the run
        say(f"error {type(exc).__name__}: {exc}")
        return
    say(f"burst {time.perf_counter() - start:.6f}")


async def serve_aiohttp(
    sock: socket.socket, mode: str, texts: list[str], stop: asyncio.Event
) -> None:
    """Serve with aiohttp on ``sock`` until ``stop`` is set."""
    from aiohttp import WSMsgType, web

    clients: set[web.WebSocketResponse] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def start_burst() -> None:
        await burst_aiohttp(mode, list(clients), texts)

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=None)
        await ws.prepare(request)
        clients.add(ws)
        try:
            await ws.send_str(WELCOME)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data == GO.decode():
                    task = asyncio.create_task(run_burst(start_burst))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            clients.discard(ws)
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    await stop.wait()  # no cleanup: the process exits at once (see server_main)


async def serve_websockets(
    sock: socket.socket, mode: str, texts: list[str], stop: asyncio.Event
) -> None:
    """Serve with websockets on ``sock`` until ``stop`` is set."""
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    clients: set[ServerConnection] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def start_burst() -> None:
        await burst_websockets(mode, list(clients), texts)

    async def handler(conn: ServerConnection) -> None:
        clients.add(conn)
        try:
            await conn.send(WELCOME)
            async for msg in conn:
                if msg == GO.decode():
                    task = asyncio.create_task(run_burst(start_burst))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        except ConnectionClosed:
            pass
        finally:
            clients.discard(conn)

    server = await serve(handler, sock=sock, compression=None, ping_interval=None)
    await stop.wait()
    del server  # not closed: the process exits at once (see server_main)


async def server_main(stack: str, mode: str, count: int, batch: int) -> None:
    """Serve until stdin closes (the parent is done or gone) or SERVER_LIFETIME passes."""
    texts = frames(count, batch)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    stop = asyncio.Event()

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            stop.set()

    loop = asyncio.get_running_loop()
    loop.add_reader(sys.stdin.fileno(), on_stdin)
    loop.call_later(SERVER_LIFETIME, stop.set)
    # The socket listens already: clients that come before the server wait in its backlog.
    say(f"port {sock.getsockname()[1]}")
    if stack == "aiohttp":
        await serve_aiohttp(sock, mode, texts, stop)
    else:
        await serve_websockets(sock, mode, texts, stop)
    # No orderly close of a thousand connections (websockets would wait for each client's
    # close frame): nothing is measured any more, and the parent is waiting for the exit.
    os._exit(0)


def serve_command(args: argparse.Namespace) -> int:
    pin(SERVER_CPU)
    raise_fd_limit()
    uvloop.run(server_main(args.serve, args.mode, args.messages, args.batch))
    return 0


# The load generator.


class Tally:
    """Counts the clients that reached each milestone."""

    def __init__(self, clients: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.clients = clients
        self.welcomed = 0  # clients that have their welcome frame
        self.to_finish = clients  # clients still without their last frame
        self.welcome_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.finished: asyncio.Future[float] = loop.create_future()  # when the last finished

    def all_welcomed(self, count: int) -> asyncio.Future[None]:
        """Done once ``count`` clients have their welcome frame."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.welcome_waiters.append((count, waiter))
        self.wake()
        return waiter

    def welcome(self) -> None:
        self.welcomed += 1
        self.wake()

    def wake(self) -> None:
        for count, waiter in self.welcome_waiters:
            if self.welcomed >= count and not waiter.done():
                waiter.set_result(None)

    def finish(self) -> None:
        self.to_finish -= 1
        if not self.to_finish:
            self.finished.set_result(time.perf_counter())


class Client(asyncio.Protocol):
    """A WebSocket client that only counts frames: it reads frame headers and skips payloads."""

    def __init__(self, port: int, expected_frames: int, tally: Tally) -> None:
        self.port = port
        self.expected = expected_frames  # welcome included
        self.tally = tally
        self.key = base64.b64encode(os.urandom(16))
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.response = b""  # the HTTP response, until its end
        self.frames = 0
        self.ws_bytes = 0  # every byte after the HTTP response
        self.skip = 0  # payload bytes of the current frame still to come
        self.partial = b""  # the start of a frame header cut by a read
        self.welcomed = False  # has its first frame
        self.done = False  # has its last frame

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.transport.write(
            b"GET /ws HTTP/1.1\r\n"
            b"Host: 127.0.0.1:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (self.port, self.key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed during handshake: {exc}"))

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.response += data
            end = self.response.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.response[:end], self.response[end + 4 :]
            accept = base64.b64encode(hashlib.sha1(self.key + WS_GUID).digest())
            if not head.startswith(b"HTTP/1.1 101") or accept not in head:
                self.upgraded.set_exception(ConnectionError(head.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
            if not data:
                return
        self.ws_bytes += len(data)
        if self.partial:
            data = self.partial + data
            self.partial = b""
        size = len(data)
        pos = self.skip
        frames = self.frames
        while pos < size:  # pos is at the start of a frame header
            if pos + 2 > size:
                self.partial = data[pos:]
                pos = size
                break
            length = data[pos + 1] & 0x7F
            if length < 126:
                pos += 2 + length
            elif length == 126:
                if pos + 4 > size:
                    self.partial = data[pos:]
                    pos = size
                    break
                pos += 4 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            else:
                if pos + 10 > size:
                    self.partial = data[pos:]
                    pos = size
                    break
                pos += 10 + int.from_bytes(data[pos + 2 : pos + 10], "big")
            frames += 1
        self.skip = pos - size
        self.frames = frames
        if self.skip or self.partial:
            return  # the last frame counted is not all here yet
        if not self.welcomed:
            self.welcomed = True
            self.tally.welcome()
        if frames >= self.expected and not self.done:
            self.done = True
            self.tally.finish()

    def send_text(self, payload: bytes) -> None:
        """One masked text frame (payload under 126 bytes)."""
        assert self.transport is not None and len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_all(port: int, count: int, expected: int, tally: Tally) -> list[Client]:
    """Open and upgrade ``count`` connections, CONNECT_CONCURRENCY at a time."""
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> None:
        async with gate:
            _, client = await loop.create_connection(
                lambda: Client(port, expected, tally), "127.0.0.1", port
            )
            clients.append(client)
            await client.upgraded

    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*[one() for _ in range(count)])
    except BaseException:
        for client in clients:
            client.abort()
        raise
    return clients


async def read_line(stream: asyncio.StreamReader) -> str:
    line = await stream.readline()
    if not line:
        raise RuntimeError("server exited")
    return line.decode().strip()


async def stop_server(proc: asyncio.subprocess.Process) -> None:
    """Close its stdin (it exits), then terminate, then kill; each bounded."""
    if proc.returncode is None and proc.stdin is not None:
        proc.stdin.close()
    for signal_it in (None, proc.terminate, proc.kill):
        if signal_it is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                signal_it()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
            return


async def run_once(config: Config, sizes: Sizes, pinned: bool) -> Result:
    """One fresh server, N clients, one burst of M messages; what it measured."""
    count = sizes.messages // config.divisor
    texts = frames(count, config.batch)
    per_client = frame_size(len(WELCOME)) + sum(frame_size(len(t.encode())) for t in texts)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--serve",
        config.stack,
        "--mode",
        config.mode,
        "--messages",
        str(count),
        "--batch",
        str(config.batch),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    clients: list[Client] = []
    try:
        assert proc.stdout is not None
        port = int((await asyncio.wait_for(read_line(proc.stdout), 30)).removeprefix("port "))
        tally = Tally(sizes.clients, asyncio.get_running_loop())
        # One client first, so that the per-connection memory leaves out what the server
        # allocates once, on its first connection (aiohttp: over 10 MiB).
        clients = await connect_all(port, 1, 1 + len(texts), tally)
        await asyncio.wait_for(tally.all_welcomed(1), 30)
        base_rss = proc_status_bytes(proc.pid, "VmRSS")
        clients += await connect_all(port, sizes.clients - 1, 1 + len(texts), tally)
        await asyncio.wait_for(tally.all_welcomed(sizes.clients), 30)

        if pinned and os.sched_getaffinity(proc.pid) != {SERVER_CPU}:
            raise RuntimeError(f"server not pinned: {os.sched_getaffinity(proc.pid)}")
        idle_rss = proc_status_bytes(proc.pid, "VmRSS")
        cores_before = core_ticks()
        (user_before, sys_before), client_before = proc_cpu_split(proc.pid), self_cpu()
        start = time.perf_counter()
        clients[0].send_text(GO)
        # The server reports when its send loop ends, or fails: then stop waiting at once.
        report = asyncio.ensure_future(read_line(proc.stdout))
        deadline = time.perf_counter() + sizes.burst_timeout
        first: list[asyncio.Future[Any]] = [tally.finished, report]
        await asyncio.wait(
            first,
            timeout=sizes.burst_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if report.done() and not report.result().startswith("burst "):
            raise RuntimeError(f"{config.label}: server said {report.result()!r}")
        try:
            remaining = max(deadline - time.perf_counter(), 0.0)
            end = await asyncio.wait_for(tally.finished, remaining)
        except TimeoutError:
            report.cancel()
            got = sum(c.frames - 1 for c in clients)
            raise RuntimeError(
                f"{config.label}: timed out, {got:,} of {sizes.clients * len(texts):,} frames"
            ) from None
        client_cpu = self_cpu() - client_before
        user_after, sys_after = proc_cpu_split(proc.pid)
        cores_after = core_ticks()
        peak_rss = proc_status_bytes(proc.pid, "VmHWM")

        line = await asyncio.wait_for(report, 10)
        if not line.startswith("burst "):
            raise RuntimeError(f"{config.label}: server said {line!r}")
        received = sum(c.ws_bytes for c in clients)
        if received != per_client * sizes.clients or any(
            c.frames != 1 + len(texts) for c in clients
        ):
            raise RuntimeError(
                f"{config.label}: got {received:,} bytes, expected {per_client * sizes.clients:,}"
            )
        return Result(
            wall=end - start,
            deliveries=sizes.clients * count,
            server_cpu=user_after + sys_after - user_before - sys_before,
            server_sys=sys_after - sys_before,
            client_cpu=client_cpu,
            send_loop=float(line.removeprefix("burst ")),
            base_rss=base_rss,
            idle_rss=idle_rss,
            peak_rss=peak_rss,
            server_core=core_busy(cores_before, cores_after, SERVER_CPU),
            client_core=core_busy(cores_before, cores_after, CLIENT_CPU),
        )
    finally:
        await stop_server(proc)  # first, so that it does not log a thousand aborted clients
        for client in clients:
            client.abort()


def show(result: Result) -> str:
    return (
        f"{result.rate / 1e3:6,.0f} k/s  wall {result.wall:5.2f} s  "
        f"server cpu {result.server_cpu:5.2f} s ({result.server_sys:4.2f} sys, "
        f"{result.server_cpu / result.wall:4.0%} of wall)  "
        f"rss {result.base_rss / 2**20:2.0f}/{result.idle_rss / 2**20:2.0f}/"
        f"{result.peak_rss / 2**20:2.0f} MiB  "
        f"lag {result.lag * 1e3:3.0f} ms  client cpu {result.client_cpu / result.wall:4.0%}  "
        f"cores {result.server_core:4.0%} {result.client_core:4.0%}"
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (CPU times are counted in 10 ms ticks)."""
    return a / b if b else float("nan")


def paired(
    runs: dict[Config, list[Result]], a: Config, b: Config, metric: Callable[[Result], float]
) -> float:
    """Median over rounds of metric(a) / metric(b), each pair from the same round."""
    return median([ratio(metric(x), metric(y)) for x, y in zip(runs[a], runs[b], strict=True)])


def rate(r: Result) -> float:
    return r.rate


def capacity(r: Result) -> float:
    """Deliveries per server CPU-second: the rate with a core of its own, unshared."""
    return ratio(1.0, r.cpu_per_delivery)


def user(r: Result) -> float:
    return r.user_per_delivery


def rss(r: Result) -> float:
    return r.peak_rss


def per_conn(r: Result, clients: int) -> float:
    """Server RSS growth per connection, past the first one."""
    return (r.idle_rss - r.base_rss) / max(clients - 1, 1)


LEGEND = f"""
per run: deliveries/s (wall clock), wall time from go to the last delivery, server CPU
  (of it in the kernel; its share of the wall time: under 100 % when other tenants take
  the core), server RSS (one client / every client connected / peak), lag (wall time
  - the server's own send loop: ~0 when the clients kept up), the load generator's CPU /
  wall, and the busy share of cores {SERVER_CPU} and {CLIENT_CPU} (every process on them, other
  tenants too, and softirq)
summary: "per cpu-s" is deliveries per server CPU-second (the capacity of an unshared
  core; steadier than the wall-clock rate on a busy machine), "user/delivery" the server's
  user-space CPU per delivery (the library's share: the kernel's is alike for both), "per
  conn" the server's RSS growth per connected client after the first"""


async def bench(sizes: Sizes, configs: Sequence[Config], pinned: bool) -> None:
    runs: dict[Config, list[Result]] = {c: [] for c in configs}
    width = max(len(c.label) for c in configs)
    print(LEGEND)
    for round_no in range(1, sizes.repeats + 1):
        print(f"\nround {round_no}/{sizes.repeats}")
        for config in configs:
            result = await run_once(config, sizes, pinned)
            runs[config].append(result)
            print(f"  {config.label:<{width}}  {show(result)}", flush=True)

    print(f"\nmedians of {sizes.repeats} runs ({sizes.clients:,} clients, M={sizes.messages:,})")
    print(
        f"  {'':<{width}}  {'deliveries/s':>12}  {'server cpu':>10}  {'per cpu-s':>10}  "
        f"{'user/delivery':>13}  {'peak rss':>8}  {'per conn':>8}  {'lag':>6}  {'client cpu':>10}"
    )
    for config in configs:
        rs = runs[config]
        print(
            f"  {config.label:<{width}}  {median([rate(r) for r in rs]):12,.0f}  "
            f"{median([r.server_cpu for r in rs]):8.2f} s  "
            f"{median([capacity(r) for r in rs]):10,.0f}  "
            f"{median([user(r) for r in rs]) * 1e6:10.2f} us  "
            f"{median([rss(r) for r in rs]) / 2**20:4.0f} MiB  "
            f"{median([per_conn(r, sizes.clients) for r in rs]) / 1024:4.1f} KiB  "
            f"{median([r.lag for r in rs]) * 1e3:3.0f} ms  "
            f"{median([r.client_cpu / r.wall for r in rs]):10.0%}"
        )

    print("\nratios to websockets broadcast with the same frames (median of per-round ratios)")
    print(
        f"  {'':<{width}}  {'deliveries/s':>12}  {'per cpu-s':>10}  {'user/delivery':>13}  "
        f"{'peak rss':>8}"
    )
    for config in configs:
        ref = REFERENCE.get(config.batch)
        if ref is None or ref == config or ref not in runs:
            continue
        print(
            f"  {config.label:<{width}}  {paired(runs, config, ref, rate):11.2f}x  "
            f"{paired(runs, config, ref, capacity):9.2f}x  "
            f"{paired(runs, config, ref, user):12.2f}x  "
            f"{paired(runs, config, ref, rss):7.2f}x"
        )

    print(f"\nbatching: {BATCH} msgs/frame against 1 msg/frame, same stack and mode")
    print(f"  {'':<{width}}  {'deliveries/s':>12}  {'per cpu-s':>10}  {'user/delivery':>13}")
    for config in configs:
        single = Config(config.stack, config.mode, 1)
        if config.batch == 1 or single not in runs:
            continue
        print(
            f"  {config.label:<{width}}  {paired(runs, config, single, rate):11.2f}x  "
            f"{paired(runs, config, single, capacity):9.2f}x  "
            f"{paired(runs, config, single, user):12.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200 clients, M=300")
    parser.add_argument("--clients", type=int, help="WebSocket clients (default 1000)")
    parser.add_argument("--messages", type=int, help="messages per burst, M (default 300)")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--only", default="", help="run only configurations whose label has this")
    parser.add_argument("--serve", choices=STACKS, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve_command(args)

    sizes = QUICK if args.quick else FULL
    sizes = Sizes(
        clients=args.clients or sizes.clients,
        messages=args.messages or sizes.messages,
        repeats=args.repeats or sizes.repeats,
        burst_timeout=sizes.burst_timeout,
    )
    if sizes.messages % BATCH or any(sizes.messages < c.divisor for c in CONFIGS):
        parser.error(f"--messages must be a positive multiple of {BATCH}")
    pinned = pin(CLIENT_CPU)
    fds = raise_fd_limit()
    if fds < sizes.clients + 100:
        parser.error(f"only {fds} file descriptors allowed for {sizes.clients} clients")

    print(
        f"WebSocket fan-out: {sizes.clients:,} clients x M={sizes.messages:,} messages of "
        f"{MESSAGE_BYTES} B, {sizes.repeats} interleaved rounds, a fresh server per run"
    )
    print(
        f"python {platform.python_version()}, aiohttp {version('aiohttp')}, "
        f"websockets {version('websockets')}, uvloop {version('uvloop')}, "
        f"{os.cpu_count()} cpus, server on cpu {SERVER_CPU}, clients on cpu {CLIENT_CPU}"
        + ("" if pinned else " (NOT pinned: cpu missing)")
        + f", load {os.getloadavg()[0]:.2f}"
    )
    print("no permessage-deflate (the clients do not offer it); no pings during the burst")
    start = time.perf_counter()
    configs = [c for c in CONFIGS if args.only in c.label]
    if not configs:
        parser.error(f"no configuration matches {args.only!r}")
    uvloop.run(bench(sizes, configs, pinned))
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
