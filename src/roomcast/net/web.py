"""The HTTP listener (aiohttp): the web page, the JSON API, Server-Sent Events and WebSocket.

No chat rules here: every route hands the request to the hub (or to its history and
resume API) and encodes what comes back with ``wire.json``.

Routes (docs/protocol.md has the details):

    GET  /                                  the web client (static files under /static/)
    GET  /health                            200 {"status": "ok", "version", counts}
    POST /api/register, /api/login          {"name", "password"} -> {"token", "name"}
    GET  /api/rooms                         the rooms
    GET  /api/rooms/{room}/messages         a history page (?before= | ?after=, &limit=)
    GET  /api/rooms/{room}/events           Server-Sent Events; resumes after Last-Event-ID
    POST /api/rooms/{room}/messages         {"text"} with "Authorization: Bearer <token>"
    GET  /ws                                the WebSocket JSON protocol

A room in a URL has no '#': ``/api/rooms/general`` is ``#general``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from roomcast import __version__
from roomcast.errors import Broken, ClientError, Closed
from roomcast.hub import Hub
from roomcast.model import FetchHistory, Message, Missed, room_name, seq_number
from roomcast.session import Session, State
from roomcast.tokens import Tokens
from roomcast.wire.json import JsonCodec, Reply, encoded_messages, message_object

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
    "name_taken": 409,
    "not_found": 404,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WebLimits:
    """Limits of the HTTP listener."""

    max_frame: int = 65536  # bytes in one WebSocket frame or API request body
    origins: tuple[str, ...] = ()  # allowed WebSocket origins; () = the page's own origin
    stall_timeout: float = 30.0  # seconds a WebSocket client may stay unable to take a frame
    batch: int = 512  # events per frame
    keepalive: float = 15.0  # seconds between SSE comments on an idle stream


def _json(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _error(e: ClientError) -> web.Response:
    return _json({"error": {"code": e.code, "message": e.message}}, _STATUS.get(e.code, 400))


def _static_dir() -> Path:
    return Path(str(resources.files("roomcast") / "web"))


class WebServer:
    """Serves the web client, the JSON API, event streams and WebSocket sessions."""

    def __init__(self, hub: Hub, tokens: Tokens, *, limits: WebLimits | None = None) -> None:
        self.hub = hub  # the chat core
        self.tokens = tokens  # signs and checks login tokens
        self.limits = limits or WebLimits()
        self.messages = encoded_messages()  # each room message encoded once for everyone
        self.sockets: dict[web.WebSocketResponse, Session] = {}  # open WebSocket connections
        self.streams: set[Session] = set()  # open event streams
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        # aiohttp refuses sizes >= its limit; ours are the largest accepted
        app = web.Application(client_max_size=self.limits.max_frame + 1, middlewares=[self._errors])
        app.router.add_get("/", self._index)
        app.router.add_static("/static/", _static_dir(), append_version=False)
        app.router.add_get("/health", self._health)
        app.router.add_post("/api/register", self._register)
        app.router.add_post("/api/login", self._login)
        app.router.add_get("/api/rooms", self._rooms)
        app.router.add_get("/api/rooms/{room}/messages", self._history)
        app.router.add_post("/api/rooms/{room}/messages", self._post)
        app.router.add_get("/api/rooms/{room}/events", self._events)
        app.router.add_get("/ws", self._websocket)
        self.app = app

    # -- lifecycle --

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (0 picks a free port: see ``port``)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await self._site.start()

    @property
    def port(self) -> int:
        """The port listened on."""
        assert self._runner is not None, "not started"
        port: int = self._runner.addresses[0][1]
        return port

    async def stop(self, reason: str = "server shutting down") -> None:
        """Tell every WebSocket client ``reason``, end the streams, stop listening."""
        for ws, session in list(self.sockets.items()):
            await self.hub.disconnect(session, reason)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=1001, message=reason.encode()[:120])
        for session in list(self.streams):
            self.hub.unwatch(session)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- plumbing --

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ClientError as e:
            log.info("client error %s %s code=%s", request.method, request.path, e.code)
            return _error(e)
        except web.HTTPRequestEntityTooLarge:
            log.info("client error %s %s code=too_large", request.method, request.path)
            limit = self.limits.max_frame
            message = f"the body is over {limit} bytes"
            return _json({"error": {"code": "too_large", "message": message}}, 413)
        except Broken:
            log.exception("store failure on %s %s", request.method, request.path)
            return _json({"error": {"code": "unavailable", "message": "try again later"}}, 503)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise ClientError("bad_json", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ClientError("bad_json", "the body must be a JSON object")
        return body

    @staticmethod
    def _field(body: dict[str, Any], key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str):
            raise ClientError("bad_request", f"{key!r} is required, as a string")
        return value

    def _bearer(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ClientError("no_token", "this needs 'Authorization: Bearer <token>'")
        return self.tokens.verify(token.strip())

    @staticmethod
    def _room(request: web.Request) -> str:
        return room_name(request.match_info["room"])

    @staticmethod
    def _seq(request: web.Request, key: str) -> int | None:
        value = request.query.get(key)
        if value is None or value == "":
            return None
        if not (value.isascii() and value.isdigit()):
            raise ClientError("bad_request", f"{key!r} must be a whole number")
        return seq_number(int(value))

    # -- pages and API --

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(_static_dir() / "index.html")

    async def _health(self, request: web.Request) -> web.Response:
        return _json(
            {
                "status": "ok",
                "version": __version__,
                "online": self.hub.online,
                "rooms": len(self.hub.room_list().rooms),
                "websockets": len(self.sockets),
                "streams": len(self.streams),
            }
        )

    async def _register(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        account = await self.hub.create_account(
            self._field(body, "name"), self._field(body, "password")
        )
        return _json({"name": account.name, "token": self.tokens.issue(account.name)}, 201)

    async def _login(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        address = request.remote or "?"
        account = await self.hub.verify_login(
            self._field(body, "name"), self._field(body, "password"), address
        )
        return _json({"name": account.name, "token": self.tokens.issue(account.name)})

    async def _rooms(self, request: web.Request) -> web.Response:
        online = {r.name: r.members for r in self.hub.room_list().rooms}
        names = sorted(set(online) | set(await self.hub.store.rooms()))
        return _json({"rooms": [{"name": n, "members": online.get(n, 0)} for n in names]})

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
        return _json(
            {
                "room": page.room,
                "messages": [message_object(m) for m in page.messages],
                "oldest_seq": page.oldest_seq,
                "latest_seq": page.latest_seq,
                "capped": page.capped,
            }
        )

    async def _post(self, request: web.Request) -> web.Response:
        name = self._bearer(request)
        body = await self._body(request)
        message = await self.hub.post(name, self._room(request), self._field(body, "text"))
        return _json(message_object(message), 201)

    # -- Server-Sent Events --

    async def _events(self, request: web.Request) -> web.StreamResponse:
        room = self._room(request)
        since_header = request.headers.get("Last-Event-ID", "").strip()
        if since_header.isascii() and since_header.isdigit():
            since: int | None = seq_number(int(since_header))
        else:
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
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    async with asyncio.timeout(self.limits.keepalive):
                        events = await session.receive(self.limits.batch)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                chunks = []
                for e in events:
                    if isinstance(e, Message):
                        data = self.messages(e)
                        chunks.append(b"id: %d\nevent: message\ndata: %s\n\n" % (e.seq, data))
                    elif isinstance(e, Missed):
                        last = e.first_seq + e.count - 1
                        gap = {"room": e.room, "from_seq": e.first_seq, "to_seq": last}
                        chunks.append(b"event: gap\ndata: %s\n\n" % orjson.dumps(gap))
                await response.write(b"".join(chunks))
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
        if not self._origin_allowed(request):
            log.warning("websocket origin refused origin=%s", request.headers.get("Origin"))
            return _json({"error": {"code": "bad_origin", "message": "origin not allowed"}}, 403)
        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_frame + 1, heartbeat=30.0, compress=False
        )
        await ws.prepare(request)
        transport = request.transport
        peername = transport.get_extra_info("peername") if transport is not None else None
        peer = f"{request.remote}:{peername[1] if peername else 0}"
        session = self.hub.connect(peer)
        codec = JsonCodec(messages=self.messages, verify_token=self.tokens.verify)
        self.sockets[ws] = session
        log.info("connect peer=%s transport=websocket", peer)
        writer: asyncio.Task[None] | None = None  # started once the session has a name
        reason = "connection closed"
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._ws_request(ws, session, codec, msg.data)
                    if writer is None and session.state is not State.NEW:
                        # after the welcome went out: what the session receives comes next
                        writer = asyncio.create_task(self._ws_writer(ws, session, codec))
                    if session.state is State.CLOSED:
                        reason = session.close_reason
                        assert writer is not None  # started just above
                        await writer  # delivers what was left, then closes
                        break
                elif msg.type is WSMsgType.BINARY:
                    reason = "binary frame"
                    await ws.close(code=1003, message=b"send JSON text frames")
                    break
                elif msg.type is WSMsgType.ERROR:
                    error = ws.exception()
                    too_large = "exceeds limit" in str(error) or ws.close_code == 1009
                    reason = "frame too large" if too_large else "protocol error"
                    break
        finally:
            if writer is not None:
                writer.cancel()
            self.sockets.pop(ws, None)
            await self.hub.disconnect(session, reason)
            reason = session.close_reason or reason
            log.info("disconnect peer=%s name=%s reason=%s", peer, session.last_name, reason)
        return ws

    async def _ws_request(
        self, ws: web.WebSocketResponse, session: Session, codec: JsonCodec, data: str
    ) -> None:
        parsed = codec.parse(data)
        if isinstance(parsed, Reply):
            flood = self.hub.spend(session)
            frame = parsed.frame if flood is None else codec.encode([flood])
            await ws.send_frame(frame, WSMsgType.TEXT)
            return
        request_id, command = parsed
        for frame in codec.replies(await self.hub.handle(session, command), request_id):
            await ws.send_frame(frame, WSMsgType.TEXT)

    async def _ws_writer(
        self, ws: web.WebSocketResponse, session: Session, codec: JsonCodec
    ) -> None:
        try:
            while True:
                events = await session.receive(self.limits.batch)
                try:
                    async with asyncio.timeout(self.limits.stall_timeout):  # no task per send
                        await ws.send_frame(codec.encode(events), WSMsgType.TEXT)
                except TimeoutError:
                    log.warning("too slow peer=%s name=%s", session.peer, session.name)
                    reason = f"too slow: not reading for {self.limits.stall_timeout:g} s"
                    await self.hub.disconnect(session, reason)
                    await ws.close(code=1008, message=reason.encode())
                    return
        except Closed:
            await ws.close(code=1000, message=b"goodbye")
        except ConnectionError:
            pass
