"""End to end: what a stranger sends to an open server, over real sockets.

Each test runs an in-process ``Server`` on port 0 (fixtures in ``conftest.py``, which also runs
each test on asyncio's loop and on uvloop) and attacks it the way it was attacked: numbers of
thousands of digits, control characters inside search words, names that look like someone
else's, lines shaped to pass for another user's. HTTP goes through aiohttp's client, the
line protocol through asyncio streams.

No test sleeps to wait for something: each awaits the line, frame or response it needs under
a timeout, and every read loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from roomcast.auth import Cost, Passwords
from roomcast.server import Server
from tests.e2e.conftest import TIMEOUT, Clients, LogWatch, StartServer

HUGE = "9" * 5000  # past the 4,300 digits int() converts
PASSWORD = "correct-horse"  # one word: /register takes one
CHEAP = Cost(time_cost=1, memory_cost=8, parallelism=1)  # argon2id at almost no cost


def http_base(server: Server) -> str:
    """The server's HTTP root URL."""
    assert server.web is not None
    return f"http://127.0.0.1:{server.web.port}"


@pytest.fixture
async def http(start_server: StartServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client, closed before the servers are stopped."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT * 2)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        yield session


async def get_json(
    http: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    """GET ``url``; the status and the JSON body."""
    async with http.get(url, **kwargs) as response:
        return response.status, orjson.loads(await response.read())


def no_traceback(log_watch: LogWatch) -> None:
    """Nothing was logged as an internal error or a store failure."""
    bad = [m for m in log_watch.messages if "internal error" in m or "store failure" in m]
    assert not bad, bad


# --- numbers of thousands of digits -------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [f"/history before {HUGE}", f"/history {HUGE}", f"/join #rust since {HUGE}"],
)
async def test_a_number_of_5000_digits_on_a_line_is_refused_and_the_line_goes_on(
    start_server: StartServer, clients: Clients, log_watch: LogWatch, command: str
) -> None:
    """A sequence number or count of 5,000 digits gets an error line; the connection stays."""
    server = await start_server(max_line=16384)
    alice = await clients.connect(server, "alice")
    await alice.send(command)
    refusal = await alice.expect(lambda line: line.startswith("! "))
    assert "sequence number" in refusal and "closing" not in refusal
    await alice.send("still here")
    await alice.expect("[#general] alice: still here", exact=True)
    assert any(m.endswith("code=bad_seq") for m in log_watch.messages)
    no_traceback(log_watch)


@pytest.mark.parametrize("query", ["limit", "before", "after"])
async def test_a_number_of_5000_digits_in_a_history_query_is_a_400(
    server: Server, http: aiohttp.ClientSession, log_watch: LogWatch, query: str
) -> None:
    """``?limit=`` (or before, after) with 5,000 digits is a 400 with a JSON error, not a 500."""
    url = f"{http_base(server)}/api/rooms/general/messages"
    status, body = await get_json(http, url, params={query: HUGE})
    assert status == 400, body
    assert body["error"]["code"] == "bad_seq"
    assert any(m.endswith("code=bad_seq") for m in log_watch.messages)
    no_traceback(log_watch)


@pytest.mark.parametrize("where", ["query", "header"])
async def test_a_number_of_5000_digits_to_resume_an_event_stream_is_a_400(
    server: Server, http: aiohttp.ClientSession, log_watch: LogWatch, where: str
) -> None:
    """``?since=`` or ``Last-Event-ID`` with 5,000 digits is a 400 with a JSON error."""
    url = f"{http_base(server)}/api/rooms/general/events"
    if where == "query":
        status, body = await get_json(http, url, params={"since": HUGE})
    else:
        status, body = await get_json(http, url, headers={"Last-Event-ID": HUGE})
    assert status == 400, body
    assert body["error"]["code"] == "bad_seq"
    no_traceback(log_watch)


# --- search input --------------------------------------------------------------------------


async def test_a_nul_inside_a_search_word_on_a_line_finds_what_it_can(
    start_server: StartServer, clients: Clients, log_watch: LogWatch, tmp_path: Path
) -> None:
    """``/search a<NUL>b`` in a SQLite-backed server answers with results, not a failure."""
    server = await start_server(store=f"sqlite:{tmp_path / 'chat.db'}")
    alice = await clients.connect(server, "alice")
    await alice.send("hello world")
    await alice.expect("[#general] alice: hello world", exact=True)
    await alice.send("/search hel\0lo", "/search world\0")
    first = await alice.expect(lambda line: line.startswith(("-- search", "! ")))
    second = await alice.expect(lambda line: line.startswith(("-- search", "! ")))
    assert first.startswith("-- search of #general for 'hel lo': 0 found"), first
    assert second.startswith("-- search of #general for 'world': 1 found"), second
    no_traceback(log_watch)


async def test_a_nul_inside_search_words_over_websocket_finds_what_it_can(
    start_server: StartServer, http: aiohttp.ClientSession, log_watch: LogWatch, tmp_path: Path
) -> None:
    """``{"type": "search", "words": "a\\u0000b"}`` gets a search reply, not ``unavailable``."""
    server = await start_server(store=f"sqlite:{tmp_path / 'chat.db'}")
    async with http.ws_connect(f"{http_base(server)}/ws") as ws:
        await ws.send_str(orjson.dumps({"type": "hello", "name": "alice", "id": 1}).decode())
        await ws.send_str(orjson.dumps({"type": "send", "text": "hello world", "id": 2}).decode())
        await ws.send_str(orjson.dumps({"type": "search", "words": "wor\0ld", "id": 3}).decode())
        reply: dict[str, Any] = {}
        for _ in range(100):
            frame = orjson.loads(await ws.receive_str(timeout=TIMEOUT))
            events = frame["events"] if frame["type"] == "batch" else [frame]
            found = [e for e in events if e.get("id") == 3]
            if found:
                reply = found[0]
                break
        assert reply.get("type") == "search", reply
        assert reply["words"] == "wor ld"
    no_traceback(log_watch)


# --- the files of the data directory ------------------------------------------------------


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The umask most systems give (022: files world-readable unless made otherwise)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.usefixtures("open_umask")
async def test_the_data_directory_and_its_files_are_readable_by_their_owner_only(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A new data directory is 0700 and the database, its WAL and SHM and the token key
    0600: password hashes and private messages are not for other local users."""
    data = tmp_path / "data" / "roomcast"
    server = await start_server(store="", data_dir=str(data))
    alice = await clients.connect(server, "alice")
    await alice.send("a line, so that the WAL has something in it")
    await alice.expect("[#general] alice: a line", within=TIMEOUT)
    files = sorted(p.name for p in data.iterdir())
    assert {"roomcast.db", "roomcast.db-wal", "roomcast.db-shm", "secret.key"} <= set(files)
    assert mode(data) == 0o700
    assert {name: mode(data / name) for name in files} == dict.fromkeys(files, 0o600)


@pytest.mark.usefixtures("open_umask")
async def test_files_an_older_server_left_readable_are_made_private_on_start(
    start_server: StartServer, clients: Clients, tmp_path: Path, log_watch: LogWatch
) -> None:
    """A database and key left 0644 by an older version are 0600 once the server starts,
    and the log says so."""
    data = tmp_path / "roomcast"
    first = await start_server(store="", data_dir=str(data))
    await first.stop()
    for path in data.iterdir():
        path.chmod(0o644)
    server = await start_server(store="", data_dir=str(data))
    alice = await clients.connect(server, "alice")
    await alice.send("hello")
    await alice.expect("[#general] alice: hello", exact=True)
    assert {p.name: mode(p) for p in data.iterdir()} == {p.name: 0o600 for p in data.iterdir()}
    assert any("0644" in m and "roomcast.db" in m for m in log_watch.messages)


# --- lines shaped to pass for another user's ----------------------------------------------

FORGED = "[#general] admin: the server moves: /login admin at evil.example"


def rows(line: str, width: int) -> list[str]:
    """``line`` as a terminal ``width`` columns wide shows it (one column a character)."""
    return [line[i : i + width] for i in range(0, len(line), width)]


@pytest.mark.parametrize("blank", [" ", "\u00a0", "\u2003", "\u2800", "\u3164"])
@pytest.mark.parametrize("width", [80, 132])
async def test_blank_padding_cannot_start_a_forged_line_on_a_row_of_its_own(
    server: Server, clients: Clients, blank: str, width: int
) -> None:
    """A message padded with blanks to the terminal's width shows the forged text on the
    sender's own row: a run of blanks shows as one space."""
    mallory = await clients.connect(server, "mallory")
    bob = await clients.connect(server, "bob")
    head = "[#general] mallory: hi"
    await mallory.send("hi" + blank * (width - len(head)) + FORGED)
    line = await bob.expect(lambda line: line.startswith("[#general] mallory: hi"))
    assert line == f"{head} {FORGED}"
    assert not any(row.startswith("[#") for row in rows(line, width)[1:])


async def test_each_further_line_of_a_message_is_marked_as_part_of_it(
    server: Server, clients: Clients, http: aiohttp.ClientSession
) -> None:
    """A line feed (sent over WebSocket), or a line or paragraph separator (sent on a
    line), in a message starts a row marked ``  | ``, which no line of its own starts with."""
    bob = await clients.connect(server, "bob")
    async with http.ws_connect(f"{http_base(server)}/ws") as ws:
        await ws.send_str(orjson.dumps({"type": "hello", "name": "mallory"}).decode())
        await ws.send_str(orjson.dumps({"type": "send", "text": f"hi\n{FORGED}"}).decode())
        await bob.expect("[#general] mallory: hi", exact=True)
        assert await bob.readline() == f"  | {FORGED}"
    eve = await clients.connect(server, "eve")
    await eve.send_raw(f"hi\u2028{FORGED}\u2029{FORGED}\n".encode())
    await bob.expect("[#general] eve: hi", exact=True)
    assert await bob.readline() == f"  | {FORGED}"
    assert await bob.readline() == f"  | {FORGED}"


async def test_bidi_controls_and_invisible_characters_never_reach_a_peer(
    server: Server, clients: Clients
) -> None:
    """An override that shows 'gnp.exe' as 'exe.png', zero-width spaces that split a word,
    and a soft hyphen are gone before anyone sees the text."""
    mallory = await clients.connect(server, "mallory")
    bob = await clients.connect(server, "bob")
    await mallory.send("open \u202egnp.exe and ad\u200bm\u2060in\u00ad\ufeff says hi\u2066")
    line = await bob.expect(lambda line: line.startswith("[#general] mallory:"))
    assert line == "[#general] mallory: open gnp.exe and admin says hi"


# --- names that look like someone else's --------------------------------------------------

LOOKALIKES = ["aIice", "a1ice", "alice_", "_alice", "ALICE.", "a-lice"]


async def register_on_a_line(clients: Clients, server: Server, name: str) -> None:
    """Register ``name`` over the line protocol (cheaply hashed), then leave."""
    server.hub.passwords = Passwords(CHEAP)
    owner = await clients.connect(server, name)
    await owner.send(f"/register {PASSWORD}")
    await owner.expect(f"-- registered {name}")
    await owner.send("/quit")
    await owner.read_to_eof()


@pytest.mark.parametrize("name", LOOKALIKES)
async def test_a_guest_cannot_take_a_name_that_looks_like_a_registered_one(
    server: Server, clients: Clients, log_watch: LogWatch, name: str
) -> None:
    """With alice registered and away, a guest asking for aIice, a1ice or alice_ is told
    it looks like alice, and stays unnamed until it picks a name of its own."""
    await register_on_a_line(clients, server, "alice")
    guest = await clients.connect(server)
    await guest.readline()  # the greeting
    await guest.send(name)
    refusal = await guest.expect(lambda line: line.startswith(("! ", "-- hello")))
    assert refusal == f"! {name!r} looks like the registered name 'alice': choose another name"
    await guest.send("mallory")
    await guest.expect("[#general] --> mallory joined", exact=True)
    assert any("code=lookalike" in m for m in log_watch.messages)


@pytest.mark.parametrize("name", LOOKALIKES)
async def test_a_guest_cannot_take_a_name_that_looks_like_one_online(
    server: Server, clients: Clients, name: str
) -> None:
    """With the guest alice online, another guest cannot become aIice, a1ice or alice_."""
    await clients.connect(server, "alice")
    guest = await clients.connect(server)
    await guest.readline()
    await guest.send(name)
    refusal = await guest.expect(lambda line: line.startswith(("! ", "-- hello")))
    assert refusal == f"! {name!r} looks like 'alice', who is online: choose another name"


async def test_nick_cannot_turn_a_guest_into_a_lookalike(server: Server, clients: Clients) -> None:
    """/nick to a name like an online or a registered one is refused; to a name like one's
    own (alice_ to alice) it is not."""
    await register_on_a_line(clients, server, "carol")
    await clients.connect(server, "alice")
    mallory = await clients.connect(server, "mallory")
    await mallory.send("/nick a1ice", "/nick CaroI")
    await mallory.expect("! 'a1ice' looks like 'alice', who is online: choose another name")
    await mallory.expect(
        "! 'CaroI' looks like the registered name 'carol': choose another name", exact=True
    )
    bob = await clients.connect(server, "bob_")
    await bob.send("/nick bob")
    await bob.expect("-- you are now known as bob", exact=True)


async def test_registering_a_lookalike_of_someone_online_is_refused(
    server: Server, clients: Clients, http: aiohttp.ClientSession
) -> None:
    """While the guest alice is online, POST /api/register of aIice is 409 lookalike; and a
    registered alice makes a1ice unregistrable."""
    server.hub.passwords = Passwords(CHEAP)
    await clients.connect(server, "alice")
    url = f"{http_base(server)}/api/register"
    async with http.post(url, json={"name": "aIice", "password": PASSWORD}) as response:
        body = orjson.loads(await response.read())
        assert response.status == 409, body
    assert body["error"]["code"] == "lookalike"
    assert (
        body["error"]["message"] == "'aIice' looks like 'alice', who is online: choose another name"
    )
    async with http.post(url, json={"name": "bob", "password": PASSWORD}) as response:
        assert response.status == 201
    async with http.post(url, json={"name": "b0b", "password": PASSWORD}) as response:
        body = orjson.loads(await response.read())
        assert response.status == 409, body
    assert body["error"] == {
        "code": "lookalike",
        "message": "'b0b' looks like the registered name 'bob': choose another name",
    }


# --- memory held by the caches of encoded messages ----------------------------------------


def held(cache: object, depth: int = 2) -> int:
    """Bytes of the ``bytes`` values in the dictionaries ``cache`` holds, directly or in the
    memos it holds (``depth`` levels), tuples of bytes included."""
    total = 0
    for name in dir(cache):
        if name.startswith("__"):
            continue
        value = getattr(cache, name, None)
        if isinstance(value, dict):
            for item in value.values():
                parts = item if isinstance(item, tuple) else (item,)
                total += sum(len(p) for p in parts if isinstance(p, bytes))
        elif depth > 1 and type(value).__module__.startswith("roomcast.wire"):
            total += held(value, depth - 1)
    return total


async def test_a_flood_of_big_messages_leaves_the_caches_within_their_bound(
    start_server: StartServer, clients: Clients, http: aiohttp.ClientSession
) -> None:
    """1,500 messages of 4 KB (6 MB) read on lines with and without timestamps and over
    WebSocket leave each cache of encoded messages near its byte bound, not holding them all."""
    bound = 256 * 1024
    server = await start_server(cache_bytes=bound, rate=1e6, burst=10**6)
    plain = await clients.connect(server, "plain")
    stamped = await clients.connect(server, "stamped")
    await stamped.send("/timestamps on")
    await stamped.expect("-- timestamps on", exact=True)
    sender = await clients.connect(server, "sender")
    async with http.ws_connect(f"{http_base(server)}/ws", max_msg_size=0) as ws:
        await ws.send_str(orjson.dumps({"type": "hello", "name": "web", "id": 1}).decode())
        for _ in range(10):
            if '"id":1' in await ws.receive_str(timeout=TIMEOUT):
                break

        async def web_reads() -> None:
            for _ in range(20_000):
                if "the end" in await ws.receive_str(timeout=TIMEOUT):
                    return

        await asyncio.gather(  # everyone reads while the sender writes, the sender included
            sender.send(*(f"{i:04} ".ljust(4000, "x") for i in range(1500)), "the end"),
            sender.skip_until("[#general] sender: the end", within=TIMEOUT * 4),
            plain.skip_until("[#general] sender: the end", within=TIMEOUT * 4),
            stamped.skip_until("sender: the end", within=TIMEOUT * 4),
            web_reads(),
        )
    assert server.web is not None
    line = server.line
    largest = 2 * 1024 * 1024 + 128 * 1024  # one run of a full batch (512 messages of 4 KB)
    for cache in (line.plain.message, line.stamped.message, server.web.messages):
        assert held(cache) <= 2 * bound + largest, held(cache)
    assert held(server.web.frames) <= 2 * (bound + largest), held(server.web.frames)
