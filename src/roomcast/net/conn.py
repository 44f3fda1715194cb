"""The connection core: one client's session, read from and delivered to, whatever the wire.

Every listener has the same delicate part, and it lives here once: a transport adapter
(``net/tcp.py`` for lines, ``net/web.py`` for WebSocket) subclasses ``Connection`` and supplies
only its codec's side (``parse``, ``plain``, ``encode``, ``reply``, ``notice``) and, where its
transport is not a plain ``asyncio.Transport``, how to stop and resume reading. It calls
``received`` with decoded input, ``input_over`` at the end of it, and passes on the
transport's ``pause_writing``, ``resume_writing`` and ``connection_lost``.

Theory of operation
-------------------
Read side. Decoded input (a line, a frame) waits in ``_pending``; past ``max_pending`` the
adapter is asked to stop reading. One task at a time (the reader, started by input, ended when
none is left) hands it to the hub in order: before each, the hub's flood control says how long
to wait (``Hub.pace``: a delay, not a refusal; a client held back too long is closed with the
hub's reason). A plain ``say`` with nothing to answer starts a run: every plain say queued
behind it, up to what the flood limit allows now, goes to ``Hub.say`` together, one store
write. Any other command goes to ``Hub.handle`` and its replies are written at once. Once
nothing is left the reader waits, if the client is not reading what we write, until it does,
then lets the adapter read again. The reader is never cancelled: no command is cut off
halfway through the hub.

The end of the input (a close, a half-close, a reset, a protocol error: ``input_over``): every
command that came before it is handled, then the session leaves the hub with the reason.

Write side. No task: the session tells its listener (this object) when something is ready,
once the hub has started its delivery, after the welcome. The connection is then marked in
its listener's ``Flusher``, which calls ``pump`` at most once per loop turn: every event
ready for the session (up to ``batch``), encoded by the adapter (a room's run of messages is
encoded, and framed, once for every member), in one write. A range that needs the store (a
lag, a replay) is served by a short-lived task, page by page; then the fast path resumes.

Flow control. Above ``high_water`` buffered bytes the transport calls ``pause_writing``: the
pump pulls nothing (the session's receivers fall behind in the room rings, which costs the
server nothing), the adapter stops reading, and a timer starts. ``resume_writing`` cancels it
and pumps again; ``stall_timeout`` seconds without it and the connection is closed as too
slow, its notice written after what is buffered, and it gets ``stall_timeout`` again to read
up to it. Bytes buffered per connection stay below ``high_water`` plus one batch.

Closing. ``close`` writes the adapter's notice (a line, a close frame) after what is buffered,
closes the transport and takes the session out of the hub at once; a client that does not
take what is buffered within the grace is cut. The session's own end (a quit, a logout
everywhere, the hub closing) comes from the hub as ``ended``: what is left for it is written,
then the connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar

from roomcast.errors import ClientError
from roomcast.hub import Hub
from roomcast.model import Action, Command, Event, Say
from roomcast.net.admission import Admission
from roomcast.net.flush import Flusher
from roomcast.session import Session

__all__ = [
    "Code",
    "Connection",
    "Connections",
    "DeliveryLimits",
    "RequestId",
    "Step",
    "Transport",
]

RequestId = str | int | None  # what a request carries for its replies to echo (None: nothing)

# What one unit of input asks for: a command for the hub (and the id its replies echo), or
# the bytes the codec answered by itself (a malformed frame, help), ready to write.
Step = tuple[RequestId, Command] | bytes

In = TypeVar("In")  # one unit of decoded input, as the adapter's codec gives it


class Code(IntEnum):
    """Why the server closes a connection, in WebSocket close codes (RFC 6455, 7.4.1); an
    adapter says each in its own protocol's words (``Connection.notice``)."""

    NORMAL = 1000  # the session ended: everything was delivered
    GOING_AWAY = 1001  # the server is stopping
    UNSUPPORTED = 1003  # the client sent what this protocol does not take
    POLICY = 1008  # too slow to read, or flooding
    INTERNAL = 1011  # a bug or a store failure on this connection


