"""End to end: how many connections a client may hold, and how long it may hold one without
doing its part, over real sockets.

Each test runs an in-process ``Server`` on port 0 with small caps (3 per address, a handful in
total) so that it opens few connections; other client addresses are other loopback addresses
(127.0.0.2, 127.0.0.3: the whole 127/8 is loopback on Linux). HTTP goes through aiohttp's
client, except where a client must misbehave below HTTP (send half a request, nothing at
all): those are raw asyncio streams. Every connection opened is closed by the test or its
fixtures.

No test sleeps to wait for something: each awaits the line, response, close or log line it
needs under a timeout. A client dribbling headers sends one line per read timeout: that pace
is the attack, not a wait.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, suppress
from typing import Any, cast

import aiohttp
import orjson
import pytest

from roomcast.server import Server
from roomcast.wire.line import GREETING
from tests.e2e.conftest import TIMEOUT, Client, Clients, LogWatch, StartServer, on_asyncio_only

Obj = dict[str, Any]  # one decoded JSON object
FAST = {"rate": 1_000_000.0, "burst": 1_000_000}  # no flood control in the way
CROWDED = "! too many connections from your address (at most 3 at once): close one and try again"


def base(server: Server) -> str:
    """The server's HTTP root URL."""
    assert server.web is not None
    return f"http://127.0.0.1:{server.web.port}"


@pytest.fixture
async def streams(start_server: StartServer) -> AsyncIterator[AsyncExitStack]:
    """Closes the raw streams and HTTP sessions a test opens, before the servers stop."""
    async with AsyncExitStack() as stack:
        yield stack


