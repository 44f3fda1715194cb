"""End to end: durable storage and offline retrieval, on real SQLite files and real sockets.

Every server here keeps its history in a SQLite file under the test's ``tmp_path``. The tests
cover what the store makes possible: a reader that falls behind the broadcast ring is refilled
from the file; a registered user who comes back gets what it missed; ``/join #room since N``
resumes without a seam; acknowledged messages survive a SIGKILL; user text never becomes SQL;
history, search and retention answer as documented.

Passwords are hashed with a cheap argon2 cost (``CHEAP``) so that logins do not dominate the
run. As in ``test_line_chat.py``, no test sleeps to wait for something and every read loop is
bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import random
import re
from pathlib import Path

from roomcast.auth import Cost, Passwords
from roomcast.server import Server
from roomcast.wire.line import GREETING
from tests.e2e.conftest import (
    Client,
    Clients,
    Serve,
    StartServer,
    on_asyncio_only,
    throttle,
    transport_of,
)

CHEAP = Cost(time_cost=1, memory_cost=8, parallelism=1)  # argon2id at almost no cost
PASSWORD = "correct-horse-9"  # every account's password, unless a test says otherwise
NUMBERED = re.compile(r"\[#general\] (\w+): n (\d+) x+")  # numbered lines, as received
# One line of a history or search listing: "SEQ YYYY-MM-DD HH:MM [#room] name: text".
LISTED = re.compile(r"(\d+) \d{4}-\d\d-\d\d \d\d:\d\d (\[#[^\]]+\] .*)")
# what may end a listing
FOOTERS = ("-- limited to ", "-- older: ", "-- newer: ", "-- messages of ", "-- kept: ")
MISSED = re.compile(  # what a client is told about messages it can no longer get
    r"! missed (\d+) messages of (#\S+) \(seq (\d+)-(\d+)\): they are no longer kept"
)


async def sqlite_server(start_server: StartServer, tmp_path: Path, **overrides: object) -> Server:
    """A server on ``tmp_path/rc.db`` with flood control out of the way and cheap passwords."""
    settings: dict[str, object] = {
        "store": f"sqlite:{tmp_path / 'rc.db'}",
        "rate": 1_000_000.0,
        "burst": 1_000_000,
    }
    server = await start_server(**(settings | overrides))
    server.hub.passwords = Passwords(CHEAP)
    return server


async def listing(client: Client, command: str, *, max_lines: int = 600) -> list[str]:
    """Send ``command`` (a ``/history`` or ``/search``) and return the lines of its answer,
    header first, footers last.

    A listing is written in one piece, so its lines are contiguous in the stream; the
    ``/timestamps off`` sent after it marks where the answer has certainly arrived.
    """
    start = len(client.lines)
    await client.send(command, "/timestamps off")
    await client.expect("-- timestamps off", exact=True, max_lines=max_lines)
    lines = client.lines[start:-1]
    heads = [
        i for i, line in enumerate(lines) if line.startswith(("-- history of ", "-- search of "))
    ]
    assert len(heads) == 1, f"expected one listing for {command!r}, got {lines[-8:]}"
    block = [lines[heads[0]]]
    for line in lines[heads[0] + 1 :]:
        if not (LISTED.fullmatch(line) or line.startswith(FOOTERS)):
            break
        block.append(line)
    return block


def entries(block: list[str]) -> list[tuple[int, str]]:
    """The (seq, rendered message) pairs of a listing."""
    return [(int(m.group(1)), m.group(2)) for line in block if (m := LISTED.fullmatch(line))]


async def log_in(clients: Clients, server: Server | int, name: str) -> Client:
    """A new connection logged in to the account ``name`` (password ``PASSWORD``)."""
    client = await clients.connect(server)
    assert await client.readline() == GREETING
    await client.send(f"/login {name} {PASSWORD}")
    await client.expect(f"-- hello {name}. type text to talk, /help for commands.", exact=True)
    return client


async def register(clients: Clients, server: Server, name: str) -> Client:
    """A new guest ``name`` that registers itself with ``PASSWORD``."""
    client = await clients.connect(server, name)
    await client.send(f"/register {PASSWORD}")
    await client.expect(f"-- registered {name}: ", max_lines=5)
    return client


async def read_matching(
    client: Client, pattern: re.Pattern[str], count: int, *, within: float = 60.0
) -> list[re.Match[str]]:
    """Read until ``count`` lines fully match ``pattern`` (or an error line comes); return
    the matches, in order."""
    found: list[re.Match[str]] = []

    def enough(line: str) -> bool:
        if m := pattern.fullmatch(line):
            found.append(m)
        return len(found) >= count or line.startswith("! ")

    await client.expect(enough, within=within, max_lines=count + 100)
    return found


async def leave(client: Client) -> None:
    """Quit and wait for the end of the stream: by then the user is gone from the server."""
    await client.send("/quit bye")
    await client.read_to_eof()


async def saw(client: Client, line: str) -> None:
    """Return once ``client`` has read ``line``, now or earlier."""
    if line not in client.lines:
        await client.expect(line, exact=True)


# --- 1. a reader that falls behind the ring ---------------------------------------------------


async def test_a_lagging_reader_gets_all_10000_messages_once_in_order_and_nobody_waits(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """With a 16-message ring, a client that stops reading while 10,000 messages are said gets
    every one, once and in the room's order, refilled from SQLite; a fast reader got all of
    them before the slow one read again."""
    high_water = 16384
    server = await sqlite_server(
        start_server, tmp_path, ring_capacity=16, high_water=high_water, stall_timeout=300.0
    )
    # Ten senders, so that appends share commits: one connection's lines are stored one at a
    # time, and 10,000 one-message commits would take most of the run.
    names = [f"s{k}" for k in range(10)]
    senders = [await clients.connect(server, name) for name in names]
    fast = await clients.connect(server, "fast")
    slow = await clients.connect(server, "slow")
    slow.stop_reading()
    throttle(server, "slow")
    general = server.hub.core.rooms["#general"].tx  # the room's broadcast channel

    per_sender, chunk = 1000, 250

    async def pump(client: Client, name: str) -> None:
        for start in range(0, per_sender, chunk):
            await client.send(*(f"n {i:04d} {'x' * 60}" for i in range(start, start + chunk)))
            await client.skip_until(f"[#general] {name}: n {start + chunk - 1:04d} {'x' * 60}")

    total = per_sender * len(names)
    pumps = [pump(client, name) for client, name in zip(senders, names, strict=True)]
    _, matches = await asyncio.gather(asyncio.gather(*pumps), read_matching(fast, NUMBERED, total))
    heard = [(m[1], int(m[2])) for m in matches]
    assert len(heard) == total
    for name in names:
        assert [n for who, n in heard if who == name] == list(range(per_sender)), name

    # Every message reached the fast reader while the slow one was held back, unread: its
    # transport stays paused until its buffer drains below the low-water mark (high / 4).
    assert transport_of(server, "slow").get_write_buffer_size() > high_water // 4
    slow.resume_reading()
    got = [(m[1], int(m[2])) for m in await read_matching(slow, NUMBERED, total)]
    assert got == heard
    assert not [line for line in slow.lines + fast.lines if line.startswith("! ")]
    assert general.statistics().lag_events > 0  # the ring did overflow: the store refilled it


# --- 2. and 3. coming back ------------------------------------------------------------------


async def test_a_returning_user_gets_a_summary_the_latest_200_per_room_and_its_privates(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """After 300 messages in each of its rooms and 3 private ones, /login gives per room
    '-- #a: 300 new since you left; the latest 200 follow (...)' and those 200 in order, then
    the 3 private messages; '/history #a before S 50' pages back through the rest."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await register(clients, server, "alice")
    await alice.join("#a")
    await alice.join("#b")
    bob = await clients.connect(server, "bob")
    await bob.join("#a")
    await bob.join("#b")
    await leave(alice)
    await bob.expect_all(
        "[#general] <-- alice quit (bye)", "[#a] <-- alice quit (bye)", "[#b] <-- alice quit (bye)"
    )

    said = {room: [f"{room[1:]} {i:03d}" for i in range(300)] for room in ("#a", "#b")}
    privates = [f"psst {i}" for i in range(3)]
    await bob.send(
        "/join #a", *said["#a"], "/join #b", *said["#b"], *(f"/msg alice {p}" for p in privates)
    )
    away = "-- alice is away: they will get it when they log in"
    await bob.expect(
        lambda line: bob.lines.count(away) == 3 and "[pm bob -> alice] psst 2" in bob.lines,
        max_lines=800,
    )
    assert "[#a] bob: a 299" in bob.lines and "[#b] bob: b 299" in bob.lines

    alice = await clients.connect(server)
    assert await alice.readline() == GREETING
    await alice.send(f"/login alice {PASSWORD}")
    await alice.expect_all(
        "-- hello alice. type text to talk, /help for commands.",
        "[#a] --> alice joined",
        "[#b] --> alice joined",
        "[#general] --> alice joined",
        "[pm bob -> alice] psst 2",
        max_lines=1000,
    )
    first_seq: dict[str, int] = {}
    for room in ("#a", "#b"):
        got = [line for line in alice.lines if line.startswith((f"[{room}] ", f"-- {room}: "))]
        summary = re.fullmatch(
            rf"-- {room}: 300 new since you left; the latest 200 follow"
            rf" \(older: /history {room} before (\d+)\)",
            got[0],
        )
        assert summary is not None, got[0]
        first_seq[room] = int(summary.group(1))
        assert got[1:] == [f"[{room}] bob: {text}" for text in said[room][100:]] + [
            f"[{room}] --> alice joined"
        ]
    assert [line for line in alice.lines if line.startswith("[pm ")] == [
        f"[pm bob -> alice] {p}" for p in privates
    ]
    await saw(alice, "-- unread: #a 300, #b 300")
    assert not [line for line in alice.lines if line.startswith("! ")]

    # Page back from where the replay started, following each '-- older:' hint to seq 1.
    before = first_seq["#a"]
    block = await listing(alice, f"/history #a before {before} 50")
    assert block[0] == f"-- history of #a: seq {before - 50}-{before - 1}"
    assert block[-2:] == [
        f"-- older: /history #a before {before - 50}",
        f"-- newer: /history #a after {before - 1}",
    ]
    assert entries(block) == [(before - 50 + i, f"[#a] bob: a {50 + i:03d}") for i in range(50)]
    paged: list[tuple[int, str]] = []
    for _ in range(10):
        block = await listing(alice, f"/history #a before {before} 50")
        paged = entries(block) + paged
        older = [line for line in block if line.startswith("-- older: /history #a before ")]
        if not older:
            break
        before = int(older[0].removeprefix("-- older: /history #a before "))
    assert [seq for seq, _ in paged] == list(range(1, first_seq["#a"]))
    assert [text for _, text in paged] == [
        "[#a] --> alice joined",
        "[#a] --> bob joined",
        "[#a] <-- alice quit (bye)",
        *[f"[#a] bob: {t}" for t in said["#a"][:100]],
    ]


