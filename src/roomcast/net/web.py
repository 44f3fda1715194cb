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

A WebSocket connection, once upgraded, is delivered to like a line connection (``net/tcp.py``):
no writer task. Its session calls it back when something is ready, the connection is marked,
and once per loop turn ``WebServer`` pumps every marked connection: what is ready, in one
frame, in one ``transport.write``. A run of room messages is framed once for every member
(``wire.websocket.Frames``): frames from a server are not masked, so the bytes are the same.
aiohttp still parses the client's frames and keeps the heartbeat; its handler task reads
them once bytes came (a run of sends goes to the hub together, one store write) and, while
none come, waits on one future, not inside a read. Our writes go straight to the transport,
whole frames only, so replies and deliveries interleave frame by frame, never inside one.
Flow control is the line listener's: above ``high_water`` buffered bytes the connection stops
pulling (its receivers fall behind in the rings and are refilled from the store later) and
stops reading requests; ``stall_timeout`` seconds there and it is closed with 1008 and a
reason, after what is buffered, and given ``stall_timeout`` again to read up to it. Flood
control delays requests instead of refusing them (``Hub.pace``); a client the hub says was
held back too long is closed with 1008 and the hub's reason.
``stop`` closes every connection at once and cuts, after ``close_grace``, those that do not
take their close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp import WSMessage, WSMsgType, web

