"""End-to-end fan-out benchmark: one room, N receivers, S senders, roomcast against baselines.

Workload. One room (``#general``). N receivers (100, 1,000, 10,000) are connected and named;
S senders (default 10) send R messages per second in total for D seconds, each on its own
connection, paced in 5 ms ticks. Every message text is 100 bytes and starts with a token
``~^#!<sender>.<seq>.<time.monotonic_ns()>.`` (then ``x`` padding), so that its send time and
sequence number travel with it. Every receiver should get every message: N * R * D
deliveries.

Servers, each started by this script in the same run, a fresh process per (server, N),
pinned to core 0 (the load generator is pinned to core 1):

* ``roomcast`` as ``python -m roomcast.cli serve`` on uvloop with its durable SQLite store
  in a temporary directory, in two modes: ``line`` (the TCP line protocol: a name line, then
  text lines; it sends ``[#general] name: text`` lines) and ``ws`` (the WebSocket JSON
  protocol: ``hello``, then ``send`` frames; it sends message objects, several at once in
  ``batch`` frames). The bench raises the limits a load test would trip and prints them:
  ``--rate 1000000 --burst 1000000 --stall-timeout 60 --high-water 4194304
  --max-per-address 0 --name-timeout 0`` (every client comes from 127.0.0.1, and 10,000
  joins at once can hold a name's answer past the deadline).
* ``naive`` (line): asyncio streams on the default asyncio loop, one ``asyncio.Queue`` and one
  writer task per client, ``write`` + ``await drain()`` per message per client.
* ``uvloop`` (line): a minimal uvloop ``Protocol`` whose ``data_received`` splits lines and
  calls ``transport.write`` on every client for every line: one write per delivery.
* ``redis`` (line column): Redis pub/sub on 127.0.0.1:6379 with a channel unique to the run;
  receivers are raw RESP subscribers, senders ``PUBLISH``. Its "server" is the running
  redis-server (pid from ``INFO server``): its threads are pinned to core 0 for the run and
  put back afterwards, and its peak RSS is reset (``/proc/<pid>/clear_refs``) per run.
* ``websockets`` (ws): a ``websockets`` (asyncio API, uvloop) server speaking the same JSON
  frames, one ``websockets.broadcast()`` per message.

Load generator (this process, plus a C helper). Receivers other than the probes do no
per-message Python work: they count the bytes and the occurrences of the token's marker
``~^#!`` in what they read (``bytes.count``, also across reads). Up to ``--python-max``
receivers (default 2,000; 0 with ``--find-max``) they are asyncio protocols here; above it
they are one C epoll process (``bench/fanout_reader.c``, compiled with gcc into a temporary
directory, pinned to core 1 too), which does the handshake, reports its counts over a pipe,
and sleeps 1 ms after each round of reads so that reads are few and large. WebSocket
receivers answer the server's pings (roomcast's aiohttp heartbeat) with pongs. Ten of the
receivers are probes: they parse every message token they read and keep ``receive time -
send time`` (both ``CLOCK_MONOTONIC``, one machine); above 100,000 parsed messages per second only
``100,000 / R`` of them parse (at least one), so that parsing does not load the generator.
The senders and probes are asyncio protocols on uvloop in this process.

Method of one run ("step"). Connect the senders, probes and receivers (64 handshakes in
flight); then a sender sends a marked "ready" message, again every second, until every
receiver has one (so every receiver is in the room); then wait until no byte has arrived
anywhere for a second (roomcast tells every member of a room of up to 1,000 about every
join: half a million join lines, which must be over before measuring). Then pace R messages/s for D
seconds and wait until every receiver has every message, or ``--grace`` seconds (3) after
the last send. Reported: deliveries/s (received / time from the first send to the last
delivery), the delivery ratio (received / (sent * N)), latency p50/p99/max from the probes,
the server's CPU seconds (``/proc/<pid>/stat``, all threads, over the step) and CPU
microseconds per delivery, its peak RSS (``VmHWM``), the load generator's CPU share (this
process + the C reader, over the step's wall time), the busy share of both cores and the
hypervisor's steal from ``/proc/stat``, connections closed by the server, and the setup
time. A run passes when the delivery ratio is at least 99 %, p99 at most 200 ms and no
connection was closed. The server's stderr goes to a file; its WARNING/ERROR lines are
printed at the end.

``--find-max`` keeps the server and its connections and raises R from its starting value:
doubling while runs pass, then bisecting (geometric mean) between the highest pass and the
lowest failure until they are within 20 %, in at most ``--max-steps`` (10) steps. After a
failure it starts a fresh server (a backlog or closed connections would spoil the next
step) and tries the same rate once more: a rate fails only if it fails twice (``--no-retry``
turns that off). It reports the highest passing R and its deliveries/s, then runs one more
step at half that R and reports its latency.

Ratios are of roomcast to each baseline within the same run and the same N: the machine has
two shared cores, so absolute figures move with the neighbours' load, ratios much less.

Run ``python bench/fanout.py`` (both modes, N = 100, 1,000, 10,000, D = 5 s: a few
minutes, most of them setting up 10,000 receivers), ``--quick`` (N = 100 and 1,000,
D = 2 s: about 75 s), ``--find-max --receivers 1000`` (5 to 10 minutes; ``--only`` to
bound it), ``--help`` for the rest. Results are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, cast

import orjson
import uvloop

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import (  # this directory, put first on sys.path just above
    child_setup,
    core_busy,
    core_ticks,
    pin,
    proc_cpu,
    proc_status_bytes,
    raise_fd_limit,
    self_cpu,
)

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

SERVER_CPU = 0  # core of the server under test
LOADGEN_CPU = 1  # core of this process and of the C reader
SCRIPT = os.path.abspath(__file__)
BENCH_DIR = os.path.dirname(SCRIPT)
READER_SOURCE = os.path.join(BENCH_DIR, "fanout_reader.c")
ROOM = "#general"
MARK = b"~^#!"  # starts every message token; does not overlap itself
TOKEN = re.compile(rb"~\^#!(\d{3})\.(\d{9})\.(\d{19})\.")
TOKEN_BYTES = 38  # len of one token
MESSAGE_BYTES = 100
READY_SENDER = 999  # sender id of the "ready" messages, not measured
TICK = 0.005  # seconds between two pacing rounds of the senders
CONNECT_IN_FLIGHT = 64  # connections waiting for the server's first bytes at once
PARSE_BUDGET = 100_000  # parsed messages per second the probes may cost together
HIGH_WATER = 4 * 2**20  # roomcast --high-water for the bench (default 256 KiB)
REDIS_PORT = 6379
SERVER_LIFETIME = 1800.0  # a baseline server exits on its own after this long
PASS_RATIO = 0.99
PASS_P99_MS = 200.0

# What the bench changes in roomcast's settings, with the defaults (printed by the bench).
ROOMCAST_CHANGES = (
    ("--rate", "1000000", "10 commands/s per connection"),
    ("--burst", "1000000", "30"),
    ("--stall-timeout", "60", "30 s"),
    ("--high-water", str(HIGH_WATER), "262144"),
    ("--max-per-address", "0", "20 connections from one address (all come from 127.0.0.1)"),
    ("--name-timeout", "0", "30 s to give a name (a join storm may hold the answer longer)"),
    ("--store", "sqlite:<tmpdir>/rc.db", "sqlite in the data dir (durable store kept on)"),
    ("--data-dir", "<tmpdir>", "~/.local/share/roomcast (token key)"),
    ("--loop", "uvloop", "auto"),
    ("--log-level", "WARNING", "INFO (one line per connect)"),
    ("--port/--http-port", "free ports picked by the bench", "7777/8080"),
)

LINE_SERVERS = ("roomcast", "naive", "uvloop", "redis")
WS_SERVERS = ("roomcast", "websockets")


# --- process helpers ----------------------------------------------------------------------


def steal_share(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]) -> float:
    """Share of the time the hypervisor ran something else instead of either core."""
    steal = after[-1][0] - before[-1][0]
    total = after[-1][1] - before[-1][1]
    return steal / total if total else float("nan")


def source_state() -> str:
    """The roomcast code measured: the commit, and whether src/ has uncommitted changes."""
    root = os.path.dirname(BENCH_DIR)
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "roomcast source: unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"roomcast source: commit {head}" + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_listening(port: int, within: float, proc: asyncio.subprocess.Process) -> None:
    """Until something accepts on 127.0.0.1:``port``; fails if ``proc`` exits first."""
    deadline = time.monotonic() + within
    while True:
        if proc.returncode is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port} after {within} s") from None
            await asyncio.sleep(0.1)
            continue
        writer.transport.abort()
        return


# --- messages and wire formats ------------------------------------------------------------


def message_text(sender: int, seq: int, now_ns: int) -> str:
    """A 100-byte message text carrying its sender, sequence number and send time."""
    head = f"~^#!{sender:03d}.{seq:09d}.{now_ns:019d}."
    return head + "x" * (MESSAGE_BYTES - len(head))


def ws_client_frame(payload: bytes) -> bytes:
    """A client text frame; mask key 0 (valid, and the payload needs no masking)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


