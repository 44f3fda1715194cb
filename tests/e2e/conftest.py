"""Fixtures and helpers for the end-to-end tests: real servers on 127.0.0.1, port 0, stopped
after each test, and ``Client``, a small line client that reads with timeouts and keeps every
line it read.

Every async test here runs twice: on asyncio's own event loop and on uvloop, which
``roomcast serve`` uses when it is installed (their transports differ in the details that
flow control and closing depend on). Tests import the helpers from this module
(``from tests.e2e.conftest import Client``); the fixtures come by name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, cast

import pytest

from roomcast.config import Config
from roomcast.net.conn import Connection
from roomcast.server import Server
from roomcast.wire.line import GREETING

StartServer = Callable[..., Awaitable[Server]]  # start_server(**config_overrides) -> Server

TIMEOUT = 5.0  # seconds one wait may take before the test fails
MAX_LINES = 500  # lines ``expect`` reads, by default, before it gives up


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run each async test on asyncio's loop and, when it is installed, on uvloop's."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for Windows
        pass
    else:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start in-process servers with ``Config`` overrides; every one is stopped after the test.

    The store is ``memory:`` unless overridden: a test never touches the user's data directory.
    """
    started: list[Server] = []

    async def start(**overrides: Any) -> Server:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "http_port": 0,
            "store": "memory:",
        }
        server = Server(Config(**(settings | overrides)))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A server with the default limits."""
    return await start_server()


# --- the client ---------------------------------------------------------------------------


def _matcher(match: str | Callable[[str], bool], exact: bool) -> Callable[[str], bool]:
    if callable(match):
        return match
    if exact:
        return lambda line: line == match
    return lambda line: match in line


class Client:
    """One line-protocol connection: sends lines, reads lines under timeouts, keeps them all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader  # incoming side of the socket
        self.writer = writer  # outgoing side of the socket
        self.lines: list[str] = []  # every line read so far, without its newline

    @property
    def peer(self) -> str:
        """This client as the server logs it: ``host:port``."""
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def send(self, *lines: str, end: str = "\n") -> None:
        """Send the lines, each followed by ``end``, in one write."""
        await self.send_raw("".join(line + end for line in lines).encode())

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are."""
        self.writer.write(data)
        await self.writer.drain()

    async def _readline(self, within: float, waiting_for: str) -> str | None:
        try:
            async with asyncio.timeout(max(within, 0.0)):  # cheaper than wait_for: no task
                raw = await self.reader.readline()
        except TimeoutError:
            raise AssertionError(
                f"nothing within {within:g} s while waiting for {waiting_for}; "
                f"last lines read: {self.lines[-8:]}"
            ) from None
        if not raw:
            return None
        line = raw.decode().removesuffix("\n")
        self.lines.append(line)
        return line

    async def readline(self, within: float = TIMEOUT) -> str:
        """The next line, without its newline; fails at the end of the stream."""
        line = await self._readline(within, "a line")
        assert line is not None, f"connection closed; last lines read: {self.lines[-8:]}"
        return line

    async def expect(
        self,
        match: str | Callable[[str], bool],
        *,
        exact: bool = False,
        within: float = TIMEOUT,
        max_lines: int = MAX_LINES,
    ) -> str:
        """Read until a line contains ``match`` (equals it if ``exact``; or satisfies it, if
        callable) and return that line; fails after ``max_lines`` lines or ``within`` s."""
        matches = _matcher(match, exact)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for _ in range(max_lines):
            line = await self._readline(deadline - loop.time(), f"a line matching {match!r}")
            assert line is not None, (
                f"connection closed before a line matching {match!r}; "
                f"last lines read: {self.lines[-8:]}"
            )
            if matches(line):
                return line
        raise AssertionError(f"no line matching {match!r} in {max_lines} lines: {self.lines[-8:]}")

    async def skip_until(
        self, line: str, *, within: float = TIMEOUT, max_bytes: int = 64 * 1024 * 1024
    ) -> None:
        """Read and drop everything up to and including ``line``, a line no other line ends
        with; the lines dropped are not kept. For a client that must keep reading a heavy
        stream but looks at little of it: no work per line. Fails after ``max_bytes`` or
        ``within`` s."""
        end = (line + "\n").encode()
        dropped = 0
        try:
            async with asyncio.timeout(within):
                while dropped < max_bytes:
                    try:
                        await self.reader.readuntil(end)
                        return
                    except asyncio.LimitOverrunError as e:  # not yet: drop what cannot match
                        dropped += len(await self.reader.readexactly(e.consumed))
        except TimeoutError:
            raise AssertionError(f"no {line!r} within {within:g} s") from None
        except asyncio.IncompleteReadError:
            raise AssertionError(f"connection closed before {line!r}") from None
        raise AssertionError(f"no {line!r} in {max_bytes} bytes")

    async def expect_all(
        self, *lines: str, within: float = TIMEOUT, max_lines: int = MAX_LINES
    ) -> None:
        """Read until every one of ``lines`` was read, in any order (channels are not ordered
        with each other: a room's lines and private ones may interleave either way)."""
        missing = set(lines)

        def seen_all(line: str) -> bool:
            missing.discard(line)
            return not missing

        await self.expect(seen_all, within=within, max_lines=max_lines)

    async def read_to_eof(
        self, *, within: float = TIMEOUT, max_lines: int = MAX_LINES
    ) -> list[str]:
        """Read every line up to the end of the stream; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        lines: list[str] = []
        for _ in range(max_lines):
            line = await self._readline(deadline - loop.time(), "the end of the stream")
            if line is None:
                return lines
            lines.append(line)
        raise AssertionError(f"no end of stream after {max_lines} lines: {lines[-8:]}")

    async def login(self, name: str) -> None:
        """Answer the greeting with ``name`` and wait until the client is in #general."""
        assert await self.readline() == GREETING
        await self.send(name)
        await self.expect(f"[#general] --> {name} joined", exact=True)
        assert f"-- hello {name}. type text to talk, /help for commands." in self.lines

    async def join(self, room: str) -> None:
        """Join ``room`` (making it current) and wait until the join is seen."""
        name = self.name_in_welcome()
        await self.send(f"/join {room}")
        await self.expect(f"[{room}] --> {name} joined", exact=True)

    def name_in_welcome(self) -> str:
        """The name the server welcomed this client under."""
        for line in self.lines:
            if m := re.fullmatch(r"-- hello (\S+)\. type text to talk, /help for commands\.", line):
                return m.group(1)
        raise AssertionError("this client was never welcomed")

    def stop_reading(self) -> None:
        """Take nothing more from the socket, like a hung client: the kernel buffers fill up."""
        cast(asyncio.Transport, self.writer.transport).pause_reading()

    def resume_reading(self) -> None:
        """Take bytes from the socket again."""
        cast(asyncio.Transport, self.writer.transport).resume_reading()

    def reset_by_peer(self) -> None:
        """Close the socket at once with a TCP reset, like a crashed client or a cut cable."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()


class Clients:
    """Opens clients to servers, and closes every one after the test."""

    def __init__(self) -> None:
        self._open: list[Client] = []  # every client opened, closed at teardown

    async def connect(
        self, to: Server | int, name: str | None = None, *, source: str | None = None
    ) -> Client:
        """A client connected to a server (or a port), logged in as ``name`` if given, from
        the loopback address ``source`` if given (127.0.0.2, ...: another client address)."""
        port = to if isinstance(to, int) else to.line.port
        local = None if source is None else (source, 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=local)
        client = Client(reader, writer)
        self._open.append(client)
        if name is not None:
            await client.login(name)
        return client

    async def close_all(self) -> None:
        """Close every client opened."""
        for client in self._open:
            await client.close()


@pytest.fixture
async def clients(start_server: StartServer) -> AsyncIterator[Clients]:
    """Opens clients; they are closed before the servers are stopped."""
    opened = Clients()
    yield opened
    await opened.close_all()


class LogWatch(logging.Handler):
    """Keeps the messages logged under ``roomcast`` and lets a test await one, without polling."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []  # every message logged, formatted
        self._grew = asyncio.Event()  # set whenever a message is added

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._grew.set()

    async def wait_for(
        self, predicate: Callable[[list[str]], bool], *, within: float = TIMEOUT
    ) -> None:
        """Wait until ``predicate(messages)`` holds; fails after ``within`` s."""
        try:
            async with asyncio.timeout(within):
                for _ in range(100_000):
                    if predicate(self.messages):
                        return
                    self._grew.clear()
                    await self._grew.wait()
        except TimeoutError:
            pass
        raise AssertionError(f"the log never matched; last messages: {self.messages[-8:]}")


@pytest.fixture
def log_watch(caplog: pytest.LogCaptureFixture) -> Iterator[LogWatch]:
    """A ``LogWatch`` on the ``roomcast`` logger at INFO level, removed after the test."""
    caplog.set_level(logging.INFO, logger="roomcast")
    watch = LogWatch()
    logger = logging.getLogger("roomcast")
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)


