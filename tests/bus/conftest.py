"""What the bus tests share: a handler that keeps what it hears (``Inbox``), nodes on one
medium (``Cluster``, the ``cluster`` fixture: local and Redis), and a TCP relay in front of
Redis that a test can break (``Relay``): Redis going away, coming back, or hanging."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from roomcast.bus import Bus, LocalBroker, Outage, Topic, open_bus
from roomcast.model import Kind, Message, Private
from tests.conftest import RedisPlace, redis_prefix

__all__ = ["Cluster", "Inbox", "Relay", "message", "private"]

WAIT = 10.0  # seconds a test waits for an event before it fails

_ids = itertools.count()


def message(room: str = "#a", seq: int = 1, text: str = "hello", sender: str = "ann") -> Message:
    """A stored room message."""
    return Message(
        id=f"b{next(_ids)}",
        room=room,
        seq=seq,
        sender=sender,
        kind=Kind.MESSAGE,
        text=text,
        ts=time.time(),
    )


def private(sender: str = "ann", recipient: str = "bob", seq: int = 1) -> Private:
    """A stored private message."""
    return Private(
        id=f"p{next(_ids)}",
        seq=seq,
        sender=sender,
        recipient=recipient,
        kind=Kind.MESSAGE,
        text="psst",
        ts=time.time(),
        signed=True,
    )


@dataclass(eq=False)
class Inbox:
    """A bus handler that keeps what it hears, in order, for a test to wait on."""

    messages: list[tuple[Topic, Message | Private, str]] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)  # reasons given to lost()
    outages: list[Outage] = field(default_factory=list)  # given to resumed()
    events: list[str] = field(default_factory=list)  # "message", "lost", "resumed", in order
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def received(self, topic: Topic, message: Message | Private, origin: str) -> None:
        self.messages.append((topic, message, origin))
        self.events.append("message")
        self._changed.set()

    def lost(self, reason: str) -> None:
        self.losses.append(reason)
        self.events.append("lost")
        self._changed.set()

    def resumed(self, outage: Outage) -> None:
        self.outages.append(outage)
        self.events.append("resumed")
        self._changed.set()

    @property
    def texts(self) -> list[str]:
        """The texts received, in order."""
        return [m.text for _, m, _ in self.messages]

    async def until(self, condition: Callable[[], bool], what: str, wait: float = WAIT) -> None:
        """Return once ``condition()`` holds, checked at each thing heard; fail after
        ``wait`` seconds saying ``what`` never happened."""
        try:
            async with asyncio.timeout(wait):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what} did not happen in {wait} s") from None

    async def holds(self, count: int, wait: float = WAIT) -> None:
        """Return once ``count`` messages arrived in all."""
        await self.until(lambda: len(self.messages) >= count, f"{count} messages", wait)

    async def heard(self, text: str, wait: float = WAIT) -> None:
        """Return once a message with ``text`` arrived."""
        await self.until(lambda: text in self.texts, f"the message {text!r}", wait)


class Cluster:
    """Nodes on one medium: a local broker, or a Redis prefix. Closes them at the end."""

    def __init__(self, kind: str, place: RedisPlace | None) -> None:
        self.kind = kind  # "local" or "redis"
        self.place = place  # the Redis prefix, for "redis"
        self.broker = LocalBroker()  # the medium, for "local"
        self.buses: list[Bus] = []

    async def node(self, name: str | None = None, query: str = "") -> tuple[Bus, Inbox]:
        """A new node on the medium (``query``: the Redis URL's settings) and its inbox."""
        if self.place is None:
            bus: Bus = self.broker.bus(name)
        else:
            bus = await open_bus(self.place.url(query), node=name)
        inbox = Inbox()
        bus.listen(inbox)
        self.buses.append(bus)
        return bus, inbox

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close()


@pytest.fixture(params=["local", "redis"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """Nodes sharing a local broker, or a Redis prefix of the test's own."""
    async with contextlib.AsyncExitStack() as stack:
        place = None
        if request.param == "redis":
            place = await stack.enter_async_context(redis_prefix())
        nodes = Cluster(request.param, place)
        try:
            yield nodes
        finally:
            await nodes.close()


class Relay:
    """A TCP relay on 127.0.0.1 to Redis, as the bus sees the server: ``forward`` (Redis
    is up), ``refuse`` (down: each connection is closed as soon as it is made) or
    ``freeze`` (hung: connections stay open, nothing goes through); ``cut`` closes every
    connection, as a restart does. ``attempts`` holds the loop time of each connection
    refused."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)  # Redis
        self.mode = "forward"
        self.attempts: list[float] = []  # loop times of the connections refused
        self._changed = asyncio.Event()  # set at each connection refused
        self._writers: set[asyncio.StreamWriter] = set()  # open, either side
        self._tasks: set[asyncio.Task[None]] = set()  # the pumps
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen; the Redis URL to give the bus."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    def cut(self) -> None:
        """Close every connection, both sides (the bus sees its connections drop)."""
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def refused(self, count: int, wait: float = WAIT) -> None:
        """Return once ``count`` connections were refused in all."""
        try:
            async with asyncio.timeout(wait):
                while len(self.attempts) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{count} connection attempts did not come in {wait} s") from None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        if me is not None:  # stopped by close() if still running then
            self._tasks.add(me)
            me.add_done_callback(self._tasks.discard)
        if self.mode == "refuse":
            self.attempts.append(asyncio.get_running_loop().time())
            self._changed.set()
            writer.close()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        pump = asyncio.create_task(self._pump(up_reader, writer))
        self._tasks.add(pump)
        pump.add_done_callback(self._tasks.discard)
        await self._pump(reader, up_writer)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer`` until either closes; while frozen, drop the data."""
        try:
            while data := await reader.read(65536):
                if self.mode != "freeze":
                    writer.write(data)
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            self._writers.discard(writer)


@pytest.fixture
async def relay(redis_place: RedisPlace) -> AsyncIterator[tuple[Relay, str]]:
    """A ``Relay`` to the test's Redis, and the Redis URL through it."""
    host, port = "127.0.0.1", 6379
    admin_pool = redis_place.admin.connection_pool.connection_kwargs
    host, port = admin_pool.get("host", host), int(admin_pool.get("port", port))
    relay = Relay(host, port)
    url = await relay.start()
    try:
        yield relay, url
    finally:
        await relay.close()
