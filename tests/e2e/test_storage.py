"""End to end: a server whose storage fails under it (a full disk, its database deleted or
read-only), over real sockets.

The conditions are real (a small tmpfs filled up, a file deleted, a read-only bind mount or
permissions: see tests/conftest.py; ``small_disk`` comes first among a test's fixtures, so
that it is unmounted after the servers on it are stopped); the clients are the line client
of conftest.py and aiohttp's, for the WebSocket and ``/health``. What must hold: a client
told ``unavailable`` finds its session exactly as before and may retry; nothing is
acknowledged that the store did not keep; ``/health`` says what is wrong; a server that
could store nothing does not start.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from roomcast.auth import Cost, Passwords
from roomcast.server import Server
from roomcast.wire.line import GREETING
from tests.conftest import SmallDisk, read_only
from tests.e2e.conftest import TIMEOUT, Clients, LogWatch, StartServer
from tests.e2e.test_offline import PASSWORD, leave, register

Obj = dict[str, Any]  # one decoded JSON object

REFUSED = "! the server cannot store anything now: its storage is not writable; try again later"
CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, test-sized


async def on_disk(start_server: StartServer, folder: Path) -> Server:
    """A server keeping its SQLite store (and its token key) in ``folder``, with flood control
    out of the way and cheap passwords."""
    server = await start_server(store="", data_dir=str(folder), rate=1_000_000.0, burst=1_000_000)
    server.hub.passwords = Passwords(CHEAP)
    return server


@pytest.fixture
async def http(start_server: StartServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session, closed before the servers are stopped."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30.0)) as session:
        yield session


async def health(http: aiohttp.ClientSession, server: Server) -> tuple[int, Obj]:
    """GET /health: its status and body."""
    assert server.web is not None
    async with http.get(f"http://127.0.0.1:{server.web.port}/health") as resp:
        body: Obj = await resp.json()
        return resp.status, body


async def answer(ws: aiohttp.ClientWebSocketResponse, request_id: int) -> Obj:
    """The first event answering ``request_id`` (batches unpacked); at most 100 frames."""
    async with asyncio.timeout(TIMEOUT):
        for _ in range(100):
            frame: Obj = await ws.receive_json()
            events: list[Obj] = frame["events"] if frame["type"] == "batch" else [frame]
            for event in events:
                if event.get("id") == request_id:
                    return event
    raise AssertionError(f"no answer to request {request_id} in 100 frames")


# --- a full disk: nothing half done -------------------------------------------------------


async def test_a_name_refused_on_a_full_disk_can_be_given_again(
    small_disk: SmallDisk, start_server: StartServer, clients: Clients
) -> None:
    """A guest whose name cannot be stored (disk full) is told so and is still at the name
    prompt: the same name, once there is space, names it; it is not said as a chat line."""
    server = await on_disk(start_server, small_disk.path)
    alice = await clients.connect(server, "alice")
    small_disk.fill()
    bob = await clients.connect(server)
    assert await bob.readline() == GREETING
    await bob.send("bob")
    assert await bob.readline() == REFUSED
    small_disk.free()
    await bob.send("bob")
    assert await bob.readline() == "-- hello bob. type text to talk, /help for commands."
    await bob.expect("[#general] --> bob joined", exact=True)
    await alice.send("marker")
    await alice.expect("[#general] alice: marker", exact=True)
    assert alice.lines.count("[#general] --> bob joined") == 1
    assert not [line for line in alice.lines + bob.lines if line.startswith("[#general] bob:")]


async def test_a_websocket_name_refused_on_a_full_disk_can_be_given_again(
    small_disk: SmallDisk, start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """Over the WebSocket: a hello the store cannot keep gets 'unavailable' (not writable),
    and the same hello then gets a welcome, not has_name."""
    server = await on_disk(start_server, small_disk.path)
    assert server.web is not None
    async with http.ws_connect(f"ws://127.0.0.1:{server.web.port}/ws") as ws:
        small_disk.fill()
        await ws.send_json({"type": "hello", "name": "bob", "id": 1})
        refused = await answer(ws, 1)
        assert (refused["type"], refused["code"]) == ("error", "unavailable")
        assert "not writable" in refused["message"]
        small_disk.free()
        await ws.send_json({"type": "hello", "name": "bob", "id": 2})
        welcome = await answer(ws, 2)
        assert welcome["type"] == "welcome" and welcome["name"] == "bob", welcome


async def test_a_join_refused_on_a_full_disk_leaves_the_user_out_of_the_room(
    small_disk: SmallDisk, start_server: StartServer, clients: Clients
) -> None:
    """A /join the store cannot keep leaves the user where it was: text still goes to
    #general, and the retried /join is announced."""
    server = await on_disk(start_server, small_disk.path)
    alice = await clients.connect(server, "alice")
    small_disk.fill()
    await alice.send("/join #rust")
    assert await alice.readline() == REFUSED
    small_disk.free()
    await alice.send("still in general")
    assert await alice.readline() == "[#general] alice: still in general"
    await alice.send("/join #rust")
    await alice.expect("[#rust] --> alice joined", exact=True)