class DeliveryLimits(Protocol):
    """The limits a listener gives its connections (``TcpLimits``, ``WebLimits``)."""

    @property
    def high_water(self) -> int: ...  # write-buffer bytes above which we stop pulling
    @property
    def stall_timeout(self) -> float: ...  # seconds above high_water before the cut
    @property
    def max_pending(self) -> int: ...  # decoded input waiting for the hub before reading pauses
    @property
    def batch(self) -> int: ...  # events pulled per write
    @property
    def flush_gap(self) -> float: ...  # most seconds between two flushes (net/flush.py)
    @property
    def close_grace(self) -> float: ...  # seconds a closing client gets to take what is buffered


class Transport(Protocol):
    """The part of ``asyncio.Transport`` a connection uses."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Connections:
    """One listener's open connections and what they share: the hub, the limits, the log, the
    ``Flusher`` that pumps them, and the background tasks they start (``stop`` waits for
    those)."""

    def __init__(
        self,
        hub: Hub,
        limits: DeliveryLimits,
        log: logging.Logger,
        admission: Admission | None = None,
    ) -> None:
        self.hub = hub  # the chat core every connection talks to
        self.limits = limits  # given to each connection as it opens
        self.log = log  # the listener's logger: connects, disconnects, cuts
        self.admission = admission or Admission()  # open connections, and the cuts counted
        self.open: set[Connection[Any]] = set()  # open connections
        self._flusher = Flusher[Connection[Any]](limits.flush_gap, self._failed)
        self._background: set[asyncio.Task[None]] = set()  # readers, disconnects in progress
        self._all_closed = asyncio.Event()  # set when no connection is open

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background, keeping a reference until it finishes."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def schedule(self, conn: Connection[Any]) -> None:
        """Pump ``conn`` at the next flush (see ``roomcast.net.flush``)."""
        self._flusher.mark(conn)

    def _failed(self, conn: Connection[Any], error: Exception) -> None:
        self.log.error("internal error peer=%s", conn.session.peer, exc_info=error)
        conn.close(Code.INTERNAL, "internal error")

    def lost(self, conn: Connection[Any], reason: str) -> None:
        """``conn``'s transport is closed (``reason``: why it ends): log it, forget it."""
        session = conn.session
        name = session.name or session.last_name or None
        self.log.info("disconnect peer=%s name=%s reason=%s", session.peer, name, reason)
        self.forget(conn)

    def forget(self, conn: Connection[Any]) -> None:
        """Drop a finished connection from the open set."""
        self.open.discard(conn)
        self._flusher.forget(conn)
        if not self.open:
            self._all_closed.set()

    async def stop(self, reason: str, *, grace: float) -> None:
        """Close every connection with ``reason``; cut, ``grace`` seconds later, those still
        open (they did not take what was buffered); wait for the background tasks."""
        for conn in list(self.open):
            conn.close(Code.GOING_AWAY, reason)
        for conn in await self._closed(within=grace):
            conn.abort()
        await self._closed(within=1.0)
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _closed(self, *, within: float) -> list[Connection[Any]]:
        """Wait until every connection is forgotten, or ``within`` seconds; those left."""
        if self.open:
            self._all_closed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._all_closed.wait()
        return list(self.open)