async def http_from(stack: AsyncExitStack, source: str = "127.0.0.1") -> aiohttp.ClientSession:
    """An HTTP client whose connections come from ``source`` and close after each request."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT * 2)
    return await stack.enter_async_context(
        aiohttp.ClientSession(connector=connector, timeout=timeout)
    )


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, Obj]:
    """GET ``url``: the status and the JSON body."""
    async with http.get(url) as response:
        return response.status, orjson.loads(await response.read())


async def raw(
    stack: AsyncExitStack, server: Server, source: str = "127.0.0.1", *, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP connection to the HTTP port from ``source`` (with a small receive buffer
    if ``rcvbuf``), closed after the test."""
    assert server.web is not None
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.web.port))
    reader, writer = await asyncio.open_connection(sock=sock)

    async def close() -> None:
        writer.close()
        with suppress(ConnectionError):
            await writer.wait_closed()

    stack.push_async_callback(close)
    return reader, writer


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response with a Content-Length: status, headers, body."""
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


async def eof(reader: asyncio.StreamReader, within: float = TIMEOUT) -> bytes:
    """Everything the server sends until it closes (fails after ``within`` s)."""
    async with asyncio.timeout(within):
        return await reader.read()


async def refusal(client: Client) -> list[str]:
    """What a refused line client reads before the connection closes."""
    return await client.read_to_eof(max_lines=5)


async def health(server: Server, stack: AsyncExitStack, source: str = "127.0.0.9") -> Obj:
    """GET /health from ``source`` (by default an address no test crowds)."""
    status, body = await get(await http_from(stack, source), base(server) + "/health")
    assert status == 200, body
    return body


# --- a cap per address, shared by both listeners ----------------------------------------------


async def test_one_address_cannot_take_every_line_connection(
    start_server: StartServer, clients: Clients, log_watch: LogWatch
) -> None:
    """Three unnamed line connections from one address fill its cap: the fourth reads one
    line saying why and is closed; another address still gets in and chats."""
    server = await start_server(max_per_address=3, max_connections=10)
    for _ in range(3):
        idle = await clients.connect(server)
        assert await idle.readline() == GREETING
    fourth = await clients.connect(server)
    assert await refusal(fourth) == [CROWDED]
    bob = await clients.connect(server, "bob", source="127.0.0.2")
    await bob.send("still open to others")
    await bob.expect("[#general] bob: still open to others", exact=True)
    assert any(
        m.startswith(f"connection refused peer={fourth.peer} transport=line")
        and "limit=max_per_address open=3" in m
        for m in log_watch.messages
    )


async def test_line_and_http_connections_of_an_address_count_together(
    start_server: StartServer, clients: Clients, streams: AsyncExitStack
) -> None:
    """One kept-alive HTTP connection and two line connections fill a cap of 3: a fourth
    line connection is told why; an HTTP request gets 429 with a JSON error, a WebSocket
    handshake 429 too; /health counts the refusals."""
    server = await start_server(max_per_address=3, max_connections=10)
    reader, writer = await raw(streams, server, "127.0.0.2")
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # kept alive after
    assert (await response(reader))[0] == 200
    for _ in range(2):
        line = await clients.connect(server, source="127.0.0.2")
        assert await line.readline() == GREETING
    assert await refusal(await clients.connect(server, source="127.0.0.2")) == [CROWDED]
    http = await http_from(streams, "127.0.0.2")
    status, body = await get(http, base(server) + "/api/rooms")
    assert status == 429
    assert body["error"] == {"code": "too_many_connections", "message": CROWDED[2:]}
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(base(server).replace("http:", "ws:") + "/ws")
    assert caught.value.status == 429
    counts = await health(server, streams)
    assert counts["refused"]["max_per_address"] == 3


async def test_an_address_far_over_its_cap_is_closed_without_an_answer(
    start_server: StartServer, clients: Clients, streams: AsyncExitStack, log_watch: LogWatch
) -> None:
    """Refusals being told hold descriptors too: with a cap of 2, two HTTP connections that
    wait to be told are the most; the next is closed at once, without a byte; the two
    waiting are told 429 once they send their request."""
    server = await start_server(max_per_address=2, max_connections=10)
    for _ in range(2):
        assert await (await clients.connect(server)).readline() == GREETING
    waiting = [await raw(streams, server) for _ in range(2)]
    await log_watch.wait_for(
        lambda said: sum("transport=http limit=max_per_address" in m for m in said) == 2
    )
    reader, _ = await raw(streams, server)
    assert await eof(reader) == b""
    assert any("closed without an answer" in m for m in log_watch.messages)
    for reader, writer in waiting:
        writer.write(b"GET /api/rooms HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = await response(reader)
        assert status == 429 and headers["connection"] == "close"
        assert orjson.loads(body)["error"]["code"] == "too_many_connections"
        assert await eof(reader) == b""


# --- a cap on all connections ----------------------------------------------------------------


async def test_a_full_server_tells_everyone_so_and_admits_again_once_one_leaves(
    start_server: StartServer, clients: Clients, streams: AsyncExitStack, log_watch: LogWatch
) -> None:
    """With room for 3 connections, a fourth line client is told the server is full, an
    HTTP request gets 503 server_full; once one client leaves, a new one gets in."""
    server = await start_server(max_per_address=10, max_connections=3)
    held = [await clients.connect(server, f"user{i}") for i in range(3)]
    full = "! the server is full (3 connections): try again later"
    assert await refusal(await clients.connect(server, source="127.0.0.2")) == [full]
    status, body = await get(await http_from(streams, "127.0.0.3"), base(server) + "/health")
    assert (status, body["error"]["code"]) == (503, "server_full")
    await held[0].close()
    await log_watch.wait_for(
        lambda said: any(m.startswith(f"disconnect peer={held[0].peer} ") for m in said)
    )
    await clients.connect(server, "newcomer", source="127.0.0.2")
    await held[1].close()
    await log_watch.wait_for(
        lambda said: any(m.startswith(f"disconnect peer={held[1].peer} ") for m in said)
    )
    counts = await health(server, streams)
    assert counts["connections"] == 3  # user2, newcomer and this request
    assert counts["refused"]["max_connections"] == 2


@on_asyncio_only
async def test_serve_raises_the_open_files_limit_and_caps_connections_below_it() -> None:
    """Started with a soft open-files limit of 256 under a higher hard one, ``roomcast
    serve`` raises it to the hard one and says so, with the connection cap derived from
    it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("needs a finite hard open-files limit above 256")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast.cli",
        "serve",
        "--port",
        "0",
        "--http-port",
        "-1",
        "--store",
        "memory:",
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=lower,
        env={**os.environ, "XDG_DATA_HOME": "/nonexistent"},
    )
    log: list[str] = []
    try:
        assert child.stderr is not None
        async with asyncio.timeout(10.0):
            for _ in range(50):
                log.append((await child.stderr.readline()).decode().rstrip("\n"))
                if " listening line=" in log[-1] or not log[-1]:
                    break
    finally:
        child.terminate()
        await child.communicate()
    cap = hard - max(64, hard // 10)
    said = f"open files: soft limit raised from 256 to {hard} (the hard limit)"
    assert any(
        said in line and f"at most {cap} connections, 20 per address" in line for line in log
    ), log


# --- deadlines ---------------------------------------------------------------------------------


async def test_a_line_connection_that_gives_no_name_is_closed_with_the_reason(
    start_server: StartServer, clients: Clients, streams: AsyncExitStack, log_watch: LogWatch
) -> None:
    """A connection that sends half a name and stops is told why and closed after
    name_timeout; a client named before it is not disturbed."""
    server = await start_server(name_timeout=0.3)
    bob = await clients.connect(server, "bob")
    mute = await clients.connect(server)
    assert await mute.readline() == GREETING
    await mute.send_raw(b"ali")  # no newline: a name that never ends
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await mute.read_to_eof(max_lines=5) == ["! closing: no name given within 0.3 s"]
    assert loop.time() - start < 0.3 + 2.0
    await bob.send("after the deadline")
    await bob.expect("[#general] bob: after the deadline", exact=True)
    assert any(m.startswith(f"no name peer={mute.peer}") for m in log_watch.messages)
    assert (await health(server, streams))["refused"]["name_timeout"] == 1


async def test_a_client_dribbling_http_headers_is_cut_at_the_header_deadline(
    start_server: StartServer, streams: AsyncExitStack, log_watch: LogWatch
) -> None:
    """Slowloris: a client that sends one header line after another, never the end of the
    headers, gets 408 with a JSON error and is closed header_timeout after it connected:
    the bytes it keeps sending do not extend the deadline."""
    server = await start_server(header_timeout=0.5)
    reader, writer = await raw(streams, server)
    loop = asyncio.get_running_loop()
    start = loop.time()
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    answered = False
    for i in range(100):  # one header line per 0.05 s: 5 s at most
        writer.write(b"X-Drip-%d: x\r\n" % i)
        try:
            async with asyncio.timeout(0.05):
                await reader.readuntil(b"HTTP/1.1 ")
            answered = True
            break
        except TimeoutError:
            continue
    took = loop.time() - start
    assert answered, "the dribbling client was never cut"
    assert 0.4 <= took < 0.5 + 1.5, took
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"408 ")
    body = await eof(reader)
    assert orjson.loads(body)["error"]["code"] == "timeout"
    await log_watch.wait_for(
        lambda said: any(
            m.startswith("http request headers not received within 0.5 s") for m in said
        )
    )
    assert (await health(server, streams))["refused"]["header_timeout"] == 1