async def test_a_nick_refused_on_a_full_disk_keeps_the_old_name(
    small_disk: SmallDisk, start_server: StartServer, clients: Clients
) -> None:
    """A /nick the store cannot announce leaves the old name: others see the user's next
    line under it, and /who lists it."""
    server = await on_disk(start_server, small_disk.path)
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    small_disk.fill()
    await alice.send("/nick alicia")
    assert await alice.expect("! ") == REFUSED
    small_disk.free()
    await alice.send("hi")
    await bob.expect("[#general] alice: hi", exact=True)
    await bob.send("/who")
    assert await bob.expect("-- #general: ") == "-- #general: alice bob (2)"


async def test_a_login_refused_on_a_full_disk_leaves_the_connection_at_the_name_prompt(
    small_disk: SmallDisk, start_server: StartServer, clients: Clients
) -> None:
    """A /login whose joins cannot be stored leaves the connection logged out, and no room
    hears of it; the same /login then logs in and is announced once."""
    server = await on_disk(start_server, small_disk.path)
    await leave(await register(clients, server, "alice"))
    bob = await clients.connect(server, "bob")
    small_disk.fill()
    again = await clients.connect(server)
    assert await again.readline() == GREETING
    await again.send(f"/login alice {PASSWORD}")
    assert await again.readline() == REFUSED
    small_disk.free()
    await again.send(f"/login alice {PASSWORD}")
    assert await again.readline() == "-- hello alice. type text to talk, /help for commands."
    await bob.expect("[#general] --> alice joined", exact=True)
    await bob.send("marker")
    await bob.expect("[#general] bob: marker", exact=True)
    assert bob.lines.count("[#general] --> alice joined") == 1


