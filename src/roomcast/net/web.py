"""The HTTP listener (aiohttp): the web page, the JSON API, Server-Sent Events and WebSocket.

No chat rules here: every route hands the request to the hub (or to its history and
resume API) and answers with what ``wire.json`` encodes of what comes back.

Routes (docs/protocol.md has the details):

    GET  /                                  the web client (static files under /static/)
    GET  /health                            200 {"status": "ok", "version", counts};
                                            503 {"status": "unavailable", "problem", ...}
    POST /api/register, /api/login          {"name", "password"} -> {"token", "name"}
    POST /api/logout                        with a bearer token: revoke every token
    GET  /api/rooms                         the rooms
    GET  /api/rooms/{room}/messages         a history page (?before= | ?after=, &limit=)
    GET  /api/rooms/{room}/events           Server-Sent Events; resumes after Last-Event-ID
    POST /api/rooms/{room}/messages         {"text"} with "Authorization: Bearer <token>"
    GET  /ws                                the WebSocket JSON protocol

A room in a URL has no '#': ``/api/rooms/general`` is ``#general``.

A WebSocket connection, once upgraded, is a thin adapter over the connection core
(``net/conn.py``), like a line connection: the same reader, runs of sends stored in one
write, flood control, delivery without a task, flow control, stall cut-off and closing.
Deliveries are written to the transport as whole frames, a room's run of messages framed
once for every member (``wire.websocket.Frames``: server frames are not masked, so the bytes
are the same). aiohttp parses the client's frames, answers pings and keeps the heartbeat; its
handler task is the reader, taking each frame with ``receive`` and handing it to the core
(the core's reader starts on the next loop turn, so the frames that came together are handled
together). Closes use the WebSocket codes: 1008 for a client too slow or held back too long,
1003 for a binary frame, 1011 for an internal error, 1001 when the server stops, 1000 after
the session's goodbye. ``stop`` closes every connection at once and cuts, after
``close_grace``, those that do not take their close.

Connections come in through ``net/gate.py``: each is counted (``net/admission.py``) and handed
to aiohttp's protocol for the application, or, refused, to a small aiohttp server that answers
the refusal (``protocol``); the gate also keeps the deadline for the first request's head.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from aiohttp import WebSocketError, WSCloseCode, WSMessage, WSMsgType, web

from roomcast import __version__
from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.hub import NOT_WRITABLE, Hub
from roomcast.model import Action, Command, Event, FetchHistory, Say, room_name, seq_text
from roomcast.net import origin
from roomcast.net.admission import Admission
from roomcast.net.conn import Code, Connection, Connections, Step
from roomcast.net.gate import Gatekeeper
from roomcast.net.sse import EventStreams
from roomcast.store.base import Account
from roomcast.tokens import Tokens
from roomcast.wire.cache import DEFAULT_CACHE_BYTES
from roomcast.wire.json import (
    JsonCodec,
    Reply,
    RequestId,
    api_account,
    api_body,
    api_error,
    api_health,
    api_history,
    api_logged_out,
    api_message,
    api_rooms,
    encoded_messages,
)
from roomcast.wire.websocket import Frames, close_frame, text_frame

__all__ = ["WebLimits", "WebServer"]

log = logging.getLogger("roomcast.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS = {  # HTTP status of a client error, by code; 400 otherwise
    "bad_login": 401,
    "bad_token": 401,
    "expired_token": 401,
    "no_token": 401,
    "throttled": 429,
    "flood": 429,
    "busy": 503,
    "name_taken": 409,
    "lookalike": 409,
    "not_found": 404,
    "no_such_room": 404,
    "bad_method": 405,
    "timeout": 408,
    "too_many_connections": 429,
    "server_full": 503,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebLimits:
    """Limits of the HTTP listener."""

    max_frame: int = 65536  # bytes in one WebSocket frame or API request body
    origins: str = ""  # comma-separated public origins (net/origin.py); "" = the listener's own
    high_water: int = 256 * 1024  # WebSocket write-buffer bytes above which we stop pulling
    stall_timeout: float = 30.0  # seconds a WebSocket client may stay above high_water
    batch: int = 512  # events per frame
    max_pending: int = 64  # WebSocket frames read before they are handled (a run of sends)
    flush_gap: float = 0.005  # most seconds between two WebSocket flushes, as long as one took
    keepalive: float = 15.0  # seconds between SSE comments on an idle stream
    heartbeat: float = 30.0  # seconds between WebSocket pings (aiohttp's heartbeat)
    close_grace: float = 2.0  # seconds a closing WebSocket client gets to take what is buffered
    cache_bytes: int = DEFAULT_CACHE_BYTES  # bytes of encoded messages, runs, frames (each)
    header_timeout: float = 10.0  # seconds to send a request's headers (and idle keep-alive)
    body_timeout: float = 30.0  # seconds to send a request's body


def _respond(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(e: ClientError) -> web.Response:
    response = _respond(api_error(e.code, e.message), _STATUS.get(e.code, 400))
    if e.retry_after is not None:
        response.headers["Retry-After"] = str(e.retry_after)
    if e.code == "timeout":  # the rest of a body that did not come is not waited for either
        response.force_close()
    return response


def _field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ClientError("bad_request", f"{key!r} is required, as a string")
    return value


def _room(request: web.Request) -> str:
    return room_name(request.match_info["room"])


def _seq(request: web.Request, key: str) -> int | None:
    value = request.query.get(key)
    if value is None or value == "":
        return None
    n = seq_text(value)  # bad_seq past MAX_SEQ, its length checked before converting
    if n is None:
        raise ClientError("bad_request", f"{key!r} must be a whole number")
    return n


def _static_dir() -> Path:
    return Path(str(resources.files("roomcast") / "web"))


class WebServer:
    """Serves the web client, the JSON API, event streams and WebSocket sessions."""

    def __init__(
        self,
        hub: Hub,
        tokens: Tokens,
        *,
        limits: WebLimits | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.hub = hub  # the chat core
        self.tokens = tokens  # signs and checks login tokens
        self.limits = limits or WebLimits()
        self.admission = admission or Admission()  # open connections (shared with the line's)
        self._public = origin.parse_origins(self.limits.origins)  # ValueError for a bad one
        self._host = ""  # the host the listener binds, once started: one of its names
        cache = self.limits.cache_bytes
        self.messages = encoded_messages(max_bytes=cache)  # each message encoded once for all
        # one codec for every WebSocket connection: it holds no per-connection state
        self.codec = JsonCodec(messages=self.messages, verify_token=self.tokens.verify)
        self.frames = Frames(self.codec, self.messages, max_bytes=cache)  # a run framed once
        # open WebSocket connections, and what they share
        self.connections = Connections(hub, self.limits, log, self.admission)
        self.streams = EventStreams(hub, self.limits, self.messages, self.admission)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None  # accepts through net/gate.py
        self._refusers: dict[str, web.Server] = {}  # per refusal: answers it to every request
        # aiohttp refuses sizes >= its limit; ours are the largest accepted. No middleware:
        # each API handler is wrapped instead (``_guard``), so that an open WebSocket's
        # suspended stack holds no middleware frames.
        app = web.Application(client_max_size=self.limits.max_frame + 1)
        guard = self._guard
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", _static_dir(), append_version=False)
        app.router.add_get("/health", guard(self._health))
        app.router.add_post("/api/register", guard(self._register))
        app.router.add_post("/api/login", guard(self._login))
        app.router.add_post("/api/logout", guard(self._logout))
        app.router.add_get("/api/rooms", guard(self._rooms))
        app.router.add_get("/api/rooms/{room}/messages", guard(self._history))
        app.router.add_post("/api/rooms/{room}/messages", guard(self._post))
        app.router.add_get("/api/rooms/{room}/events", guard(self._events))
        # Any other path under /api answers in the API's JSON error shape (404, or 405 when
        # the path exists for other methods); other paths keep aiohttp's plain-text 404.
        self._api_fallback = (
            app.router.add_route("*", "/api", guard(self._no_route)).resource,
            app.router.add_route("*", "/api/{rest:.*}", guard(self._no_route)).resource,
        )
        app.router.add_get("/ws", self._websocket)
        self.app = app

    # -- lifecycle --

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a free port: see ``port``)."""
        self._host = host
        # aiohttp's keep-alive timer runs from the connection's start (or its last response)
        # and is not restarted by the bytes of a request head: it is a deadline for the
        # headers of every request after the first (whose deadline is the gate's), and closes
        # connections idle for as long. After a response to a request whose body was not
        # read whole (too large, too slow), aiohttp reads on for lingering_time before it
        # closes (so that the client reads the answer, not a reset): close_grace, not 10 s.
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.limits.header_timeout,
            lingering_time=self.limits.close_grace,
        )
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        gatekeeper = Gatekeeper(self.admission, self.protocol, self.limits.header_timeout)
        self._listener = await loop.create_server(gatekeeper, host, port, reuse_address=True)

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._listener is not None, "not started"
        port: int = self._listener.sockets[0].getsockname()[1]
        return port

    @property
    def sockets(self) -> set[Connection[Any]]:
        """The open WebSocket connections."""
        return self.connections.open

    async def stop(self, reason: str = "server shutting down") -> None:
        """Close every WebSocket with 1001 and ``reason``, end the streams, stop listening.

        A WebSocket client gets ``limits.close_grace`` seconds to take what is buffered for
        it; then it is cut. Its session leaves the hub at once either way.
        """
        if self._listener is not None:
            self._listener.close()  # no new connections
        self.streams.close_all()
        await self.connections.stop(reason, grace=self.limits.close_grace + 1.0)
        for refuser in self._refusers.values():
            refuser.pre_shutdown()
            await refuser.shutdown(self.limits.close_grace)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            await self._listener.wait_closed()

    # -- plumbing --

    def protocol(self, refusal: ClientError | None) -> asyncio.Protocol:
        """aiohttp's protocol for a new connection: the application's, or, for a refused
        one, one that answers every request with ``refusal`` and closes."""
        if refusal is None:
            assert self._runner is not None and self._runner.server is not None
            return self._runner.server()
        refuser = self._refusers.get(refusal.code)
        if refuser is None:

            async def refuse(request: web.BaseRequest) -> web.StreamResponse:
                response = _error(refusal)
                response.force_close()
                return response

            refuser = web.Server(
                refuse, access_log=None, keepalive_timeout=self.limits.header_timeout
            )
            self._refusers[refusal.code] = refuser
        return refuser()

    def _guard(self, handler: Handler) -> Handler:
        """``handler`` with client errors and store failures answered as JSON errors."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except ClientError as e:
                log.info("client error %s %s code=%s", request.method, request.path, e.code)
                return _error(e)
            except web.HTTPRequestEntityTooLarge:
                log.info("client error %s %s code=too_large", request.method, request.path)
                message = f"the body is over {self.limits.max_frame} bytes"
                return _respond(api_error("too_large", message), 413)
            except Unwritable as e:  # the store logged why, once: one line per request here
                log.warning("store not writable for %s %s: %s", request.method, request.path, e)
                return _respond(api_error(NOT_WRITABLE.code, NOT_WRITABLE.message), 503)
            except Broken:
                log.exception("store failure on %s %s", request.method, request.path)
                return _respond(api_error("unavailable", "try again later"), 503)

        return guarded

    async def _body(self, request: web.Request) -> dict[str, Any]:
        limit = self.limits.body_timeout
        try:
            async with asyncio.timeout(limit):  # a body sent a byte at a time holds nothing
                raw = await request.read()
        except TimeoutError:
            log.info(
                "http request body not received within %g s peer=%s path=%s",
                limit,
                request.remote,
                request.path,
            )
            self.admission.note("body_timeout")
            raise ClientError(
                "timeout", f"the request body did not come within {limit:g} s"
            ) from None
        return api_body(raw)

    async def _bearer(self, request: web.Request) -> Account:
        """The account the request's bearer token names, checked on this use: signed,
        unexpired, the account still there and its tokens not revoked since."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ClientError("no_token", "this needs 'Authorization: Bearer <token>'")
        claims = self.tokens.verify(token.strip())
        return await self.hub.authenticate(claims.account, claims.generation)

    # -- pages and API --

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(_static_dir() / "index.html")

    async def _health(self, request: web.Request) -> web.Response:
        """200 with the counts; 503 with ``problem`` when the store cannot take writes (the
        store logs each change of that, once)."""
        counts = {
            "version": __version__,
            "online": self.hub.online,
            "rooms": len(self.hub.room_list().rooms),
            "websockets": len(self.connections.open),
            "streams": len(self.streams.open),
            "connections": self.admission.open,  # both listeners, refused ones being told too
            "refused": dict(self.admission.refused),  # per limit, since the start
        }
        try:
            await self.hub.check_store()
        except Broken as e:
            if not isinstance(e, Unwritable):  # not one the store logs itself
                log.warning("health: the store failed its check: %s", e)
            return _respond(api_health("unavailable", counts, str(e)), 503)
        return _respond(api_health("ok", counts))

    def _issued(self, account: Account, status: int = 200) -> web.Response:
        token = self.tokens.issue(account.id, account.generation)
        return _respond(api_account(account.name, token), status)

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        account = await self.hub.create_account(
            _field(body, "name"), _field(body, "password"), request.remote or "?"
        )
        return self._issued(account, 201)

    async def _login(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        address = request.remote or "?"
        account = await self.hub.verify_login(
            _field(body, "name"), _field(body, "password"), address
        )
        return self._issued(account)

    async def _logout(self, request: web.Request) -> web.Response:
        """Log the token's account out everywhere: this token and every other one issued
        to it are refused from now on, and its open sessions end."""
        account = await self.hub.revoke((await self._bearer(request)).id)
        return _respond(api_logged_out(account.name))

    async def _rooms(self, request: web.Request) -> web.Response:
        return _respond(api_rooms(await self.hub.all_rooms()))

    async def _history(self, request: web.Request) -> web.Response:
        limit = _seq(request, "limit")
        page = await self.hub.history(
            _room(request),
            FetchHistory(
                before=_seq(request, "before"),
                after=_seq(request, "after"),
                limit=50 if limit is None else limit,
            ),
        )
        return _respond(api_history(page))

    async def _post(self, request: web.Request) -> web.Response:
        account = await self._bearer(request)
        body = await self._body(request)
        message = await self.hub.post(account.name, _room(request), _field(body, "text"))
        return _respond(api_message(message), 201)

    async def _no_route(self, request: web.Request) -> web.Response:
        """A path under /api that no route serves: 405 if it exists for other methods (with
        the ``Allow`` header), else 404; both as JSON errors."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource not in self._api_fallback:
                allowed |= (await resource.resolve(request))[1]
        path = request.path[:100]
        if not allowed:
            raise ClientError("not_found", f"there is no {path} in the API: see docs/protocol.md")
        methods = ", ".join(sorted(allowed))
        log.info("client error %s %s code=bad_method", request.method, request.path)
        message = f"{path} takes {methods}, not {request.method}"
        response = _respond(api_error("bad_method", message), 405)
        response.headers["Allow"] = ",".join(sorted(allowed))
        return response

    # -- Server-Sent Events --

    async def _events(self, request: web.Request) -> web.StreamResponse:
        room = _room(request)
        since = seq_text(request.headers.get("Last-Event-ID", "").strip())
        if since is None:  # absent or not a number: the query may say where to resume
            since = _seq(request, "since")
        return await self.streams.serve(request, room, since)

    # -- WebSocket --

    def _origin_allowed(self, request: web.Request) -> bool:
        """Whether the page behind this handshake is one of ours (``roomcast.net.origin``)."""
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        local = sockname[0] if isinstance(sockname, tuple) and sockname else None
        return origin.allowed(
            request.headers.get("Origin"),
            request.headers.get("Host", ""),
            public=self._public,
            names=origin.local_names(self._host, local),
            port=self.port,
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Upgrade, then read the client's frames until the connection ends.

        This handler's task (aiohttp's) is the connection's reader; deliveries need no task.
        """
        if not self._origin_allowed(request):
            log.warning(
                "websocket origin refused origin=%s host=%s peer=%s",
                request.headers.get("Origin"),
                request.headers.get("Host"),
                request.remote,
            )
            return _respond(api_error("bad_origin", "origin not allowed"), 403)
        limits = self.limits
        ws = web.WebSocketResponse(
            max_msg_size=limits.max_frame + 1, heartbeat=limits.heartbeat, compress=False
        )
        await ws.prepare(request)
        transport = request.transport
        if transport is None:  # gone during the handshake
            return ws
        sock = _Socket(self, transport, ws)
        log.info("connect peer=%s transport=websocket", sock.session.peer)
        try:
            try:
                # The reader, here rather than in a method of _Socket: an idle connection's
                # parked stack is one coroutine shorter (bench/idle.py).
                reason = None
                while reason is None:  # one frame per turn, until the connection ends
                    if sock.gate is not None:  # the core has enough in hand, or it is slow
                        await sock.gate
                        continue
                    reason = sock.take(await ws.receive())  # parked in aiohttp while idle
                sock.heartbeat_failed()  # if so, that is why it ended
            except Exception:  # a bug must cost this connection only, and be seen
                log.exception("internal error peer=%s", sock.session.peer)
                sock.close(Code.INTERNAL, "internal error")
                reason = "internal error"
            sock.input_over(reason)  # what came is handled, then the session ends
            await sock.finished()
        finally:
            sock.input_over("connection closed")  # cancelled: the session ends all the same
            self.connections.forget(sock)
        return ws


Frame = Reply | tuple[RequestId, Command]  # one frame from the client, decoded


def _peer(transport: asyncio.Transport) -> str:
    """``host:port`` of the client, for logs and throttling."""
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return "?"


def _why(error: object) -> str:
    """Why a connection whose read failed with ``error`` ended: the quit reason."""
    if isinstance(error, WebSocketError):  # aiohttp's parser refused a frame, and closed
        return "frame too large" if error.code == WSCloseCode.MESSAGE_TOO_BIG else "protocol error"
    return "connection lost"  # reset (a heartbeat without answer: see heartbeat_failed)


class _Socket(Connection[Frame], asyncio.Protocol):
    """One WebSocket connection after its handshake: the JSON codec's side of the core.

    It stands between the transport and aiohttp's protocol (``transport.set_protocol``): every
    callback goes on to aiohttp, which parses the client's frames, answers pings and keeps the
    heartbeat; the write-side ones (``pause_writing``, ``resume_writing``, ``connection_lost``)
    also drive the core's flow control. That aiohttp keeps the transport and its protocol
    after the upgrade is its implementation, not its API: pyproject.toml pins the versions
    checked, and tests/e2e/test_web_api.py fails if this stops holding. An idle connection
    holds no task of its own: these slots, and aiohttp's handler parked in ``receive``.
    """

    __slots__ = ("_done", "_gate", "_inner", "_web", "_ws")

    def __init__(
        self, server: WebServer, transport: asyncio.Transport, ws: web.WebSocketResponse
    ) -> None:
        super().__init__(server.connections)
        self._web = server  # the shared codec and frames
        self._ws = ws  # aiohttp's side of it: says whether its heartbeat gave up
        # the gate (net/gate.py) with aiohttp's protocol behind it: reads frames, answers
        # pings, keeps the heartbeat
        self._inner = cast(asyncio.Protocol, transport.get_protocol())
        self._gate: asyncio.Future[None] | None = None  # while reading is paused: set to resume
        self._done: asyncio.Future[None] | None = None  # set when the session ends, if awaited
        transport.set_protocol(self)
        self.open(transport, _peer(transport))

    # -- asyncio.Protocol callbacks: aiohttp's, and flow control --

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)  # aiohttp parses: complete frames are queued now

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.heartbeat_failed()  # aiohttp closed it for want of a pong: that is the reason
        super().connection_lost(exc)
        self.resume_input()  # the reader goes on, to read the end
        self._inner.connection_lost(exc)

    def heartbeat_failed(self) -> None:
        """If aiohttp's heartbeat gave up on the client (no pong in time), say so once: a
        log line, the count, and the end of the input with that reason."""
        if self._over is None and isinstance(self._ws.exception(), TimeoutError):
            log.info("no answer to ping peer=%s", self.session.peer)
            self._owner.admission.note("ws_heartbeat")
            self.input_over("no answer to ping")

    # -- the read side: aiohttp's handler task hands each frame to the core --

    def take(self, msg: WSMessage) -> str | None:
        """Hand a text frame from the client to the core; or return why the connection
        is over (``msg`` is its end)."""
        if msg.type is WSMsgType.TEXT:
            self.received([self._web.codec.parse(msg.data)])
            return None
        if msg.type is WSMsgType.BINARY:
            self.close(Code.UNSUPPORTED, "send JSON text frames", quit_reason="binary frame")
            return "binary frame"
        if msg.type is WSMsgType.ERROR:
            return _why(msg.data)
        return "connection closed"  # a close frame, or the connection closed

    @property
    def gate(self) -> asyncio.Future[None] | None:
        """While reading is paused: a future set when it may go on."""
        return self._gate

    async def finished(self) -> None:
        """Return once the session has ended."""
        if not self._ended:
            self._done = asyncio.get_running_loop().create_future()
            await self._done

    def ended(self, reason: str) -> None:
        super().ended(reason)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def pause_input(self) -> None:
        if self._gate is None:
            self._gate = asyncio.get_running_loop().create_future()

    def resume_input(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None and not gate.done():
            gate.set_result(None)

    # -- the codec's side --

    def parse(self, item: Frame) -> Sequence[Step]:
        return [text_frame(item.frame)] if isinstance(item, Reply) else [item]

    def plain(self, item: Frame) -> Sequence[Say | Action | bytes] | None:
        if isinstance(item, Reply) or item[0] is not None:  # answered, or has an id to echo
            return None
        command = item[1]
        return [command] if isinstance(command, Say | Action) else None

    def encode(self, events: Sequence[Event]) -> bytes:
        return self._web.frames(events)

    def reply(self, events: Sequence[Event], request_id: RequestId) -> bytes:
        return self._web.frames.replies(self._web.codec.replies(events, request_id))

    def notice(self, code: Code, reason: str) -> bytes:
        return close_frame(code, reason)
