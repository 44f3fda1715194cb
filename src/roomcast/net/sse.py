"""Server-Sent Events: a room's messages as a ``text/event-stream``, for readers that send
nothing (``GET /api/rooms/{room}/events``).

A stream is a session the hub opened to read one room (``Hub.watch``), read with the
session's own delivery, ``Session.receive``: every message once, in order, a lag refilled
from the store, a range the store no longer holds reported as a gap. ``wire.json`` encodes
the events. There is no command to read, so the connection core (``net/conn.py``) has
nothing to do here: aiohttp's chunked response writes, and waits while the client is slow,
``stall_timeout`` at most; then the stream is cut, with a log line, and counted. A client
that vanished without a word is dropped by the kernel a little later (``TCP_USER_TIMEOUT``).
An idle stream gets a comment every ``keepalive`` seconds, which keeps proxies from closing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Protocol

from aiohttp import web

from roomcast.errors import Closed
from roomcast.hub import Hub
from roomcast.net.admission import Admission
from roomcast.session import Session
from roomcast.wire.cache import EncodedMessages
from roomcast.wire.json import KEEPALIVE, RETRY, event_stream

__all__ = ["EventStreams", "StreamLimits"]

log = logging.getLogger("roomcast.web")


class StreamLimits(Protocol):
    """The limits of event streams (``WebLimits`` has them)."""

    @property
    def keepalive(self) -> float: ...  # seconds between comments on an idle stream
    @property
    def batch(self) -> int: ...  # events per write
    @property
    def stall_timeout(self) -> float: ...  # seconds a write may wait for the client


class EventStreams:
    """The open event streams of one listener."""

    def __init__(
        self, hub: Hub, limits: StreamLimits, messages: EncodedMessages, admission: Admission
    ) -> None:
        self.hub = hub  # opens and closes the streams' sessions
        self.limits = limits
        self.messages = messages  # each room message encoded once, shared with WebSocket
        self.admission = admission  # counts the streams cut as too slow
        self.open: set[Session] = set()  # the sessions of the open streams

    async def serve(self, request: web.Request, room: str, since: int | None) -> web.StreamResponse:
        """Stream ``room`` to ``request``'s client, from after ``since`` (the live end when
        ``None``), until the client goes or ``close_all``."""
        session = await self.hub.watch(request.remote or "?", room, since)
        self.open.add(session)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        # the write deadline (stall_timeout) cuts a client that does not read; the kernel, one
        # that vanished: later, so that a client merely slow is cut by the deadline, with a
        # reason in the log
        _give_up_unacknowledged(request.transport, 2 * self.limits.stall_timeout)
        try:
            await response.prepare(request)
            if not await self._write(request, response, RETRY):
                return response
            while True:  # until the stream ends: Closed, or the client goes
                try:
                    async with asyncio.timeout(self.limits.keepalive):
                        events = await session.receive(self.limits.batch)
                except TimeoutError:
                    if not await self._write(request, response, KEEPALIVE):
                        break
                    continue
                if not await self._write(request, response, event_stream(events, self.messages)):
                    break
        except (Closed, ConnectionError):
            pass
        finally:
            self.open.discard(session)
            self.hub.unwatch(session)
        return response

    def close_all(self) -> None:
        """End every stream (the server is stopping)."""
        for session in list(self.open):
            self.hub.unwatch(session)

    async def _write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
        """Write to a stream; ``False`` if the client took nothing for ``stall_timeout``
        seconds: then it is cut, its buffer dropped."""
        stall = self.limits.stall_timeout
        try:
            async with asyncio.timeout(stall):  # aiohttp waits for the buffer to drain
                await response.write(data)
        except TimeoutError:
            transport = request.transport
            peer = "?" if transport is None else _peer(transport)
            log.warning("too slow peer=%s transport=sse: not reading for %g s", peer, stall)
            self.admission.note("stall_timeout")
            if transport is not None:
                transport.abort()
            return False
        return True


def _give_up_unacknowledged(transport: asyncio.Transport | None, seconds: float) -> None:
    """Have the kernel drop the connection when what it sent stays unacknowledged for
    ``seconds`` (``TCP_USER_TIMEOUT``, Linux): a client that vanished without a word is
    otherwise retried for about 15 minutes, and an event stream never hears from it."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    if option is not None and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, round(seconds * 1000))


def _peer(transport: asyncio.Transport) -> str:
    """``host:port`` of the client, for logs."""
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return "?"
