"""End to end: the history of private conversations, and who was signed in when they spoke.

A private conversation has the same history API as a room: ``/history @name`` on the line
protocol, ``{"type": "history", "with": name}`` on the WebSocket. Only its two participants
read it, each as the identity it had then: an account reads what it said and received signed
in, a guest only what it said and received since it took its name. Room and private messages
carry ``signed`` on the JSON protocol, so a guest's words are never taken for those of a
later account of the same name.

Servers keep their history in a SQLite file under ``tmp_path`` (the store whose migration
and index this exercises) or in memory; as everywhere in ``tests/e2e``, every wait is a read
with a timeout and every loop is bounded.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from roomcast.auth import Cost, Passwords
from roomcast.server import Server
from tests.e2e.conftest import Client, Clients, StartServer
from tests.e2e.test_web_api import Obj, Sockets, Ws, fetch
from tests.e2e.test_web_api import register as register_over_http

CHEAP = Cost(time_cost=1, memory_cost=8, parallelism=1)  # argon2id at almost no cost
PASSWORD = "correct-horse-9"  # every line account's password (no space: one argument)
# One line of a private history listing: "SEQ YYYY-MM-DD HH:MM [pm from -> to] text".
LISTED = re.compile(r"(\d+) \d{4}-\d\d-\d\d \d\d:\d\d (\[pm \S+ -> \S+\] .*)")


async def sqlite_server(start_server: StartServer, tmp_path: Path) -> Server:
    """A server on ``tmp_path/rc.db`` with flood control out of the way and cheap passwords."""
    server = await start_server(
        store=f"sqlite:{tmp_path / 'rc.db'}", rate=1_000_000.0, burst=1_000_000
    )
    server.hub.passwords = Passwords(CHEAP)
    return server


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


# --- line-protocol helpers ------------------------------------------------------------------


async def register(clients: Clients, server: Server, name: str) -> Client:
    """A new guest ``name`` that registers itself with ``PASSWORD``."""
    client = await clients.connect(server, name)
    await client.send(f"/register {PASSWORD}")
    await client.expect(f"-- registered {name}: ", max_lines=5)
    return client


async def log_in(clients: Clients, server: Server, name: str) -> Client:
    """A new connection logged in to the account ``name``."""
    client = await clients.connect(server)
    await client.readline()  # the greeting
    await client.send(f"/login {name} {PASSWORD}")
    await client.expect(f"-- hello {name}. type text to talk, /help for commands.", exact=True)
    return client


async def leave(client: Client) -> None:
    """Quit and read to the end of the stream: by then the user is gone from the server."""
    await client.send("/quit bye")
    await client.read_to_eof()


async def private_listing(client: Client, command: str) -> list[str]:
    """Send ``command`` (a ``/history @name ...``) and return the lines of its answer: the
    header, the listed messages and any footer. ``/timestamps off`` sent after it marks where
    the answer has certainly arrived (a listing is written in one piece)."""
    start = len(client.lines)
    await client.send(command, "/timestamps off")
    await client.expect("-- timestamps off", exact=True)
    lines = client.lines[start:-1]
    heads = [i for i, line in enumerate(lines) if line.startswith("-- history with @")]
    assert len(heads) == 1, f"expected one listing for {command!r}, got {lines[-8:]}"
    block = [lines[heads[0]]]
    for line in lines[heads[0] + 1 :]:
        if not (LISTED.fullmatch(line) or line.startswith(("-- older: ", "-- newer: "))):
            break
        block.append(line)
    return block


def listed(block: list[str]) -> list[tuple[int, str]]:
    """The (seq, rendered private message) pairs of a listing."""
    return [(int(m.group(1)), m.group(2)) for line in block if (m := LISTED.fullmatch(line))]


# --- the line protocol ----------------------------------------------------------------------


async def test_a_private_conversation_is_in_history_after_signing_in_again(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """Two accounts that talked privately find their conversation with ``/history @name``
    after logging in again, oldest first, paged back with ``before``; a third person's
    ``/history`` of either of them shows none of it."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await register(clients, server, "alice")
    bob = await register(clients, server, "bob")
    carol = await clients.connect(server, "carol")
    said = [
        ("alice", "bob", f"a{i}") if i % 2 == 0 else ("bob", "alice", f"b{i}") for i in range(6)
    ]
    for sender, to, text in said:
        speaker = alice if sender == "alice" else bob
        await speaker.send(f"/msg {to} {text}")
        await speaker.expect(f"[pm {sender} -> {to}] {text}", exact=True)
    await carol.send("/msg alice not in their conversation")
    await carol.expect("[pm carol -> alice] not in their conversation", exact=True)
    await leave(alice)
    await leave(bob)

    alice = await log_in(clients, server, "alice")
    block = await private_listing(alice, "/history @BOB")
    expected = [f"[pm {sender} -> {to}] {text}" for sender, to, text in said]
    assert [line for _, line in listed(block)] == expected
    seqs = [seq for seq, _ in listed(block)]
    assert block[0] == f"-- history with @BOB: seq {seqs[0]}-{seqs[-1]}"

    page = await private_listing(alice, f"/history @bob before {seqs[-2]} 2")
    assert [line for _, line in listed(page)] == expected[-4:-2]
    assert page[-2:] == [
        f"-- older: /history @bob before {seqs[-4]}",
        f"-- newer: /history @bob after {seqs[-3]}",
    ]

    bob = await log_in(clients, server, "bob")
    assert [line for _, line in listed(await private_listing(bob, "/history @alice"))] == expected
    for name in ("alice", "bob"):
        empty = await private_listing(carol, f"/history @{name} 100")
        assert [line for _, line in listed(empty)] == (
            ["[pm carol -> alice] not in their conversation"] if name == "alice" else []
        )
    assert await private_listing(carol, "/history @bob") == ["-- history with @bob: no messages"]


