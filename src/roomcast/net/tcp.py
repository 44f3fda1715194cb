"""The TCP listener for the line protocol: framing and flow control only, no chat rules.

Each connection has two tasks. The reader hands decoded commands to the hub one at a time and
writes the replies. The writer pulls batches from the session (every ready message of every
room in one ``receive``) and writes each batch with one ``transport.write``.

Flow control: when the transport's write buffer passes ``high_water`` the writer stops pulling,
so the session's receivers fall behind in the room rings (which costs the server nothing) and
the reader stops reading the socket. A connection that stays above the mark for
``stall_timeout`` seconds is closed with a reason. Buffered bytes per connection stay bounded
by ``high_water`` plus one batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, cast

from roomcast.errors import Closed
from roomcast.hub import Hub
from roomcast.model import Error, Event, Info
from roomcast.session import Session, State
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
    close_grace: float = 2.0  # seconds a closing client gets to take what is buffered


class _Connection(asyncio.Protocol):
    def __init__(self, server: LineServer) -> None:
        self._server = server  # shared hub, renderers, limits and connection set
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._session: Session | None = None
        self._codec = LineCodec(
            plain=server.plain, stamped=server.stamped, max_line=server.limits.max_line
        )
        self._pending: deque[str | Error] = deque()  # decoded, not yet handled
        self._has_pending = asyncio.Event()  # set when _pending has items
        self._writable = asyncio.Event()  # clear while the write buffer is above high_water
        self._writable.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._peer = "?"
        self._reading_paused = False
        self._cut: asyncio.TimerHandle | None = None  # aborts a closing client that never reads

    # -- asyncio.Protocol callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self._transport = transport
        transport.set_write_buffer_limits(high=self._limits.high_water)
        host, port, *_ = transport.get_extra_info("peername") or ("?", 0)
        self._peer = f"{host}:{port}"
        self._session = self._server.hub.connect(self._peer)
        self._server.connections.add(self)
        log.info("connect peer=%s", self._peer)
        transport.write(self._codec.greeting())
        self._tasks = [asyncio.create_task(self._read_loop(self._session))]

    def data_received(self, data: bytes) -> None:
        self._pending.extend(self._codec.receive_data(data))
        if self._pending:
            self._has_pending.set()
            if len(self._pending) >= self._limits.max_pending:
                self._pause_reading()

    def eof_received(self) -> bool | None:
        self._codec.eof()
        return None  # close our side too

    def pause_writing(self) -> None:
        self._writable.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writable.set()
        if len(self._pending) < self._limits.max_pending:
            self._resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._cut is not None:
            self._cut.cancel()
        self._server.forget(self)
        self._writable.set()
        for task in self._tasks:
            task.cancel()
        session = self._session
        if session is not None:
            reason = session.close_reason or ("connection lost" if exc else "connection closed")
            self._server.spawn(self._server.hub.disconnect(session, reason))
            name = session.name or session.last_name or None
            log.info("disconnect peer=%s name=%s reason=%s", self._peer, name, reason)

    # -- the two loops --

    async def _read_loop(self, session: Session) -> None:
        try:
            await self._read_lines(session)
        except Exception:  # a bug must cost this connection only, and be seen
            log.exception("internal error peer=%s", self._peer)
            self.close("internal error")

    async def _read_lines(self, session: Session) -> None:
        while True:
            await self._has_pending.wait()
            while self._pending:
                line = self._pending.popleft()
                parsed = [line] if isinstance(line, Error) else self._codec.parse(line)
                for item in parsed:
                    if isinstance(item, Error | Info):  # answered by the codec itself
                        self._write([self._server.hub.spend(session) or item])
                    else:
                        self._write(await self._server.hub.handle(session, item))
                        self._codec.named = session.state is State.ACTIVE
                        if len(self._tasks) == 1 and session.state is not State.NEW:
                            # after the welcome went out: what the session receives comes next
                            self._tasks.append(asyncio.create_task(self._write_loop(session)))
                if session.state is State.CLOSED:  # quit: the writer sends what is left
                    self._pause_reading()
                    return
            self._has_pending.clear()
            if not self._writable.is_set():
                await self._writable.wait()
            self._resume_reading()

    async def _write_loop(self, session: Session) -> None:
        try:
            while True:
                events = await session.receive(self._limits.batch)
                self._write(events)
                if not self._writable.is_set():
                    try:
                        await asyncio.wait_for(self._writable.wait(), self._limits.stall_timeout)
                    except TimeoutError:
                        log.warning("too slow peer=%s name=%s", self._peer, session.name)
                        self.close(f"too slow: not reading for {self._limits.stall_timeout:g} s")
                        return
        except Closed:
            self.close()

    # -- helpers --

    def _write(self, events: list[Event]) -> None:
        if events and self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._codec.encode(events))

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def close(self, reason: str | None = None) -> None:
        """Tell the client why (if a reason is given), flush, and close.

        With a reason, the session leaves the hub at once. A client that does not take what is
        buffered within ``close_grace`` seconds is cut.
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        session = self._session
        if reason is not None:
            self._write([Error(code="closed", message=f"closing: {reason}", fatal=True)])
            if session is not None:  # gone from the hub now, whatever the socket does
                self._server.spawn(self._server.hub.disconnect(session, reason))
        transport.close()
        if transport.get_write_buffer_size():
            loop = asyncio.get_running_loop()
            self._cut = loop.call_later(self._limits.close_grace, transport.abort)

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        if self._transport is not None:
            self._transport.abort()


class LineServer:
    """Listens for line-protocol clients and connects each to the hub."""

    def __init__(self, hub: Hub, *, limits: TcpLimits | None = None) -> None:
        self.hub = hub  # the chat core every connection talks to
        self.limits = limits or TcpLimits()
        self.plain = Renderer()  # shared by all connections: one render per message
        self.stamped = Renderer(timestamps=True)  # the same, with timestamps
        self.connections: set[_Connection] = set()  # open connections
        self._server: asyncio.Server | None = None
        self._background: set[asyncio.Task[None]] = set()  # disconnects in progress
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

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it finishes."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def forget(self, conn: _Connection) -> None:
        """Drop a closed connection from the open set."""
        self.connections.discard(conn)
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
