"""The TCP listener for the line protocol: a thin adapter over the connection core.

Bytes are framed into lines by ``wire.line.LineCodec`` (sans I/O), and each line is parsed
when its turn comes: what a plain line means depends on whether the session has a name, which
the hub tells the connection (``named``). Everything else (the reader, runs of lines stored in
one write, flood control that delays, delivery without a task, flow control, the stall
cut-off, closing with a reason) is ``roomcast.net.conn``'s, shared with the WebSocket listener.

Each connection takes its place among the open ones at accept (``net/admission.py``: caps
per address and in total, shared with the HTTP listener); one refused is told why in one
line (unless far over), and closed. A connection must give a name within ``name_timeout``.

The end: every line that came before the end of the input (a close, a half-close, a reset) is
handled, in order, and answered while the socket still takes it; then the session leaves the
hub, what is left for it is written, and the connection closes. Only when the server closes
a connection (a cut, a shutdown) are the lines not yet handled dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from roomcast.hub import Hub
from roomcast.model import Action, Error, Event, Info, Say
from roomcast.net.admission import Admission, Ticket
from roomcast.net.conn import Code, Connection, Connections, Step
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


class _LineConnection(Connection[str | Error], asyncio.Protocol):
    """One line-protocol connection: the codec's side of the connection core."""

    __slots__ = ("_codec", "_naming", "_ticket")

    def __init__(self, server: LineServer) -> None:
        super().__init__(server.connections)
        self._codec = LineCodec(
            plain=server.plain, stamped=server.stamped, max_line=server.limits.max_line
        )
        self._ticket: Ticket | None = None  # its place among the open connections
        self._naming: asyncio.TimerHandle | None = None  # closes it if it gives no name in time

    # -- asyncio.Protocol callbacks (the write side's and connection_lost: the core's) --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        host, port, *_ = transport.get_extra_info("peername") or ("?", 0)
        peer = f"{host}:{port}"
        ticket = self._owner.admission.admit(str(host), peer, "line")
        if ticket.refusal is not None:  # one line saying why (unless far over), then closed
            transport.set_protocol(_Refused(ticket))  # no session: only the ticket to give back
            if not ticket.told:
                transport.abort()
                return
            refusal = Error(code=ticket.refusal.code, message=ticket.refusal.message)
            transport.write(self._codec.encode([refusal]))
            transport.close()
            return
        self._ticket = ticket
        self.open(transport, peer)
        log.info("connect peer=%s", peer)
        transport.write(self._codec.greeting())
        timeout = cast(TcpLimits, self._limits).name_timeout  # the line listener's own
        if timeout > 0:
            self._naming = asyncio.get_running_loop().call_later(timeout, self._unnamed)

    def data_received(self, data: bytes) -> None:
        self.received(self._codec.receive_data(data))

    def eof_received(self) -> bool | None:
        self._codec.eof()  # a half-sent last line is dropped
        self.input_over("connection closed")
        return True  # keep our side open: what came before the end is answered first

    def connection_lost(self, exc: Exception | None) -> None:
        if self._ticket is not None:
            self._ticket.release()
        if self._naming is not None:
            self._naming.cancel()
        super().connection_lost(exc)

    def _unnamed(self) -> None:
        self._naming = None
        timeout = cast(TcpLimits, self._limits).name_timeout  # the line listener's own
        log.info("no name peer=%s within %g s: closing", self.session.peer, timeout)
        self._owner.admission.note("name_timeout")
        self.close(Code.POLICY, f"no name given within {timeout:g} s")

    # -- the codec's side --

    def named(self, named: bool) -> None:
        super().named(named)
        self._codec.named = named
        if named and self._naming is not None:  # named: no deadline for it any more
            self._naming.cancel()
            self._naming = None

    def parse(self, item: str | Error) -> Sequence[Step]:
        parsed = [item] if isinstance(item, Error) else self._codec.parse(item)
        steps: list[Step] = []
        for command in parsed:
            if isinstance(command, Error):
                log.info("client error peer=%s code=%s", self.session.peer, command.code)
            if isinstance(command, Error | Info):  # answered by the codec itself
                steps.append(self._codec.encode([command]))
            else:
                steps.append((None, command))
        return steps

    def plain(self, item: str | Error) -> Sequence[Say | Action | bytes] | None:
        if isinstance(item, Error) or item.startswith("/"):
            return None
        said: list[Say | Action | bytes] = []
        for command in self._codec.parse(item):
            if isinstance(command, Say):
                said.append(command)
            elif isinstance(command, Error | Info):  # a plain line the codec refused
                said.append(self._codec.encode([command]))
        return said

    def encode(self, events: Sequence[Event]) -> bytes:
        return self._codec.encode(events)

    def notice(self, code: Code, reason: str) -> bytes:
        if code is Code.NORMAL:  # the session said goodbye itself
            return b""
        return self._codec.encode([Error(code="closed", message=f"closing: {reason}")])


class _Refused(asyncio.Protocol):
    """A connection refused at accept, closing: it holds its ticket until it is gone."""

    __slots__ = ("_ticket",)

    def __init__(self, ticket: Ticket) -> None:
        self._ticket = ticket  # counted until the socket is closed

    def connection_lost(self, exc: Exception | None) -> None:
        self._ticket.release()


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
        # the open connections and what they share
        self.connections = Connections(hub, self.limits, log, self.admission)
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        """Start listening on ``host:port`` (port 0 picks a free one: see ``port``)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _LineConnection(self), host, port, reuse_address=True
        )

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._server is not None, "not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self, reason: str = "server shutting down", *, grace: float = 2.0) -> None:
        """Stop accepting, tell every client ``reason`` and close it.

        Clients get ``grace`` seconds to take what is buffered for them; then they are cut.
        """
        if self._server is not None:
            self._server.close()
        await self.connections.stop(reason, grace=grace)
        if self._server is not None:
            await self._server.wait_closed()