async def test_an_http_connection_that_sends_nothing_is_closed_at_the_header_deadline(
    start_server: StartServer, streams: AsyncExitStack
) -> None:
    """A connection that never sends a byte is closed, without a word, header_timeout after
    it was opened; it no longer counts."""
    server = await start_server(header_timeout=0.3, max_per_address=1)
    reader, _ = await raw(streams, server, "127.0.0.2")
    assert await eof(reader) == b""
    counts = await health(server, streams, "127.0.0.2")  # its place is free again
    assert counts["refused"]["header_timeout"] == 1


async def test_an_http_body_that_does_not_come_is_answered_408(
    start_server: StartServer, streams: AsyncExitStack, log_watch: LogWatch
) -> None:
    """A POST announcing 100 bytes that sends 10 gets 408 with a JSON error after
    body_timeout, and the connection closes."""
    server = await start_server(body_timeout=0.3)
    reader, writer = await raw(streams, server)
    writer.write(
        b"POST /api/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"name": '
    )
    status, headers, body = await response(reader)
    assert status == 408 and headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error == {"code": "timeout", "message": "the request body did not come within 0.3 s"}
    assert await eof(reader) == b""
    assert any(
        m.startswith("http request body not received within 0.3 s") for m in log_watch.messages
    )
    assert (await health(server, streams))["refused"]["body_timeout"] == 1


