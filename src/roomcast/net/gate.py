"""The HTTP listener's door: every connection is counted at accept and must send its first
request's head in time, before aiohttp sees it.

A ``Gate`` stands in front of aiohttp's protocol for the whole life of one connection (a
WebSocket's ``_Socket`` stands in front of it once upgraded) and passes every callback on.
At accept it takes the connection's ``Ticket`` (``net/admission.py``) and hands the
connection to the protocol the listener gives for it: the application's, or, refused, one
that answers every request with the refusal and closes. Far over a cap (the ticket is not
to be told), it closes the connection at once.

Until the end of the first request's head has come (its first empty line), it keeps a
deadline, ``header_timeout``, that the bytes of the head do not restart: a client that
dribbles its headers (slowloris) gets 408 and is closed; one that sent nothing is closed
without a word (a browser's spare connection may be one). Later requests of a kept-alive
connection are bounded by aiohttp's keep-alive timer, which the listener sets to the same
and which bytes do not restart either; aiohttp closes those without a word.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from roomcast.errors import ClientError
from roomcast.net.admission import Admission, Ticket
from roomcast.wire.json import api_error

__all__ = ["Gate", "Gatekeeper"]

log = logging.getLogger("roomcast.web")


class Gatekeeper:
    """What the gates of one listener share; called, a new ``Gate`` (the listener's protocol
    factory)."""

    def __init__(
        self,
        admission: Admission,
        protocol: Callable[[ClientError | None], asyncio.Protocol],
        header_timeout: float,
    ) -> None:
        self.admission = admission  # the counts, shared with the other listener
        self.protocol = protocol  # aiohttp's protocol for an admitted (None) or refused one
        self.header_timeout = header_timeout  # seconds to send the first request's head
        message = f"the request headers did not come within {header_timeout:g} s"
        body = api_error("timeout", message)
        # the response by hand: aiohttp has no request to answer (its head never ended)
        self.late = (
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )

    def __call__(self) -> Gate:
        return Gate(self)


class Gate(asyncio.Protocol):
    """One HTTP connection from accept to close, in front of aiohttp's protocol."""

    __slots__ = ("_deadline", "_inner", "_keeper", "_peer", "_tail", "_ticket", "_transport")

    def __init__(self, keeper: Gatekeeper) -> None:
        self._keeper = keeper  # the counts, the deadline, aiohttp's protocols
        self._inner: asyncio.Protocol | None = None  # aiohttp's; None: closed at once
        self._transport: asyncio.Transport | None = None
        self._ticket: Ticket | None = None  # its place among the open connections
        self._deadline: asyncio.TimerHandle | None = None  # for the first request's head
        self._tail = b""  # the first request's last bytes so far, to find where its head ends
        self._peer = "?"  # host:port, for the log

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        keeper = self._keeper
        self._transport = transport
        peername = transport.get_extra_info("peername")
        host = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if isinstance(peername, tuple) and len(peername) >= 2:
            self._peer = f"{peername[0]}:{peername[1]}"
        self._ticket = ticket = keeper.admission.admit(host, self._peer, "http")
        if ticket.refusal is not None and not ticket.told:
            transport.abort()
            return
        self._inner = inner = keeper.protocol(ticket.refusal)
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(keeper.header_timeout, self._head_late)
        inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            # a head ends with an empty line: CRLF CRLF (LF LF from lax clients)
            seen = self._tail + data[:3]
            if b"\n\r\n" in seen or b"\n\n" in seen or b"\n\r\n" in data or b"\n\n" in data:
                self._deadline.cancel()
                self._deadline = None
            else:
                self._tail = (self._tail + data)[-2:] if len(data) < 2 else data[-2:]
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._inner is None else self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._ticket is not None:
            self._ticket.release()
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def _head_late(self) -> None:
        self._deadline = None
        keeper, transport = self._keeper, self._transport
        sent = bool(self._tail)
        log.info(
            "http request headers not received within %g s peer=%s%s",
            keeper.header_timeout,
            self._peer,
            "" if sent else " (nothing sent)",
        )
        keeper.admission.note("header_timeout")
        if transport is None or transport.is_closing():
            return
        if sent:  # nothing to a client that sent nothing: browsers have shown such a 408
            transport.write(keeper.late)
        transport.close()
