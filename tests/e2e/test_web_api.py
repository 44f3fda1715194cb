"""End to end: the HTTP API, Server-Sent Events and the WebSocket JSON protocol, over real
sockets.

Each test runs an in-process ``Server`` on port 0 (fixtures in ``conftest.py``, which also runs
each test on asyncio's loop and on uvloop) and talks to it with real clients: aiohttp's
``ClientSession`` for HTTP and event streams, the ``websockets`` library for WebSocket, and
asyncio streams for the line protocol.

No test sleeps to wait for something: each awaits the frame, line or event it needs under a
timeout, and every read loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import aiohttp
import orjson
import pytest
from aiohttp.web_protocol import RequestHandler
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from roomcast import __version__
from roomcast.auth import Cost, Passwords
from roomcast.net.conn import Connection
from roomcast.net.gate import Gate
from roomcast.net.web import _Socket
from roomcast.server import Server
from tests.e2e.conftest import LogWatch

StartServer = Callable[..., Awaitable[Server]]  # the ``start_server`` fixture of conftest.py
Obj = dict[str, Any]  # one decoded JSON object

TIMEOUT = 5.0  # seconds one wait may take before the test fails
MAX_FRAMES = 2000  # events ``expect`` reads, by default, before it gives up
PASSWORD = "correct horse"  # every account's password
FAST = {"rate": 100_000.0, "burst": 100_000}  # server limits that never call a test a flood


def http_base(server: Server) -> str:
    """The server's HTTP root URL."""
    assert server.web is not None
    return f"http://127.0.0.1:{server.web.port}"


# --- a WebSocket client ---------------------------------------------------------------------