async def test_a_guest_cannot_read_the_private_history_of_an_earlier_holder_of_its_name(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """What a guest bob said privately is in the history of that guest while it is online,
    but neither a later guest bob nor a later account bob can read it; the other side,
    still online, keeps it."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await register(clients, server, "alice")
    first = await clients.connect(server, "bob")
    await first.send("/msg alice from the first bob")
    await alice.expect("[pm bob -> alice] from the first bob", exact=True)
    await alice.send("/msg bob to the first bob")
    await first.expect("[pm alice -> bob] to the first bob", exact=True)
    mine = await private_listing(first, "/history @alice")
    assert [line for _, line in listed(mine)] == [
        "[pm bob -> alice] from the first bob",
        "[pm alice -> bob] to the first bob",
    ]
    await leave(first)

    second = await clients.connect(server, "bob")
    assert await private_listing(second, "/history @alice") == [
        "-- history with @alice: no messages"
    ]
    await alice.send("/msg bob to the second bob")
    await second.expect("[pm alice -> bob] to the second bob", exact=True)
    assert [line for _, line in listed(await private_listing(second, "/history @alice"))] == [
        "[pm alice -> bob] to the second bob"
    ]
    await second.send(f"/register {PASSWORD}")  # the second guest becomes the account bob
    await second.expect("-- registered bob: ", max_lines=5)
    await leave(second)

    account = await log_in(clients, server, "bob")
    assert await private_listing(account, "/history @alice") == [
        "-- history with @alice: no messages"
    ]
    await alice.send("/msg bob to the account bob")
    await account.expect("[pm alice -> bob] to the account bob", exact=True)
    assert [line for _, line in listed(await private_listing(account, "/history @alice"))] == [
        "[pm alice -> bob] to the account bob"
    ]
    # alice was in every one of those conversations, signed in: she reads them all.
    assert [line for _, line in listed(await private_listing(alice, "/history @bob"))] == [
        "[pm bob -> alice] from the first bob",
        "[pm alice -> bob] to the first bob",
        "[pm alice -> bob] to the second bob",
        "[pm alice -> bob] to the account bob",
    ]


# --- the WebSocket JSON protocol ------------------------------------------------------------


async def test_history_with_a_user_pages_through_a_private_conversation(
    start_server: StartServer, sockets: Sockets, http: aiohttp.ClientSession
) -> None:
    """``history`` with ``with`` pages through the messages two accounts exchanged, either
    direction, after they signed in again: newest page by default, ``before``, ``after``,
    ``around``, a capped limit; other conversations never show in it."""
    server = await start_server(rate=100_000.0, burst=100_000)
    server.hub.passwords = Passwords(CHEAP)
    tokens = {name: await register_over_http(http, server, name) for name in ("ann", "ben")}
    ann, ben = (
        await signed_in(sockets, server, tokens["ann"]),
        await signed_in(sockets, server, tokens["ben"]),
    )
    cy = await sockets.ws(server, "cy")
    sent: list[Obj] = []
    for i in range(12):
        speaker, to = (ann, "ben") if i % 3 else (ben, "Ann")
        sent.append(await dm(speaker, to, f"t{i}"))
        rid = await cy.request({"type": "dm", "to": "ann", "text": f"cy{i}"})
        await cy.reply(rid)
    await ann.conn.close()
    await ben.conn.close()

    ann = await signed_in(sockets, server, tokens["ann"])
    seqs = [m["seq"] for m in sent]
    rid = await ann.request({"type": "history", "with": "BEN", "limit": 5})
    page = await ann.reply(rid, "history")
    assert page["with"] == "BEN" and "room" not in page
    assert page["messages"] == sent[-5:]
    assert (page["oldest_seq"], page["latest_seq"], page["capped"]) == (seqs[0], seqs[-1], None)
    assert all(m["type"] == "dm" and m["signed"] is True for m in page["messages"])

    async def pick(**query: int) -> list[int]:
        rid = await ann.request({"type": "history", "with": "ben", **query})
        return [m["seq"] for m in (await ann.reply(rid, "history"))["messages"]]

    assert await pick(before=seqs[7], limit=3) == seqs[4:7]
    assert await pick(after=seqs[2], limit=3) == seqs[3:6]
    assert await pick(around=seqs[6], limit=4) == seqs[4:8]
    assert await pick(after=0, limit=100) == seqs
    rid = await ann.request({"type": "history", "with": "ben", "limit": 10**6})
    assert (await ann.reply(rid, "history"))["capped"] == 500

    rid = await cy.request({"type": "history", "with": "ben"})
    assert (await cy.reply(rid, "history"))["messages"] == []
    rid = await cy.request({"type": "history", "with": "ann", "limit": 100})
    assert [m["text"] for m in (await cy.reply(rid, "history"))["messages"]] == [
        f"cy{i}" for i in range(12)
    ]
    for bad in ({"with": "not a name"}, {"with": "ben", "room": "#general"}, {"with": 7}):
        rid = await ann.request({"type": "history", **bad})
        assert (await ann.answer(rid))["type"] == "error", bad


async def dm(speaker: Ws, to: str, text: str) -> Obj:
    """Send ``text`` privately to ``to``; return the dm once stored (its ok) and echoed."""
    rid = await speaker.request({"type": "dm", "to": to, "text": text})
    _, echo = await speaker.expect_all(
        lambda e: e.get("id") == rid and e["type"] == "ok",
        lambda e: e["type"] == "dm" and e["text"] == text,
    )
    return echo


async def signed_in(sockets: Sockets, server: Server, token: str) -> Ws:
    """A WebSocket client signed in with ``token``, once its join reply came."""
    client = await sockets.ws(server)
    rid = await client.request({"type": "hello", "token": token})
    await client.reply(rid, "welcome")
    return client


async def test_messages_say_whether_their_sender_was_signed_in(
    start_server: StartServer, sockets: Sockets, http: aiohttp.ClientSession
) -> None:
    """Messages carry ``signed``: a guest bob's words are false live and in history, the
    later account bob's true, and so are private messages and posts of each."""
    server = await start_server()
    server.hub.passwords = Passwords(CHEAP)
    alice = await sockets.ws(server, "alice")
    guest = await sockets.ws(server, "bob")
    await guest.say("said by the guest")
    rid = await guest.request({"type": "dm", "to": "alice", "text": "psst from the guest"})
    await guest.reply(rid)
    live = await alice.said("said by the guest")
    assert live["signed"] is False
    dm = await alice.expect(lambda e: e["type"] == "dm")
    assert dm["signed"] is False
    await guest.conn.close()
    await alice.expect(lambda e: e["type"] == "presence" and e["from"] == "bob")

    token = await register_over_http(http, server, "bob")
    account = await signed_in(sockets, server, token)
    await account.say("said by the account")
    rid = await account.request({"type": "dm", "to": "alice", "text": "psst from the account"})
    await account.reply(rid)
    assert (await alice.expect(lambda e: e["type"] == "dm"))["signed"] is True
    status, posted = await fetch(
        http, server, "POST", "/api/rooms/general/messages", json={"text": "posted"}, token=token
    )
    assert status == 201 and posted["signed"] is True

    rid = await alice.request({"type": "history", "room": "#general"})
    page = await alice.reply(rid, "history")
    by_bob = [
        (m["type"], m.get("text"), m["signed"]) for m in page["messages"] if m["from"] == "bob"
    ]
    assert by_bob == [
        ("join", None, False),
        ("message", "said by the guest", False),
        ("presence", None, False),
        ("join", None, True),
        ("message", "said by the account", True),
        ("message", "posted", True),
    ]
    assert [m["signed"] for m in page["messages"] if m["from"] == "alice"] == [False]
