"""End to end: roomcast as an open server under attack, over real sockets.

Each test stands for something an attacker could do to a server on the internet: keep using a
token after its account was deleted or its password changed, guess passwords with requests
in parallel, lock a user out from another address, flood registrations, or take a name (or
one that looks like it) while its registration hashes. HTTP goes through aiohttp's client,
WebSocket through ``websockets``, the line protocol through asyncio streams; the account
commands through ``roomcast user`` (``main``, in a thread) on the same SQLite file as the
server.

No test sleeps to wait for something: each awaits the answer, line or frame it needs under a
timeout. docs/security.md describes the threat model and the limits tested here.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from roomcast.auth import Cost, Passwords
from roomcast.cli import main
from roomcast.server import Server
from roomcast.wire.line import GREETING
from tests.e2e.conftest import Clients
from tests.e2e.test_web_api import Sockets, fetch, http_base, refused

StartServer = Callable[..., Awaitable[Server]]  # the ``start_server`` fixture of conftest.py
Obj = dict[str, Any]

PASSWORD = "correct horse"  # every account's password
CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, test-sized
# Costly enough (some 10-50 ms a hash) that requests sent together are checked together.
SLOW = Cost(time_cost=2, memory_cost=16384, parallelism=1)
FAST = {"rate": 100_000.0, "burst": 100_000}  # server limits that never call a test a flood
# connections at once from one address: no cap (these tests send hundreds in parallel from
# 127.0.0.1 to test the account limits; tests/e2e/test_connections.py tests the cap)
ONE_ADDRESS_MANY = {"max_per_address": 0}
TIMEOUT = 10.0  # seconds one request or read may take


@pytest.fixture
def start_server(start_server: StartServer, tmp_path: Path) -> StartServer:
    """conftest's ``start_server`` with cheap argon2id and its data (signing key) in
    ``tmp_path``; ``cost=`` picks another argon2id cost."""

    async def start(*, cost: Cost = CHEAP, **overrides: Any) -> Server:
        server = await start_server(**({"data_dir": str(tmp_path)} | overrides))
        config = server.config
        server.hub.passwords.close()
        server.hub.passwords = Passwords(cost, workers=config.hash_workers, queue=config.hash_queue)
        return server

    return start


@pytest.fixture
async def http(start_server: StartServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session without a connection limit, closed before the servers stop."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


@pytest.fixture
async def sockets(start_server: StartServer) -> AsyncIterator[Sockets]:
    """Opens WebSocket clients; they are closed before the servers are stopped."""
    opened = Sockets()
    yield opened
    await opened.close_all()


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A SQLite file that the server and ``roomcast user`` share; nothing reaches the user's
    own data directory."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("ROOMCAST_STORE", raising=False)
    return f"sqlite:{tmp_path / 'rc.db'}"


async def user_command(
    monkeypatch: pytest.MonkeyPatch, store_url: str, *args: str, password: str | None = None
) -> int:
    """Run ``roomcast user ARGS --store STORE_URL`` (with ``password`` on standard input, if
    given) in a thread, as an operator would beside the running server; its exit status."""
    monkeypatch.setattr("roomcast.cli.Passwords", lambda: Passwords(CHEAP))
    argv = ["user", *args, "--store", store_url]
    if password is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        argv.append("--password-stdin")
    return await asyncio.to_thread(main, argv)


async def _token(
    http: aiohttp.ClientSession, server: Server, path: str, status: int, name: str, password: str
) -> str:
    """POST ``name`` and ``password`` to ``path``, expecting ``status``; the token."""
    got, body = await fetch(http, server, "POST", path, json={"name": name, "password": password})
    assert got == status, body
    token: str = body["token"]
    return token


async def register(
    http: aiohttp.ClientSession, server: Server, name: str, password: str = PASSWORD
) -> str:
    """Register ``name`` over HTTP; its token."""
    return await _token(http, server, "/api/register", 201, name, password)


async def log_in(
    http: aiohttp.ClientSession, server: Server, name: str, password: str = PASSWORD
) -> str:
    """Log ``name`` in over HTTP; its token."""
    return await _token(http, server, "/api/login", 200, name, password)


async def post_as(
    http: aiohttp.ClientSession, server: Server, token: str, text: str
) -> tuple[int, Obj]:
    """POST ``text`` to #general with ``token``; the status and body."""
    path = "/api/rooms/general/messages"
    return await fetch(http, server, "POST", path, json={"text": text}, token=token)