from roomcast import __version__
from roomcast.errors import Broken, ClientError, Closed, Unwritable
from roomcast.hub import Hub
from roomcast.model import (
    Action,
    Command,
    FetchHistory,
    Say,
    room_name,
    seq_text,
)
from roomcast.net.flush import Flusher
from roomcast.session import Session, State
from roomcast.store.base import Account
from roomcast.tokens import Tokens
from roomcast.wire.cache import DEFAULT_CACHE_BYTES
from roomcast.wire.json import (
    KEEPALIVE,
    RETRY,
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
    event_stream,
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
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebLimits:
    """Limits of the HTTP listener."""

    max_frame: int = 65536  # bytes in one WebSocket frame or API request body
    origins: tuple[str, ...] = ()  # allowed WebSocket origins; () = the page's own origin
    high_water: int = 256 * 1024  # WebSocket write-buffer bytes above which we stop pulling
    stall_timeout: float = 30.0  # seconds a WebSocket client may stay above high_water
    batch: int = 512  # events per frame
    max_pending: int = 64  # WebSocket frames read before they are handled (a run of sends)
    flush_gap: float = 0.005  # most seconds between two WebSocket flushes, as long as one took
    keepalive: float = 15.0  # seconds between SSE comments on an idle stream
    heartbeat: float = 30.0  # seconds between WebSocket pings (aiohttp's heartbeat)
    close_grace: float = 2.0  # seconds a closing WebSocket client gets to take what is buffered
    cache_bytes: int = DEFAULT_CACHE_BYTES  # bytes of encoded messages, runs, frames (each)


def _respond(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def _error(e: ClientError) -> web.Response:
    response = _respond(api_error(e.code, e.message), _STATUS.get(e.code, 400))
    if e.retry_after is not None:
        response.headers["Retry-After"] = str(e.retry_after)
    return response


def _static_dir() -> Path:
    return Path(str(resources.files("roomcast") / "web"))


class WebServer:
    """Serves the web client, the JSON API, event streams and WebSocket sessions."""

    def __init__(self, hub: Hub, tokens: Tokens, *, limits: WebLimits | None = None) -> None:
        self.hub = hub  # the chat core
        self.tokens = tokens  # signs and checks login tokens
        self.limits = limits or WebLimits()
        cache = self.limits.cache_bytes
        self.messages = encoded_messages(max_bytes=cache)  # each message encoded once for all
        # one codec for every WebSocket connection: it holds no per-connection state
        self.codec = JsonCodec(messages=self.messages, verify_token=self.tokens.verify)
        self.frames = Frames(self.codec, self.messages, max_bytes=cache)  # a run framed once
        self.sockets: set[_Socket] = set()  # open WebSocket connections
        self.streams: set[Session] = set()  # open event streams
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._flusher = Flusher[_Socket](self.limits.flush_gap, self._failed)
        self._background: set[asyncio.Task[None]] = set()  # disconnects in progress
        self._all_closed = asyncio.Event()  # set when no WebSocket connection is open
        self._sweeper: asyncio.TimerHandle | None = None  # runs _sweep once per heartbeat
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
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()
        self._sweeper = asyncio.get_running_loop().call_later(self.limits.heartbeat, self._sweep)

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._runner is not None, "not started"
        port: int = self._runner.addresses[0][1]
        return port

    async def stop(self, reason: str = "server shutting down") -> None:
        """Close every WebSocket with 1001 and ``reason``, end the streams, stop listening.

        A WebSocket client gets ``limits.close_grace`` seconds to take what is buffered for
        it; then it is cut. Its session leaves the hub at once either way.
        """
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for sock in list(self.sockets):
            sock.close(1001, reason)
        for session in list(self.streams):
            self.hub.unwatch(session)
        if self.sockets:
            await self._closed(within=self.limits.close_grace + 1.0)
            for sock in list(self.sockets):
                sock.abort()
            await self._closed(within=1.0)
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _closed(self, *, within: float) -> None:
        """Wait until every WebSocket handler has ended, or ``within`` seconds."""
        if not self.sockets:
            return
        self._all_closed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._all_closed.wait()

    # -- plumbing --

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
            except Broken:
                log.exception("store failure on %s %s", request.method, request.path)
                return _respond(api_error("unavailable", "try again later"), 503)

        return guarded

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it finishes."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return api_body(await request.read())

    @staticmethod
    def _field(body: dict[str, Any], key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str):
            raise ClientError("bad_request", f"{key!r} is required, as a string")
        return value

    async def _bearer(self, request: web.Request) -> Account:
        """The account the request's bearer token names, checked on this use: signed,
        unexpired, the account still there and its tokens not revoked since."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ClientError("no_token", "this needs 'Authorization: Bearer <token>'")
        claims = self.tokens.verify(token.strip())
        return await self.hub.authenticate(claims.account, claims.generation)

    @staticmethod
    def _room(request: web.Request) -> str:
        return room_name(request.match_info["room"])

    @staticmethod
    def _seq(request: web.Request, key: str) -> int | None:
        value = request.query.get(key)
        if value is None or value == "":
            return None
        n = seq_text(value)  # bad_seq past MAX_SEQ, its length checked before converting
        if n is None:
            raise ClientError("bad_request", f"{key!r} must be a whole number")
        return n

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
            "websockets": len(self.sockets),
            "streams": len(self.streams),
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
            self._field(body, "name"), self._field(body, "password"), request.remote or "?"
        )
        return self._issued(account, 201)

    async def _login(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        address = request.remote or "?"
        account = await self.hub.verify_login(
            self._field(body, "name"), self._field(body, "password"), address
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
        limit = self._seq(request, "limit")
        page = await self.hub.history(
            self._room(request),
            FetchHistory(
                before=self._seq(request, "before"),
                after=self._seq(request, "after"),
                limit=50 if limit is None else limit,
            ),
        )
        return _respond(api_history(page))

    async def _post(self, request: web.Request) -> web.Response:
        account = await self._bearer(request)
        body = await self._body(request)
        message = await self.hub.post(account.name, self._room(request), self._field(body, "text"))
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
        """A room's messages as Server-Sent Events, read with the session's own delivery
        (``Session.receive``: every message once, in order, lags refilled from the store);
        aiohttp's writer waits while the client is slow."""
        room = self._room(request)
        since = seq_text(request.headers.get("Last-Event-ID", "").strip())
        if since is None:  # absent or not a number: the query may say where to resume
            since = self._seq(request, "since")
        session = await self.hub.watch(request.remote or "?", room, since)
        self.streams.add(session)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(RETRY)
            while True:  # until the stream ends: Closed, or the client goes
                try:
                    async with asyncio.timeout(self.limits.keepalive):
                        events = await session.receive(self.limits.batch)
                except TimeoutError:
                    await response.write(KEEPALIVE)
                    continue
                await response.write(event_stream(events, self.messages))
        except (Closed, ConnectionError):
            pass
        finally:
            self.streams.discard(session)
            self.hub.unwatch(session)
        return response

    # -- WebSocket --

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:  # not a browser: scripts and bots may connect
            return True
        if self.limits.origins:
            return origin in self.limits.origins
        return urlsplit(origin).netloc == request.host

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        """Upgrade, then read the client's frames until the connection ends.

        This handler's task (aiohttp's) is the connection's reader; deliveries need no task.
        """
        if not self._origin_allowed(request):
            log.warning("websocket origin refused origin=%s", request.headers.get("Origin"))
            return _respond(api_error("bad_origin", "origin not allowed"), 403)
        limits = self.limits
        ws = web.WebSocketResponse(
            max_msg_size=limits.max_frame + 1, heartbeat=limits.heartbeat, compress=False
        )
        await ws.prepare(request)
        transport = request.transport
        if transport is None:  # gone during the handshake
            return ws
        sock = _Socket(self, transport, self.hub.connect(_peer(transport)))
        session = sock.session
        self.sockets.add(sock)
        log.info("connect peer=%s transport=websocket", session.peer)
        reason: str | None = None
        try:
            while reason is None:
                arrival = sock.arrival()  # None: bytes came since we last looked
                if arrival is not None:  # idle: parked on one future, no read in progress
                    await arrival
                reason = await self._ws_read(ws, sock)
        except Exception:  # a bug must cost this connection only, and be seen
            log.exception("internal error peer=%s", session.peer)
            reason = "internal error"
            sock.close(1011, reason)
        finally:
            sock.detach()
            self._forget(sock)
            reason = reason or "connection closed"
            if sock.quit_reason is None:
                await self.hub.disconnect(session, reason)
            reason = sock.quit_reason or session.close_reason or reason
            log.info(
                "disconnect peer=%s name=%s reason=%s", session.peer, session.last_name, reason
            )
        return ws

    async def _ws_read(self, ws: web.WebSocketResponse, sock: _Socket) -> str | None:
        """Handle every frame that has come, then return ``None``; or, once the connection
        is over, why."""
        most = self.limits.max_pending
        while True:
            texts: list[str] = []
            end: WSMessage | None = None
            while len(texts) < most:
                try:  # a frame now, or none: aiohttp's queue has nothing more for us
                    msg = await ws.receive(timeout=_POLL)
                except TimeoutError:
                    break
                if msg.type is not WSMsgType.TEXT:
                    end = msg
                    break
                texts.append(msg.data)
            if texts:
                await self._ws_requests(sock, texts)
                if sock.resumed is not None:  # the client is not reading what we write
                    await sock.resumed
            if end is not None:
                if end.type is WSMsgType.BINARY:
                    sock.close(1003, "send JSON text frames", quit_reason="binary frame")
                    return "binary frame"
                if end.type is WSMsgType.ERROR:
                    error = ws.exception()
                    too_large = "exceeds limit" in str(error) or ws.close_code == 1009
                    return "frame too large" if too_large else "protocol error"
                return "connection closed"  # the client closed, or the connection is gone
            if len(texts) < most:
                return None

    async def _ws_requests(self, sock: _Socket, texts: list[str]) -> None:
        """Handle the frames read, in order. A run of sends without an ``id`` (nothing to
        answer but errors) is handed to the hub together: one store write for the run, as for
        a run of lines on the line protocol."""
        hub, codec, session = self.hub, self.codec, sock.session
        parsed = [codec.parse(text) for text in texts]
        i = 0
        while i < len(parsed):
            if session.state is State.CLOSED or sock.closing:  # quit: the rest is not read
                return
            try:
                wait = hub.pace(session)
                while wait > 0.0:  # bounded: the hub refuses a hold longer than flood_hold
                    await asyncio.sleep(wait)  # the time the hub said, at most 1/rate
                    wait = hub.pace(session)
            except ClientError as e:
                sock.close(1008, e.message)
                return
            if sock.closing:  # closed meanwhile
                return
            item = parsed[i]
            i += 1
            if isinstance(item, Reply):
                flood = hub.spend(session)
                sock.send(text_frame(item.frame if flood is None else codec.encode([flood])))
                continue
            request_id, command = item
            if request_id is None and isinstance(command, Say | Action):
                if session.state is State.ACTIVE:
                    says = [command]
                    most = hub.allowance(session)  # the rest waits for the flood limit
                    while (
                        len(says) < most
                        and i < len(parsed)
                        and (said := _said(parsed[i])) is not None
                    ):
                        says.append(said)
                        i += 1
                    errors = await hub.say(session, says)
                    if errors:
                        sock.send(text_frame(codec.encode(errors)))
                    continue
            replies = codec.replies(await hub.handle(session, command), request_id)
            if replies:
                sock.send(self.frames.replies(replies))
            if session.on_wake is None and session.state is not State.NEW:
                # after the welcome went out: what the session receives comes next
                session.on_wake = sock.ready
                sock.ready()

    # -- WebSocket delivery: pulled once per loop turn, no task switch per message --

    def schedule(self, sock: _Socket) -> None:
        """Pump ``sock`` at the next flush (see ``roomcast.net.flush``)."""
        self._flusher.mark(sock)

    def _failed(self, sock: _Socket, error: Exception) -> None:
        log.error("internal error peer=%s", sock.session.peer, exc_info=error)
        sock.close(1011, "internal error")

    def _sweep(self) -> None:
        """Once per heartbeat: end the connections aiohttp closed on its own (its heartbeat
        got no pong) while their reader was parked and no delivery noticed."""
        self._sweeper = asyncio.get_running_loop().call_later(self.limits.heartbeat, self._sweep)
        for sock in list(self.sockets):
            sock.check()

    def _forget(self, sock: _Socket) -> None:
        """Drop an ended WebSocket connection from the open set."""
        self.sockets.discard(sock)
        self._flusher.forget(sock)
        if not self.sockets:
            self._all_closed.set()


# The reader's receive timeout: a deadline already due, so that ``receive`` returns a frame
# aiohttp has queued and times out (at the next loop turn) when there is none. aiohttp parses
# each chunk of bytes as it arrives; the reader takes every frame queued, then parks on one
# future until the next chunk (an idle connection holds no read in progress: bench/idle.py).
_POLL = 1e-6


def _said(item: Reply | tuple[RequestId, Command]) -> Say | Action | None:
    """The ``send`` or ``action`` request ``item`` is, if it has no ``id``; else ``None``."""
    if isinstance(item, Reply) or item[0] is not None:
        return None
    command = item[1]
    return command if isinstance(command, Say | Action) else None


def _peer(transport: asyncio.Transport) -> str:
    """``host:port`` of the client, for logs and throttling."""
    peername = transport.get_extra_info("peername")
    if isinstance(peername, tuple) and len(peername) >= 2:
        return f"{peername[0]}:{peername[1]}"
    return "?"


class _Socket(asyncio.Protocol):
    """One WebSocket connection after its handshake: its session, its flow control, its writes.

    It stands between the transport and aiohttp's protocol (``transport.set_protocol``): every
    callback goes on to aiohttp, which reads the client's frames and keeps the heartbeat, and
    the write-side ones (``pause_writing``, ``resume_writing``, ``connection_lost``) drive this
    connection's flow control as in the line listener. An idle connection holds no task and
    no timer of its own: these slots, and the one future its reader (aiohttp's handler task)
    waits on until bytes come.
    """

    __slots__ = (
        "_arrived",
        "_arrival",
        "_closing",
        "_cut",
        "_inner",
        "_refiller",
        "_server",
        "_stall",
        "_transport",
        "quit_reason",
        "ready",
        "resumed",
        "session",
    )

    def __init__(self, server: WebServer, transport: asyncio.Transport, session: Session) -> None:
        self._server = server  # shared hub, frames, limits and the flush
        self._transport = transport
        self.session = session
        # aiohttp's protocol: reads frames, answers pings, keeps the heartbeat
        self._inner = cast(asyncio.Protocol, transport.get_protocol())
        self.resumed: asyncio.Future[None] | None = None  # set when writing may go on
        # "something is ready: pump me": one bound method, made once, that the session and
        # its receivers keep (on_wake, arm) instead of one apiece
        self.ready: Callable[[], None] = self._pump_soon
        self.quit_reason: str | None = None  # why we closed it, once we did
        self._refiller: asyncio.Task[None] | None = None  # reads the store for the session
        self._stall: asyncio.TimerHandle | None = None  # cuts a client above high_water too long
        self._cut: asyncio.TimerHandle | None = None  # aborts a closing client that never reads
        self._closing = False  # closed by us or gone: nothing more is written
        self._arrived = True  # bytes came that the reader has not looked at (the upgrade's)
        self._arrival: asyncio.Future[None] | None = None  # the parked reader's wake-up
        transport.set_protocol(self)
        transport.set_write_buffer_limits(high=server.limits.high_water)

    # -- asyncio.Protocol callbacks: aiohttp's, and flow control --

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)  # aiohttp parses: complete frames are queued now
        self._wake_reader()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()
        loop = asyncio.get_running_loop()
        if self.resumed is None:
            self.resumed = loop.create_future()
        if self._stall is None and not self._closing:
            self._stall = loop.call_later(self._server.limits.stall_timeout, self._too_slow)

    def resume_writing(self) -> None:
        self._inner.resume_writing()
        self._set_resumed()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if not self._closing:
            self.ready()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for timer in (self._stall, self._cut):
            if timer is not None:
                timer.cancel()
        self._stall = self._cut = None
        self._set_resumed()
        if self._refiller is not None:
            self._refiller.cancel()
        self.session.on_wake = None
        self._inner.connection_lost(exc)
        self._wake_reader()  # it reads the end of the connection

    # -- the read side: the reader parks while no byte comes --

    def arrival(self) -> asyncio.Future[None] | None:
        """``None`` if bytes came since the last call; else a future set when some come."""
        if self._arrived:
            self._arrived = False
            return None
        arrival = self._arrival = asyncio.get_running_loop().create_future()
        return arrival

    def _wake_reader(self) -> None:
        arrival, self._arrival = self._arrival, None
        if arrival is None:
            self._arrived = True
        elif not arrival.done():
            arrival.set_result(None)

    @property
    def closing(self) -> bool:
        """Whether it is closed or closing: nothing more is read or written."""
        return self._closing

    # -- the write side --

    def _pump_soon(self) -> None:
        """Something is ready for the session: pump this connection at the next flush."""
        self._server.schedule(self)

    def pump(self) -> None:
        """Write every event ready for the session in one frame, then wait for more.

        Called once per loop turn at most (by the ``Flusher``). A lag or a replay that needs
        the store is served by a task until it is done; the fast path never leaves this call.
        """
        if self._closing or self._refiller is not None or self.resumed is not None:
            return  # closed; or a refill, or resume_writing, pumps again
        if self._transport.is_closing():  # closed by aiohttp (heartbeat): nothing to write
            self.check()
            return
        session, server = self.session, self._server
        batch = server.limits.batch
        events = session.take_ready(batch)
        if events:
            self._transport.write(server.frames(events))
        if session.needs_store():
            self._refiller = asyncio.create_task(self._refill())
        elif len(events) >= batch:
            self.ready()  # more may be ready: next turn, after the others had theirs
        elif events or session.state is not State.CLOSED:
            session.arm(self.ready)
        else:  # it quit and has had everything
            self.close(1000, "goodbye")

    async def _refill(self) -> None:
        session, server = self.session, self._server
        try:
            while session.needs_store() and not self._closing:
                if self.resumed is not None:
                    await self.resumed
                    continue
                events = await session.take(server.limits.batch)
                if events and not self._closing:
                    self._transport.write(server.frames(events))
        except Exception:  # a store failure: this connection cannot be served in order
            log.exception("refill failed peer=%s", session.peer)
            self.close(1011, "internal error")
        finally:
            self._refiller = None
            if not self._closing:
                self.ready()

    def send(self, data: bytes) -> None:
        """Write whole frames (replies to a request) unless the connection is closing."""
        if not self._closing and not self._transport.is_closing():
            self._transport.write(data)

    def _set_resumed(self) -> None:
        resumed, self.resumed = self.resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def _too_slow(self) -> None:
        self._stall = None
        stall = self._server.limits.stall_timeout
        log.warning("too slow peer=%s name=%s", self.session.peer, self.session.name)
        # The close frame goes after what is buffered, above the mark: the client gets it once
        # it reads again, if it does within another stall_timeout (it holds no more than before).
        self.close(1008, f"too slow: not reading for {stall:g} s", grace=stall)

    # -- closing --

    def close(
        self,
        code: int,
        reason: str,
        *,
        quit_reason: str | None = None,
        grace: float | None = None,
    ) -> None:
        """Send a close frame with ``code`` and ``reason`` after what is buffered, and close.

        The session leaves the hub at once (its rooms see it quit with ``quit_reason``, by
        default ``reason``), whatever the socket does; a client that does not take what is
        buffered within ``grace`` seconds (by default ``close_grace``) is cut.
        """
        if self._closing:
            return
        self._closing = True
        server, session = self._server, self.session
        if session.state is not State.CLOSED:
            self.quit_reason = quit_reason or reason
            server.spawn(server.hub.disconnect(session, self.quit_reason))
        transport = self._transport
        if not transport.is_closing():
            transport.write(close_frame(code, reason))
            transport.close()
        self._cut_later(grace)

    def check(self) -> None:
        """If aiohttp closed the transport (its heartbeat got no pong), end this connection:
        nothing more is written, what is buffered gets ``close_grace`` seconds, and the reader
        wakes up to read the end."""
        if not self._closing and self._transport.is_closing():
            self._closing = True
            self._cut_later()
            self._wake_reader()

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        self._transport.abort()

    def detach(self) -> None:
        """The reader has ended: stop delivering; what is still buffered gets ``close_grace``
        seconds to go out before the connection is cut."""
        self._closing = True
        self.session.on_wake = None
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._refiller is not None:
            self._refiller.cancel()
        self._cut_later()

    def _cut_later(self, grace: float | None = None) -> None:
        transport = self._transport
        if self._cut is None and transport.get_write_buffer_size():
            loop = asyncio.get_running_loop()
            grace = self._server.limits.close_grace if grace is None else grace
            self._cut = loop.call_later(grace, transport.abort)