def connection_of(server: Server, name: str) -> Connection[Any]:
    """The server's connection object for the user ``name``."""
    for conn in server.line.connections.open:
        if conn.session.name == name:
            return conn
    raise AssertionError(f"no connection for {name!r}")


def transport_of(server: Server, name: str) -> asyncio.Transport:
    """The server-side transport of the user ``name``."""
    return cast(asyncio.Transport, connection_of(server, name).transport)


# --- a slow network path -------------------------------------------------------------------------


def throttle(server: Server, name: str) -> None:
    """Stand in for a slow network path to ``name``: a small kernel send buffer on the server's
    socket, so that what the client does not read piles up in the transport, where flow control
    can see it (loopback buffers would otherwise absorb megabytes)."""
    sock = transport_of(server, name).get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


# --- the roomcast serve command ------------------------------------------------------------

# The child's event loop is chosen with --loop; the test's own loop does not matter here.
on_asyncio_only = pytest.mark.asyncio(loop_factories=["asyncio"])

LISTENING = re.compile(r".* roomcast\.server: listening line=127\.0\.0\.1:(\d+) .*")


class Serve:
    """``python -m roomcast.cli serve`` in a child process, its log on a pipe.

    It keeps history in memory (``ROOMCAST_STORE=memory:``) and its data directory is a
    temporary one: a test never touches the user's files.
    """

    def __init__(self, data_home: Path) -> None:
        self.process: asyncio.subprocess.Process | None = None  # the child, once started
        self.log: list[str] = []  # the lines it logged so far
        self.data_home = data_home  # XDG_DATA_HOME of the child

    async def start(self, *args: str, env: Mapping[str, str] | None = None) -> int:
        """Start the server with ``args`` (and ``env`` added to ours); return the port it
        logs it listens on, once it does."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "roomcast.cli",
            "serve",
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "XDG_DATA_HOME": str(self.data_home),
                "ROOMCAST_STORE": "memory:",
                "ROOMCAST_HTTP_PORT": "0",
                **(env or {}),
            },
        )
        assert self.process.stderr is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        for _ in range(100):
            raw = await asyncio.wait_for(self.process.stderr.readline(), deadline - loop.time())
            assert raw, f"the server exited before listening: {self.log}"
            self.log.append(raw.decode().rstrip("\n"))
            if m := LISTENING.fullmatch(self.log[-1]):
                return int(m.group(1))
        raise AssertionError(f"the server never said it listens: {self.log}")

    async def wait(self, within: float = TIMEOUT) -> int:
        """Wait for the child to exit; return its exit code (the rest of its log is kept)."""
        assert self.process is not None
        _, err = await asyncio.wait_for(self.process.communicate(), within)
        self.log += err.decode().splitlines()
        assert self.process.returncode is not None
        return self.process.returncode

    async def kill(self) -> None:
        """Kill the child if it is still running, and reap it."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.communicate()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Runs ``roomcast serve`` in a child process, killed after the test if still running."""
    child = Serve(tmp_path)
    yield child
    await child.kill()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
