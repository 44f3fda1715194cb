"""The TCP listener for the line protocol: framing and flow control only, no chat rules.

Each connection has a reader task that hands decoded commands to the hub one at a time (a run
of plain lines is handed over together, so the store commits them in one batch) and writes
the replies. Delivery has no task: when a session has something ready, its connection is
marked, and a ``Flusher`` (``roomcast.net.flush``) pumps every marked connection, at most
once per loop turn and with a short gap after a long flush: every ready message of every
room, rendered once per message for everyone, in one ``transport.write``.

Flow control: when the transport's write buffer passes ``high_water`` the writer stops pulling,
so the session's receivers fall behind in the room rings (which costs the server nothing) and
the reader stops reading the socket. A connection that stays above the mark for
``stall_timeout`` seconds is closed with a reason, written after what is buffered; it then
gets ``stall_timeout`` again to read up to it. Buffered bytes per connection stay bounded by
``high_water`` plus one batch.

Flood control delays, it does not refuse (``Hub.pace``): a client ahead of its rate is read no
further than ``max_pending`` lines ahead until the hub lets its next line through; one the hub
says was held back too long is closed with the hub's reason.

The end: every line that came before the end of the input (a close, a half-close, a reset) is
handled, in order, and answered while the socket still takes it; then the session leaves the
hub, what is left for it is written, and the connection closes. The reader is never
cancelled, so that no command is cut off halfway through the hub. Only when the server
closes a connection (a cut, a shutdown) are the lines not yet handled dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from roomcast.errors import ClientError
from roomcast.hub import Hub
from roomcast.model import Error, Event, Info, Say
from roomcast.net.admission import Admission, Ticket
from roomcast.net.flush import Flusher
from roomcast.session import Session, State
from roomcast.wire.cache import DEFAULT_CACHE_BYTES
from roomcast.wire.line import LineCodec, Renderer

__all__ = ["LineServer", "TcpLimits"]

log = logging.getLogger("roomcast.tcp")


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpLimits:
    """Per-connection limits of the line listener."""

    max_line: int = 4096  # bytes in one line
    high_water: int = 256 * 1024  # write-buffer bytes above which we stop pulling
    stall_timeout: float = 30.0  # seconds above high_water before the connection is closed
    max_pending: int = 64  # decoded commands waiting for the hub before reading pauses
    batch: int = 512  # events pulled per write
    flush_gap: float = 0.005  # most seconds between two flushes, as long as the last one took
    close_grace: float = 2.0  # seconds a closing client gets to take what is buffered
    cache_bytes: int = DEFAULT_CACHE_BYTES  # bytes of rendered lines (and runs) per renderer
    name_timeout: float = 30.0  # seconds a connection may take to give a name; 0 = no limit


class _Connection(asyncio.Protocol):
    # An idle connection holds no task and no event: only these slots (see bench/idle.py).
    __slots__ = (
        "_codec",
        "_cut",
        "_ended",
        "_limits",
        "_naming",
        "_over",
        "_peer",
        "_pending",
        "_reader",
        "_reading_paused",
        "_refiller",
        "_resumed",
        "_server",
        "_session",
        "_stall",
        "_ticket",
        "_transport",
    )

    def __init__(self, server: LineServer) -> None:
        self._server = server  # shared hub, renderers, limits and connection set
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._codec = LineCodec(
            plain=server.plain, stamped=server.stamped, max_line=server.limits.max_line
        )
        self._pending: list[str | Error] = []  # decoded, not yet handled (at most max_pending)
        self._reader: asyncio.Task[None] | None = None  # handles _pending while it has lines
        self._refiller: asyncio.Task[None] | None = None  # reads the store for the session
        self._resumed: asyncio.Future[None] | None = None  # set when writing may go on
        self._peer = "?"
        self._reading_paused = False
        self._cut: asyncio.TimerHandle | None = None  # aborts a closing client that never reads
        self._stall: asyncio.TimerHandle | None = None  # cuts a client above high_water too long
        self._over: str | None = None  # why the input ended (the quit reason); None: it goes on
        self._ended = False  # the session was told to end
        self._ticket: Ticket | None = None  # its place among the open connections
        self._naming: asyncio.TimerHandle | None = None  # closes it if it gives no name in time

    # -- asyncio.Protocol callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self._transport = transport
        transport.set_write_buffer_limits(high=self._limits.high_water)
        host, port, *_ = transport.get_extra_info("peername") or ("?", 0)
        self._peer = f"{host}:{port}"
        self._ticket = ticket = self._server.admission.admit(str(host), self._peer, "line")
        if ticket.refusal is not None:  # one line saying why (unless far over), then closed
            if not ticket.told:
                transport.abort()
                return
            refusal = Error(code=ticket.refusal.code, message=ticket.refusal.message)
            transport.write(self._codec.encode([refusal]))
            transport.close()
            return
        self._session = self._server.hub.connect(self._peer)
        self._server.connections.add(self)
        log.info("connect peer=%s", self._peer)
        transport.write(self._codec.greeting())
        if self._limits.name_timeout > 0:
            loop = asyncio.get_running_loop()
            self._naming = loop.call_later(self._limits.name_timeout, self._unnamed)

    def data_received(self, data: bytes) -> None:
        self._pending += self._codec.receive_data(data)
        if self._pending:
            if self._reader is None and self._session is not None:
                self._reader = self._server.spawn(self._read_loop(self._session))
            if len(self._pending) >= self._limits.max_pending:
                self._pause_reading()

    def eof_received(self) -> bool | None:
        self._codec.eof()  # a half-sent last line is dropped
        self._input_over("connection closed")
        return True  # keep our side open: what came before the end is answered first

    def pause_writing(self) -> None:
        self._resumed = asyncio.get_running_loop().create_future()
        self._pause_reading()
        loop = asyncio.get_running_loop()
        self._stall = loop.call_later(self._limits.stall_timeout, self._too_slow)

    def resume_writing(self) -> None:
        self._set_resumed()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if len(self._pending) < self._limits.max_pending:
            self._resume_reading()
        self._ready()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None:
            self._ticket.release()
        for timer in (self._cut, self._stall, self._naming):
            if timer is not None:
                timer.cancel()
        self._server.forget(self)
        self._set_resumed()  # a reader waiting for the client to read goes on
        if self._refiller is not None:  # a store read: nothing is left halfway
            self._refiller.cancel()
        session = self._session
        if session is not None:
            session.on_wake = None
            reason = session.close_reason or ("connection lost" if exc else "connection closed")
            name = session.name or session.last_name or None
            log.info("disconnect peer=%s name=%s reason=%s", self._peer, name, reason)
        self._input_over("connection lost" if exc else "connection closed")

    # -- the end of the input --

    def _input_over(self, reason: str) -> None:
        """No more lines will come: once those that came are handled, the session ends with
        ``reason`` (the first one given)."""
        if self._over is None:
            self._over = reason
        if self._reader is None:  # nothing in hand: end now; else the reader ends it
            self._end()

    def _end(self) -> None:
        """End the session: it leaves the hub, and the pump writes what is left and closes."""
        session = self._session
        if self._ended or session is None:
            return
        self._ended = True
        self._server.spawn(self._finish(session, self._over or "connection closed"))

    async def _finish(self, session: Session, reason: str) -> None:
        await self._server.hub.disconnect(session, reason)  # does nothing if it quit already
        self._ready()  # a session that never had a name is pumped by nobody else

    # -- the read side: one command at a time, runs of messages pipelined --

    async def _read_loop(self, session: Session) -> None:
        try:
            await self._read_lines(session)
        except Exception:  # a bug must cost this connection only, and be seen
            log.exception("internal error peer=%s", self._peer)
            self.close("internal error")
        finally:
            self._reader = None
            if self._over is not None:  # the input had ended: all of it was handled
                self._end()

    async def _read_lines(self, session: Session) -> None:
        """Handle the queued lines, then end: the next data_received starts a new run."""
        hub = self._server.hub
        while self._pending:
            if not await self._turn(session):
                return
            if not self._pending:  # closed by the server meanwhile
                return
            line = self._pending.pop(0)
            parsed = [line] if isinstance(line, Error) else self._codec.parse(line)
            for item in parsed:
                if isinstance(item, Error | Info):  # answered by the codec itself
                    if isinstance(item, Error):
                        log.info("client error peer=%s code=%s", self._peer, item.code)
                    self._write([hub.spend(session) or item])
                elif isinstance(item, Say) and session.state is State.ACTIVE:
                    await self._say_run(session, item)
                else:
                    self._write(await hub.handle(session, item))
                    self._codec.named = session.state is State.ACTIVE
                    if session.on_wake is None and session.state is not State.NEW:
                        # after the welcome went out: what the session receives comes next
                        session.on_wake = self._ready
                        self._ready()
                        self._named()
            if session.state is State.CLOSED:  # quit: the pump sends what is left
                self._pending.clear()
                self._pause_reading()
                return
        if self._resumed is not None:  # the client is not reading what we write
            await self._resumed
        self._resume_reading()

    async def _say_run(self, session: Session, first: Say) -> None:
        """Hand ``first`` and the plain lines queued behind it to the hub together: they are
        stored in one write and broadcast in order."""
        says = [first]
        refused: list[Event] = []
        # no more than the flood limit lets through now: the rest waits for the next turn
        most = min(self._limits.max_pending, self._server.hub.allowance(session))
        while self._pending and len(says) + len(refused) < most:
            line = self._pending[0]
            if isinstance(line, Error) or line.startswith("/"):
                break
            del self._pending[0]
            for item in self._codec.parse(line):
                if isinstance(item, Say):
                    says.append(item)
                elif isinstance(item, Error | Info):  # a plain line the codec refused
                    refused.append(self._server.hub.spend(session) or item)
        self._write(refused)
        self._write(await self._server.hub.say(session, says))

    # -- the write side: pulled once per loop turn, no task switch per message --

    def _ready(self) -> None:
        """Something is ready for the session: pump this connection at the next flush."""
        self._server.schedule(self)

    def pump(self) -> None:
        """Write every event ready for the session in one write, then wait for more.

        Called once per loop turn at most (by the ``Flusher``). A lag or a replay that needs
        the store is served by a task until it is done; the fast path never leaves this call.
        """
        session, transport = self._session, self._transport
        if session is None or transport is None or self._refiller is not None:
            return
        if self._resumed is not None or transport.is_closing():  # resume_writing pumps again
            return
        batch = self._limits.batch
        events = session.take_ready(batch)
        if events:
            transport.write(self._codec.encode(events))
        if session.needs_store():
            self._refiller = asyncio.create_task(self._refill(session))
        elif len(events) >= batch:
            self._ready()  # more may be ready: next turn, after the others had theirs
        elif events or session.state is not State.CLOSED:
            session.arm(self._ready)
        else:
            self.close()

    async def _refill(self, session: Session) -> None:
        try:
            while session.needs_store():
                if self._resumed is not None:
                    await self._resumed
                self._write(await session.take(self._limits.batch))
        finally:
            self._refiller = None
            self._ready()

    def _set_resumed(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def _named(self) -> None:
        """The connection has a name: no deadline for one any more."""
        if self._naming is not None:
            self._naming.cancel()
            self._naming = None

    def _unnamed(self) -> None:
        self._naming = None
        timeout = self._limits.name_timeout
        log.info("no name peer=%s within %g s: closing", self._peer, timeout)
        self._server.admission.note("name_timeout")
        self.close(f"no name given within {timeout:g} s")

    def _too_slow(self) -> None:
        self._stall = None
        name = self._session.name if self._session is not None else None
        log.warning("too slow peer=%s name=%s", self._peer, name)
        self._server.admission.note("stall_timeout")
        stall = self._limits.stall_timeout
        # The reason goes after what is buffered, above the mark: the client sees it once it
        # reads again, if it does within another stall_timeout (it holds no more than before).
        self.close(f"too slow: not reading for {stall:g} s", grace=stall)

    async def _turn(self, session: Session) -> bool:
        """Wait until the hub lets the session's next command through; ``False`` if it was
        held back too long instead (it is closed, with the hub's reason)."""
        hub = self._server.hub
        try:
            wait = hub.pace(session)
            while wait > 0.0:  # bounded: the hub refuses a hold longer than flood_hold
                await asyncio.sleep(wait)  # the time the hub said, at most 1/rate: no polling
                wait = hub.pace(session)
        except ClientError as e:
            self.close(e.message)
            return False
        return True

    # -- helpers --

    def _write(self, events: list[Event]) -> None:
        if events and self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._codec.encode(events))

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and self._over is None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        # after the end of the input there is nothing to read (and resuming would read the
        # end again)
        if self._reading_paused and self._transport is not None and self._over is None:
            self._reading_paused = False
            self._transport.resume_reading()

    def close(self, reason: str | None = None, *, grace: float | None = None) -> None:
        """Tell the client why (if a reason is given), flush, and close.

        With a reason, the session leaves the hub at once and the lines not yet handled are
        dropped. A client that does not take what is buffered within ``grace`` seconds (by
        default ``close_grace``) is cut.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._pending.clear()
        session = self._session
        if reason is not None:
            self._write([Error(code="closed", message=f"closing: {reason}")])
            if session is not None:  # gone from the hub now, whatever the socket does
                self._server.spawn(self._server.hub.disconnect(session, reason))
        transport.close()
        if transport.get_write_buffer_size():
            loop = asyncio.get_running_loop()
            grace = self._limits.close_grace if grace is None else grace
            self._cut = loop.call_later(grace, transport.abort)

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        if self._transport is not None:
            self._transport.abort()


class LineServer:
    """Listens for line-protocol clients and connects each to the hub."""

    def __init__(
        self, hub: Hub, *, limits: TcpLimits | None = None, admission: Admission | None = None
    ) -> None:
        self.hub = hub  # the chat core every connection talks to
        self.limits = limits or TcpLimits()
        self.admission = admission or Admission()  # open connections (shared with HTTP's)
        cache = self.limits.cache_bytes
        self.plain = Renderer(cache_bytes=cache)  # shared by all: one render per message
        self.stamped = Renderer(timestamps=True, cache_bytes=cache)  # the same, with times
        self.connections: set[_Connection] = set()  # open connections
        self._server: asyncio.Server | None = None
        self._background: set[asyncio.Task[None]] = set()  # readers, disconnects in progress
        self._flusher = Flusher[_Connection](self.limits.flush_gap, self._failed)
        self._all_closed = asyncio.Event()  # set when no connection is open

    async def start(self, host: str, port: int) -> None:
        """Start listening on ``host:port`` (port 0 picks a free one: see ``port``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, reuse_address=True
        )

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` in the background, keeping a reference until it finishes (``stop``
        waits for it)."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def schedule(self, conn: _Connection) -> None:
        """Pump ``conn`` at the next flush (see ``roomcast.net.flush``)."""
        self._flusher.mark(conn)

    def _failed(self, conn: _Connection, error: Exception) -> None:
        log.error("internal error peer=%s", conn._peer, exc_info=error)
        conn.close("internal error")

    def forget(self, conn: _Connection) -> None:
        """Drop a closed connection from the open set."""
        self.connections.discard(conn)
        self._flusher.forget(conn)
        if not self.connections:
            self._all_closed.set()

    async def stop(self, reason: str = "server shutting down", *, grace: float = 2.0) -> None:
        """Stop accepting, tell every client ``reason`` and close it.

        Clients get ``grace`` seconds to take what is buffered for them; then they are cut.
        """
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close(reason)
        if self.connections:
            self._all_closed.clear()
            try:
                await asyncio.wait_for(self._all_closed.wait(), grace)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort()
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