async def test_what_a_user_read_online_is_not_replayed_at_its_next_login(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """Messages a registered user received before leaving are not replayed at its next login:
    it gets '-- #a: 3 new since you left' and only those 3; a login with nothing new, nothing."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await register(clients, server, "alice")
    await alice.join("#a")
    bob = await clients.connect(server, "bob")
    await bob.join("#a")
    await bob.send(*(f"read {i}" for i in range(5)))
    await alice.expect("[#a] bob: read 4", exact=True)
    await leave(alice)
    await bob.expect("[#a] <-- alice quit (bye)", exact=True)
    await bob.send(*(f"new {i}" for i in range(3)))
    await bob.expect("[#a] bob: new 2", exact=True)

    alice = await log_in(clients, server, "alice")
    await saw(alice, "[#a] --> alice joined")
    assert [line for line in alice.lines if line.startswith(("[#a] ", "-- #a: "))] == [
        "-- #a: 3 new since you left",
        "[#a] bob: new 0",
        "[#a] bob: new 1",
        "[#a] bob: new 2",
        "[#a] --> alice joined",
    ]
    await saw(alice, "-- unread: #a 3")
    await leave(alice)
    await bob.expect("[#a] <-- alice quit (bye)", exact=True)

    alice = await log_in(clients, server, "alice")
    await saw(alice, "[#general] --> alice joined")
    await saw(alice, "[#a] --> alice joined")
    assert not [line for line in alice.lines if "new since you left" in line or "unread" in line]
    assert not [line for line in alice.lines if "bob: " in line]


async def test_rooms_counts_what_a_stalled_user_has_not_been_sent_yet(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/rooms' shows '#a  2 online, joined, N unread' for a registered user that stopped
    reading, where N is exactly the number of messages it had not been sent when it asked;
    once caught up, 0."""
    server = await sqlite_server(
        start_server, tmp_path, ring_capacity=16, high_water=16384, stall_timeout=300.0
    )
    alice = await register(clients, server, "alice")
    await alice.join("#a")
    bob = await clients.connect(server, "bob")
    await bob.join("#a")
    await alice.expect("[#a] --> bob joined", exact=True)
    alice.stop_reading()
    throttle(server, "alice")

    # 2 MB: far more than the sockets hold, and more than two batches of the writer (512
    # messages each, whatever their size) can take at once.
    count, chunk, pad = 1000, 250, "x" * 2000
    for start in range(0, count, chunk):
        await bob.send(*(f"n {i:04d} {pad}" for i in range(start, start + chunk)))
        await bob.expect(f"[#a] bob: n {start + chunk - 1:04d} ", max_lines=chunk + 10)
    start = len(alice.lines)
    await alice.send("/rooms")  # the server reads it once alice takes some of her backlog
    alice.resume_reading()
    header = await alice.expect(lambda line: line.startswith("-- rooms: "), max_lines=count + 50)
    sent_before = len([x for x in alice.lines[start:] if x.startswith("[#a] bob: n ")])
    assert header == "-- rooms: 2; text goes to #a"
    unread = re.fullmatch(
        r"--   #a        2 online, joined, (\d+) unread, current", await alice.readline()
    )
    assert unread is not None, alice.lines[-1]
    assert int(unread.group(1)) == count - sent_before > 0
    assert await alice.readline() == "--   #general  2 online, joined, 0 unread"

    await alice.expect(f"[#a] bob: n {count - 1:04d} ", max_lines=count + 50)
    await alice.send("/rooms")
    assert await alice.expect("-- rooms: ") == "-- rooms: 2; text goes to #a"
    assert [await alice.readline() for _ in range(2)] == [
        "--   #a        2 online, joined, 0 unread, current",
        "--   #general  2 online, joined, 0 unread",
    ]


# --- 4. join since N --------------------------------------------------------------------------


async def test_join_since_n_gives_every_later_message_once_then_live_without_a_seam(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/join #r since N' while another client talks: the joiner sees every message after N
    exactly once and in order, the replay running straight into the live ones (20 random
    rounds, fixed seed)."""
    server = await sqlite_server(start_server, tmp_path)
    talker = await clients.connect(server, "talker")
    await talker.join("#r")
    joiner = await clients.connect(server, "joiner")
    rng = random.Random(20240611)
    for round_ in range(20):
        before = [f"m {round_:02d} a{k:02d}" for k in range(rng.randrange(0, 15))]
        during = [f"m {round_:02d} b{k:02d}" for k in range(rng.randrange(1, 30))]
        if before:
            await talker.send(*before)
            await talker.expect(f"[#r] talker: {before[-1]}", exact=True)
        newest = entries(await listing(talker, "/history #r 1"))[-1][0]
        since = rng.randint(max(0, newest - 80), newest)

        start = len(joiner.lines)
        await asyncio.gather(joiner.send(f"/join #r since {since}"), talker.send(*during))
        await joiner.expect_all(
            "[#r] --> joiner joined", f"[#r] talker: {during[-1]}", max_lines=200
        )
        await talker.expect(f"[#r] talker: {during[-1]}", exact=True)
        stored = entries(await listing(joiner, f"/history #r after {since} 500"))
        got = [line for line in joiner.lines[start:] if line.startswith("[#r] ")]
        assert [text for _, text in stored] == got, f"round {round_}, since {since}"
        assert [seq for seq, _ in stored] == list(range(since + 1, since + 1 + len(stored)))

        await joiner.send("/leave #r")
        await joiner.expect_all("-- you left #r; text now goes to #general", "[#r] <-- joiner left")


# --- 5. a crash -------------------------------------------------------------------------------


async def _send_numbered(client: Client, name: str, count: int) -> None:
    """Send ``count`` numbered lines in chunks until done or the connection breaks."""
    for start in range(0, count, 100):
        try:
            await client.send(*(f"{name} {i:05d}" for i in range(start, start + 100)))
        except ConnectionError:
            return


async def _read_acks(
    client: Client, name: str, acked: list[int], progress: asyncio.Event, max_lines: int
) -> None:
    """Record the numbers of ``name``'s own lines echoed back, until the connection ends."""
    own = re.compile(rf"\[#general\] {name}: {name} (\d{{5}})")
    for _ in range(max_lines):
        try:
            raw = await client.reader.readline()
        except ConnectionError:
            return
        if not raw:
            return
        if m := own.fullmatch(raw.decode().rstrip("\n")):
            acked.append(int(m.group(1)))
            progress.set()
    raise AssertionError(f"{name}: no end of stream after {max_lines} lines")


@on_asyncio_only
async def test_after_sigkill_every_acknowledged_message_is_kept_gap_free_in_order(
    serve: Serve, clients: Clients, tmp_path: Path
) -> None:
    """10 clients send numbered lines; the server is SIGKILLed mid-stream and restarted on the
    same file: every echoed (acknowledged) message is in the history, each sender's in order,
    sequence numbers gap-free from 1 without duplicates."""
    args = ["--port", "0", "--store", f"sqlite:{tmp_path / 'rc.db'}"]
    args += ["--rate", "1000000", "--burst", "1000000"]
    port = await serve.start(*args)
    names = [f"c{k}" for k in range(10)]
    per_client = 3000  # far more than the server takes before it is killed
    senders = [await clients.connect(port, name) for name in names]
    acked: dict[str, list[int]] = {name: [] for name in names}
    progress = asyncio.Event()
    readers = [
        asyncio.create_task(_read_acks(c, n, acked[n], progress, 11 * per_client * len(names)))
        for c, n in zip(senders, names, strict=True)
    ]
    writers = [
        asyncio.create_task(_send_numbered(c, n, per_client))
        for c, n in zip(senders, names, strict=True)
    ]
    async with asyncio.timeout(20):
        for _ in range(per_client * len(names)):
            if sum(map(len, acked.values())) >= 1000:
                break
            progress.clear()
            await progress.wait()
    await serve.kill()  # SIGKILL: no shutdown, no last commit
    async with asyncio.timeout(10):
        await asyncio.gather(*readers, *writers)
    assert 1000 <= sum(map(len, acked.values())) < per_client * len(names)
    for name in names:
        assert acked[name] == list(range(len(acked[name]))), name

    checker = await clients.connect(await serve.start(*args), "checker")
    stored: list[tuple[int, str]] = []
    for _ in range(per_client * len(names) // 500 + 2):
        after = stored[-1][0] if stored else 0
        page = entries(await listing(checker, f"/history #general after {after} 500"))
        if not page:
            break
        stored += page
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    assert stored[-1][1] == "[#general] --> checker joined"
    for name in names:
        own = [
            int(m.group(1))
            for _, text in stored
            if (m := re.fullmatch(rf"\[#general\] {name}: {name} (\d{{5}})", text))
        ]
        assert own == list(range(len(own))), f"{name}: not a gap-free prefix in order"
        assert len(own) >= len(acked[name]), f"{name}: acknowledged messages lost"


# --- 6. hostile and awkward input -------------------------------------------------------------

SQL_TEXTS = [
    "'; DROP TABLE messages; --",
    '" OR 1=1',
    "100% sure",
    "snake_case and _ alone",
    "back\\slash \\' \\\"",
    "Robert'); DELETE FROM accounts WHERE ('a'='a",
]


async def test_sql_metacharacters_in_text_and_search_are_kept_and_returned_verbatim(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """Quotes, semicolons, comments, '%', '_' and backslashes are stored and shown verbatim by
    the echo, /history and /search; '%' and '_' are not wildcards; the tables survive."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    await alice.send(*SQL_TEXTS)
    await alice.expect(f"[#general] alice: {SQL_TEXTS[-1]}", exact=True)
    said = [f"[#general] alice: {text}" for text in SQL_TEXTS]
    assert [line for line in alice.lines if line.startswith("[#general] alice: ")] == said
    assert [text for _, text in entries(await listing(alice, "/history #general 50"))][1:] == said

    for words, found in [
        ("DROP TABLE", [0]),
        ("'; DROP TABLE messages; --", [0]),
        ('" OR 1=1', [1]),
        ("100%", [2]),
        ("snake_case", [3]),
        ("back\\slash", [4]),
        ("Robert'); DELETE", [5]),
        ("%", []),
        ("_", []),
        ("' OR '1'='1", [1]),  # the words 'or' and '1 1': only letters and digits count
    ]:
        block = await listing(alice, f"/search #general {words}")
        assert block[0].startswith(f"-- search of #general for {words!r}: {len(found)} found")
        assert [text for _, text in entries(block)] == [said[i] for i in reversed(found)], words
    await alice.send("the tables are still there")
    await alice.expect("[#general] alice: the tables are still there", exact=True)
    assert len(entries(await listing(alice, "/history #general 50"))) == len(SQL_TEXTS) + 2


async def test_names_with_sql_metacharacters_are_refused_everywhere(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """As a first name, /login, /nick and /msg target, a name with quotes, semicolons,
    comment dashes, '%' or backslashes gets '! ... is not a valid name...' and the connection
    stays usable."""
    server = await sqlite_server(start_server, tmp_path)
    client = await clients.connect(server)
    assert await client.readline() == GREETING
    names = ["a'b", 'x"y', "a;b", "a%", "back\\slash", "'--", "x';DROP-TABLE-accounts;--"]
    for name in names:
        refusal = f"! {name!r} is not a valid name: use 1-32 letters, digits, '_', '-' or '.'"
        await client.send(name)
        assert await client.readline() == refusal
        await client.send(f"/login {name} {PASSWORD}")
        assert await client.readline() == refusal
    await client.send("carol")
    await client.expect("[#general] --> carol joined", exact=True)
    for name in names:
        refusal = f"! {name!r} is not a valid name: use 1-32 letters, digits, '_', '-' or '.'"
        for command in (f"/nick {name}", f"/msg {name} hello"):
            await client.send(command)
            assert await client.readline() == refusal
    await client.send("still usable")
    await client.expect("[#general] carol: still usable", exact=True)


async def test_an_underscore_name_is_not_a_wildcard_for_a_registered_one(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A guest may be called '_____' though 'alice' (five letters) is registered: names are
    compared exactly, never with LIKE."""
    server = await sqlite_server(start_server, tmp_path)
    await register(clients, server, "alice")
    await clients.connect(server, "_____")


async def test_a_10kb_emoji_line_is_refused_and_1000_emoji_round_trip(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """2,500 emoji (10,000 bytes) get '! line too long...' and the connection stays usable;
    1,000 (4,000 bytes) and 1,024 (exactly 4,096 bytes) come back verbatim, live and from
    the store."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    await alice.send("\U0001f600" * 2500)
    assert await alice.readline() == "! line too long (over 4096 bytes): it was dropped"
    fits = ["\U0001f389" * 1000, "\U0001f600" * 1024]
    assert [len(text.encode()) for text in fits] == [4000, 4096]
    await alice.send(*fits)
    assert await alice.readline() == f"[#general] alice: {fits[0]}"
    assert await alice.readline() == f"[#general] alice: {fits[1]}"
    stored = entries(await listing(alice, "/history #general 2"))
    assert [text for _, text in stored] == [f"[#general] alice: {text}" for text in fits]


async def test_a_huge_history_count_is_capped_at_500(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/history #general 1000000000' answers the newest 500 and says '-- limited to 500
    messages', then how to page back."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    await alice.send(*(f"m {i:03d}" for i in range(600)))
    await alice.expect("[#general] alice: m 599", exact=True, max_lines=700)
    block = await listing(alice, "/history #general 1000000000")
    assert [seq for seq, _ in entries(block)] == list(range(102, 602))
    assert block[-2:] == ["-- limited to 500 messages", "-- older: /history #general before 102"]


async def test_a_history_page_after_n_offers_the_newer_page_not_the_older_one(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/history #general after 5 3' lists seq 6-8, offers '-- newer: ... after 8' to read on
    (and '-- older: ... before 6' to go back); the newest page offers nothing newer."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    await alice.send(*(f"m {i:02d}" for i in range(20)))  # #general: 1 join, 2-21 these
    await alice.expect("[#general] alice: m 19", exact=True)
    block = await listing(alice, "/history #general after 5 3")
    assert block[0] == "-- history of #general: seq 6-8"
    assert [seq for seq, _ in entries(block)] == [6, 7, 8]
    assert block[-2:] == [
        "-- older: /history #general before 6",
        "-- newer: /history #general after 8",
    ]
    block = await listing(alice, "/history #general after 18")
    assert [seq for seq, _ in entries(block)] == [19, 20, 21]
    assert block[-1] == "-- older: /history #general before 19"
    block = await listing(alice, "/history #general after 21")
    assert block == ["-- history of #general: no messages", "-- kept: #general seq 1-21"]


async def test_history_and_search_of_a_room_that_does_not_exist_say_there_is_no_such_room(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/history #nosuch' and '/search #nosuch words' answer as '/who #nosuch' does: there
    is no room #nosuch; a room nobody is in now but that has history still answers."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    no_room = "! there is no room #nosuch: /rooms lists them"
    for command in ("/who #nosuch", "/history #nosuch", "/search #nosuch hello"):
        await alice.send(command)
        assert await alice.expect(lambda line: line.startswith(("! ", "-- "))) == no_room
    await alice.join("#old")
    await alice.send("hello old", "/leave #old")
    await alice.expect("-- you left #old", max_lines=5)
    block = await listing(alice, "/history #old")
    assert [text for _, text in entries(block)][-2:] == [
        "[#old] alice: hello old",
        "[#old] <-- alice left",
    ]
    block = await listing(alice, "/search #old hello")
    assert entries(block) == [(2, "[#old] alice: hello old")]


@on_asyncio_only
async def test_a_sequence_number_too_big_for_sqlite_is_answered_and_the_connection_lives(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/history #general before 10**23' gets an answer (a listing or an error) and the
    connection keeps working."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    await alice.send(f"/history #general before {10**23}", "still here")
    await alice.expect(lambda line: line.startswith(("! ", "-- history of")), within=1.0)
    await alice.expect("[#general] alice: still here", exact=True, within=1.0)


# --- 7. search --------------------------------------------------------------------------------


async def test_search_finds_messages_with_every_word_newest_first(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """'/search #room words' lists the room's messages containing every word, ignoring case
    and accents, newest first, each with its seq; other rooms' messages are not found."""
    server = await sqlite_server(start_server, tmp_path)
    alice = await clients.connect(server, "alice")
    await alice.join("#food")
    texts = [
        "Café au lait in the morning",
        "tea in the afternoon",
        "a CAFE crème, then more cafe",
        "nothing to see",
        "late cafe with lait",
    ]
    await alice.send(*texts, "/join #other", "cafe lait elsewhere")
    await alice.expect("[#other] alice: cafe lait elsewhere", exact=True)
    # #food: 1 is alice's join, then the texts from 2.
    block = await listing(alice, "/search #food cafe")
    assert block[0] == "-- search of #food for 'cafe': 3 found, newest first"
    assert entries(block) == [
        (6, "[#food] alice: late cafe with lait"),
        (4, "[#food] alice: a CAFE crème, then more cafe"),
        (2, "[#food] alice: Café au lait in the morning"),
    ]
    block = await listing(alice, "/search #food LAIT café")
    assert [seq for seq, _ in entries(block)] == [6, 2]
    block = await listing(alice, "/search #food coffee")
    assert block == ["-- search of #food for 'coffee': 0 found"]
    block = await listing(alice, "/search lait")  # the current room, #other
    assert entries(block) == [(2, "[#other] alice: cafe lait elsewhere")]


# --- 8. retention -----------------------------------------------------------------------------


async def test_retention_keeps_the_newest_and_history_says_what_is_gone(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """With retain_count=5, after a retention run /history shows seq 17-21 of 21 and says
    '-- messages of #general before seq 17 are no longer kept'; '/join #r since 0' gets
    '! missed 8 messages of #r (seq 1-8): they are no longer kept', then what is kept."""
    server = await sqlite_server(start_server, tmp_path, retain_count=5)
    alice = await clients.connect(server, "alice")
    await alice.send(*(f"k {i:02d}" for i in range(20)))  # #general: 1 join, 2-21 these
    await alice.expect("[#general] alice: k 19", exact=True)
    await alice.join("#r")
    await alice.send(*(f"r {i:02d}" for i in range(12)))  # #r: 1 join, 2-13 these
    await alice.expect("[#r] alice: r 11", exact=True)
    assert await server.hub.apply_retention() == 16 + 8

    gone = "-- messages of #general before seq 17 are no longer kept"
    block = await listing(alice, "/history #general 50")
    assert block == [
        "-- history of #general: seq 17-21",
        *block[1:6],
        gone,
    ]
    assert [text for _, text in entries(block)] == [
        f"[#general] alice: k {i:02d}" for i in range(15, 20)
    ]
    assert await listing(alice, "/history #general before 17") == [
        "-- history of #general: no messages",
        gone,
        "-- kept: #general seq 17-21",
    ]

    bob = await clients.connect(server, "bob")
    start = len(bob.lines)
    await bob.send("/join #r since 0")
    await bob.expect("[#r] --> bob joined", exact=True)
    assert [line for line in bob.lines[start:] if line.startswith(("[#r] ", "! "))] == [
        "! missed 8 messages of #r (seq 1-8): they are no longer kept",
        *[f"[#r] alice: r {i:02d}" for i in range(7, 12)],
        "[#r] --> bob joined",
    ]


async def test_a_lagging_reader_is_told_exactly_what_retention_removed_meanwhile(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A reader stalled behind a 16-message ring while retention cut the room to 5 gets every
    message still kept or still in the ring, in order, and '! missed K messages of #general
    (seq A-B)...' for exactly the rest."""
    server = await sqlite_server(
        start_server,
        tmp_path,
        retain_count=5,
        ring_capacity=16,
        high_water=16384,
        stall_timeout=300.0,
    )
    sender = await clients.connect(server, "sender")
    slow = await clients.connect(server, "slow")
    slow.stop_reading()
    throttle(server, "slow")
    # 2 MB: far more than the sockets hold, and more than two batches of the writer (512
    # messages each, whatever their size) can take at once.
    count, chunk, pad = 1000, 250, "x" * 2000
    for start in range(0, count, chunk):
        await sender.send(*(f"n {i:05d} {pad}" for i in range(start, start + chunk)))
        await sender.expect(f"[#general] sender: n {start + chunk - 1:05d} ", max_lines=chunk + 5)
    assert await server.hub.apply_retention() > 0

    slow.resume_reading()
    await slow.expect(f"[#general] sender: n {count - 1:05d} ", max_lines=count + 50)
    expected = 0  # the number of the next message due
    base: int | None = None  # seq of message n minus n, learnt from the first gap reported
    gaps = 0
    for line in slow.lines:
        if m := NUMBERED.fullmatch(line):
            assert int(m.group(2)) == expected, line
            expected += 1
        elif m := MISSED.fullmatch(line):
            lost, room, first, last = int(m[1]), m[2], int(m[3]), int(m[4])
            assert room == "#general" and last - first + 1 == lost
            base = first - expected if base is None else base
            assert first == base + expected, line
            expected += lost
            gaps += 1
        else:
            assert not line.startswith("! "), line
    assert expected == count
    assert gaps >= 1


async def test_a_returning_user_is_told_which_of_its_missed_messages_retention_removed(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A registered user away while retention cut its room to 5 gets, at login, the summary
    of the messages still kept, '! missed 16 messages of #a (seq 3-18)...' and the 5 kept,
    in order."""
    server = await sqlite_server(start_server, tmp_path, retain_count=5)
    alice = await register(clients, server, "alice")
    await alice.join("#a")  # #a: 1 alice joined, 2 alice quit, 3 bob joined, 4-23 bob's
    await leave(alice)
    bob = await clients.connect(server, "bob")
    await bob.join("#a")
    await bob.send(*(f"m {i:02d}" for i in range(20)))
    await bob.expect("[#a] bob: m 19", exact=True)
    assert await server.hub.apply_retention() == 18

    alice = await log_in(clients, server, "alice")
    await saw(alice, "[#a] --> alice joined")
    assert [line for line in alice.lines if line.startswith(("[#a] ", "-- #a: ", "! "))] == [
        "-- #a: 5 new since you left",
        "! missed 16 messages of #a (seq 3-18): they are no longer kept",
        *[f"[#a] bob: m {i:02d}" for i in range(15, 20)],
        "[#a] --> alice joined",
    ]


# --- 9. accounts ------------------------------------------------------------------------------


async def test_a_guest_cannot_take_a_registered_name_in_any_case(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """Naming oneself 'alice' or 'ALICE' while alice is registered (and away) gets
    "! 'alice' is registered: /login alice <password>, or pick another name"; so does /nick."""
    server = await sqlite_server(start_server, tmp_path)
    await leave(await register(clients, server, "alice"))
    guest = await clients.connect(server)
    assert await guest.readline() == GREETING
    refusal = "! 'alice' is registered: /login alice <password>, or pick another name"
    for name in ("alice", "ALICE"):
        await guest.send(name)
        assert await guest.readline() == refusal
    await guest.send("bob")
    await guest.expect("[#general] --> bob joined", exact=True)
    await guest.send("/nick Alice")
    assert await guest.expect("! ") == refusal


async def test_wrong_passwords_are_refused_then_throttled_even_with_the_right_one(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A wrong password and an unknown name both get '! wrong name or password'; after 5
    failures for a name, even the right password gets '! too many failed logins: try again
    in N s' (0 < N <= 300), while other names still log in."""
    server = await sqlite_server(start_server, tmp_path)
    await leave(await register(clients, server, "alice"))
    await leave(await register(clients, server, "bob"))
    client = await clients.connect(server)
    assert await client.readline() == GREETING
    await client.send("/login nobody whatever1")
    assert await client.readline() == "! wrong name or password"
    for i in range(5):
        await client.send(f"/login alice wrong-{i:04d}")
        assert await client.readline() == "! wrong name or password"
    await client.send(f"/login alice {PASSWORD}")
    throttled = re.fullmatch(
        r"! too many failed logins: try again in (\d+) s", await client.readline()
    )
    assert throttled is not None and 0 < int(throttled.group(1)) <= 300
    await client.send(f"/login bob {PASSWORD}")
    await client.expect("-- hello bob. type text to talk, /help for commands.", exact=True)


async def test_two_connections_of_one_account_both_get_room_and_private_messages(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """alice logged in twice: both connections get bob's room message and private message,
    and each sees what the other sent, in the room and privately."""
    server = await sqlite_server(start_server, tmp_path)
    await leave(await register(clients, server, "alice"))
    bob = await clients.connect(server, "bob")
    first = await log_in(clients, server, "alice")
    second = await log_in(clients, server, "alice")
    await bob.send("hello alice", "/msg alice psst")
    await first.send("from the first")
    await second.send("/msg bob from the second")
    for alice in (first, second):
        await alice.expect_all(
            "[#general] bob: hello alice",
            "[pm bob -> alice] psst",
            "[#general] alice: from the first",
            "[pm alice -> bob] from the second",
        )
    await bob.expect_all("[#general] alice: from the first", "[pm alice -> bob] from the second")
    assert bob.lines.count("[#general] --> alice joined") == 1  # one user, two connections


async def test_logout_returns_the_connection_to_the_name_prompt(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """After /logout a connection must choose a name again ('! expected a name first...'),
    may become a guest or log in again; the account's other connection stays logged in."""
    server = await sqlite_server(start_server, tmp_path)
    await leave(await register(clients, server, "alice"))
    bob = await clients.connect(server, "bob")
    first = await log_in(clients, server, "alice")
    second = await log_in(clients, server, "alice")
    await first.send("/logout")
    assert await first.expect("-- logged out") == (
        "-- logged out: choose a name, or /login name password"
    )
    await first.send("/join #x")
    assert await first.readline() == "! expected a name first, got Join: choose a name"
    await first.send("carol")
    await first.expect("[#general] --> carol joined", exact=True)

    await bob.send("still there?")
    await second.expect("[#general] bob: still there?", exact=True)
    await second.send("/logout")
    await bob.expect("[#general] <-- alice quit (logged out)", exact=True)
    await second.send(f"/login alice {PASSWORD}")
    await second.expect("-- hello alice. type text to talk, /help for commands.", exact=True)
    await bob.expect("[#general] --> alice joined", exact=True)


# --- private messages beyond what a channel or a replay holds ---------------------------------


@on_asyncio_only
async def test_a_returning_user_gets_every_private_message_sent_while_it_was_away(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """250 private messages sent to an away user all reach it, in order, when it logs in."""
    server = await sqlite_server(start_server, tmp_path)
    await leave(await register(clients, server, "alice"))
    bob = await clients.connect(server, "bob")
    await bob.send(*(f"/msg alice p {i:03d}" for i in range(250)))
    await bob.expect("[pm bob -> alice] p 249", exact=True, max_lines=600)

    alice = await log_in(clients, server, "alice")
    await alice.expect("[pm bob -> alice] p 249", exact=True, within=2.0)
    assert [line for line in alice.lines if line.startswith("[pm ")] == [
        f"[pm bob -> alice] p {i:03d}" for i in range(250)
    ]


@on_asyncio_only
async def test_a_stalled_user_gets_every_private_message_from_the_store(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A registered user that stops reading while 800 private messages come gets all of
    them, in order, when it reads again, and no '! missed' line: the store keeps them."""
    server = await sqlite_server(start_server, tmp_path, high_water=16384, stall_timeout=300.0)
    alice = await register(clients, server, "alice")
    bob = await clients.connect(server, "bob")
    alice.stop_reading()
    throttle(server, "alice")
    pad = "x" * 3000  # 2.4 MB in all: far more than the sockets and a 256-message inbox hold
    for start in range(0, 800, 100):
        await bob.send(*(f"/msg alice q {i:03d} {pad}" for i in range(start, start + 100)))
        await bob.expect(f"[pm bob -> alice] q {start + 99:03d} ", max_lines=300)
    alice.resume_reading()
    await alice.expect(f"[pm bob -> alice] q 799 {pad}", exact=True, max_lines=900)
    assert not [line for line in alice.lines if line.startswith("! ")]
    assert [line for line in alice.lines if line.startswith("[pm ")] == [
        f"[pm bob -> alice] q {i:03d} {pad}" for i in range(800)
    ]