WS_PONG = b"\x8a\x80\0\0\0\0"  # an empty pong, mask key 0


def ws_upgrade(port: int) -> bytes:
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n" % port
    )


def resp(*args: bytes) -> bytes:
    """A Redis command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


# --- baseline servers (run as ``fanout.py --serve KIND --port P``) ------------------------


def stop_on_stdin_eof(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` when stdin closes (the bench is done or gone) or the lifetime passes."""

    def on_stdin() -> None:
        if not os.read(sys.stdin.fileno(), 4096):
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    loop.call_later(SERVER_LIFETIME, stop.set)


async def serve_naive(port: int) -> None:
    """(a) asyncio streams; one Queue and one writer task per client; write + drain each."""
    clients: dict[asyncio.StreamWriter, asyncio.Queue[bytes]] = {}

    async def write_loop(writer: asyncio.StreamWriter, queue: asyncio.Queue[bytes]) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                data = await queue.get()
                writer.write(data)
                await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-- welcome. what is your name?\n")
        task: asyncio.Task[None] | None = None
        try:
            line = await reader.readline()
            if not line:
                return
            name = line.decode().strip()
            writer.write(f"-- hello {name}\n".encode())
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            clients[writer] = queue
            task = asyncio.create_task(write_loop(writer, queue))
            while True:
                line = await reader.readline()
                if not line:
                    break
                out = f"[{ROOM}] {name}: {line.decode().rstrip()}\n".encode()
                for q in clients.values():
                    q.put_nowait(out)
        except ConnectionError:
            pass
        finally:
            clients.pop(writer, None)
            if task is not None:
                task.cancel()
            writer.close()

    stop = asyncio.Event()
    stop_on_stdin_eof(asyncio.get_running_loop(), stop)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await stop.wait()