async def hello_with(sockets: Sockets, server: Server, token: str) -> Obj:
    """A new WebSocket client says hello with ``token``; the answer (welcome or error)."""
    ws = await sockets.ws(server)
    rid = await ws.request({"type": "hello", "token": token})
    return await ws.answer(rid)


# --- tokens: revoked by deletion, password change and logout -------------------------------


async def test_a_deleted_accounts_token_is_refused_even_when_a_guest_takes_the_name(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After 'roomcast user del alice', alice's token posts nothing (401 bad_token), also once
    a guest is named alice: nobody can speak as the guest with the old token."""
    server = await start_server(store=store_url)
    token = await register(http, server, "alice")
    assert (await post_as(http, server, token, "before"))[0] == 201
    assert await user_command(monkeypatch, store_url, "del", "alice") == 0

    path = "/api/rooms/general/messages"
    gone = await refused(http, server, "POST", path, json={"text": "ghost"}, token=token)
    assert gone == (401, "bad_token")
    guest = await sockets.ws(server, "alice")  # the name is free now: a guest takes it
    status, body = await post_as(http, server, token, "as the guest")
    assert (status, body["error"]["code"]) == (401, "bad_token"), body
    rid = await guest.request(
        {"type": "send", "room": "#general", "text": "the guest speaks for itself"}
    )
    await guest.reply(rid)  # stored
    status, page = await fetch(http, server, "GET", "/api/rooms/general/messages")
    assert status == 200
    assert [m["text"] for m in page["messages"] if m["type"] == "message"] == [
        "before",
        "the guest speaks for itself",
    ]


async def test_an_old_token_does_not_log_in_to_the_next_account_of_the_same_name(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token of a deleted alice is refused by the alice registered after her, whose private
    messages it does not get; the new alice's own token logs in and gets them."""
    server = await start_server(store=store_url)
    old = await register(http, server, "alice")
    assert await user_command(monkeypatch, store_url, "del", "alice") == 0
    new = await register(http, server, "alice", "another password")
    bob = await sockets.ws(server, "bob")
    rid = await bob.request({"type": "dm", "to": "alice", "text": "for the new alice only"})
    await bob.reply(rid, "info")  # she is away: stored

    answer = await hello_with(sockets, server, old)
    assert (answer["type"], answer.get("code")) == ("error", "bad_token"), answer
    assert "log in again" in answer["message"]

    ws = await sockets.ws(server)
    rid = await ws.request({"type": "hello", "token": new})
    assert (await ws.reply(rid, "welcome"))["name"] == "alice"
    dm = await ws.expect(lambda e: e["type"] == "dm")
    assert dm["text"] == "for the new alice only"


async def test_a_password_change_revokes_the_tokens_issued_before_it(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After 'roomcast user passwd alice', her old tokens neither post nor open a WebSocket
    session; the new password gives a token that does both."""
    server = await start_server(store=store_url)
    old = await register(http, server, "alice")
    assert await user_command(monkeypatch, store_url, "passwd", "alice", password="new pass 2") == 0

    status, body = await post_as(http, server, old, "with the old token")
    assert (status, body["error"]["code"]) == (401, "bad_token"), body
    answer = await hello_with(sockets, server, old)
    assert (answer["type"], answer.get("code")) == ("error", "bad_token"), answer
    status, body = await fetch(
        http, server, "POST", "/api/login", json={"name": "alice", "password": PASSWORD}
    )
    assert (status, body["error"]["code"]) == (401, "bad_login")

    new = await log_in(http, server, "alice", "new pass 2")
    assert (await post_as(http, server, new, "with the new token"))[0] == 201
    assert (await hello_with(sockets, server, new))["type"] == "welcome"


async def test_user_logout_on_the_command_line_revokes_every_token(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """'roomcast user logout alice' (a token was stolen) makes every token of alice refused;
    her password still logs her in."""
    server = await start_server(store=store_url)
    stolen = await register(http, server, "alice")
    assert await user_command(monkeypatch, store_url, "logout", "alice") == 0
    status, body = await post_as(http, server, stolen, "as alice")
    assert (status, body["error"]["code"]) == (401, "bad_token"), body
    assert (await post_as(http, server, await log_in(http, server, "alice"), "me"))[0] == 201


async def test_a_session_open_when_the_password_changes_is_ended_by_the_account_check(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    sockets: Sockets,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WebSocket session logged in with a token that 'roomcast user passwd' then revokes is
    closed by the server's next account check ('closing: logged out ...')."""
    server = await start_server(store=store_url)
    token = await register(http, server, "alice")
    ws = await sockets.ws(server)
    rid = await ws.request({"type": "hello", "token": token})
    await ws.reply(rid, "welcome")
    assert await user_command(monkeypatch, store_url, "passwd", "alice", password="new pass 2") == 0
    await server.hub.check_accounts()  # what the server runs every 30 s
    error = await ws.expect(lambda e: e["type"] == "error")
    assert error["code"] == "closed" and "logged out" in error["message"], error
    await ws.closed()


async def test_logout_all_on_the_line_revokes_every_token_and_ends_the_other_sessions(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets, clients: Clients
) -> None:
    """'/logout all' logs this connection out, closes alice's other sessions with the reason,
    and makes her tokens refused; '/logout' alone ends only this connection's login."""
    server = await start_server(**FAST)
    token = await register(http, server, "alice")
    ws = await sockets.ws(server)
    rid = await ws.request({"type": "hello", "token": token})
    await ws.reply(rid, "welcome")
    line = await clients.connect(server)
    assert await line.readline() == GREETING
    await line.send(f"/login alice {PASSWORD}")
    await line.expect("-- hello alice. type text to talk, /help for commands.", exact=True)

    await line.send("/logout")
    await line.expect("-- logged out: choose a name, or /login name password", exact=True)
    assert (await post_as(http, server, token, "still mine"))[0] == 201  # one login ended
    await line.send(f"/login alice {PASSWORD}")
    await line.expect("-- hello alice. type text to talk, /help for commands.", exact=True)

    await line.send("/logout all")
    info = await line.expect("-- logged out everywhere")
    assert info.startswith("-- logged out everywhere: every session and token of alice ended")
    error = await ws.expect(lambda e: e["type"] == "error")
    assert error == {"type": "error", "code": "closed", "message": "closing: logged out everywhere"}
    await ws.closed()
    status, body = await post_as(http, server, token, "revoked")
    assert (status, body["error"]["code"]) == (401, "bad_token"), body


async def test_the_json_logout_all_and_api_logout_revoke_every_token(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """JSON {"type": "logout", "all": true} and POST /api/logout (with a bearer token) each
    revoke every token of the account; the password gives a fresh one."""
    server = await start_server(**FAST)
    first = await register(http, server, "alice")
    second = await log_in(http, server, "alice")
    ws = await sockets.ws(server)
    rid = await ws.request({"type": "login", "name": "alice", "password": PASSWORD})
    await ws.reply(rid, "welcome")
    rid = await ws.request({"type": "logout", "all": True})
    info = await ws.reply(rid, "info")
    assert info["text"].startswith("logged out everywhere")
    for token in (first, second):
        status, body = await post_as(http, server, token, "revoked")
        assert (status, body["error"]["code"]) == (401, "bad_token"), body

    third = await log_in(http, server, "alice")
    fourth = await log_in(http, server, "alice")
    listening = await sockets.ws(server)
    rid = await listening.request({"type": "hello", "token": fourth})
    await listening.reply(rid, "welcome")
    status, body = await fetch(http, server, "POST", "/api/logout", token=third)
    assert (status, body) == (200, {"name": "alice", "logged_out": "everywhere"})
    for token in (third, fourth):
        status, body = await post_as(http, server, token, "revoked")
        assert (status, body["error"]["code"]) == (401, "bad_token"), body
    await listening.expect(lambda e: e["type"] == "error" and e["code"] == "closed")
    assert await refused(http, server, "POST", "/api/logout", token=third) == (401, "bad_token")
    assert await refused(http, server, "POST", "/api/logout") == (401, "no_token")


# --- the login throttle ---------------------------------------------------------------------


async def test_two_hundred_parallel_guesses_are_throttled_before_argon2_checks_them(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """200 logins for alice sent at once, the right password among them: at most 5 are
    checked (401 or 200), every other one is 429 throttled with a Retry-After."""
    server = await start_server(cost=SLOW, **FAST, **ONE_ADDRESS_MANY)
    await register(http, server, "alice")
    url = http_base(server) + "/api/login"
    passwords = [f"guess number {i}" for i in range(199)]
    passwords.insert(137, PASSWORD)

    async def attempt(password: str) -> tuple[int, str | None]:
        async with asyncio.timeout(60.0):
            async with http.post(url, json={"name": "alice", "password": password}) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(attempt(p) for p in passwords))
    checked = [status for status, _ in answers if status != 429]
    assert len(checked) <= 5, f"{len(checked)} passwords were checked: {sorted(checked)}"
    assert set(checked) <= {200, 401}
    retry = [after for status, after in answers if status == 429]
    assert len(retry) >= 195 and all(a is not None and int(a) >= 1 for a in retry), retry[:5]


async def test_parallel_guesses_on_the_line_protocol_are_throttled_too(
    start_server: StartServer, http: aiohttp.ClientSession, clients: Clients
) -> None:
    """Twenty line connections sending '/login alice <guess>' at once: at most five are
    told 'wrong name or password', the others that they are throttled."""
    server = await start_server(cost=SLOW, **FAST, **ONE_ADDRESS_MANY)
    await register(http, server, "alice")
    connections = [await clients.connect(server) for _ in range(20)]
    for c in connections:
        assert await c.readline() == GREETING
    for i, c in enumerate(connections):
        c.writer.write(f"/login alice guess number {i}\n".encode())
    answers = [await c.readline(within=TIMEOUT) for c in connections]
    wrong = [a for a in answers if a == "! wrong name or password"]
    throttled = [a for a in answers if a.startswith("! too many failed logins")]
    assert len(wrong) <= 5 and len(wrong) + len(throttled) == 20, answers


async def test_wrong_passwords_from_another_address_do_not_lock_the_owner_out(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Five wrong passwords for alice from 127.0.0.2 throttle that address only: alice logs
    in from 127.0.0.3 at once."""
    server = await start_server()
    await register(http, server, "alice")
    url = http_base(server) + "/api/login"

    async def login_from(address: str, password: str) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with aiohttp.ClientSession(connector=connector) as client:
            async with asyncio.timeout(TIMEOUT):
                body = {"name": "alice", "password": password}
                async with client.post(url, json=body) as resp:
                    await resp.read()
                    return resp.status

    for i in range(5):
        assert await login_from("127.0.0.2", f"wrong guess {i}") == 401
    assert await login_from("127.0.0.2", PASSWORD) == 429
    assert await login_from("127.0.0.3", PASSWORD) == 200


# --- registration ---------------------------------------------------------------------------


async def test_a_hundred_parallel_registrations_from_one_address_are_throttled(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """100 registrations sent at once from one address: only the first 10 are hashed (201),
    the other 90 are 429 throttled with a Retry-After, and nothing else was registered."""
    server = await start_server(**FAST, **ONE_ADDRESS_MANY)
    url = http_base(server) + "/api/register"

    async def attempt(i: int) -> tuple[int, str | None]:
        async with asyncio.timeout(60.0):
            body = {"name": f"bot{i}", "password": PASSWORD}
            async with http.post(url, json=body) as resp:
                await resp.read()
                return resp.status, resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(attempt(i) for i in range(100)))
    statuses = [status for status, _ in answers]
    assert statuses.count(201) == 10 and statuses.count(429) == 90, statuses
    assert all(a is not None and int(a) >= 1 for s, a in answers if s == 429)
    registered = [i for i in range(100) if await server.store.account(f"bot{i}") is not None]
    assert len(registered) == 10


async def test_registrations_beyond_the_hashing_queue_are_refused_busy(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """With one hashing worker and a queue of one, twenty registrations sent at once at the
    default argon2id cost: the excess is 503 busy with a Retry-After, never a pile of
    hashes; each 201 is a real account."""
    server = await start_server(cost=Cost(), hash_workers=1, hash_queue=1, registrations=1000)
    url = http_base(server) + "/api/register"

    async def attempt(i: int) -> tuple[int, str, str | None]:
        async with asyncio.timeout(60.0):
            body = {"name": f"bot{i}", "password": PASSWORD}
            async with http.post(url, json=body) as resp:
                answer = await resp.json()
                code = "" if resp.status == 201 else answer["error"]["code"]
                return resp.status, code, resp.headers.get("Retry-After")

    answers = await asyncio.gather(*(attempt(i) for i in range(20)))
    busy = [a for a in answers if a[0] == 503]
    assert busy and all(code == "busy" and after for _, code, after in busy), answers
    assert {a[0] for a in answers} <= {201, 503}, answers
    for i, (status, _, _) in enumerate(answers):
        assert (await server.store.account(f"bot{i}") is not None) == (status == 201)


async def test_a_guest_cannot_take_a_name_while_its_registration_hashes(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """A guest naming itself alice while POST /api/register alice is hashing is refused (or
    the registration is, if the guest came first): never both, and a 201 means the owner can
    log in."""
    server = await start_server(cost=Cost())  # about 0.2 s a hash: the guest comes meanwhile
    registering = asyncio.create_task(
        fetch(http, server, "POST", "/api/register", json={"name": "alice", "password": PASSWORD})
    )
    guest = await sockets.ws(server)
    rid = await guest.request({"type": "hello", "name": "alice"})
    answer = await guest.answer(rid)
    status, body = await registering
    if status == 201:
        assert (answer["type"], answer.get("code")) == ("error", "name_taken"), answer
        owner = await sockets.ws(server)
        rid = await owner.request({"type": "login", "name": "alice", "password": PASSWORD})
        assert (await owner.answer(rid))["type"] == "welcome"
    else:
        assert (status, body["error"]["code"]) == (409, "name_taken")
        assert answer["type"] == "welcome"


async def test_a_guest_cannot_take_a_lookalike_while_a_registration_hashes(
    start_server: StartServer, http: aiohttp.ClientSession, sockets: Sockets
) -> None:
    """A guest naming itself a1ice while POST /api/register alice is hashing is refused
    lookalike (or the registration is, if the guest came first): never both."""
    server = await start_server(cost=Cost())  # about 0.2 s a hash: the guest comes meanwhile
    registering = asyncio.create_task(
        fetch(http, server, "POST", "/api/register", json={"name": "alice", "password": PASSWORD})
    )
    guest = await sockets.ws(server)
    rid = await guest.request({"type": "hello", "name": "a1ice"})
    answer = await guest.answer(rid)
    status, body = await registering
    if status == 201:
        assert (answer["type"], answer.get("code")) == ("error", "lookalike"), answer
        assert "being registered" in answer["message"] or "registered name" in answer["message"]
    else:
        assert (status, body["error"]["code"]) == (409, "lookalike")
        assert answer["type"] == "welcome"