class Ws:
    """One WebSocket connection speaking the JSON protocol: sends frames, reads events under
    timeouts (``batch`` frames unpacked), and keeps every event it read."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn  # the websockets connection
        self.events: list[Obj] = []  # every event read so far, batches unpacked, in order
        self._unread: deque[Obj] = deque()  # read from the socket, not yet handed out
        self._ids = itertools.count(1)  # request ids: ints, never equal to a message's id

    async def send(self, frame: Obj) -> None:
        """Send one JSON text frame."""
        await self.conn.send(orjson.dumps(frame).decode())

    async def request(self, frame: Obj) -> int:
        """Send ``frame`` with a fresh request id; return the id."""
        request_id = next(self._ids)
        await self.send({**frame, "id": request_id})
        return request_id

    async def next(self, within: float = TIMEOUT) -> Obj:
        """The next event; fails after ``within`` s (``ConnectionClosed`` if it closes)."""
        if not self._unread:
            try:
                raw = await asyncio.wait_for(self.conn.recv(), max(within, 0.0))
            except TimeoutError:
                raise AssertionError(
                    f"no frame within {within:g} s; last events: {self.events[-8:]}"
                ) from None
            assert isinstance(raw, str), f"a binary frame: {raw!r}"
            frame: Obj = orjson.loads(raw)
            events: list[Obj] = frame["events"] if frame["type"] == "batch" else [frame]
            assert events, "an empty batch"
            self.events += events
            self._unread.extend(events)
        return self._unread.popleft()

    async def expect(
        self, match: Callable[[Obj], bool], *, within: float = TIMEOUT, max_frames: int = MAX_FRAMES
    ) -> Obj:
        """Read until an event satisfies ``match`` and return it; fails after ``max_frames``
        events or ``within`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        for _ in range(max_frames):
            event = await self.next(deadline - loop.time())
            if match(event):
                return event
        raise AssertionError(f"no matching event in {max_frames}: {self.events[-8:]}")

    async def reply(self, request_id: int, kind: str = "ok") -> Obj:
        """The reply of type ``kind`` to request ``request_id``; an error reply fails (unless
        ``kind`` is "error")."""

        def answers(event: Obj) -> bool:
            if event.get("id") != request_id:
                return False
            if event["type"] == "error" and kind != "error":
                raise AssertionError(f"request {request_id} failed: {event}")
            return bool(event["type"] == kind)

        return await self.expect(answers)

    async def expect_all(
        self, *matches: Callable[[Obj], bool], within: float = TIMEOUT
    ) -> list[Obj]:
        """Read until each of ``matches`` was met by some event, in any order (a room and the
        private channel are not ordered with each other); return those events."""
        found: dict[int, Obj] = {}

        def all_found(event: Obj) -> bool:
            for i, match in enumerate(matches):
                if i not in found and match(event):
                    found[i] = event
            return len(found) == len(matches)

        await self.expect(all_found, within=within)
        return [found[i] for i in range(len(matches))]

    async def answer(self, request_id: int) -> Obj:
        """The first frame answering request ``request_id``, whatever its type."""
        return await self.expect(lambda e: e.get("id") == request_id)

    async def said(self, text: str, room: str = "#general", *, within: float = TIMEOUT) -> Obj:
        """The room message with ``text`` in ``room``."""
        return await self.expect(
            lambda e: e["type"] == "message" and e["room"] == room and e["text"] == text,
            within=within,
        )

    async def hello(self, name: str) -> Obj:
        """Name this guest; return the welcome once its join reply (``who``) came too."""
        request_id = await self.request({"type": "hello", "name": name})
        welcome = await self.reply(request_id, "welcome")
        await self.reply(request_id, "who")
        return welcome

    async def say(self, text: str, room: str = "#general") -> None:
        """Say ``text`` in ``room`` and wait until it is stored (its ok) and echoed back."""
        request_id = await self.request({"type": "send", "room": room, "text": text})
        await self.reply(request_id)
        await self.said(text, room)

    async def closed(self, *, within: float = TIMEOUT) -> tuple[int | None, str | None]:
        """Read to the end of the connection; return the close code and reason received."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            for _ in range(MAX_FRAMES):
                await self.next(deadline - loop.time())
        except ConnectionClosed:
            return self.conn.close_code, self.conn.close_reason
        raise AssertionError(f"still open after {MAX_FRAMES} events: {self.events[-8:]}")


class Sockets:
    """Opens WebSocket clients to servers, and closes every one after the test."""

    def __init__(self) -> None:
        self._open: list[ClientConnection] = []  # every connection opened, closed at teardown

    async def ws(
        self,
        server: Server,
        name: str | None = None,
        *,
        origin: str | None = None,
        compression: str | None = None,
    ) -> Ws:
        """A client connected to ``server``'s /ws, named ``name`` (a guest) if given."""
        conn = await connect(
            http_base(server).replace("http:", "ws:", 1) + "/ws",
            origin=None if origin is None else Origin(origin),
            compression=compression,
            proxy=None,
            open_timeout=TIMEOUT,
            close_timeout=1.0,
            ping_interval=None,
            max_size=2**22,
        )
        self._open.append(conn)
        client = Ws(conn)
        if name is not None:
            await client.hello(name)
        return client

    async def close_all(self) -> None:
        """Close every connection opened."""
        for conn in self._open:
            await conn.close()


@pytest.fixture
def start_server(start_server: StartServer) -> StartServer:
    """conftest's ``start_server``, with argon2id at a test cost: the default costs about
    0.2 s per hash (far more on a busy machine) and this file hashes dozens of passwords."""

    async def start(**overrides: Any) -> Server:
        server = await start_server(**overrides)
        server.hub.passwords = Passwords(Cost(time_cost=1, memory_cost=1024, parallelism=1))
        return server

    return start


@pytest.fixture
async def sockets(start_server: StartServer) -> AsyncIterator[Sockets]:
    """Opens WebSocket clients; they are closed before the servers are stopped."""
    opened = Sockets()
    yield opened
    await opened.close_all()


@pytest.fixture
async def http(start_server: StartServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed before the servers are stopped."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as session:
        yield session


async def still_chatting(speaker: Ws, witness: Ws, text: str) -> None:
    """Prove the server still serves: ``speaker`` says ``text`` and ``witness`` gets it."""
    await speaker.send({"type": "send", "room": "#general", "text": text})
    await witness.said(text)


# --- HTTP helpers ---------------------------------------------------------------------------


async def fetch(
    http: aiohttp.ClientSession,
    server: Server,
    method: str,
    path: str,
    *,
    json: object = None,
    data: bytes | None = None,
    token: str | None = None,
) -> tuple[int, Obj]:
    """Make a request; return its status and JSON body."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with asyncio.timeout(TIMEOUT):
        async with http.request(
            method, http_base(server) + path, json=json, data=data, headers=headers
        ) as resp:
            assert resp.content_type == "application/json", await resp.text()
            body: Obj = await resp.json()
            return resp.status, body


async def refused(
    http: aiohttp.ClientSession, server: Server, method: str, path: str, **kwargs: Any
) -> tuple[int, str]:
    """Make a request that must fail; return its status and error code."""
    status, body = await fetch(http, server, method, path, **kwargs)
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    return status, body["error"]["code"]


async def register(http: aiohttp.ClientSession, server: Server, name: str) -> str:
    """Register ``name`` (password ``PASSWORD``) and return its token."""
    status, body = await fetch(
        http, server, "POST", "/api/register", json={"name": name, "password": PASSWORD}
    )
    assert status == 201, body
    assert body["name"] == name and isinstance(body["token"], str)
    token: str = body["token"]
    return token


async def post(
    http: aiohttp.ClientSession, server: Server, token: str, text: str, room: str = "general"
) -> Obj:
    """Post ``text`` to ``room`` with ``token``; return the stored message."""
    status, body = await fetch(
        http, server, "POST", f"/api/rooms/{room}/messages", json={"text": text}, token=token
    )
    assert status == 201, body
    return body


# --- Server-Sent Events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SseEvent:
    """One event of an event stream."""

    event: str  # its ``event:`` field ("message" when absent)
    id: str | None  # its ``id:`` field
    data: Obj  # its ``data:`` field, decoded


class Sse:
    """Reads events from an open ``text/event-stream`` response, under timeouts."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response  # the streaming response
        self.comments: list[str] = []  # comment lines seen (": keepalive")

    async def _line(self, within: float) -> str:
        try:
            raw = await asyncio.wait_for(self.response.content.readline(), max(within, 0.0))
        except TimeoutError:
            raise AssertionError(f"no event-stream line within {within:g} s") from None
        assert raw, "the event stream ended"
        return raw.decode().removesuffix("\n").removesuffix("\r")

    async def next(self, within: float = TIMEOUT) -> SseEvent:
        """The next event (comments and ``retry:`` blocks skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        fields: dict[str, str] = {}
        for _ in range(10_000):
            line = await self._line(deadline - loop.time())
            if line.startswith(":"):
                self.comments.append(line)
            elif line:
                key, _, value = line.partition(":")
                fields[key] = fields.get(key, "") + value.removeprefix(" ")
            elif "data" in fields:
                return SseEvent(
                    event=fields.get("event", "message"),
                    id=fields.get("id"),
                    data=orjson.loads(fields["data"]),
                )
            else:
                fields.clear()  # a block without data (retry:) is not an event
        raise AssertionError("no event in 10,000 lines")

    async def messages(self, count: int) -> list[SseEvent]:
        """The next ``count`` events, which must all be messages with ids."""
        got = [await self.next() for _ in range(count)]
        for e in got:
            assert e.event == "message" and e.id == str(e.data["seq"]), e
        return got


async def open_stream(
    http: aiohttp.ClientSession,
    server: Server,
    room: str = "general",
    *,
    query: str = "",
    last_event_id: int | None = None,
) -> aiohttp.ClientResponse:
    """Open ``room``'s event stream; it is subscribed once this returns (headers received)."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with asyncio.timeout(TIMEOUT):
        resp = await http.get(
            f"{http_base(server)}/api/rooms/{room}/events{query}", headers=headers
        )
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"] == "text/event-stream"
    return resp


def seqs(events: list[SseEvent]) -> list[int]:
    """The sequence numbers of message events."""
    return [int(e.data["seq"]) for e in events]


# --- pages and health -----------------------------------------------------------------------


async def test_health_reports_the_version_and_the_counts(
    server: Server, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """GET /health is 200 with the version and how many users, rooms, sockets, streams."""
    status, body = await fetch(http, server, "GET", "/health")
    assert status == 200
    refused = body.pop("refused")
    assert body == {
        "status": "ok",
        "version": __version__,
        "online": 0,
        "rooms": 0,
        "websockets": 0,
        "streams": 0,
        "connections": 1,  # this request's
    }
    assert refused == dict.fromkeys(refused, 0) and "max_per_address" in refused
    await sockets.ws(server, "alice")
    await sockets.ws(server)  # connected, not named: a socket but not a user
    stream = await open_stream(http, server, "rust")
    try:
        status, body = await fetch(http, server, "GET", "/health")
        assert (status, body["online"], body["websockets"], body["streams"]) == (200, 1, 2, 1)
        assert body["rooms"] == 2  # #general (alice) and #rust (the stream)
    finally:
        stream.close()


async def test_the_root_serves_the_web_page_and_an_unknown_path_is_404(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """GET / is an HTML page; GET /nope, a page that does not exist, is a plain 404."""
    async with http.get(http_base(server) + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "<title>roomcast" in await resp.text()
    async with http.get(http_base(server) + "/nope") as resp:
        assert resp.status == 404 and resp.content_type == "text/plain"


@pytest.mark.parametrize(
    "path", ["/api", "/api/", "/api/nope", "/api/rooms/general", "/api/rooms/general/nope"]
)
async def test_an_unknown_api_path_answers_a_json_404_like_the_rest_of_the_api(
    server: Server, http: aiohttp.ClientSession, path: str
) -> None:
    """A path under /api that does not exist is 404 with the API's JSON error, not_found."""
    for method in ("GET", "POST", "DELETE"):
        assert await refused(http, server, method, path) == (404, "not_found")


async def test_a_wrong_method_on_an_api_path_answers_a_json_405_naming_the_allowed_ones(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """DELETE /api/rooms is 405 bad_method with an Allow header and the API's JSON error."""
    assert await refused(http, server, "DELETE", "/api/rooms") == (405, "bad_method")
    async with http.put(http_base(server) + "/api/rooms/general/messages") as resp:
        assert resp.status == 405
        assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
        body = await resp.json()
        assert body["error"]["code"] == "bad_method"


# --- accounts -------------------------------------------------------------------------------


async def test_register_then_login_give_tokens_that_post(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """register is 201 {name, token}; login is 200 {name, token}; both tokens can post."""
    registered = await register(http, server, "Alice")
    status, body = await fetch(
        http, server, "POST", "/api/login", json={"name": "alice", "password": PASSWORD}
    )
    assert status == 200 and body["name"] == "Alice", body  # spelled as registered
    for token in (registered, body["token"]):
        assert (await post(http, server, token, "hi"))["from"] == "Alice"


async def test_a_wrong_password_is_401_and_five_failures_throttle_the_name(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """Each wrong password is 401 bad_login; after 5, even the right one is 429 throttled."""
    await register(http, server, "alice")
    wrong = {"name": "alice", "password": "not the password"}
    for _ in range(5):
        assert await refused(http, server, "POST", "/api/login", json=wrong) == (401, "bad_login")
    right = {"name": "alice", "password": PASSWORD}
    status, body = await fetch(http, server, "POST", "/api/login", json=right)
    assert (status, body["error"]["code"]) == (429, "throttled")
    assert body["error"]["message"].startswith("too many failed logins: try again in ")
    nobody = {"name": "nobody", "password": PASSWORD}
    assert await refused(http, server, "POST", "/api/login", json=nobody) == (401, "bad_login")


@pytest.mark.parametrize("path", ["/api/register", "/api/login"])
async def test_malformed_account_requests_are_400(
    server: Server, http: aiohttp.ClientSession, path: str
) -> None:
    """Invalid JSON, a non-object, a missing or non-string field are each a 400 error."""
    assert await refused(http, server, "POST", path, data=b"{not json") == (400, "bad_json")
    assert await refused(http, server, "POST", path, data=b"") == (400, "bad_json")
    assert await refused(http, server, "POST", path, json=["alice"]) == (400, "bad_json")
    for body in ({"name": "alice"}, {"password": PASSWORD}, {"name": 5, "password": PASSWORD}):
        assert await refused(http, server, "POST", path, json=body) == (400, "bad_request")


async def test_register_refuses_a_taken_or_invalid_name_or_password(
    server: Server, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """A registered or online name is 409 name_taken; a bad name or password is 400."""
    await register(http, server, "alice")
    await sockets.ws(server, "bob")  # a guest online
    for name in ("alice", "ALICE", "bob"):
        body = {"name": name, "password": PASSWORD}
        assert await refused(http, server, "POST", "/api/register", json=body) == (
            409,
            "name_taken",
        )
    bad_name = {"name": "no spaces", "password": PASSWORD}
    assert await refused(http, server, "POST", "/api/register", json=bad_name) == (
        400,
        "bad_name",
    )
    short = {"name": "carol", "password": "short"}
    assert await refused(http, server, "POST", "/api/register", json=short) == (
        400,
        "bad_password",
    )


async def test_an_oversized_request_body_is_refused_with_a_json_error(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """A body over the 64 KiB limit is refused with the API's JSON error format."""
    body = b'{"name": "alice", "password": "' + b"x" * 70_000 + b'"}'
    async with http.post(http_base(server) + "/api/register", data=body) as resp:
        assert resp.status in (400, 413)
        assert resp.content_type == "application/json", await resp.text()


# --- rooms and history over HTTP ------------------------------------------------------------


async def test_the_room_list_has_online_and_stored_rooms(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """GET /api/rooms lists rooms with online members and rooms that only have history."""
    server = await start_server(**FAST)
    token = await register(http, server, "poster")
    await post(http, server, token, "to an empty room", room="archive")
    alice = await sockets.ws(server, "alice")
    await sockets.ws(server, "bob")
    rid = await alice.request({"type": "join", "room": "#rust"})
    await alice.reply(rid, "who")
    status, body = await fetch(http, server, "GET", "/api/rooms")
    assert status == 200
    assert body == {
        "rooms": [
            {"name": "#archive", "members": 0},
            {"name": "#general", "members": 2},
            {"name": "#rust", "members": 1},
        ]
    }


async def test_history_pages_follow_before_after_and_limit(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """GET messages: newest page by default, before/after bounds, limit, and a 500 cap."""
    server = await start_server(**FAST)
    token = await register(http, server, "poster")
    for i in range(1, 13):
        assert (await post(http, server, token, f"n{i}"))["seq"] == i

    async def page(query: str) -> tuple[list[int], Obj]:
        status, body = await fetch(http, server, "GET", f"/api/rooms/general/messages{query}")
        assert status == 200, body
        assert set(body) == {"room", "messages", "oldest_seq", "latest_seq", "capped"}
        assert (body["room"], body["oldest_seq"], body["latest_seq"]) == ("#general", 1, 12)
        return [m["seq"] for m in body["messages"]], body

    everything, body = await page("")
    assert everything == list(range(1, 13)) and body["capped"] is None
    assert body["messages"][0] == {
        "type": "message",
        "room": "#general",
        "seq": 1,
        "id": body["messages"][0]["id"],
        "from": "poster",
        "signed": True,
        "kind": "message",
        "text": "n1",
        "ts": body["messages"][0]["ts"],
    }
    assert (await page("?limit=5"))[0] == [8, 9, 10, 11, 12]
    assert (await page("?before=5"))[0] == [1, 2, 3, 4]
    assert (await page("?before=10&limit=3"))[0] == [7, 8, 9]
    assert (await page("?after=10"))[0] == [11, 12]
    assert (await page("?after=2&limit=3"))[0] == [3, 4, 5]
    assert (await page("?after=12"))[0] == []
    assert (await page("?before=1"))[0] == []
    assert (await page("?limit=&before="))[0] == everything  # empty means absent
    capped, body = await page("?limit=1000000000")
    assert capped == everything and body["capped"] == 500

    status, body = await fetch(http, server, "GET", "/api/rooms/General/messages?limit=1")
    assert status == 200 and body["room"] == "#general"  # rooms are case-insensitive
    assert await refused(http, server, "GET", "/api/rooms/quiet/messages") == (
        404,
        "no_such_room",
    )


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("?limit=abc", "bad_request"),
        ("?limit=-1", "bad_request"),
        ("?limit=1.5", "bad_request"),
        ("?limit=1e3", "bad_request"),
        ("?before=%201", "bad_request"),
        ("?after=0x10", "bad_request"),
        ("?limit=0", "bad_history"),
        ("?before=3&after=1", "bad_history"),
    ],
)
async def test_bad_history_numbers_are_400(
    server: Server, http: aiohttp.ClientSession, query: str, code: str
) -> None:
    """A limit, before or after that is not a whole number (or not a valid range) is 400."""
    path = f"/api/rooms/general/messages{query}"
    assert await refused(http, server, "GET", path) == (400, code)


async def test_a_bad_room_name_in_a_url_is_400(server: Server, http: aiohttp.ClientSession) -> None:
    """A room outside the name rule is 400 bad_room, for history and for streams."""
    for path in ("/api/rooms/no%20way/messages", "/api/rooms/a%2Bb/events"):
        assert await refused(http, server, "GET", path) == (400, "bad_room")


async def test_a_unicode_superscript_digit_is_400_not_500(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """?limit=² (a character str.isdigit accepts but int() refuses) is 400, not a crash; so is
    Last-Event-ID: ² on an event stream."""
    for query in ("limit", "before", "after"):
        path = f"/api/rooms/general/messages?{query}=%C2%B2"
        async with http.get(http_base(server) + path) as resp:
            assert resp.status == 400, (query, resp.status, await resp.text())
    headers = {"Last-Event-ID": "\u00b2"}
    async with http.get(http_base(server) + "/api/rooms/general/events", headers=headers) as resp:
        assert resp.status != 500, await resp.text()


# --- posting --------------------------------------------------------------------------------


async def test_a_post_with_a_token_is_201_and_reaches_the_room(
    server: Server, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """POST messages with a bearer token stores the message, returns it, and members see it."""
    token = await register(http, server, "bot")
    alice = await sockets.ws(server, "alice")
    message = await post(http, server, token, "  deploy \x1b[31mdone  ")
    assert message["type"] == "message" and message["kind"] == "message"
    assert (message["room"], message["from"], message["text"]) == (
        "#general",
        "bot",
        "deploy [31mdone",
    )
    assert await alice.said("deploy [31mdone") == message  # the same object, byte for byte
    status, body = await fetch(
        http, server, "POST", "/api/rooms/general/messages", json={"text": "  "}, token=token
    )
    assert (status, body["error"]["code"]) == (400, "bad_text")


async def test_a_post_without_a_valid_token_is_401(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """No token is no_token; a forged or garbage token is bad_token; nothing is stored."""
    token = await register(http, server, "bot")
    path, body = "/api/rooms/general/messages", {"text": "hi"}
    assert await refused(http, server, "POST", path, json=body) == (401, "no_token")
    for header in ("Basic abc", "Bearer", "Bearer "):
        async with http.post(
            http_base(server) + path, json=body, headers={"Authorization": header}
        ) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "no_token"
    payload, _, signature = token.partition(".")
    for bad in ("garbage", f"{payload}.{signature[::-1]}", f"{payload}x.{signature}", "a.b.c"):
        assert await refused(http, server, "POST", path, json=body, token=bad) == (
            401,
            "bad_token",
        )
    status, page = await fetch(http, server, "GET", "/api/rooms/general/messages")
    assert (status, page["messages"]) == (200, [])


async def test_an_expired_token_is_401_expired_over_http_and_websocket(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """Tokens from a server with token_days=-1 are refused as expired_token everywhere."""
    server = await start_server(token_days=-1.0)  # every token it issues expired a day ago
    token = await register(http, server, "bot")
    path = "/api/rooms/general/messages"
    assert await refused(http, server, "POST", path, json={"text": "hi"}, token=token) == (
        401,
        "expired_token",
    )
    witness = await sockets.ws(server, "witness")
    ws = await sockets.ws(server)
    rid = await ws.request({"type": "hello", "token": token})
    error = await ws.reply(rid, "error")
    assert error["code"] == "expired_token" and "log in again" in error["message"]
    await ws.hello("guest")  # the connection is still usable
    await still_chatting(ws, witness, "a guest after an expired token")


# --- Server-Sent Events ---------------------------------------------------------------------


async def test_an_event_stream_resumes_after_last_event_id_without_gap_or_duplicate(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Reconnecting with Last-Event-ID gets exactly the messages missed, then live ones."""
    server = await start_server(**FAST)
    token = await register(http, server, "bot")
    first = await open_stream(http, server)
    try:
        for i in range(5):
            await post(http, server, token, f"a{i}")
        got = await Sse(first).messages(5)
        assert seqs(got) == [1, 2, 3, 4, 5]
        assert [e.data["text"] for e in got] == [f"a{i}" for i in range(5)]
        _, page = await fetch(http, server, "GET", "/api/rooms/general/messages")
        assert [e.data for e in got] == page["messages"]  # the same objects as the history
    finally:
        first.close()  # the connection drops
    for i in range(4):
        await post(http, server, token, f"b{i}")

    again = await open_stream(http, server, last_event_id=5)
    try:
        stream = Sse(again)
        assert seqs(await stream.messages(4)) == [6, 7, 8, 9]
        await post(http, server, token, "live 1")
        await post(http, server, token, "live 2")
        live = await stream.messages(2)
        assert seqs(live) == [10, 11] and live[1].data["text"] == "live 2"
    finally:
        again.close()

    since = await open_stream(http, server, query="?since=7")
    try:
        assert seqs(await Sse(since).messages(4)) == [8, 9, 10, 11]
    finally:
        since.close()


async def test_event_streams_resumed_at_random_points_miss_nothing_while_posts_go_on(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Streams dropped after a random number of events and resumed with Last-Event-ID see
    every message once, in order, while a bot keeps posting."""
    server = await start_server(**FAST)
    rng = random.Random(7)
    token = await register(http, server, "bot")
    texts = [f"p{i:03d}" for i in range(150)]

    async def bot() -> None:
        for text in texts:
            await post(http, server, token, text)

    seen: list[int] = []
    async with asyncio.timeout(20.0):
        posting = asyncio.create_task(bot())
        try:
            for _ in range(300):
                resp = await open_stream(http, server, last_event_id=seen[-1] if seen else 0)
                try:
                    stream = Sse(resp)
                    for _ in range(rng.randint(1, 20)):
                        seen += seqs(await stream.messages(1))
                        if seen[-1] == len(texts):
                            break
                finally:
                    resp.close()
                if seen[-1] == len(texts):
                    break
            await posting
        finally:
            posting.cancel()
    assert seen == list(range(1, len(texts) + 1))


async def test_an_event_stream_reports_a_range_cut_by_retention_as_a_gap(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """Messages no longer kept come as one gap event (SSE) or gap frame (WebSocket)."""
    server = await start_server(retain_count=3, **FAST)
    token = await register(http, server, "bot")
    for i in range(1, 11):
        await post(http, server, token, f"n{i}")
    assert await server.hub.apply_retention() == 7

    resp = await open_stream(http, server, query="?since=0")
    try:
        stream = Sse(resp)
        gap = await stream.next()
        assert gap.event == "gap" and gap.id is None
        assert gap.data == {"room": "#general", "from_seq": 1, "to_seq": 7}
        assert seqs(await stream.messages(3)) == [8, 9, 10]
        await post(http, server, token, "live")
        assert seqs(await stream.messages(1)) == [11]
    finally:
        resp.close()

    ws = await sockets.ws(server, "alice")
    rid = await ws.request({"type": "join", "room": "#general", "since": 2})
    await ws.reply(rid, "info")  # already in #general: the replay still comes
    gap_frame = await ws.expect(lambda e: e["type"] == "gap")
    assert gap_frame == {"type": "gap", "room": "#general", "from_seq": 3, "to_seq": 7}
    replay = [await ws.next() for _ in range(3)]
    assert [e["text"] for e in replay] == ["n8", "n9", "n10"]


# --- WebSocket: the chat --------------------------------------------------------------------


async def test_hello_is_answered_by_welcome_echoing_the_id(
    server: Server, sockets: Sockets
) -> None:
    """hello {name} gets welcome {name, version 1, server} with the request's id."""
    ws = await sockets.ws(server)
    await ws.send({"type": "hello", "name": "alice", "id": "h-1"})
    welcome = await ws.expect(lambda e: e["type"] == "welcome")
    assert welcome == {
        "type": "welcome",
        "name": "alice",
        "version": 1,
        "server": __version__,
        "id": "h-1",
    }
    who = await ws.expect(lambda e: e["type"] == "who")
    assert who == {"type": "who", "room": "#general", "names": ["alice"], "total": 1, "id": "h-1"}
    joined = await ws.expect(lambda e: e["type"] == "join")
    assert (joined["room"], joined["from"], joined["seq"]) == ("#general", "alice", 1)
    pong = await ws.request({"type": "ping"})
    await ws.reply(pong, "pong")


async def test_two_clients_chat_in_rooms_and_only_members_see_a_room(
    server: Server, sockets: Sockets
) -> None:
    """send gets ok with its id and the echo with a seq; members get the same object."""
    alice = await sockets.ws(server, "alice")
    bob = await sockets.ws(server, "bob")
    carol = await sockets.ws(server, "carol")
    for ws in (alice, bob):
        rid = await ws.request({"type": "join", "room": "#rust"})
        await ws.reply(rid, "who")
    await alice.expect(
        lambda e: e["type"] == "join" and e["from"] == "bob" and e["room"] == "#rust"
    )

    rid = await alice.request({"type": "send", "room": "#rust", "text": "borrow checker"})
    ok = await alice.reply(rid)
    assert ok == {"type": "ok", "id": rid}
    echo = await alice.said("borrow checker", "#rust")
    assert echo["from"] == "alice" and echo["kind"] == "message" and echo["seq"] == 3
    assert await bob.said("borrow checker", "#rust") == echo

    await bob.send({"type": "action", "room": "#rust", "text": "nods"})
    action = await alice.expect(lambda e: e.get("kind") == "action")
    assert (action["from"], action["text"], action["seq"]) == ("bob", "nods", 4)

    await bob.send({"type": "send", "text": "in the current room"})  # #rust, joined last
    assert (await alice.said("in the current room", "#rust"))["from"] == "bob"
    await bob.say("hello all", "#general")
    for ws in (alice, carol):
        await ws.said("hello all")
    assert not [e for e in carol.events if e.get("room") == "#rust"]


async def test_a_dm_reaches_only_the_sender_and_the_recipient(
    server: Server, sockets: Sockets
) -> None:
    """dm to bob is seen by alice and bob as the same dm frame, never by carol."""
    alice = await sockets.ws(server, "alice")
    bob = await sockets.ws(server, "bob")
    carol = await sockets.ws(server, "carol")
    rid = await alice.request({"type": "dm", "to": "BOB", "text": "psst"})
    await alice.reply(rid)
    dm = await alice.expect(lambda e: e["type"] == "dm")
    assert (dm["from"], dm["to"], dm["text"], dm["kind"]) == ("alice", "bob", "psst", "message")
    assert await bob.expect(lambda e: e["type"] == "dm") == dm

    # Later markers on carol's private channel and in her room: she sees them, not the dm.
    await alice.send({"type": "dm", "to": "carol", "text": "marker"})
    await alice.send({"type": "send", "text": "room marker"})
    await carol.expect_all(
        lambda e: e["type"] == "dm",
        lambda e: e["type"] == "message" and e["text"] == "room marker",
    )
    assert [e["text"] for e in carol.events if e["type"] == "dm"] == ["marker"]

    rid = await alice.request({"type": "dm", "to": "zed", "text": "hello?"})
    error = await alice.reply(rid, "error")
    assert error["code"] == "no_such_user"


async def test_history_search_who_and_rooms_replies(server: Server, sockets: Sockets) -> None:
    """history, search, who and rooms are answered with their documented frames."""
    alice = await sockets.ws(server, "alice")
    bob = await sockets.ws(server, "Bob")
    for text in ("the quick fox", "a lazy dog", "quick quick", "the end"):
        await alice.say(text)
    # #general: 1 join alice, 2 join Bob, 3-6 the texts.

    rid = await bob.request({"type": "history", "limit": 2})
    page = await bob.reply(rid, "history")
    assert [m["text"] for m in page["messages"]] == ["quick quick", "the end"]
    assert (page["room"], page["oldest_seq"], page["latest_seq"], page["capped"]) == (
        "#general",
        1,
        6,
        None,
    )
    pages: list[tuple[Obj, list[int]]] = [
        ({"before": 3}, [1, 2]),
        ({"after": 4}, [5, 6]),
        ({"around": 4, "limit": 3}, [3, 4, 5]),
        ({"room": "#general", "after": 0, "limit": 2}, [1, 2]),
    ]
    for query, expected in pages:
        rid = await bob.request({"type": "history", **query})
        assert [m["seq"] for m in (await bob.reply(rid, "history"))["messages"]] == expected
    rid = await bob.request({"type": "history", "limit": 10**6})
    assert (await bob.reply(rid, "history"))["capped"] == 500

    rid = await bob.request({"type": "search", "words": "QUICK"})
    found = await bob.reply(rid, "search")
    assert [m["text"] for m in found["messages"]] == ["quick quick", "the quick fox"]
    assert found["room"] == "#general" and found["capped"] is None

    rid = await bob.request({"type": "who"})
    assert await bob.reply(rid, "who") == {
        "type": "who",
        "room": "#general",
        "names": ["alice", "Bob"],
        "total": 2,
        "id": rid,
    }
    rid = await bob.request({"type": "who", "room": "#nowhere"})
    assert (await bob.reply(rid, "error"))["code"] == "no_such_room"
    rid = await bob.request({"type": "rooms"})
    assert await bob.reply(rid, "rooms") == {
        "type": "rooms",
        "rooms": [{"name": "#general", "members": 2, "unread": 0}],
        "current": "#general",
        "id": rid,
    }


async def test_the_rooms_list_on_a_websocket_has_the_rooms_nobody_is_in_now(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """The rooms frame lists every room the HTTP API lists, those nobody is in now included,
    with the unread counts of one's own rooms and the room plain text goes to."""
    server = await start_server(**FAST)
    token = await register(http, server, "poster")
    await post(http, server, token, "to an empty room", room="archive")
    alice = await sockets.ws(server, "alice")
    bob = await sockets.ws(server, "bob")
    rid = await bob.request({"type": "join", "room": "#rust"})
    await bob.reply(rid, "who")
    rid = await bob.request({"type": "leave", "room": "#rust"})
    await bob.reply(rid, "info")
    rid = await alice.request({"type": "rooms"})
    assert (await alice.reply(rid, "rooms"))["rooms"] == [
        {"name": "#archive", "members": 0, "unread": None},
        {"name": "#general", "members": 2, "unread": 0},
        {"name": "#rust", "members": 0, "unread": None},
    ]
    status, body = await fetch(http, server, "GET", "/api/rooms")
    assert status == 200
    assert [r["name"] for r in body["rooms"]] == ["#archive", "#general", "#rust"]
    rid = await bob.request({"type": "leave"})
    assert (await bob.reply(rid, "info"))["text"] == (
        "you left #general; you are in no room now: /join #room to talk"
    )
    rid = await bob.request({"type": "rooms"})
    assert (await bob.reply(rid, "rooms"))["current"] is None


async def test_join_since_replays_then_goes_live_with_no_duplicate_and_no_hole(
    start_server: StartServer, sockets: Sockets
) -> None:
    """Clients that reconnect at random points and join with since see every seq exactly once,
    while another client keeps sending."""
    server = await start_server(**FAST)
    rng = random.Random(20240611)
    sender = await sockets.ws(server, "sender")
    rid = await sender.request({"type": "join", "room": "#r"})
    await sender.reply(rid, "who")
    texts = [f"n{i:03d}" for i in range(300)]

    async def speak() -> None:
        for text in texts:
            rid = await sender.request({"type": "send", "room": "#r", "text": text})
            await sender.reply(rid)

    seen: list[int] = []  # every #r seq the readers saw, in order
    said: list[str] = []  # the sender's texts the readers saw, in order
    overlapped = 0  # reader rounds started while the sender was still sending
    async with asyncio.timeout(20.0):
        speaking = asyncio.create_task(speak())
        try:
            for round_ in range(500):
                overlapped += not speaking.done()
                reader = await sockets.ws(server, f"r{round_}")
                since = seen[-1] if seen else 0
                await reader.send({"type": "join", "room": "#r", "since": since})
                for _ in range(rng.randint(1, 25)):
                    event = await reader.expect(lambda e: e.get("room") == "#r" and "seq" in e)
                    seen.append(event["seq"])
                    if event["type"] == "message":
                        said.append(event["text"])
                    if said[-1:] == texts[-1:]:
                        break
                await reader.conn.close()
                if said[-1:] == texts[-1:]:
                    break
            await speaking
        finally:
            speaking.cancel()
    assert said == texts, "the readers missed or repeated messages"
    assert seen == list(range(1, len(seen) + 1)), "a duplicate or a hole"
    assert overlapped > 5, f"only {overlapped} of {round_ + 1} rounds overlapped the sender"


async def test_hello_with_a_token_logs_in_and_catches_up(
    server: Server, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """hello {token} welcomes the account; a later login (token from /api/login) replays what
    it missed, after a summary, then goes live."""
    token = await register(http, server, "Carol")
    bob = await sockets.ws(server, "bob")  # #general seq 1
    carol = await sockets.ws(server)
    rid = await carol.request({"type": "hello", "token": token})
    assert (await carol.reply(rid, "welcome"))["name"] == "Carol"
    await carol.expect(lambda e: e["type"] == "join" and e["from"] == "Carol")  # seq 2
    await carol.conn.close()
    presence = await bob.expect(lambda e: e["type"] == "presence")
    assert (presence["from"], presence["status"], presence["seq"]) == ("Carol", "offline", 3)

    for i in range(5):
        await bob.say(f"while away {i}")  # seqs 4-8
    status, body = await fetch(
        http, server, "POST", "/api/login", json={"name": "carol", "password": PASSWORD}
    )
    assert status == 200, body
    again = await sockets.ws(server)
    rid = await again.request({"type": "hello", "token": body["token"]})
    assert await again.next() == {
        "type": "welcome",
        "name": "Carol",
        "version": 1,
        "server": __version__,
        "id": rid,
    }
    unread = await again.reply(rid, "unread")
    assert unread["rooms"] == {"#general": 5}
    summary = await again.expect(lambda e: e["type"] == "summary")
    assert summary == {
        "type": "summary",
        "room": "#general",
        "missed": 5,
        "replayed": 5,
        "first_seq": 4,
        "first_unread": 4,
    }
    after = [await again.next() for _ in range(6)]
    assert [e.get("text") for e in after[:5]] == [f"while away {i}" for i in range(5)]
    assert [e["seq"] for e in after] == [4, 5, 6, 7, 8, 9]
    assert (after[5]["type"], after[5]["from"]) == ("join", "Carol")  # live: her return
    await bob.say("welcome back")
    assert (await again.said("welcome back"))["seq"] == 10
    seqs_seen = [e["seq"] for e in again.events if e.get("room") == "#general" and "seq" in e]
    assert seqs_seen == list(range(4, 11))


async def test_a_bad_token_in_hello_is_an_error_and_the_socket_stays_usable(
    server: Server, sockets: Sockets
) -> None:
    """hello with a garbage token gets error bad_token; the client can then say hello."""
    witness = await sockets.ws(server, "witness")
    ws = await sockets.ws(server)
    for token in ("garbage", "eyJuIjoiYWxpY2UiLCJlIjo5OTk5OTk5OTk5fQ.c2lnbmF0dXJl", ""):
        rid = await ws.request({"type": "hello", "token": token})
        error = await ws.reply(rid, "error")
        assert error["code"] == "bad_token", error
    await ws.hello("guest")
    await still_chatting(ws, witness, "a guest after bad tokens")


async def test_the_login_frame_logs_in_without_a_token(
    server: Server, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """login {name, password}: a wrong password is bad_login; the right one welcomes."""
    await register(http, server, "dave")
    ws = await sockets.ws(server)
    rid = await ws.request({"type": "login", "name": "dave", "password": "wrong password"})
    assert (await ws.reply(rid, "error"))["code"] == "bad_login"
    rid = await ws.request({"type": "login", "name": "dave", "password": PASSWORD})
    assert (await ws.reply(rid, "welcome"))["name"] == "dave"


# --- WebSocket: bad input -------------------------------------------------------------------


async def test_malformed_json_and_unknown_types_are_errors_and_the_socket_stays_usable(
    server: Server, sockets: Sockets
) -> None:
    """Bad JSON is bad_json, an unknown type unknown_type, a wrong field bad_frame; the same
    connection then still chats, and others kept receiving."""
    witness = await sockets.ws(server, "witness")
    ws = await sockets.ws(server, "mallory")
    await ws.conn.send("{not json")
    assert (await ws.expect(lambda e: e["type"] == "error"))["code"] == "bad_json"
    await still_chatting(ws, witness, "after bad json")
    await ws.send({"type": "teleport", "id": 77})
    assert await ws.reply(77, "error") == {
        "type": "error",
        "code": "unknown_type",
        "message": "unknown frame type 'teleport'",
        "id": 77,
    }
    await ws.send({"type": "join", "room": "#a", "since": "x", "id": 78})
    assert (await ws.reply(78, "error"))["code"] == "bad_frame"
    await ws.conn.send("[]")
    assert (await ws.expect(lambda e: e["type"] == "error"))["code"] == "bad_frame"
    await still_chatting(ws, witness, "after unknown type")
    assert [e["text"] for e in witness.events if e["type"] == "message"] == [
        "after bad json",
        "after unknown type",
    ]


def send_frame(size: int) -> str:
    """A send request of exactly ``size`` bytes (its text far over the 4000-character limit)."""
    head, tail = '{"type":"send","text":"', '"}'
    return head + "x" * (size - len(head) - len(tail)) + tail


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_a_frame_over_64_kib_closes_with_1009_and_others_carry_on(
    server: Server, sockets: Sockets, compression: str | None
) -> None:
    """A frame just under 64 KiB is read (and refused by the rules); one over it closes that
    connection with 1009, compressed or not; other clients keep chatting."""
    witness = await sockets.ws(server, "witness")
    speaker = await sockets.ws(server, "speaker")
    ws = await sockets.ws(server, "big", compression=compression)
    await ws.conn.send(send_frame(65535))
    error = await ws.expect(lambda e: e["type"] == "error")
    assert (error["code"], error["message"]) == (
        "bad_text",
        "the message is 65510 characters long; at most 4000",
    )
    await still_chatting(ws, witness, "the big one is still usable")
    await ws.conn.send(send_frame(65537))  # with deflate, a few hundred bytes on the wire
    code, _ = await ws.closed()
    assert code == 1009
    await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "big")
    await still_chatting(speaker, witness, "after the big frame")
    assert not [e for e in witness.events if len(e.get("text", "")) > 100]


async def test_a_frame_of_exactly_64_kib_is_accepted(server: Server, sockets: Sockets) -> None:
    """docs/protocol.md closes frames *over* 64 KiB: one of exactly 65536 bytes is read."""
    ws = await sockets.ws(server, "big")
    await ws.conn.send(send_frame(65536))
    error = await ws.expect(lambda e: e["type"] == "error")
    assert error["code"] == "bad_text"


async def test_a_client_closed_for_a_big_frame_quits_with_frame_too_large(
    server: Server, sockets: Sockets
) -> None:
    """The room sees a client cut for an oversized frame quit with reason 'frame too large'."""
    witness = await sockets.ws(server, "witness")
    ws = await sockets.ws(server, "big")
    await ws.conn.send(send_frame(70_000))
    assert (await ws.closed())[0] == 1009
    presence = await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "big")
    assert presence["reason"] == "frame too large"


async def test_a_binary_frame_closes_with_1003_and_others_carry_on(
    server: Server, sockets: Sockets
) -> None:
    """A binary frame closes that connection with 1003; other clients keep chatting."""
    witness = await sockets.ws(server, "witness")
    speaker = await sockets.ws(server, "speaker")
    ws = await sockets.ws(server, "binary")
    await ws.conn.send(b'{"type":"send","text":"as bytes"}')
    code, reason = await ws.closed()
    assert (code, reason) == (1003, "send JSON text frames")
    quit_ = await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "binary")
    assert quit_["reason"] == "binary frame"
    await still_chatting(speaker, witness, "after the binary frame")
    assert "as bytes" not in [e.get("text") for e in witness.events]


async def test_a_foreign_origin_is_refused_with_403_and_the_own_origin_is_accepted(
    server: Server, sockets: Sockets
) -> None:
    """A handshake from another origin is HTTP 403; no Origin (a script) and the page's own
    origin are accepted; connected clients are not disturbed."""
    assert server.web is not None
    witness = await sockets.ws(server, "witness")  # no Origin header
    speaker = await sockets.ws(server, "speaker", origin=f"http://127.0.0.1:{server.web.port}")
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.web.port + 1}", "null"):
        with pytest.raises(InvalidStatus) as caught:
            await sockets.ws(server, origin=origin)
        assert caught.value.response.status_code == 403, origin
    await still_chatting(speaker, witness, "after the refused handshakes")


async def test_configured_origins_replace_the_same_origin_rule(
    start_server: StartServer, sockets: Sockets
) -> None:
    """With public_origin set, only those origins (and none) may connect."""
    server = await start_server(public_origin="https://chat.example, https://other.example")
    assert server.web is not None
    await sockets.ws(server, "a", origin="https://chat.example")
    await sockets.ws(server, "b", origin="https://other.example")
    await sockets.ws(server, "c")
    with pytest.raises(InvalidStatus) as caught:
        await sockets.ws(server, origin=f"http://127.0.0.1:{server.web.port}")
    assert caught.value.response.status_code == 403


async def test_a_burst_of_sends_is_delayed_to_the_rate_not_refused(
    start_server: StartServer, sockets: Sockets
) -> None:
    """Past the burst, sends wait their turn at the allowed rate instead of being refused:
    every one is answered ok and said, in order, and other clients carry on meanwhile."""
    rate, burst = 50.0, 5
    server = await start_server(rate=rate, burst=burst)
    witness = await sockets.ws(server, "witness")
    speaker = await sockets.ws(server, "speaker")
    flooder = await sockets.ws(server, "flooder")  # hello took one token of five
    count = 30  # 26 past the burst: about half a second at 50 a second
    loop = asyncio.get_running_loop()
    start = loop.time()
    ids = [await flooder.request({"type": "send", "text": f"flood {i}"}) for i in range(count)]
    await still_chatting(speaker, witness, "during the flood")
    for rid in ids:
        assert (await flooder.answer(rid))["type"] == "ok"
    took = loop.time() - start
    assert not [e for e in flooder.events if e["type"] == "error"]
    await witness.said(f"flood {count - 1}")
    flood_seen = [e["text"] for e in witness.events if e.get("text", "").startswith("flood ")]
    assert flood_seen == [f"flood {i}" for i in range(count)]
    assert took >= 0.8 * (count - (burst - 1)) / rate  # held to the rate
    texts = [e.get("text") for e in witness.events]
    assert texts.index("during the flood") < texts.index(f"flood {count - 1}")


async def test_a_websocket_client_held_back_too_long_is_closed_with_1008_and_the_reason(
    start_server: StartServer, sockets: Sockets
) -> None:
    """A client with more sends waiting than the rate lets through in flood_hold seconds is
    closed with 1008 and the reason; what it sent before is said in order; others see it quit."""
    server = await start_server(rate=20.0, burst=5, flood_hold=0.5)
    witness = await sockets.ws(server, "witness")
    flooder = await sockets.ws(server, "flooder")
    for i in range(100):  # 5 s of sends at 20 a second
        await flooder.send({"type": "send", "text": f"spam {i:03d}"})
    reason = "sending too fast: held back for more than 0.5 s"
    assert await flooder.closed() == (1008, reason)
    quit_ = await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "flooder")
    assert quit_["reason"] == reason
    said = texts_from(witness, "flooder")
    assert said == [f"spam {i:03d}" for i in range(len(said))]
    assert 4 <= len(said) < 50, said
    assert server.hub.online == 1


async def test_a_server_shutdown_closes_websockets_with_1001(
    start_server: StartServer, sockets: Sockets
) -> None:
    """Stopping the server closes every WebSocket with 1001 and the reason."""
    server = await start_server()
    alice = await sockets.ws(server, "alice")
    nameless = await sockets.ws(server)
    await server.stop()  # the fixture stops it again: stop is idempotent
    for ws in (alice, nameless):
        assert await ws.closed() == (1001, "server shutting down")


# --- slow WebSocket clients, the heartbeat and shutdown -------------------------------------


def ws_socket_of(server: Server, name: str) -> Connection[Any]:
    """The server's WebSocket connection object for the user ``name``."""
    assert server.web is not None
    for sock in server.web.sockets:
        if sock.session.name == name:
            return sock
    raise AssertionError(f"no WebSocket connection for {name!r}")


def ws_transport_of(server: Server, name: str) -> asyncio.Transport:
    """The server-side transport of the WebSocket user ``name``."""
    return cast(asyncio.Transport, ws_socket_of(server, name).transport)


def throttle_ws(server: Server, name: str) -> None:
    """A slow network path to ``name`` (conftest's ``throttle``, for a WebSocket): a small
    kernel send buffer on the server's socket, so that what the client does not read piles up
    where flow control sees it."""
    sock = ws_transport_of(server, name).get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)


def stop_reading(ws: Ws) -> None:
    """Take nothing more from the socket, like a hung client: the kernel buffers fill up."""
    ws.conn.transport.pause_reading()


async def read_to_close(ws: Ws, *, max_events: int) -> tuple[int | None, str | None]:
    """Read every event up to the end of the connection; return the close code and reason."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    try:
        for _ in range(max_events):
            await ws.next(deadline - loop.time())
    except ConnectionClosed:
        return ws.conn.close_code, ws.conn.close_reason
    raise AssertionError(f"still open after {max_events} events: {ws.events[-8:]}")


def texts_from(ws: Ws, sender: str) -> list[str]:
    """The texts of the room messages ``ws`` read from ``sender``, in order."""
    return [e["text"] for e in ws.events if e["type"] == "message" and e["from"] == sender]


async def test_a_websocket_client_that_stops_reading_is_cut_after_the_stall_and_slows_nobody(
    start_server: StartServer,
    sockets: Sockets,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A WebSocket client that stops reading holds nobody back, costs bounded memory (what is
    unsent for it stays under high_water plus one batch), and is closed with 1008 and the
    reason after stall_timeout; what it got before is the chat's start, in order."""
    high_water, stall_timeout = 16384, 3.0
    server = await start_server(high_water=high_water, stall_timeout=stall_timeout, **FAST)
    assert server.web is not None and server.web.limits.high_water == high_water
    witness = await sockets.ws(server, "witness")
    speaker = await sockets.ws(server, "speaker")
    slow = await sockets.ws(server, "slow")
    stop_reading(slow)
    throttle_ws(server, "slow")
    slow_transport = ws_transport_of(server, "slow")

    chunks, per_chunk, pad = 20, 100, "x" * 80  # 2,000 messages of ~200 bytes of JSON
    texts = [f"n {i:04d} {pad}" for i in range(chunks * per_chunk)]
    sizes: list[int] = []
    for chunk in range(chunks):
        for text in texts[chunk * per_chunk : (chunk + 1) * per_chunk]:
            await speaker.send({"type": "send", "text": text})
        last = texts[(chunk + 1) * per_chunk - 1]
        await witness.said(last)
        await speaker.said(last)
        sizes.append(slow_transport.get_write_buffer_size())

    longest = max(len(orjson.dumps(e)) for e in witness.events if e["type"] == "message")
    bound = high_water + server.web.limits.batch * (longest + 1) + 64  # plus one batch frame
    assert max(sizes) > high_water, f"the slow client never filled its buffer: {sizes}"
    assert max(sizes) < bound, f"buffer over high_water plus one batch ({bound}): {sizes}"
    assert texts_from(witness, "speaker") == texts
    assert texts_from(speaker, "speaker") == texts

    await log_watch.wait_for(
        lambda messages: any(m.startswith("too slow") for m in messages),
        within=stall_timeout + TIMEOUT,
    )
    assert "too slow peer=" in caplog.text
    slow.conn.transport.resume_reading()
    reason = "too slow: not reading for 3 s"
    assert await read_to_close(slow, max_events=len(texts) + 100) == (1008, reason)
    got = texts_from(slow, "speaker")
    assert got == texts[: len(got)]  # what it got before the cut is the chat's start, in order
    quit_ = await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "slow")
    assert quit_["reason"] == reason


async def test_a_websocket_connection_stays_between_the_transport_and_aiohttp(
    start_server: StartServer, sockets: Sockets
) -> None:
    """After the upgrade the connection is the transport's protocol with aiohttp's behind it
    (through the gate that counted it): what the client sends reaches aiohttp (a ping is
    answered), and the transport's flow control reaches the connection (it stops pulling for
    a client that does not read, and goes on once it reads). That aiohttp keeps its transport
    and protocol after the upgrade is not its API (pyproject.toml pins the versions checked):
    a release that changed it fails here instead of silently losing flow control."""
    server = await start_server(high_water=16384, **FAST)
    speaker = await sockets.ws(server, "speaker")
    slow = await sockets.ws(server, "slow")
    sock = cast(_Socket, ws_socket_of(server, "slow"))
    transport = ws_transport_of(server, "slow")
    assert transport.get_protocol() is sock
    assert isinstance(sock._inner, Gate) and isinstance(sock._inner._inner, RequestHandler)
    await slow.reply(await slow.request({"type": "ping"}), "pong")

    stop_reading(slow)
    throttle_ws(server, "slow")
    pad = "x" * 80
    texts: list[str] = []
    for chunk in range(40):  # until the slow client's buffer passes the mark: far fewer
        texts += [f"n {chunk:02d}{i:02d} {pad}" for i in range(50)]
        for text in texts[-50:]:
            await speaker.send({"type": "send", "text": text})
        await speaker.said(texts[-1])
        if sock._resumed is not None:  # pause_writing reached the connection
            break
    assert sock._resumed is not None, "the transport's pause_writing never reached us"
    assert transport.get_protocol() is sock
    slow.conn.transport.resume_reading()
    await slow.said(texts[-1], within=2 * TIMEOUT)
    assert texts_from(slow, "speaker") == texts
    assert sock._resumed is None


async def test_a_websocket_client_cut_as_too_slow_gets_1008_and_the_reason_when_it_reads_again(
    start_server: StartServer, sockets: Sockets, log_watch: LogWatch
) -> None:
    """A WebSocket client that stopped reading and was cut as too slow gets the close frame,
    1008 with the reason, when it comes back, even later than close_grace."""
    server = await start_server(high_water=16384, stall_timeout=1.5, **FAST)
    assert server.web is not None
    # close_grace is what a closing client gets by default; short, so the test is quick
    server.web.limits = replace(server.web.limits, close_grace=0.1)
    speaker = await sockets.ws(server, "speaker")
    slow = await sockets.ws(server, "slow")
    stop_reading(slow)
    throttle_ws(server, "slow")
    pad = "x" * 80
    for chunk in range(20):  # 2,000 messages of ~200 bytes of JSON
        for i in range(100):
            await speaker.send({"type": "send", "text": f"n {chunk:02d}{i:03d} {pad}"})
        await speaker.said(f"n {chunk:02d}099 {pad}")
    await log_watch.wait_for(lambda messages: any(m.startswith("too slow") for m in messages))

    await asyncio.sleep(0.5)  # the scenario, not a wait: it stays away 5 times close_grace
    slow.conn.transport.resume_reading()
    assert await read_to_close(slow, max_events=5000) == (1008, "too slow: not reading for 1.5 s")


async def test_stop_with_websocket_clients_that_never_read_closes_them_all_and_returns(
    start_server: StartServer, sockets: Sockets
) -> None:
    """Stopping the server while clients sit on unread frames closes every connection: they get
    ``close_grace`` to take what is buffered, then they are cut, and stop returns."""
    server = await start_server(high_water=16384, stall_timeout=300.0, max_per_address=0, **FAST)
    assert server.web is not None
    speaker = await sockets.ws(server, "speaker")
    names = [f"slow{i}" for i in range(20)]
    slow: list[Ws] = []
    for name in names:
        slow.append(await sockets.ws(server, name))
        stop_reading(slow[-1])
        throttle_ws(server, name)
    stuck = [ws_transport_of(server, name) for name in names]
    pad = "x" * 80
    for chunk in range(10):
        for i in range(100):
            await speaker.send({"type": "send", "text": f"n {chunk:02d}{i:03d} {pad}"})
        await speaker.said(f"n {chunk:02d}099 {pad}")
    assert all(transport.get_write_buffer_size() > 0 for transport in stuck)

    async with asyncio.timeout(30.0):  # generous: stop must return, not wait for the clients
        await server.stop()
    assert not server.web.sockets
    assert all(transport.is_closing() for transport in stuck)
    assert server.hub.online == 0
    assert await read_to_close(speaker, max_events=2000) == (1001, "server shutting down")
    for ws in slow:  # cut: what was buffered for them may be lost, the connection is over
        ws.conn.transport.resume_reading()
        code, _ = await read_to_close(ws, max_events=2000)
        assert code in (1001, 1006)


async def test_a_client_that_answers_no_ping_is_dropped_by_the_heartbeat(
    start_server: StartServer, sockets: Sockets
) -> None:
    """aiohttp's heartbeat still watches idle connections: one whose client stops answering
    pings is closed, and its room sees it leave."""
    server = await start_server()
    assert server.web is not None
    server.web.limits = replace(server.web.limits, heartbeat=0.5)  # for connections from now on
    witness = await sockets.ws(server, "witness")  # it answers pings: it keeps reading
    mute = await sockets.ws(server, "mute")
    stop_reading(mute)
    presence = await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "mute")
    assert presence["status"] == "offline"
    mute.conn.transport.resume_reading()
    assert (await read_to_close(mute, max_events=100))[0] == 1006  # closed without a word
    await still_chatting(witness, witness, "the witness is still here")


async def test_a_dead_client_with_frames_unsent_is_dropped_by_the_heartbeat(
    start_server: StartServer, sockets: Sockets
) -> None:
    """A client that neither reads nor answers pings, with frames still unsent to it (so its
    connection cannot just finish closing), is dropped once aiohttp's heartbeat gives up on
    it, whether or not its room still talks: its room sees it leave, the socket is cut."""
    server = await start_server(high_water=4 * 2**20, stall_timeout=300.0, **FAST)
    assert server.web is not None
    server.web.limits = replace(server.web.limits, heartbeat=0.5)
    witness = await sockets.ws(server, "witness")
    mute = await sockets.ws(server, "mute")
    stop_reading(mute)
    throttle_ws(server, "mute")
    transport = ws_transport_of(server, "mute")
    pad = "x" * 100
    for i in range(2000):  # far more than the kernel buffers of a throttled path take
        await witness.send({"type": "send", "text": f"n {i:04d} {pad}"})
    last = f"n 1999 {pad}"
    await witness.expect(lambda e: e.get("text") == last, max_frames=2100)
    presence = await witness.expect(lambda e: e["type"] == "presence" and e["from"] == "mute")
    assert presence["status"] == "offline"
    assert transport.is_closing()
    mute.conn.transport.resume_reading()
    await read_to_close(mute, max_events=3000)


async def test_sends_without_ids_that_come_together_are_said_in_order(
    start_server: StartServer, sockets: Sockets
) -> None:
    """Send frames without an id that arrive back to back are stored and broadcast together, in
    order; a refused one in the middle and a ping are answered in their place."""
    server = await start_server(**FAST)
    witness = await sockets.ws(server, "witness")
    speaker = await sockets.ws(server, "speaker")
    texts = [f"run {i:03d}" for i in range(300)]
    frames = [orjson.dumps({"type": "send", "text": text}).decode() for text in texts]
    frames.insert(150, orjson.dumps({"type": "send", "text": "y" * 5000}).decode())
    frames.insert(200, '{"type":"ping","id":7}')
    for frame in frames:
        await speaker.conn.send(frame)
    await witness.said("run 299")
    assert texts_from(witness, "speaker") == texts
    error = await speaker.expect(lambda e: e["type"] == "error")
    assert error["code"] == "bad_text"
    await speaker.reply(7, "pong")
    await speaker.said("run 299")
    assert texts_from(speaker, "speaker") == texts


# --- WebSocket and line clients together, and quitting --------------------------------------


async def test_line_and_websocket_clients_see_each_other(server: Server, sockets: Sockets) -> None:
    """A line-protocol client and a WebSocket client in #general read each other's lines."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.line.port)
    try:

        async def line_until(wanted: str) -> None:
            async with asyncio.timeout(TIMEOUT):
                for _ in range(100):
                    line = (await reader.readline()).decode()
                    assert line, f"the line connection closed before {wanted!r}"
                    if line.rstrip("\r\n") == wanted:
                        return
            raise AssertionError(f"no line {wanted!r} in 100 lines")

        writer.write(b"lina\n")
        await line_until("[#general] --> lina joined")
        ws = await sockets.ws(server, "webby")
        await line_until("[#general] --> webby joined")
        await ws.send({"type": "send", "text": "hi from the web"})
        await line_until("[#general] webby: hi from the web")
        writer.write(b"hi from the terminal\n/me waves\n/msg webby psst\n")
        said = await ws.said("hi from the terminal")
        assert said["from"] == "lina"
        action = await ws.expect(lambda e: e.get("kind") == "action")
        assert (action["from"], action["text"]) == ("lina", "waves")
        dm = await ws.expect(lambda e: e["type"] == "dm")
        assert (dm["from"], dm["to"], dm["text"]) == ("lina", "webby", "psst")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_quit_delivers_what_remains_then_closes_with_1000(
    server: Server, sockets: Sockets
) -> None:
    """After quit, the client still gets its last echo, ok and goodbye, then close 1000; the
    room sees it quit with its reason."""
    bob = await sockets.ws(server, "bob")
    alice = await sockets.ws(server, "alice")
    await alice.send({"type": "send", "text": "last words"})
    rid = await alice.request({"type": "quit", "reason": "bye now"})
    code, _ = await alice.closed()
    assert code == 1000
    tail = [e for e in alice.events if e["type"] in ("message", "ok", "info")]
    assert {"type": "ok", "id": rid} in tail
    assert [e.get("text") for e in tail if e["type"] != "ok"][-2:] == ["last words", "goodbye"]
    presence = await bob.expect(lambda e: e["type"] == "presence")
    assert (presence["from"], presence["reason"]) == ("alice", "bye now")
    assert [e.get("text") for e in bob.events if e["type"] == "message"] == ["last words"]