class Connection(Generic[In]):
    """One client connection's session, whatever the transport (see the module docstring).

    It is the session's ``Listener``: the hub tells it when something is ready, when the
    session is named, and when it has ended. An idle connection holds no task, no future and
    no timer: only these slots.
    """

    __slots__ = (
        "_closing",
        "_cut",
        "_ended",
        "_leaving",
        "_limits",
        "_named",
        "_over",
        "_owner",
        "_pending",
        "_reader",
        "_reading_paused",
        "_reason",
        "_refiller",
        "_resumed",
        "_stall",
        "_wake",
        "session",
        "transport",
    )

    session: Session  # set by open()
    transport: Transport  # set by open()

    def __init__(self, owner: Connections) -> None:
        self._owner = owner  # the hub, the flusher, the log, the background tasks
        self._limits = owner.limits
        self._pending: list[In] = []  # decoded, not yet handled (about max_pending at most)
        self._reader: asyncio.Task[None] | None = None  # handles _pending while it has some
        self._refiller: asyncio.Task[None] | None = None  # reads the store for the session
        self._resumed: asyncio.Future[None] | None = None  # set when writing may go on
        self._stall: asyncio.TimerHandle | None = None  # cuts a client above high_water too long
        self._cut: asyncio.TimerHandle | None = None  # aborts a closing client that never reads
        self._reading_paused = False
        self._named = False  # the session has a name (the hub says): a plain say is said
        self._over: str | None = None  # why the input ended; None: it goes on
        self._leaving = False  # the session was told to leave the hub (the input is over)
        self._ended = False  # the session has ended (the hub says)
        self._closing = False  # closed by us or gone: nothing more is written
        self._reason: str | None = None  # why it ends, for the log: the first reason given
        # "something is ready: pump me", made once, that the session's receivers keep
        self._wake = self.ready

    def open(self, transport: Transport, peer: str) -> Session:
        """Start: ``transport`` is connected to ``peer`` ("host:port"); open the session."""
        self.transport = transport
        transport.set_write_buffer_limits(high=self._limits.high_water)
        self.session = self._owner.hub.connect(peer, self)
        self._owner.open.add(self)
        return self.session

    # -- what the adapter supplies --

    def parse(self, item: In) -> Sequence[Step]:
        """What one unit of input asks for, in order."""
        raise NotImplementedError

    def plain(self, item: In) -> Sequence[Say | Action | bytes] | None:
        """What ``item`` says (or the codec's refusal) if it is plain text with nothing to
        answer but errors, which may join a run; else ``None``: it ends the run."""
        raise NotImplementedError

    def encode(self, events: Sequence[Event]) -> bytes:
        """The bytes that deliver ``events``: the fan-out's hot path."""
        raise NotImplementedError

    def reply(self, events: Sequence[Event], request_id: RequestId) -> bytes:
        """The bytes that answer a request with ``events`` (they echo ``request_id``)."""
        return self.encode(events) if events else b""

    def notice(self, code: Code, reason: str) -> bytes:
        """What the client is told, last, when the server closes for ``reason``."""
        raise NotImplementedError

    def pause_input(self) -> None:
        """Stop reading from the client."""
        self.transport.pause_reading()

    def resume_input(self) -> None:
        """Read from the client again."""
        self.transport.resume_reading()

    # -- the session's listener --

    def ready(self) -> None:
        """Something is ready for the session: pump this connection at the next flush."""
        self._owner.schedule(self)

    def named(self, named: bool) -> None:
        """The session has a name, or has none: plain text is said, or names it."""
        self._named = named

    def ended(self, reason: str) -> None:
        """The session has ended: what is left is written, then the connection closes; the
        input not yet handled is dropped."""
        if self._ended:
            return
        self._ended = True
        if self._reason is None:
            self._reason = reason
        self._pending.clear()
        self._pause_reading()
        self._owner.schedule(self)

    # -- the read side: one command at a time, runs of says together --

    def received(self, items: Sequence[In]) -> None:
        """Decoded input, in order: handled one at a time; past ``max_pending`` waiting, the
        adapter is asked to stop reading."""
        if self._ended or self._closing:  # quit or closed: the rest is not read
            return
        self._pending += items
        if self._pending:
            if self._reader is None:
                self._reader = self._owner.spawn(self._read_loop())
            if len(self._pending) >= self._limits.max_pending:
                self._pause_reading()

    def input_over(self, reason: str) -> None:
        """No more input will come: once what came is handled, the session ends with
        ``reason`` (the first one given)."""
        if self._over is None:
            self._over = reason
        if self._reader is None:  # nothing in hand: end now; else the reader ends it
            self._leave()

    def _leave(self) -> None:
        if not self._leaving and not self._ended:
            self._leaving = True
            self._owner.spawn(
                self._owner.hub.disconnect(self.session, self._over or "connection closed")
            )

    async def _read_loop(self) -> None:
        try:
            await self._serve()
        except Exception:  # a bug must cost this connection only, and be seen
            self._owner.log.exception("internal error peer=%s", self.session.peer)
            self.close(Code.INTERNAL, "internal error")
        finally:
            self._reader = None
            if self._over is not None:  # the input had ended: all of it was handled
                self._leave()

    async def _serve(self) -> None:
        """Handle the input queued, then end: the next input starts a new reader."""
        hub, session = self._owner.hub, self.session
        while self._pending:
            refused = await _turn(hub, session)
            if refused is not None:  # held back too long
                self.close(Code.POLICY, refused)
                return
            if not self._pending:  # closed, or ended, meanwhile
                return
            for step in self.parse(self._pending.pop(0)):
                if isinstance(step, bytes):  # the codec's own answer: it counts as a command
                    self._write(self._spent(step))
                    continue
                request_id, command = step
                if request_id is None and self._named and isinstance(command, Say | Action):
                    await self._say_run(command)
                else:
                    self._write(self.reply(await hub.handle(session, command), request_id))
        if self._resumed is not None:  # the client is not reading what we write
            await self._resumed
        self._resume_reading()

    async def _say_run(self, first: Say | Action) -> None:
        """Hand ``first`` and the plain says queued behind it to the hub together: they are
        stored in one write and broadcast in order."""
        hub = self._owner.hub
        says = [first]
        refused: list[bytes] = []
        # no more than the flood limit lets through now: the rest waits for the next turn
        most = min(self._limits.max_pending, hub.allowance(self.session))
        while self._pending and len(says) + len(refused) < most:
            plain = self.plain(self._pending[0])
            if plain is None:
                break
            del self._pending[0]
            for said in plain:
                if isinstance(said, bytes):
                    refused.append(self._spent(said))
                else:
                    says.append(said)
        self._write(b"".join(refused))
        self._write(self.reply(await hub.say(self.session, says), None))

    def _spent(self, answer: bytes) -> bytes:
        """``answer`` (the codec's own), or the flood error if it is over the limit."""
        flood = self._owner.hub.spend(self.session)
        return answer if flood is None else self.reply([flood], None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._over is None:  # after the end: nothing to read
            self._reading_paused = True
            self.pause_input()

    def _resume_reading(self) -> None:  # (resuming after the end would read the end again)
        if self._reading_paused and self._over is None and not self._ended:
            self._reading_paused = False
            self.resume_input()

    # -- the write side: pulled once per loop turn, no task switch per message --

    def pump(self) -> None:
        """Write every event ready for the session in one write, then wait for more.

        Called once per loop turn at most (by the ``Flusher``). A lag or a replay that needs
        the store is served by a task until it is done; the fast path never leaves this call.
        """
        if self._closing or self._refiller is not None or self._resumed is not None:
            return  # closed; or a refill, or resume_writing, pumps again
        transport, session = self.transport, self.session
        if transport.is_closing():  # closed under us (a WebSocket heartbeat): nothing to write
            self._closing = True
            self._cut_later()
            return
        batch = self._limits.batch
        events = session.take_ready(batch)
        if events:
            transport.write(self.encode(events))
        if session.needs_store():
            self._refiller = asyncio.create_task(self._refill())
        elif len(events) >= batch:
            self._owner.schedule(self)  # more may be ready: next turn, after the others
        elif events or not self._ended:
            session.arm(self._wake)
        else:  # it ended and has had everything
            self.close(Code.NORMAL, "goodbye")

    async def _refill(self) -> None:
        session = self.session
        try:
            while session.needs_store() and not self._closing:
                if self._resumed is not None:
                    await self._resumed
                    continue
                events = await session.take(self._limits.batch)
                if events:
                    self._write(self.encode(events))
        except Exception:  # a store failure: this connection cannot be served in order
            self._owner.log.exception("refill failed peer=%s", session.peer)
            self.close(Code.INTERNAL, "internal error")
        finally:
            self._refiller = None
            if not self._closing:
                self.ready()

    def _write(self, data: bytes) -> None:
        if data and not self._closing and not self.transport.is_closing():
            self.transport.write(data)

    # -- the transport's flow control and end --

    def pause_writing(self) -> None:
        """The transport's buffer went above ``high_water``: stop pulling and reading."""
        loop = asyncio.get_running_loop()
        if self._resumed is None:
            self._resumed = loop.create_future()
        self._pause_reading()
        if self._stall is None and not self._closing:
            self._stall = loop.call_later(self._limits.stall_timeout, self._too_slow)

    def resume_writing(self) -> None:
        """The transport's buffer drained: pull and read again."""
        self._set_resumed()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if len(self._pending) < self._limits.max_pending:
            self._resume_reading()
        if not self._closing:
            self.ready()

    def connection_lost(self, exc: Exception | None) -> None:
        """The transport is closed: nothing more is written; the input is over."""
        lost = "connection lost" if exc else "connection closed"
        self._owner.lost(self, self._reason or self._over or lost)
        self._closing = True
        for timer in (self._stall, self._cut):
            if timer is not None:
                timer.cancel()
        self._stall = self._cut = None
        self._set_resumed()  # a reader waiting for the client to read goes on
        if self._refiller is not None:  # a store read: nothing is left halfway
            self._refiller.cancel()
        self.input_over(lost)

    def _set_resumed(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def _too_slow(self) -> None:
        self._stall = None
        stall = self._limits.stall_timeout
        self._owner.log.warning("too slow peer=%s name=%s", self.session.peer, self.session.name)
        self._owner.admission.note("stall_timeout")
        # The notice goes after what is buffered, above the mark: the client sees it once it
        # reads again, if it does within another stall_timeout (it holds no more than before).
        self.close(Code.POLICY, f"too slow: not reading for {stall:g} s", grace=stall)

    # -- closing --

    def close(
        self, code: Code, reason: str, *, quit_reason: str | None = None, grace: float | None = None
    ) -> None:
        """Tell the client why (the adapter's ``notice``) after what is buffered, and close.

        The session leaves the hub at once (its rooms see it quit with ``quit_reason``, by
        default ``reason``), whatever the socket does, and the input not yet handled is
        dropped. A client that does not take what is buffered within ``grace`` seconds (by
        default ``close_grace``) is cut.
        """
        if self._closing:
            return
        self._closing = True
        self._pending.clear()
        if not self._ended:
            quit_reason = quit_reason or reason
            if self._reason is None:
                self._reason = quit_reason
            self._owner.spawn(self._owner.hub.disconnect(self.session, quit_reason))
        transport = self.transport
        if not transport.is_closing():
            notice = self.notice(code, reason)
            if notice:
                transport.write(notice)
            transport.close()
        self._cut_later(grace)

    def _cut_later(self, grace: float | None = None) -> None:
        transport = self.transport
        if self._cut is None and transport.get_write_buffer_size():
            grace = self._limits.close_grace if grace is None else grace
            self._cut = asyncio.get_running_loop().call_later(grace, transport.abort)

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        self.transport.abort()


async def _turn(hub: Hub, session: Session) -> str | None:
    """Wait until the hub lets ``session``'s next command through; or return why it will
    not, having held it back too long (the hub's reason)."""
    try:
        wait = hub.pace(session)
        while wait > 0.0:  # bounded: the hub refuses a hold longer than flood_hold
            await asyncio.sleep(wait)  # the time the hub said, at most 1/rate: no polling
            wait = hub.pace(session)
    except ClientError as e:
        return e.message
    return None