async def test_health_says_when_the_disk_is_full(
    small_disk: SmallDisk, start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """/health is 503 naming a full disk while it is full, 200 once there is space."""
    server = await on_disk(start_server, small_disk.path)
    small_disk.fill()
    status, body = await health(http, server)
    assert (status, body["status"]) == (503, "unavailable")
    assert f"the disk of {small_disk.path / 'roomcast.db'} is full" in body["problem"]
    small_disk.free()
    status, body = await health(http, server)
    assert (status, body["status"]) == (200, "ok")


# --- a database deleted or read-only under the server ----------------------------------------


async def test_a_deleted_database_refuses_writes_and_health_says_so(
    start_server: StartServer,
    clients: Clients,
    http: aiohttp.ClientSession,
    log_watch: LogWatch,
    tmp_path: Path,
) -> None:
    """Once the database file is deleted, a line is refused (not echoed, as if stored, into
    a file the next start cannot see), /health is 503 naming the deletion, the log says it."""
    folder = tmp_path / "data"
    server = await on_disk(start_server, folder)
    alice = await clients.connect(server, "alice")
    await alice.send("before")
    await alice.expect("[#general] alice: before", exact=True)
    assert (await health(http, server))[0] == 200
    os.remove(folder / "roomcast.db")
    await alice.send("after")
    assert await alice.readline() == REFUSED
    status, body = await health(http, server)
    assert (status, body["status"]) == (503, "unavailable")
    assert f"its file {folder / 'roomcast.db'} was deleted" in body["problem"]
    await log_watch.wait_for(lambda said: any("not writable" in m for m in said))
    assert "[#general] alice: after" not in alice.lines


async def test_a_database_made_read_only_refuses_writes_until_it_is_writable_again(
    start_server: StartServer, clients: Clients, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """While the data directory is read-only, lines are refused and /health is 503 saying
    so; writable again, both come back."""
    folder = tmp_path / "data"
    server = await on_disk(start_server, folder)
    alice = await clients.connect(server, "alice")
    with read_only(folder):
        await alice.send("refused")
        assert await alice.readline() == REFUSED
        status, body = await health(http, server)
        assert status == 503 and "is read-only" in body["problem"]
    assert (await health(http, server))[0] == 200
    await alice.send("back")
    assert await alice.readline() == "[#general] alice: back"


@pytest.mark.parametrize("served", [True, False], ids=["served", "never-served"])
async def test_a_read_only_data_directory_fails_to_start_with_a_clear_message(
    start_server: StartServer, clients: Clients, tmp_path: Path, served: bool
) -> None:
    """'roomcast serve' on a data directory it cannot write exits with status 1 and one
    line saying the store is not writable, instead of serving what it cannot store: whether
    the last run left SQLite's -wal and -shm files (its readers close last and may not
    delete them) or not."""
    folder = tmp_path / "data"
    server = await on_disk(start_server, folder)  # the directory with its store and key
    if served:
        await (await clients.connect(server, "alice")).close()  # a read: a reader connection
    await server.stop()
    assert (folder / "roomcast.db-wal").exists() is served
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    with read_only(folder):
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "roomcast.cli", "serve", "--data-dir", str(folder)),
            *("--port", "0", "--http-port", "0", "--loop", "asyncio"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**environ, "XDG_DATA_HOME": str(tmp_path)},
        )
        assert child.stderr is not None
        said: list[str] = []
        try:
            async with asyncio.timeout(10.0):
                for _ in range(100):
                    line = (await child.stderr.readline()).decode()
                    if not line:
                        break
                    said.append(line.rstrip("\n"))
                    assert "roomcast.server: listening" not in line, said
            assert await child.wait() == 1
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    assert not [line for line in said if "Traceback" in line], said
    [fatal] = [line for line in said if "cannot start" in line]
    assert "the SQLite store" in fatal and "is not writable" in fatal, said


async def test_an_http_post_the_store_cannot_write_is_told_why_in_one_log_line(
    start_server: StartServer,
    http: aiohttp.ClientSession,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """A post the store cannot take (its file deleted) is 503 'unavailable' with the words
    the other transports use (storage not writable), logged in one line, no traceback."""
    folder = tmp_path / "data"
    server = await on_disk(start_server, folder)
    assert server.web is not None
    base = f"http://127.0.0.1:{server.web.port}"
    credentials = {"name": "poster", "password": PASSWORD}
    async with http.post(f"{base}/api/register", json=credentials) as resp:
        assert resp.status == 201
        token = (await resp.json())["token"]
    os.remove(folder / "roomcast.db")
    async with http.post(
        f"{base}/api/rooms/general/messages",
        json={"text": "into a deleted file"},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 503
        error = (await resp.json())["error"]
    assert error == {"code": "unavailable", "message": REFUSED.removeprefix("! ")}
    await log_watch.wait_for(lambda said: any("/api/rooms/general/messages" in m for m in said))
    said = [r for r in caplog.records if "/api/rooms/general/messages" in r.getMessage()]
    assert len(said) == 1 and said[0].exc_info is None, said
    assert "not writable" in said[0].getMessage()