async def test_a_websocket_that_answers_no_ping_is_closed_and_its_rooms_see_why(
    start_server: StartServer, clients: Clients, streams: AsyncExitStack
) -> None:
    """A WebSocket client that sends nothing and answers no ping is closed after the
    heartbeat and half of it; its rooms see it quit 'no answer to ping'. One that answers
    pings (it reads all the while) stays."""
    server = await start_server(ws_heartbeat=0.4)
    witness = await clients.connect(server, "witness")
    http = await http_from(streams)
    url = base(server).replace("http:", "ws:") + "/ws"
    lively = await streams.enter_async_context(http.ws_connect(url, autoping=True))
    sleepy = await streams.enter_async_context(http.ws_connect(url, autoping=False))
    pong = asyncio.Event()

    async def read_lively() -> None:  # reading is what answers pings (aiohttp's autoping)
        for _ in range(10_000):
            msg = await lively.receive()
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            frame = orjson.loads(msg.data)
            events = frame["events"] if frame["type"] == "batch" else [frame]
            if any(e["type"] == "pong" for e in events):
                pong.set()

    reader = asyncio.create_task(read_lively())
    streams.callback(reader.cancel)
    for ws, name in ((lively, "lively"), (sleepy, "sleepy")):
        await ws.send_json({"type": "hello", "name": name, "id": 1})
    await witness.expect("[#general] --> sleepy joined", exact=True)
    kinds = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(100):
            msg = await sleepy.receive()
            kinds.append(msg.type)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                break
    assert aiohttp.WSMsgType.PING in kinds and kinds[-1] in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSED,
    ), kinds
    await witness.expect("[#general] <-- sleepy quit (no answer to ping)", exact=True)
    await lively.send_json({"type": "ping", "id": 2})
    async with asyncio.timeout(TIMEOUT):
        await pong.wait()
    assert (await health(server, streams))["refused"]["ws_heartbeat"] == 1


async def test_an_event_stream_whose_client_stops_reading_is_cut_after_the_stall_timeout(
    start_server: StartServer, clients: Clients, streams: AsyncExitStack, log_watch: LogWatch
) -> None:
    """An SSE client that stops reading while its room is busy is cut once writing to it
    has been blocked for stall_timeout; the stream no longer counts; the room goes on."""
    # 2 s: the kernel gives up on the stream at twice that (TCP_USER_TIMEOUT, zero window
    # included), without a word; a smaller margin may lose the race on a loaded machine
    server = await start_server(stall_timeout=2.0, **FAST)
    reader, writer = await raw(streams, server, rcvbuf=4096)
    writer.write(b"GET /api/rooms/general/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        await reader.readuntil(b"retry: 2000")
    cast(asyncio.Transport, writer.transport).pause_reading()  # a client that reads no more
    flood = await clients.connect(server, "flood")
    text = "x" * 3990  # with its number, about the longest text a message may have

    def cut(said: list[str]) -> bool:
        return any("too slow" in m and "transport=sse" in m for m in said)

    for round_ in range(20):  # 1.2 MB a round until the kernel's buffers are full
        await flood.send(*[f"{i} {text}" for i in range(300)], f"done {round_}")
        await flood.skip_until(f"[#general] flood: done {round_}", within=30.0)
        if cut(log_watch.messages):
            break
    await log_watch.wait_for(cut, within=10.0)
    counts = await health(server, streams)
    assert counts["streams"] == 0 and counts["refused"]["stall_timeout"] == 1
    await flood.send("still going")
    await flood.expect("[#general] flood: still going", exact=True)


async def test_an_event_stream_gives_up_on_a_vanished_client_after_twice_the_stall_timeout(
    start_server: StartServer, streams: AsyncExitStack
) -> None:
    """A client that vanished without a word (no FIN, no reset) acknowledges nothing: the
    stream's socket tells the kernel to give up on data unacknowledged for twice
    stall_timeout (TCP_USER_TIMEOUT), rather than the 15 minutes of retries TCP takes by
    default. (Twice: a client that is merely slow is cut by the write deadline first.)"""
    if not hasattr(socket, "TCP_USER_TIMEOUT"):
        pytest.skip("TCP_USER_TIMEOUT is Linux's")
    server = await start_server(stall_timeout=7.5)
    reader, writer = await raw(streams, server)
    writer.write(b"GET /api/rooms/general/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        await reader.readuntil(b"retry: 2000")
    mine = writer.get_extra_info("sockname")
    found = []
    for name in os.listdir("/proc/self/fd"):  # the server's end is a socket of this process
        with suppress(OSError):
            fd = os.dup(int(name))
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # not a socket
                os.close(fd)
                continue
            with sock:
                if sock.type == socket.SOCK_STREAM and sock.getpeername() == mine:
                    found.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
    assert found == [15000]
