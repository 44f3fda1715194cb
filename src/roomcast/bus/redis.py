"""The bus for nodes in several processes: Redis pub/sub, through redis-py's asyncio
connections (with hiredis's parser when it is installed: ``pip install 'roomcast[redis]'``).

Theory of operation
-------------------
A node holds **two connections**: one subscribed (RESP2 pub/sub mode: it can only
subscribe, unsubscribe and PING) and one that publishes. A topic ``T`` is the Redis
channel ``prefix + T``; the prefix (``?prefix=`` in the URL, ``roomcast:`` by default) keeps
installations, and test runs, that share a Redis apart.

**Receiving** is the supervisor task's read loop: each pub/sub message is looked up by
channel (a topic no longer subscribed is dropped), skipped if it is the node's own (its
first bytes are ``roomcast.wire.bus.own_prefix``), decoded, and handed to the handler, on
the loop, in the order Redis sent it. ``subscribe`` sends SUBSCRIBE and returns when the
confirmation comes back through that loop (Redis confirms in command order), so the
subscription is in force by then.

**Publishing** never waits: ``publish`` encodes the message, queues it and wakes the
writer task. The writer takes everything queued when it runs (what arrived during the
current loop turn, or during the previous round trip) and writes it as one pipeline of
PUBLISH commands, then reads the replies: a batch costs one write and one round trip, and
no timer ever holds a message back. The queue is bounded in bytes (``max_pending``, in
flight included): past it, ``publish`` refuses with ``Broken``.

**Failures.** Any driver error on either connection (the server restarted, ``CLIENT KILL``,
a reset), a reply that takes longer than ``timeout``, or a silence of ``health_check``
seconds followed by a PING unanswered for as long, means the connection is lost: the node
hears ``Handler.lost``, ``publish`` refuses with ``Broken`` (the message is stored; the
other nodes will refill it by sequence number), and both connections are closed. The
supervisor then reconnects, waiting before each attempt with exponential backoff and
jitter (``backoff_min`` doubling up to ``backoff_max``, each wait drawn between half and
all of that, so that nodes cut together do not come back together), for as long as the
bus is open. Once connected it subscribes to every topic again and, when Redis has
confirmed them all, reports the outage to ``Handler.resumed``: from then on nothing is
missed, and what was published during the outage is read from the store.

Use: ``bus = await RedisBus.open("redis://127.0.0.1:6379/0?prefix=chat:")`` (or
``roomcast.bus.open_bus``) ... ``await bus.close()``; from one event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol, cast

import redis.asyncio.connection as redis_connection
from redis.exceptions import RedisError, ResponseError

from roomcast.bus.base import (
    Handler,
    Outage,
    Statistics,
    Topic,
    check_fit,
    describe,
    new_node_name,
    topic_fits,
)
from roomcast.bus.redis_settings import Settings, backoff
from roomcast.errors import Broken
from roomcast.model import Message, Private
from roomcast.wire.bus import BadPayload, decode, encode, node_name, own_prefix

__all__ = ["DRIVER_ERRORS", "RedisBus"]

log = logging.getLogger(__name__)

DRIVER_ERRORS: Final = (RedisError, OSError)  # OSError covers TimeoutError and resets
_SUBSCRIBE_CHUNK = 1000  # channels in one SUBSCRIBE when subscribing again to all


class _Connection(Protocol):
    """What the bus uses of ``redis.asyncio.connection.Connection``."""

    @property
    def is_connected(self) -> bool: ...

    async def connect(self) -> None: ...

    async def disconnect(self, nowait: bool = False) -> None: ...

    async def send_command(self, *args: Any, **kwargs: Any) -> None: ...

    async def send_packed_command(
        self, command: bytes | Sequence[bytes], check_health: bool = True
    ) -> None: ...

    async def read_response(
        self,
        disable_decoding: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 (redis-py's signature)
    ) -> Any: ...

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]: ...


class _Confirmation:
    """A SUBSCRIBE sent and not yet confirmed for every channel it names."""

    __slots__ = ("done", "left", "then")

    def __init__(self, left: int, done: asyncio.Future[None]) -> None:
        self.left = left  # confirmations still to come
        self.done = done  # resolved when none is left, or when the connection is lost
        # called in the read loop at the last confirmation (not if the connection is lost),
        # before whatever Redis sent after it is delivered
        self.then: Callable[[], None] | None = None


class RedisBus:
    """One node's endpoint on Redis pub/sub (see the module docstring). Implements
    ``roomcast.bus.base.Bus``; make it with ``RedisBus.open``."""

    @classmethod
    async def open(cls, url: str, *, node: str | None = None) -> RedisBus:
        """Connect to the Redis that ``url`` names (``redis://[:password@]host[:port][/db]``,
        or ``rediss://`` for TLS) and return the bus, ready to subscribe and publish.

        The URL's query may set ``prefix`` (the channels' prefix, ``roomcast:``) and the
        limits ``max_pending`` (bytes, 8 MiB), ``timeout`` (seconds, 5), ``health_check``
        (seconds, 5), ``backoff_min`` (seconds, 0.05) and ``backoff_max`` (seconds, 5);
        ``ValueError`` for a bad URL, ``Broken`` if Redis cannot be reached now (later
        outages are reconnected by the bus itself)."""
        settings = Settings.parse(url)
        try:
            kwargs: dict[str, Any] = dict(redis_connection.parse_url(settings.redis_url))
        except ValueError as e:
            raise ValueError(f"bad bus URL {settings.where!r}: {e}") from None
        connection_class = kwargs.pop("connection_class", redis_connection.Connection)
        if not issubclass(connection_class, redis_connection.Connection):  # unix://
            raise ValueError(f"bad bus URL {settings.where!r}: use redis:// or rediss://")
        kwargs |= {
            "protocol": 2,  # pub/sub messages as plain arrays
            "socket_timeout": None,  # the bus bounds each wait itself (``timeout``)
            "socket_connect_timeout": settings.timeout,
            "driver_info": None,  # no CLIENT SETINFO: one round trip less per connection
        }
        name = new_node_name() if node is None else node_name(node)

        def connection(role: str) -> _Connection:
            try:
                made = connection_class(**kwargs, client_name=f"roomcast-bus-{role}-{name}")
            except TypeError as e:  # a query parameter redis-py does not know
                raise ValueError(f"bad bus URL {settings.where!r}: {e}") from None
            return cast(_Connection, made)

        connection("check")  # a bad parameter is a ValueError now, not at reconnection
        bus = cls(connection, node=name, settings=settings)
        try:
            await bus._connect()
        except DRIVER_ERRORS as e:
            bus._up = False
            await bus._disconnect()
            raise Broken(f"the bus cannot reach Redis at {settings.where}: {e}") from e
        bus._start()
        return bus

    def __init__(
        self, connection: Callable[[str], _Connection], *, node: str, settings: Settings
    ) -> None:
        self._connection = connection  # role ("sub", "pub") -> a new, unconnected connection
        self._node = node  # this node's name
        self._own = own_prefix(node)  # the first bytes of the payloads it publishes
        self._prefix = settings.prefix.encode()  # of every channel
        self._where = settings.where  # the URL without its password, for the logs
        self._max_pending = settings.max_pending  # payload bytes queued and in flight
        self._timeout = settings.timeout  # seconds Redis has to answer
        self._health_check = settings.health_check  # seconds of silence before a PING
        self._backoff = (settings.backoff_min, settings.backoff_max)  # reconnection waits
        self._handler: Handler | None = None  # where deliveries go
        self._topics: dict[bytes, Topic] = {}  # channel -> topic, for every subscribed one
        self._sub: _Connection | None = None  # the subscribed connection
        self._pub: _Connection | None = None  # the publishing connection
        self._generation = 0  # bumped at each connection: tells a stale failure apart
        self._up = False  # both connections are up: publish and subscribe go through
        self._closed = False
        self._confirmations: deque[_Confirmation] = deque()  # SUBSCRIBEs sent, oldest first
        self._queue: deque[tuple[bytes, bytes]] = deque()  # (channel, payload) to publish
        self._pending_bytes = 0  # payload bytes queued and in flight
        self._wake = asyncio.Event()  # set when the queue has something for the writer
        self._drained = asyncio.Event()  # set when nothing is queued or in flight
        self._drained.set()
        self._behind = False  # publish is refusing for max_pending (logged once)
        self._outage: tuple[str, float] | None = None  # (reason, when) of an unreported one
        self._attempts = 0  # connection attempts during the current outage
        self._supervisor: asyncio.Task[None] | None = None  # reads, reconnects
        self._writer: asyncio.Task[None] | None = None  # publishes
        # counters for statistics()
        self._published = 0
        self._failed = 0
        self._received = 0
        self._own_skipped = 0
        self._refused = 0
        self._outages = 0

    # --- the Bus interface ---------------------------------------------------------------

    @property
    def node(self) -> str:
        """This node's name (its Redis connections are ``roomcast-bus-sub-NODE`` and
        ``roomcast-bus-pub-NODE`` in ``CLIENT LIST``)."""
        return self._node

    def listen(self, handler: Handler) -> None:
        """Deliver to ``handler`` from now on."""
        self._handler = handler

    async def subscribe(self, topic: Topic) -> None:
        """Subscribe to ``topic`` and return once Redis confirmed it; while the bus is down,
        record it and return at once (``Handler.resumed`` will follow)."""
        if self._closed:
            raise Broken("the bus is closed")
        channel = self._prefix + topic.encode()
        self._topics[channel] = topic
        sub = self._sub
        if not self._up or sub is None:
            return
        try:
            confirmation = await self._send_subscribe(sub, [channel])
        except DRIVER_ERRORS:  # the read loop sees it too, and the topic is subscribed again
            return
        await confirmation.done

    async def unsubscribe(self, topic: Topic) -> None:
        """Stop delivering ``topic`` at once, and tell Redis."""
        channel = self._prefix + topic.encode()
        if self._topics.pop(channel, None) is None:
            return
        sub = self._sub
        if self._up and sub is not None:
            try:
                await sub.send_command("UNSUBSCRIBE", channel, check_health=False)
            except DRIVER_ERRORS:  # the read loop sees it too; it is not subscribed again
                pass

    def publish(self, topic: Topic, message: Message | Private) -> None:
        """Queue ``message`` for the writer's next pipeline; never waits. ``Broken`` when
        the bus is closed or not connected, or ``max_pending`` bytes are waiting already;
        ``ValueError`` if ``topic`` is not the message's."""
        check_fit(topic, message)
        if not self._up:
            self._failed += 1
            if self._closed:
                raise Broken("the bus is closed")
            raise Broken(f"the bus is not connected to Redis at {self._where}")
        payload = encode(self._node, message)
        if self._pending_bytes + len(payload) > self._max_pending:
            self._failed += 1
            if not self._behind:
                self._behind = True
                log.warning(
                    "bus: %d bytes wait for Redis at %s (at most max_pending=%d): publishes "
                    "are refused until they are written",
                    self._pending_bytes,
                    self._where,
                    self._max_pending,
                )
            raise Broken(f"the bus is behind: {self._pending_bytes} bytes wait for Redis")
        self._queue.append((self._prefix + topic.encode(), payload))
        self._pending_bytes += len(payload)
        self._drained.clear()
        self._wake.set()

    def statistics(self) -> Statistics:
        """The counters now."""
        return Statistics(
            node=self._node,
            connected=self._up,
            topics=len(self._topics),
            published=self._published,
            failed=self._failed,
            received=self._received,
            own=self._own_skipped,
            refused=self._refused,
            outages=self._outages,
            pending_bytes=self._pending_bytes,
        )

    async def close(self) -> None:
        """Write what is queued (for ``timeout`` seconds at most), then stop the tasks and
        close both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._up:
            try:
                async with asyncio.timeout(self._timeout):
                    await self._drained.wait()
            except TimeoutError:
                log.warning("bus: closing with %d bytes not written", self._pending_bytes)
        self._up = False
        for task in (self._supervisor, self._writer):
            if task is not None:
                task.cancel()
        for task in (self._supervisor, self._writer):
            if task is not None:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._fail_queued()
        self._settle_confirmations()
        await self._disconnect()

    # --- connecting ------------------------------------------------------------------------

    def _start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"bus-{self._node}")
        self._writer = asyncio.create_task(self._write(), name=f"bus-writer-{self._node}")

    async def _connect(self) -> None:
        """Open both connections and subscribe to every topic again (the confirmations
        come through the read loop); report the outage once Redis confirmed them."""
        self._generation += 1
        generation = self._generation
        self._settle_confirmations()  # those of an attempt that failed half-way
        sub, pub = self._connection("sub"), self._connection("pub")
        self._sub, self._pub = sub, pub
        wanted = list(self._topics)
        wanted_set = set(wanted)
        sent: list[_Confirmation] = []
        async with asyncio.timeout(self._timeout):  # a server that accepts, then says nothing
            await sub.connect()
            await pub.connect()
            for i in range(0, len(wanted), _SUBSCRIBE_CHUNK):
                sent.append(await self._send_subscribe(sub, wanted[i : i + _SUBSCRIBE_CHUNK]))
        # From here on subscribe() and unsubscribe() talk to Redis themselves; what they
        # changed while the lines above waited is put right now.
        self._up = True
        self._behind = False
        added = [c for c in self._topics if c not in wanted_set]
        removed = [c for c in wanted if c not in self._topics]
        if added:
            sent.append(await self._send_subscribe(sub, added))
        if removed:
            await sub.send_command("UNSUBSCRIBE", *removed, check_health=False)
        if self._outage is None:  # the first connection: nothing was missed
            return
        if not sent:
            self._resumed(generation)
            return
        sent[-1].then = lambda: self._resumed(generation)

    def _resumed(self, generation: int) -> None:
        """Every topic is confirmed again: report the outage (unless this connection was
        lost meanwhile, in which case the outage goes on)."""
        if generation != self._generation or not self._up or self._outage is None:
            return
        reason, lost_at = self._outage
        outage = Outage(
            reason=reason, lost_at=lost_at, resumed_at=time.time(), attempts=self._attempts
        )
        self._outage = None
        self._attempts = 0
        log.info(
            "bus: back on Redis at %s after %.1f s and %d attempts; %d topics subscribed again",
            self._where,
            outage.seconds,
            outage.attempts,
            len(self._topics),
        )
        if self._handler is not None:
            try:
                self._handler.resumed(outage)
            except Exception:
                log.exception("bus: the handler failed on resumed()")

    async def _send_subscribe(self, sub: _Connection, channels: list[bytes]) -> _Confirmation:
        """Send SUBSCRIBE; its confirmation is done once Redis confirmed every channel."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        confirmation = _Confirmation(len(channels), done)
        self._confirmations.append(confirmation)
        await sub.send_command("SUBSCRIBE", *channels, check_health=False)
        return confirmation

    def _lose(self, reason: str, generation: int) -> None:
        """The connection of ``generation`` failed: stop publishing, tell the handler
        (once per outage), fail what waited. The supervisor closes and reconnects."""
        if generation != self._generation or not self._up:
            return
        self._up = False
        self._fail_queued()
        self._settle_confirmations()
        if self._outage is not None:  # lost again before every topic was back
            return
        self._outages += 1
        self._outage = (reason, time.time())
        log.warning(
            "bus: lost Redis at %s (%s); node %s receives nothing until it is back",
            self._where,
            reason,
            self._node,
        )
        if self._handler is not None:
            try:
                self._handler.lost(reason)
            except Exception:
                log.exception("bus: the handler failed on lost()")

    def _fail_queued(self) -> None:
        queued = self._queue
        if queued:
            self._failed += len(queued)
            self._pending_bytes -= sum(len(payload) for _, payload in queued)
            queued.clear()
        if self._pending_bytes == 0:
            self._drained.set()

    def _settle_confirmations(self) -> None:
        for confirmation in self._confirmations:
            if not confirmation.done.done():
                confirmation.done.set_result(None)
        self._confirmations.clear()

    async def _disconnect(self, *connections: _Connection | None) -> None:
        """Close ``connections`` (by default the current ones), whatever state they are in."""
        for connection in connections or (self._sub, self._pub):
            if connection is not None:
                try:
                    await connection.disconnect(nowait=True)
                except DRIVER_ERRORS:
                    pass

    async def _reconnect(self) -> None:
        """Connect again, waiting (backoff and jitter) before each attempt, until it
        works or the bus is closed (which cancels this)."""
        waits = backoff(*self._backoff)
        while True:
            await asyncio.sleep(next(waits))
            self._attempts += 1
            try:
                await self._connect()
                return
            except Exception as e:  # a driver error, or a surprise: both are retried
                self._up = False  # if it failed after both connections were up
                await self._disconnect()
                log.info(
                    "bus: Redis at %s is still unreachable (attempt %d): %s",
                    self._where,
                    self._attempts,
                    _describe(e),
                )

    # --- receiving -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Read until the connection is lost, then reconnect; until the bus is closed."""
        while True:
            sub, generation = self._sub, self._generation
            try:
                assert sub is not None
                await self._read(sub)
            except DRIVER_ERRORS as e:
                self._lose(_describe(e), generation)
            except Exception as e:  # a reply of a shape not foreseen: never stop the bus
                log.exception("bus: the read loop failed")
                self._lose(_describe(e), generation)
            await self._disconnect()
            await self._reconnect()

    async def _read(self, sub: _Connection) -> None:
        """Dispatch what comes on the subscribed connection; raise when it fails. After
        ``health_check`` seconds of silence send a PING; after as long again, give up."""
        pinged = False
        topics = self._topics
        own = self._own
        prefix_length = len(self._prefix)
        while True:
            reply = await sub.read_response(timeout=self._health_check)
            if reply is None:  # silence
                if pinged:
                    raise TimeoutError(f"no answer to a PING in {self._health_check:g} s")
                await sub.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            kind = reply[0]
            if kind == b"message":
                topic = topics.get(reply[1])
                if topic is None:  # unsubscribed since
                    continue
                payload = reply[2]
                if payload.startswith(own):
                    self._own_skipped += 1
                    continue
                self._deliver(topic, payload, reply[1][prefix_length:])
            elif kind == b"subscribe":
                self._confirmed()
            # "unsubscribe" confirmations and "pong" only prove the connection alive

    def _confirmed(self) -> None:
        confirmations = self._confirmations
        if not confirmations:
            return
        head = confirmations[0]
        head.left -= 1
        if head.left <= 0:
            confirmations.popleft()
            if not head.done.done():
                head.done.set_result(None)
            if head.then is not None:
                head.then()

    def _deliver(self, topic: Topic, payload: bytes, channel: bytes) -> None:
        try:
            envelope = decode(payload)
        except BadPayload as e:
            self._refuse(channel, str(e))
            return
        if not topic_fits(topic, envelope.message):
            self._refuse(channel, f"a message of {describe(envelope.message)} on this channel")
            return
        handler = self._handler
        if handler is None:
            return
        self._received += 1
        try:
            handler.received(topic, envelope.message, envelope.origin)
        except Exception:
            log.exception("bus: the handler of node %s failed; delivering on", self._node)

    def _refuse(self, channel: bytes, why: str) -> None:
        self._refused += 1
        if self._refused & (self._refused - 1) == 0:  # the 1st, 2nd, 4th, 8th...: not a flood
            log.warning(
                "bus: refused a payload on %r (%d so far): %s",
                channel.decode(errors="replace"),
                self._refused,
                why,
            )

    # --- publishing ------------------------------------------------------------------------

    async def _write(self) -> None:
        """Write what is queued as one pipeline, read the replies; repeat. After
        ``health_check`` idle seconds, PING: a publishing connection that died while
        idle is noticed before the next message is lost on it."""
        wake, queue = self._wake, self._queue
        while True:
            try:
                async with asyncio.timeout(self._health_check):
                    await wake.wait()
            except TimeoutError:
                await self._send(None)
                continue
            wake.clear()
            if not queue:
                continue
            batch = list(queue)
            queue.clear()
            size = sum(len(payload) for _, payload in batch)
            try:
                await self._send(batch)
            finally:
                self._pending_bytes -= size
                if self._pending_bytes == 0:
                    self._drained.set()
                if self._pending_bytes < self._max_pending // 2:
                    self._behind = False

    async def _send(self, batch: list[tuple[bytes, bytes]] | None) -> None:
        """PUBLISH each of ``batch`` in one pipeline (``None``: a PING) and read the
        replies, within ``timeout``; a failure loses the connection."""
        pub, sub, generation = self._pub, self._sub, self._generation
        if not self._up or pub is None or not pub.is_connected:
            self._failed += len(batch or ())
            return
        if batch is None:
            commands: list[tuple[Any, ...]] = [("PING",)]
        else:
            commands = [("PUBLISH", channel, payload) for channel, payload in batch]
        refused = 0
        try:
            await pub.send_packed_command(pub.pack_commands(commands), check_health=False)
            async with asyncio.timeout(self._timeout):
                for _ in range(len(commands)):
                    try:
                        await pub.read_response(timeout=math.inf)
                    except ResponseError as e:  # refused (an ACL): the next reply follows
                        refused += 1
                        if refused == 1:
                            log.warning("bus: Redis refused a PUBLISH: %s", e)
        except Exception as e:  # a driver error (or a surprise: the writer must go on)
            if not isinstance(e, DRIVER_ERRORS):
                log.exception("bus: publishing failed")
            self._failed += len(batch or ())
            self._lose(f"the publishing connection failed: {_describe(e)}", generation)
            await self._disconnect(sub, pub)  # wakes the read loop, which reconnects
            return
        if batch is not None:
            self._failed += refused
            self._published += len(batch) - refused


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