class _LineChat(asyncio.Protocol):
    """(b) uvloop: split lines in data_received, one transport.write per delivery."""

    clients: set[asyncio.Transport] = set()

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.name: bytes | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(b"-- welcome. what is your name?\n")

    def data_received(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if self.name is None:
                assert self.transport is not None
                self.name = line
                self.clients.add(self.transport)
                self.transport.write(b"-- hello " + line + b"\n")
                continue
            out = b"[#general] " + self.name + b": " + line + b"\n"
            for t in self.clients:
                t.write(out)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.clients.discard(self.transport)


async def serve_uvloop(port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stop_on_stdin_eof(loop, stop)
    server = await loop.create_server(_LineChat, "127.0.0.1", port, backlog=1024)
    async with server:
        await stop.wait()


async def serve_websockets(port: int) -> None:
    """(d) websockets, the same JSON frames, one websockets.broadcast() per message."""
    from websockets.asyncio.server import broadcast, serve
    from websockets.exceptions import ConnectionClosed

    clients: set[ServerConnection] = set()

    async def handler(conn: ServerConnection) -> None:
        name = ""
        try:
            async for raw in conn:
                obj = orjson.loads(raw)
                kind = obj.get("type")
                if kind == "hello":
                    name = str(obj["name"])
                    clients.add(conn)
                    await conn.send(orjson.dumps({"type": "welcome", "name": name}).decode())
                elif kind == "send" and name:
                    out = {"type": "message", "room": ROOM, "from": name, "text": obj["text"]}
                    broadcast(clients, orjson.dumps(out).decode())
        except ConnectionClosed:
            pass
        finally:
            clients.discard(conn)

    stop = asyncio.Event()
    stop_on_stdin_eof(asyncio.get_running_loop(), stop)
    async with serve(
        handler, "127.0.0.1", port, compression=None, ping_interval=None, backlog=1024
    ):
        await stop.wait()
    os._exit(0)  # no closing handshake with thousands of clients


def serve_command(kind: str, port: int) -> int:
    raise_fd_limit()
    if kind == "naive":
        asyncio.run(serve_naive(port))  # the default asyncio loop: the naive choice
    elif kind == "uvloop":
        uvloop.run(serve_uvloop(port))
    elif kind == "websockets":
        uvloop.run(serve_websockets(port))
    else:
        raise SystemExit(f"unknown server {kind!r}")
    return 0


# --- servers under test -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A server and the protocol the clients speak to it."""

    kind: str  # roomcast, naive, uvloop, redis, websockets
    mode: str  # line or ws

    @property
    def wire(self) -> str:
        """The client side: line, ws or redis."""
        return "redis" if self.kind == "redis" else self.mode

    @property
    def label(self) -> str:
        return f"{self.kind} {self.mode}" if self.kind == "roomcast" else self.kind


@dataclass(slots=True)
class Running:
    """A started server."""

    target: Target
    pid: int
    port: int  # what the clients connect to
    proc: asyncio.subprocess.Process | None  # None: not ours (redis-server)
    log_path: str | None = None
    channel: str = ""  # redis channel
    saved_affinity: dict[int, set[int]] = field(default_factory=dict)  # redis threads
    saved_maxclients: int | None = None  # redis maxclients to put back

    def log_problems(self) -> list[str]:
        """WARNING/ERROR/traceback lines of the server's stderr."""
        if self.log_path is None or not os.path.exists(self.log_path):
            return []
        with open(self.log_path, errors="replace") as f:
            return [
                line.rstrip()
                for line in f
                if any(w in line for w in ("WARNING", "ERROR", "Traceback", "Error"))
            ]


def redis_maxclients(value: int | None = None) -> int:
    """Redis's maxclients; set it first if ``value`` is given."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        if value is not None:
            client.config_set("maxclients", value)
        return int(str(client.config_get("maxclients")["maxclients"]))
    finally:
        client.close()


def redis_pid() -> tuple[int, str]:
    """The pid and version of the redis-server on 127.0.0.1:6379."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_timeout=5)
    try:
        info = client.info("server")
    finally:
        client.close()
    return int(info["process_id"]), str(info["redis_version"])


def reset_peak_rss(pid: int) -> None:
    """Reset VmHWM of ``pid`` to its current RSS (root, or the process's owner)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def redis_threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


async def start_server(target: Target, tmpdir: str, tag: str, connections: int) -> Running:
    """Start ``target`` for ``connections`` clients (redis: its maxclients is raised to
    that plus 64 for the run if lower, and put back by stop_server)."""
    if target.kind == "redis":
        pid, _ = redis_pid()
        saved_max: int | None = None
        current = redis_maxclients()
        if current < connections + 64:
            redis_maxclients(connections + 64)
            saved_max = current
        saved: dict[int, set[int]] = {}
        every_cpu = set(range(os.cpu_count() or 1))
        for tid in redis_threads(pid):
            with contextlib.suppress(OSError):
                mask = os.sched_getaffinity(tid)
                # {SERVER_CPU} is what a run of this bench that was killed outright left
                saved[tid] = every_cpu if mask == {SERVER_CPU} else mask
                os.sched_setaffinity(tid, {SERVER_CPU})
        reset_peak_rss(pid)
        channel = f"rcbench.{os.getpid()}.{time.monotonic_ns()}"
        return Running(
            target,
            pid,
            REDIS_PORT,
            None,
            channel=channel,
            saved_affinity=saved,
            saved_maxclients=saved_max,
        )
    log_path = os.path.join(tmpdir, f"{tag}.log")
    if target.kind == "roomcast":
        line_port, http_port = free_port(), free_port()
        data = os.path.join(tmpdir, tag)
        os.makedirs(data, exist_ok=True)
        cmd = [
            sys.executable, "-m", "roomcast.cli", "serve",
            "--host", "127.0.0.1", "--port", str(line_port), "--http-port", str(http_port),
            "--store", f"sqlite:{data}/rc.db", "--data-dir", data,
            "--loop", "uvloop", "--log-level", "WARNING",
            "--rate", "1000000", "--burst", "1000000", "--stall-timeout", "60",
            "--high-water", str(HIGH_WATER), "--max-per-address", "0", "--name-timeout", "0",
        ]  # fmt: skip
        port = line_port if target.mode == "line" else http_port
    else:
        port = free_port()
        cmd = [sys.executable, SCRIPT, "--serve", target.kind, "--port", str(port)]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            preexec_fn=child_setup(SERVER_CPU),
        )
    finally:
        os.close(log)
    running = Running(target, proc.pid, port, proc, log_path=log_path)
    try:
        await wait_listening(port, 30, proc)
        if target.kind == "roomcast" and target.mode == "ws":
            await wait_listening(line_port, 30, proc)
    except BaseException:
        await stop_server(running)
        raise
    return running


async def stop_server(server: Running) -> None:
    """Kill it (nothing is measured any more: an orderly close of thousands of clients
    would only load the machine for the next run), or give redis its affinity back."""
    proc = server.proc
    if proc is None:
        for tid, cpus in server.saved_affinity.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, cpus)
        if server.saved_maxclients is not None:
            redis_maxclients(server.saved_maxclients)
        return
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), 10)


# --- the load generator: Python clients ---------------------------------------------------


class Conn(asyncio.Protocol):
    """A receiving connection that counts bytes and message markers, nothing else."""

    def __init__(self, wire: str, name: str, port: int, channel: str) -> None:
        self.wire = wire
        self.name = name
        self.port = port
        self.channel = channel
        self.transport: asyncio.Transport | None = None
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.open = wire != "ws"  # ws: once the 101 response is in
        self.head = b""  # ws: the HTTP response so far
        self.marks = 0
        self.bytes = 0
        self.tail = b""  # the last bytes of the previous read (a marker may be cut)
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if self.wire == "line":
            self.transport.write(self.name.encode() + b"\n")
        elif self.wire == "redis":
            self.transport.write(resp(b"SUBSCRIBE", self.channel.encode()))
        else:
            self.transport.write(ws_upgrade(self.port))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.first.done():
            self.first.set_exception(ConnectionError(f"{self.name}: closed before data"))

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)
        if not self.open:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 101"):
                if not self.first.done():
                    self.first.set_exception(ConnectionError(self.head[:200].decode()))
                return
            data = self.head[end + 4 :]
            self.head = b""
            self.open = True
            hello = orjson.dumps({"type": "hello", "name": self.name})
            assert self.transport is not None
            self.transport.write(ws_client_frame(hello))
        if not self.first.done():
            self.first.set_result(None)
        if data:
            self.count(data)

    def count(self, data: bytes) -> None:
        self.marks += data.count(MARK) + (self.tail + data[:3]).count(MARK)
        self.tail = data[-3:] if len(data) >= 3 else (self.tail + data)[-3:]
        if self.wire == "ws" and b"\x89" in data and self.transport is not None:
            self.transport.write(WS_PONG)  # a ping (or by chance a header byte): harmless


class Probe(Conn):
    """A receiver that also parses every message token it reads, while recording."""

    def __init__(self, wire: str, name: str, port: int, channel: str) -> None:
        super().__init__(wire, name, port, channel)
        self.recording = False
        self.latencies: array.array[int] = array.array("q")  # nanoseconds
        self.rest = b""  # a token cut by the end of the previous read

    def record(self, on: bool) -> None:
        self.recording = on
        self.rest = b""
        if on:
            self.latencies = array.array("q")

    def count(self, data: bytes) -> None:
        super().count(data)
        if not self.recording:
            return
        now = time.monotonic_ns()
        chunk = self.rest + data if self.rest else data
        end = 0
        lat = self.latencies
        for m in TOKEN.finditer(chunk):
            end = m.end()
            if m[1] != b"999":
                lat.append(now - int(m[3]))
        self.rest = chunk[max(end, len(chunk) - TOKEN_BYTES + 1) :]


class Sender(Conn):
    """A sending connection (it also counts what it receives: it must keep reading)."""

    def __init__(self, wire: str, name: str, port: int, channel: str, sender_id: int) -> None:
        super().__init__(wire, name, port, channel)
        self.sender_id = sender_id
        self.seq = 0
        self.target = channel.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.wire == "redis":  # a subscribed connection could not PUBLISH
            self.transport = cast(asyncio.Transport, transport)
            self.transport.write(resp(b"PING"))
        else:
            super().connection_made(transport)

    def send(self, count: int, now_ns: int, *, sender_id: int | None = None) -> None:
        assert self.transport is not None
        sid = self.sender_id if sender_id is None else sender_id
        texts = [message_text(sid, self.seq + i, now_ns) for i in range(count)]
        self.seq += count
        if self.wire == "line":
            self.transport.write(("\n".join(texts) + "\n").encode())
        elif self.wire == "redis":
            self.transport.write(b"".join(resp(b"PUBLISH", self.target, t.encode()) for t in texts))
        else:
            self.transport.write(
                b"".join(
                    ws_client_frame(orjson.dumps({"type": "send", "room": ROOM, "text": t}))
                    for t in texts
                )
            )

    def count(self, data: bytes) -> None:
        if self.wire == "ws" and b"\x89" in data and self.transport is not None:
            self.transport.write(WS_PONG)


async def connect_many(
    port: int, factories: Sequence[Callable[[], Conn]], within: float
) -> list[Conn]:
    """Connect every factory's Conn, CONNECT_IN_FLIGHT waiting for first bytes at once."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_IN_FLIGHT)
    conns: list[Conn] = []

    async def one(factory: Callable[[], Conn]) -> None:
        async with gate:
            _, conn = await loop.create_connection(factory, "127.0.0.1", port)
            conns.append(conn)
            await asyncio.wait_for(asyncio.shield(conn.first), 30)

    try:
        async with asyncio.timeout(within):
            await asyncio.gather(*[one(f) for f in factories])
    except BaseException:
        for c in conns:
            if c.transport is not None:
                c.transport.abort()
        raise
    return conns


@dataclass(frozen=True, slots=True)
class Totals:
    marks: int  # message markers received
    bytes: int
    min_marks: int  # fewest markers on one open connection
    open: int
    closed: int
    have: int  # connections with at least one marker


class PyReceivers:
    """Bulk receivers as Python protocols in this process."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []

    async def start(self, server: Running, count: int, within: float) -> None:
        wire, port, channel = server.target.wire, server.port, server.channel
        self.conns = await connect_many(
            port,
            [lambda i=i: Conn(wire, f"r{i}", port, channel) for i in range(count)],  # type: ignore[misc]
            within,
        )

    async def totals(self) -> Totals:
        cs = self.conns
        opened = [c for c in cs if not c.closed]
        return Totals(
            marks=sum(c.marks for c in cs),
            bytes=sum(c.bytes for c in cs),
            min_marks=min((c.marks for c in opened), default=0),
            open=len(opened),
            closed=len(cs) - len(opened),
            have=sum(1 for c in cs if c.marks),
        )

    def cpu(self) -> float:
        return 0.0  # counted in this process's own CPU time

    async def close(self) -> None:
        for c in self.conns:
            if c.transport is not None:
                c.transport.abort()


class CReceivers:
    """Bulk receivers in the C epoll reader (a child process pinned to the generator's core)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.proc: asyncio.subprocess.Process | None = None
        self.count = 0
        self.lock = asyncio.Lock()

    async def start(self, server: Running, count: int, within: float) -> None:
        self.count = count
        wire = server.target.wire
        self.proc = await asyncio.create_subprocess_exec(
            self.binary, wire, str(server.port), str(count), "r", server.channel or "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=child_setup(LOADGEN_CPU),
        )  # fmt: skip
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within)
        except TimeoutError:
            raise RuntimeError(
                f"C reader: not all {count:,} connected after {within:.0f} s: "
                f"{await self.progress()}"
            ) from None
        parts = line.split()
        if len(parts) != 3 or parts[0] != b"ready":
            raise RuntimeError(f"C reader: {line!r}")
        if int(parts[2]):
            raise RuntimeError(f"C reader: {int(parts[2])} of {count} connections failed")

    async def progress(self) -> str:
        """While connecting: how many connections have had the server's first bytes."""
        try:
            tot = await self.totals()
        except (ValueError, TimeoutError, OSError) as e:
            return f"no report ({type(e).__name__})"
        return f"{tot.open:,} open, {tot.closed:,} closed, {tot.bytes / 2**20:,.0f} MiB received"

    async def totals(self) -> Totals:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        async with self.lock:
            proc.stdin.write(b"r\n")
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            if line.startswith(b"ready"):  # it got there meanwhile: the report comes next
                line = await asyncio.wait_for(proc.stdout.readline(), 10)
        marks, nbytes, min_marks, opened, closed, have = map(int, line.split())
        return Totals(marks, nbytes, min_marks, opened, closed, have)

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid) if self.proc is not None else 0.0

    async def close(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def build_reader(tmpdir: str) -> str:
    """Compile the C reader into ``tmpdir``; its path."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no gcc: use --python-max to keep every receiver in Python")
    out = os.path.join(tmpdir, "fanout_reader")
    subprocess.run([gcc, "-O2", "-o", out, READER_SOURCE], check=True, timeout=60)
    return out


# --- one server with its connections ------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Shape:
    """How many connections and how long."""

    receivers: int  # N, probes included
    senders: int
    probes: int
    duration: float
    grace: float
    python_max: int  # above this many bulk receivers, the C reader takes them
    setup_timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What one step measured."""

    target: Target
    receivers: int
    rate: float  # offered messages/s
    sent: int
    expected: int
    received: int
    wall: float  # first send to last delivery
    window: float  # first send to the end of the step (all in, or grace over)
    p50: float  # ms
    p99: float
    pmax: float
    samples: int  # latencies measured
    parsing: int  # probes that parsed
    server_cpu: float  # s
    peak_rss: int  # bytes
    loadgen_cpu: float  # s, this process + C reader
    core_server: float
    core_loadgen: float
    steal: float  # share of both cores' time taken by the hypervisor for other guests
    closed: int  # connections closed by the server (receivers, probes, senders)
    reader: str  # python or C
    setup: float  # s from connecting the receivers to a quiet room

    @property
    def ratio(self) -> float:
        return self.received / self.expected if self.expected else float("nan")

    @property
    def rate_delivered(self) -> float:
        return self.received / self.wall if self.wall > 0 else 0.0

    @property
    def cpu_per_delivery(self) -> float:
        """Server CPU microseconds per delivery."""
        return self.server_cpu / self.received * 1e6 if self.received else float("nan")

    @property
    def core_per_delivery(self) -> float:
        """Busy microseconds of the server's core per delivery (softirq and neighbours too)."""
        return self.core_server * self.window / self.received * 1e6 if self.received else math.nan

    @property
    def passed(self) -> bool:
        return self.ratio >= PASS_RATIO and self.p99 <= PASS_P99_MS and self.closed == 0


def percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i] / 1e6


class Session:
    """A fresh server with N receivers (probes among them) and S senders, ready to measure."""

    def __init__(self, target: Target, shape: Shape, tmpdir: str, reader: str | None) -> None:
        self.target = target
        self.shape = shape
        self.tmpdir = tmpdir
        self.reader_binary = reader
        self.server: Running | None = None
        self.bulk: PyReceivers | CReceivers = PyReceivers()
        self.probes: list[Probe] = []
        self.senders: list[Sender] = []
        self.want = 0  # receivers that should be open (bulk + probes)
        self.connect_time = 0.0  # s to connect the bulk receivers
        self.settle_time = 0.0  # s from connecting them to a quiet room

    @property
    def bulk_count(self) -> int:
        return self.shape.receivers - self.shape.probes

    @property
    def reader_kind(self) -> str:
        return "C" if isinstance(self.bulk, CReceivers) else "python"

    async def open(self) -> None:
        """Start the server, connect everyone, check that all are in the room, settle."""
        await self.open_base()
        await self.add_bulk(self.bulk_count)

    async def open_base(self) -> None:
        """Start the server, connect the senders and the probes, check they are in the room."""
        tag = f"{self.target.kind}-{self.target.mode}-{self.shape.receivers}-{time.time_ns()}"
        connections = self.shape.receivers + self.shape.senders
        self.server = server = await start_server(self.target, self.tmpdir, tag, connections)
        wire, port, channel = self.target.wire, server.port, server.channel
        t = self.shape.setup_timeout
        self.senders = cast(
            list[Sender],
            await connect_many(
                port,
                [
                    lambda i=i: Sender(wire, f"s{i}", port, channel, i)  # type: ignore[misc]
                    for i in range(self.shape.senders)
                ],
                t,
            ),
        )
        self.senders.sort(key=lambda s: s.sender_id)
        self.probes = cast(
            list[Probe],
            await connect_many(
                port,
                [
                    lambda i=i: Probe(wire, f"p{i}", port, channel)  # type: ignore[misc]
                    for i in range(self.shape.probes)
                ],
                t,
            ),
        )
        self.want = len(self.probes)
        await self.until_all_in(t)
        if not await self.quiet(0.5, t):
            raise RuntimeError(f"{self.target.label}: traffic did not settle in {t} s")

    async def add_bulk(self, count: int) -> None:
        """Connect ``count`` bulk receivers; wait until all are in the room and it is quiet.

        Sets ``connect_time`` (until every connection had the server's first bytes) and
        ``settle_time`` (until then every receiver had a message and nothing moved for 1 s).
        """
        assert self.server is not None
        t = self.shape.setup_timeout
        start = time.perf_counter()
        if count > self.shape.python_max and self.reader_binary is not None:
            self.bulk = CReceivers(self.reader_binary)
        await self.bulk.start(self.server, count, t)
        self.connect_time = time.perf_counter() - start
        self.want = len(self.probes) + count
        await self.until_all_in(t - self.connect_time)
        if not await self.quiet(1.0, t - (time.perf_counter() - start)):
            tot = await self.totals()
            raise RuntimeError(
                f"{self.target.label}: traffic did not settle in {t:g} s "
                f"({tot.bytes / 2**20:,.0f} MiB received so far)"
            )
        self.settle_time = time.perf_counter() - start

    async def totals(self) -> Totals:
        """Receivers (bulk + probes) summed; bytes include the senders'."""
        b = await self.bulk.totals()
        ps = self.probes
        open_probes = [p.marks for p in ps if not p.closed]
        closed_senders = sum(s.closed for s in self.senders)
        return Totals(
            marks=b.marks + sum(p.marks for p in ps),
            bytes=b.bytes + sum(p.bytes for p in ps) + sum(s.bytes for s in self.senders),
            min_marks=min([b.min_marks, *open_probes]) if b.open else min(open_probes, default=0),
            open=b.open + len(open_probes),
            closed=b.closed + len(ps) - len(open_probes) + closed_senders,
            have=b.have + sum(1 for p in ps if p.marks),
        )

    async def until_all_in(self, within: float) -> None:
        """Send "ready" messages until every receiver has one: all are in the room."""
        deadline = time.monotonic() + within
        want = self.want
        while True:
            self.senders[0].send(1, time.monotonic_ns(), sender_id=READY_SENDER)
            for _ in range(20):
                await asyncio.sleep(0.05)
                tot = await self.totals()
                if tot.open == want and tot.min_marks >= 1:
                    return
                if tot.closed:
                    raise RuntimeError(f"{self.target.label}: {tot.closed} connections closed")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.target.label}: after {within:.0f} s, {tot.open:,} of {want:,} "
                    f"receivers connected, {tot.have:,} had a message "
                    f"({tot.bytes / 2**20:,.0f} MiB received, server CPU "
                    f"{proc_cpu(self.server.pid) if self.server else 0:.0f} s)"
                )

    async def quiet(self, settle: float, within: float) -> bool:
        """Until no byte arrived for ``settle`` seconds; False if that took over ``within``."""
        deadline = time.monotonic() + within
        last = (await self.totals()).bytes
        since = time.monotonic()
        while time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now_bytes = (await self.totals()).bytes
            if now_bytes != last:
                last, since = now_bytes, time.monotonic()
            elif time.monotonic() - since >= settle:
                return True
        return False

    async def pace(self, rate: float, duration: float) -> int:
        """Send ``ceil(rate * duration)`` messages, message k at k / rate seconds (the first
        at once), in turn from each sender; how many were sent."""
        senders = self.senders
        total = max(1, math.ceil(rate * duration))
        sent = 0
        start = time.perf_counter()
        while True:
            due = min(total, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                now_ns = time.monotonic_ns()
                counts = [0] * len(senders)
                for k in range(sent, due):
                    counts[k % len(senders)] += 1
                for sender, n in zip(senders, counts, strict=True):
                    if n:
                        sender.send(n, now_ns)
                sent = due
            if sent >= total:
                return sent
            await asyncio.sleep(TICK)

    async def step(self, rate: float) -> Result:
        """Send at ``rate`` for the shape's duration; measure until all is in or grace ends."""
        server = self.server
        assert server is not None
        base = await self.totals()
        parsing = max(1, min(len(self.probes), int(PARSE_BUDGET // max(rate, 1.0))))
        for i, p in enumerate(self.probes):
            p.record(i < parsing)
        cpu0, self0, reader0, cores0 = (
            proc_cpu(server.pid),
            self_cpu(),
            self.bulk.cpu(),
            core_ticks(),
        )
        t0 = time.perf_counter()
        sent = await self.pace(rate, self.shape.duration)
        t_sent = time.perf_counter()
        expected = sent * self.shape.receivers
        got, t_last = 0, t_sent
        while True:
            await asyncio.sleep(0.05)
            tot = await self.totals()
            now = time.perf_counter()
            if tot.marks - base.marks != got:
                got, t_last = tot.marks - base.marks, now
            if got >= expected or now - t_sent > self.shape.grace:
                break
        t_end = time.perf_counter()
        cpu1, self1, reader1, cores1 = (
            proc_cpu(server.pid),
            self_cpu(),
            self.bulk.cpu(),
            core_ticks(),
        )
        peak = proc_status_bytes(server.pid, "VmHWM")
        lat: list[int] = []
        for p in self.probes:
            if p.recording:
                lat.extend(p.latencies)
            p.record(False)
        lat.sort()
        return Result(
            target=self.target,
            receivers=self.shape.receivers,
            rate=rate,
            sent=sent,
            expected=expected,
            received=got,
            wall=t_last - t0,
            window=t_end - t0,
            p50=percentile(lat, 0.50),
            p99=percentile(lat, 0.99),
            pmax=lat[-1] / 1e6 if lat else float("nan"),
            samples=len(lat),
            parsing=parsing,
            server_cpu=cpu1 - cpu0,
            peak_rss=peak,
            loadgen_cpu=(self1 - self0) + (reader1 - reader0),
            core_server=core_busy(cores0, cores1, SERVER_CPU),
            core_loadgen=core_busy(cores0, cores1, LOADGEN_CPU),
            steal=steal_share(cores0, cores1),
            closed=tot.closed,
            reader=self.reader_kind,
            setup=self.settle_time,
        )

    async def close(self) -> list[str]:
        """Stop everything; the server's logged problems."""
        problems: list[str] = []
        if self.server is not None:
            await stop_server(self.server)
            problems = self.server.log_problems()
        await self.bulk.close()
        for c in [*self.probes, *self.senders]:
            if c.transport is not None:
                c.transport.abort()
        return problems


# --- runs and reports ---------------------------------------------------------------------


def fmt_row(r: Result) -> str:
    return (
        f"{r.target.label:<14} {r.receivers:>6,} {r.rate:>8,.0f} {r.rate_delivered:>11,.0f} "
        f"{r.ratio:>7.2%} {r.p50:>7.1f} {r.p99:>7.1f} {r.pmax:>7.1f} "
        f"{r.server_cpu:>6.2f} {r.server_cpu / r.window:>5.0%} {r.cpu_per_delivery:>7.2f} "
        f"{r.core_per_delivery:>7.2f} "
        f"{r.peak_rss / 2**20:>6.0f} {r.loadgen_cpu / r.window:>5.0%} "
        f"{r.core_server:>5.0%} {r.core_loadgen:>5.0%} {r.steal:>5.0%} {r.closed:>6} "
        f"{r.reader:>6} {r.setup:>6.1f} {'pass' if r.passed else 'FAIL':>5}"
    )


HEADER = (
    f"{'server':<14} {'N':>6} {'R msg/s':>8} {'deliv/s':>11} {'ratio':>7} {'p50 ms':>7} "
    f"{'p99 ms':>7} {'max ms':>7} {'cpu s':>6} {'cpu%':>5} {'us/dlv':>7} "
    f"{'core0us':>7} {'rssMiB':>6} "
    f"{'gen%':>5} {'core0':>5} {'core1':>5} {'steal':>5} {'closed':>6} {'reader':>6} "
    f"{'setup':>6} {'ok':>5}"
)

LEGEND = """columns: N receivers; R offered messages/s; deliv/s = deliveries received / (first
  send to last delivery); ratio = received / (sent * N); p50/p99/max = latency at the
  probes; cpu s = server CPU seconds in the step, cpu% = of the step's wall time; us/dlv =
  server CPU microseconds per delivery; core0us = busy microseconds of core 0 per delivery
  (adds the loopback softirq work the process is not charged for, and any neighbour);
  rssMiB = server peak RSS (VmHWM); gen% = load generator CPU (this process + C reader) /
  wall; core0/core1 = busy share of the server's and the load generator's core (other
  tenants and softirq too); steal = share of the time the hypervisor gave to other guests;
  closed = connections the server closed; reader = where the bulk receivers ran; setup = s
  from connecting the receivers until all had a message and no byte moved for 1 s;
  ok = ratio >= 99 % and p99 <= 200 ms (find-max retries a failing rate once)"""


def default_rate(receivers: int, deliveries: float) -> float:
    """The fixed-load R for N receivers: ``deliveries`` per second in all, 10..5000 msg/s."""
    return float(max(10, min(5000, round(deliveries / receivers))))


async def run_session(
    target: Target, shape: Shape, tmpdir: str, reader: str | None, rates: list[float]
) -> tuple[list[Result], list[str]]:
    """One fresh server; one step per rate."""
    session = Session(target, shape, tmpdir, reader)
    results: list[Result] = []
    try:
        await session.open()
        for i, rate in enumerate(rates):
            if i and not await session.quiet(0.5, 30):
                raise RuntimeError("traffic did not settle between steps")
            results.append(await session.step(rate))
    finally:
        problems = await session.close()
    return results, problems


async def find_max(
    target: Target,
    shape: Shape,
    tmpdir: str,
    reader: str | None,
    start: float,
    max_steps: int,
    retry: bool = True,
) -> tuple[list[Result], Result | None, list[str]]:
    """Double R while runs pass, then bisect; a fresh server after each failure, and
    (``retry``) a failing rate is tried once more on a fresh server before it counts.
    Then one more step at half the highest passing R: the latency there."""
    results: list[Result] = []
    half: Result | None = None
    problems: list[str] = []
    lo: float | None = None
    hi: float | None = None
    rate = start
    session: Session | None = None
    try:
        while len(results) < max_steps:
            if session is None:
                session = Session(target, shape, tmpdir, reader)
                await session.open()
            elif not await session.quiet(0.5, 30):
                problems += await session.close()
                session = None
                continue
            r = await session.step(rate)
            results.append(r)
            print("  " + fmt_row(r), flush=True)
            if not r.passed and retry and len(results) < max_steps:
                # a neighbour or the hypervisor can spoil one step: a failure counts only
                # when a fresh server fails again at the same rate
                problems += await session.close()
                session = Session(target, shape, tmpdir, reader)
                await session.open()
                r = await session.step(rate)
                results.append(r)
                print("  " + fmt_row(r) + "  (retry)", flush=True)
            if r.passed:
                lo = rate if lo is None else max(lo, rate)
            else:
                hi = rate if hi is None else min(hi, rate)
                problems += await session.close()
                session = None
            if hi is None:
                rate = rate * 2
            elif lo is None:
                rate = max(1.0, rate / 2)
                if rate == hi:
                    break
            elif hi / lo <= 1.2:
                break
            else:
                rate = float(round(math.sqrt(lo * hi)))
        top = best(results)
        if top is not None:
            if session is not None and not await session.quiet(0.5, 30):
                problems += await session.close()
                session = None
            if session is None:
                session = Session(target, shape, tmpdir, reader)
                await session.open()
            half = await session.step(top.rate / 2)
            print("  " + fmt_row(half) + "  (half of the highest passing R)", flush=True)
    finally:
        if session is not None:
            problems += await session.close()
    return results, half, problems


def best(results: list[Result]) -> Result | None:
    passed = [r for r in results if r.passed]
    return max(passed, key=lambda r: r.rate) if passed else None


def ratio_table(results: list[Result], title: str) -> None:
    """roomcast / each baseline, same mode and N."""
    print(f"\n{title}")
    print(
        f"  {'':<26} {'N':>6} {'deliv/s':>8} {'dlv/cpu-s':>9} {'peak rss':>8} {'p99':>7} "
        f"{'(roomcast us/dlv vs baseline)':>30}"
    )
    by_key = {(r.target, r.receivers): r for r in results}
    for r in results:
        if r.target.kind != "roomcast":
            continue
        baselines = LINE_SERVERS[1:] if r.target.mode == "line" else WS_SERVERS[1:]
        for kind in baselines:
            b = by_key.get((Target(kind, r.target.mode), r.receivers))
            if b is None:
                continue
            eff = b.cpu_per_delivery / r.cpu_per_delivery if r.cpu_per_delivery else math.nan
            print(
                f"  {r.target.label + ' / ' + b.target.label:<26} {r.receivers:>6,} "
                f"{r.rate_delivered / b.rate_delivered if b.rate_delivered else math.nan:>7.2f}x "
                f"{eff:>8.2f}x {r.peak_rss / b.peak_rss:>7.2f}x "
                f"{r.p99 / b.p99 if b.p99 else math.nan:>6.2f}x "
                f"{r.cpu_per_delivery:>14.2f} vs {b.cpu_per_delivery:.2f}"
            )


async def bench(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM (e.g. from `timeout`) cancels the run, so that every finally block runs:
    # servers killed, redis's affinity and maxclients put back.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    tmpdir = tempfile.mkdtemp(prefix="roomcast-fanout-")
    all_results: list[Result] = []
    max_results: list[tuple[Target, int, list[Result], Result | None]] = []
    problems: dict[str, list[str]] = {}
    try:
        reader = build_reader(tmpdir) if args.python_max < max(args.receivers) else None
        targets = [Target(k, "line") for k in LINE_SERVERS if "line" in args.modes] + [
            Target(k, "ws") for k in WS_SERVERS if "ws" in args.modes
        ]
        targets = [t for t in targets if not args.only or any(o in t.label for o in args.only)]
        print(LEGEND)
        for n in args.receivers:
            shape = Shape(
                receivers=n,
                senders=args.senders,
                probes=min(args.probes, n),
                duration=args.duration,
                grace=args.grace,
                python_max=args.python_max,
                setup_timeout=args.setup_timeout,
            )
            rate = args.rate or default_rate(n, args.deliveries)
            for mode in ("line", "ws"):
                mode_targets = [t for t in targets if t.mode == mode]
                if not mode_targets:
                    continue
                print(f"\n{mode} mode, N={n:,}, R={rate:,.0f} msg/s, D={args.duration:g} s")
                print("  " + HEADER)
                for target in mode_targets:
                    key = f"{target.label} N={n}"
                    try:
                        if args.find_max:
                            results, half, probs = await find_max(
                                target,
                                shape,
                                tmpdir,
                                reader,
                                rate,
                                args.max_steps,
                                retry=not args.no_retry,
                            )
                            max_results.append((target, n, results, half))
                            top = best(results)
                            if top is not None:
                                all_results.append(top)
                        else:
                            results, probs = await run_session(
                                target, shape, tmpdir, reader, [rate]
                            )
                            all_results += results
                            for r in results:
                                print("  " + fmt_row(r), flush=True)
                    except (RuntimeError, OSError, TimeoutError) as e:
                        print(f"  {target.label:<14} {n:>6,} ERROR {type(e).__name__}: {e}")
                        probs = [f"bench error: {e}"]
                    if probs:
                        problems[key] = probs
        if args.find_max:
            print(f"\nfind-max: highest R passing (ratio >= 99 %, p99 <= {PASS_P99_MS:g} ms)")
            for target, n, results, _ in max_results:
                top = best(results)
                tried = ", ".join(f"{r.rate:,.0f}{'' if r.passed else '(fail)'}" for r in results)
                if top is None:
                    print(f"  {target.label:<14} N={n:>6,}  none passed  [{tried}]")
                else:
                    print(
                        f"  {target.label:<14} N={n:>6,}  R={top.rate:>8,.0f} msg/s  "
                        f"{top.rate_delivered:>11,.0f} deliveries/s  [{tried}]"
                    )
            print("\nlatency at half the highest passing R (ms)")
            for target, n, _, half in max_results:
                if half is not None:
                    print(
                        f"  {target.label:<14} N={n:>6,}  R={half.rate:>8,.0f} msg/s  "
                        f"p50 {half.p50:>7.1f}  p99 {half.p99:>7.1f}  max {half.pmax:>7.1f}  "
                        f"delivered {100 * half.ratio:.2f} %"
                    )
        ratio_table(
            all_results,
            "ratios, roomcast / baseline (same run, same N"
            + (", each at its own highest passing R)" if args.find_max else ", same R)")
            + ": deliveries/s, deliveries per server CPU-second, peak RSS, p99",
        )
        print("\nserver log problems (WARNING/ERROR lines) and bench errors:")
        if not problems:
            print("  none")
        for key, lines in problems.items():
            print(f"  {key}: {len(lines)} lines")
            for line in lines[:3]:
                print(f"    {line[:160]}")
    finally:
        if not args.keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
        else:
            print(f"kept {tmpdir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N=100 and 1,000, D=2 s")
    parser.add_argument("--receivers", type=int, nargs="+", help="N values (100 1000 10000)")
    parser.add_argument("--senders", type=int, default=10, help="S (10)")
    parser.add_argument("--probes", type=int, default=10, help="probe receivers (10)")
    parser.add_argument("--rate", type=float, help="R, messages/s in total (default: per N)")
    parser.add_argument(
        "--deliveries",
        type=float,
        default=100_000,
        help="without --rate, R = this / N, within 10..5000 (100,000 deliveries/s)",
    )
    parser.add_argument("--duration", type=float, help="D seconds of sending (5; quick 2)")
    parser.add_argument("--grace", type=float, default=3.0, help="s to wait for late deliveries")
    parser.add_argument("--modes", nargs="+", default=["line", "ws"], choices=["line", "ws"])
    parser.add_argument("--only", nargs="+", help="servers whose label has one of these")
    parser.add_argument("--find-max", action="store_true", help="search the highest passing R")
    parser.add_argument("--max-steps", type=int, default=10, help="find-max steps per server")
    parser.add_argument(
        "--no-retry", action="store_true", help="find-max: a failing step counts at once"
    )
    parser.add_argument(
        "--python-max",
        type=int,
        help="bulk receivers above this run in the C reader (2000; 0 with --find-max)",
    )
    parser.add_argument(
        "--setup-timeout", type=float, default=120.0, help="s to connect and settle (120)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve_command(args.serve, args.port)

    args.receivers = args.receivers or ([100, 1000] if args.quick else [100, 1000, 10000])
    if args.python_max is None:  # high rates need the C reader to keep the generator ahead
        args.python_max = 0 if args.find_max else 2000
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    if args.quick:
        args.grace = min(args.grace, 2.0)
    pinned = pin(LOADGEN_CPU)
    fds = raise_fd_limit()
    need = max(args.receivers) + args.senders + 200
    if fds < need:
        parser.error(f"only {fds} file descriptors allowed, {need} needed")
    try:
        _, redis_version = redis_pid()
    except Exception as e:  # redis-py raises its own ConnectionError
        redis_version = f"unreachable ({e})"
    print(
        f"fan-out: one room, N receivers, S={args.senders} senders, {MESSAGE_BYTES}-byte "
        f"messages; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print(
        f"python {platform.python_version()}, uvloop {version('uvloop')}, aiohttp "
        f"{version('aiohttp')}, websockets {version('websockets')}, redis-server "
        f"{redis_version}; {os.cpu_count()} cpus; servers on cpu {SERVER_CPU}, load generator "
        f"on cpu {LOADGEN_CPU}" + ("" if pinned else " (NOT pinned)") + f"; RLIMIT_NOFILE {fds}"
        f"; load average {os.getloadavg()[0]:.2f}"
    )
    print(source_state())
    print("roomcast settings the bench changes (flag value: default):")
    for flag, value, default in ROOMCAST_CHANGES:
        print(f"  {flag} {value}  (default {default})")
    print("  note: --high-water and --stall-timeout apply to line and WebSocket connections")
    start = time.perf_counter()
    try:
        code = uvloop.run(bench(args))
    except asyncio.CancelledError:  # SIGTERM
        print("\ninterrupted (SIGTERM): servers stopped, redis settings put back")
        return 130
    print(f"\ntotal {time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.2f}")
    return code


if __name__ == "__main__":
    sys.exit(main())
