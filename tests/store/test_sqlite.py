"""What only the SQLite store promises: durability, its schema, group commit, a free loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomcast.errors import Broken, ClientError
from roomcast.model import Draft, Kind, Message, PrivateDraft
from roomcast.store import sqlite_writer
from roomcast.store.sqlite import SqliteStore
from roomcast.store.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

_ids = itertools.count()


def draft(room: str = "#a", text: str = "hello", *, id: str | None = None) -> Draft:
    return Draft(
        id=id or f"m{next(_ids)}", room=room, sender="ann", kind=Kind.MESSAGE, text=text, ts=1.0
    )


@contextlib.contextmanager
def write_lock(path: Path) -> Iterator[None]:
    """Hold the database's write lock from another connection, as another process would."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


async def turn() -> None:
    """Let every task that is ready run one step (one loop turn, not a wait on the clock)."""
    await asyncio.sleep(0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


async def test_data_survives_close_and_reopen(path: Path) -> None:
    """Messages, privates and accounts outlive the store, and numbering goes on after reopen."""
    store = await SqliteStore.open(path)
    sent = [await store.append(draft("#a", f"t{i}")) for i in range(3)]
    await store.append_private(
        PrivateDraft(id="p1", sender="ann", recipient="bob", kind=Kind.MESSAGE, text="x", ts=2.0)
    )
    await store.create_account("Ann", "hash", now=3.0)
    await store.retain("#a", max_age=None, max_count=1, now=0.0)
    await store.close()

    store = await SqliteStore.open(path)
    try:
        page = await store.history("#a", limit=10)
        assert page.messages == (sent[2],)
        assert (page.oldest_seq, page.latest_seq) == (3, 3)
        assert (await store.append(draft("#a"))).seq == 4
        assert [p.seq for p in await store.privates("bob", after=0, limit=5)] == [1]
        again = await store.append_private(
            PrivateDraft(id="p2", sender="a", recipient="b", kind=Kind.MESSAGE, text="y", ts=4.0)
        )
        assert again.seq == 2
        account = await store.account("ann")
        assert account is not None and account.name == "Ann"
    finally:
        await store.close()


async def test_schema_version_is_recorded(path: Path) -> None:
    """A new file is migrated to the latest schema, and ``user_version`` says so."""
    store = await SqliteStore.open(path)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
    assert {"rooms", "messages", "messages_fts", "private_messages", "accounts"} <= tables
    assert {"memberships", "counters"} <= tables


async def test_the_files_are_for_their_owner_only(tmp_path: Path) -> None:
    """Under umask 022 a new store's directory is 0700 and the database, its WAL and its SHM
    0600; files an older version left 0644 are narrowed when the store opens."""
    path = tmp_path / "data" / "chat.db"
    old = os.umask(0o022)
    try:
        store = await SqliteStore.open(path)
        await store.append(draft())
        files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        assert files == {"chat.db": 0o600, "chat.db-wal": 0o600, "chat.db-shm": 0o600}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        for name in files:
            (path.parent / name).chmod(0o644)
        store2 = await SqliteStore.open(path)
        await store2.close()
        await store.close()
    finally:
        os.umask(old)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in path.parent.iterdir())


@pytest.fixture(params=["zero bytes", "version 0 with a table of its own"])
def older_file(request: pytest.FixtureRequest, path: Path) -> Path:
    """A database file at schema version 0: empty, or holding a table of its own."""
    if request.param == "zero bytes":
        path.write_bytes(b"")
    else:
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
            conn.execute("INSERT INTO notes VALUES ('kept')")
            conn.commit()
    return path


async def test_migrates_an_older_file(older_file: Path) -> None:
    """An existing database at version 0 is migrated in place, keeping what it held."""
    store = await SqliteStore.open(older_file)
    assert (await store.append(draft())).seq == 1
    await store.close()
    with contextlib.closing(sqlite3.connect(older_file)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        if "notes" in tables:
            assert conn.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    assert "messages" in tables


async def test_a_file_from_before_signed_and_conversations_is_migrated(path: Path) -> None:
    """A file whose messages predate ``signed`` gets the columns, its rows read as a guest's
    (nobody can tell whose they were), and its private messages fall into their
    conversations, either way round and in any case."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statements in MIGRATIONS[:2]:  # the schema before either was recorded
            for statement in statements:
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("INSERT INTO rooms (name, created, last_seq) VALUES ('#a', 1.0, 1)")
        conn.execute(
            "INSERT INTO messages (id, room, seq, sender, kind, text, ts)"
            " VALUES ('m1', '#a', 1, 'bob', 'message', 'old', 1.0)"
        )
        for seq, sender, to in [(1, "Bob", "ann"), (2, "ann", "BOB"), (3, "ann", "cy")]:
            conn.execute(
                "INSERT INTO private_messages (seq, id, sender, recipient, kind, text, ts)"
                " VALUES (?, ?, ?, ?, 'message', 'old', 1.0)",
                (seq, f"p{seq}", sender, to),
            )
        conn.execute("UPDATE counters SET value = 3 WHERE name = 'private_seq'")
    store = await SqliteStore.open(path)
    try:
        (old,) = (await store.history("#a", limit=5)).messages
        assert old.signed is False
        (to_bob,) = await store.privates("bob", after=0, limit=5)
        assert (to_bob.seq, to_bob.signed, to_bob.recipient_signed) == (2, False, False)
        as_guest = await store.conversation("BOB", "Ann", signed=False, limit=5)
        assert [p.seq for p in as_guest.messages] == [1, 2]
        assert (await store.conversation("bob", "ann", signed=True, limit=5)).messages == ()
        new = await store.append_private(
            PrivateDraft(
                id="p4",
                sender="ann",
                recipient="bob",
                kind=Kind.MESSAGE,
                text="new",
                ts=2.0,
                signed=True,
                recipient_signed=True,
            )
        )
        as_ann = await store.conversation("ann", "bob", signed=True, limit=5)
        assert as_ann.messages == (new,) and new.seq == 4
    finally:
        await store.close()


async def test_accounts_made_before_ids_get_an_id_and_generation_0(path: Path) -> None:
    """Accounts stored before accounts had ids are given distinct random ids (found by
    ``account_by_id``) and generation 0 by the migration; their data stays."""
    (added,) = [
        i for i, m in enumerate(MIGRATIONS) if any("accounts_id" in statement for statement in m)
    ]
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for migration in MIGRATIONS[:added]:
            for statement in migration:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {added:d}")
        for key, name in (("ann", "Ann"), ("bob", "bob")):
            conn.execute(
                "INSERT INTO accounts (key, name, password_hash, created, private_read_seq)"
                " VALUES (?, ?, 'hash', 1.0, 7)",
                (key, name),
            )
    store = await SqliteStore.open(path)
    try:
        ann, bob = await store.account("ann"), await store.account("BOB")
        assert ann is not None and bob is not None
        assert (ann.name, ann.password_hash, ann.private_read_seq, ann.generation) == (
            "Ann",
            "hash",
            7,
            0,
        )
        assert len(ann.id) == 24 and ann.id != bob.id
        assert await store.account_by_id(ann.id) == ann
        assert (await store.create_account("carol", "h", now=2.0)).id not in (ann.id, bob.id)
    finally:
        await store.close()


async def test_accounts_older_than_the_skeleton_column_get_theirs(path: Path) -> None:
    """A database from before the look-alike rule is migrated: its accounts get their
    skeletons, so the rule covers them at once, and accounts that already look alike are
    both kept."""
    step = next(i for i, m in enumerate(MIGRATIONS) if any("skeleton" in s for s in m))
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statements in MIGRATIONS[:step]:
            for statement in statements:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {step:d}")
        for key, name in [("alice", "Alice"), ("john.doe", "john.doe"), ("john_doe", "john_doe")]:
            conn.execute(
                "INSERT INTO accounts (key, id, name, password_hash, created)"
                " VALUES (?, lower(hex(randomblob(12))), ?, 'h', 1)",
                (key, name),
            )
    store = await SqliteStore.open(path)
    try:
        found = await store.account_like("a1ice")
        assert found is not None and found.name == "Alice"
        with pytest.raises(ClientError) as caught:
            await store.create_account("ALICE_", "h", now=2.0)
        assert caught.value.code == "lookalike"
        like = await store.account_like("johndoe")
        assert like is not None and like.name in {"john.doe", "john_doe"}
        assert (await store.account("john_doe")) is not None
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        plan = conn.execute("EXPLAIN QUERY PLAN " + sqlite_writer.ACCOUNT_LIKE, ("x",)).fetchall()
    assert [row[3] for row in plan] == [
        "SEARCH accounts USING INDEX accounts_by_skeleton (skeleton=?)"
    ]


async def test_a_newer_schema_is_refused(path: Path) -> None:
    """A file from a newer roomcast is refused with ``Broken`` rather than misread."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(Broken, match="newer than this roomcast knows"):
        await SqliteStore.open(path)


@pytest.fixture
def not_a_database(path: Path) -> Path:
    path.write_bytes(b"this is a chat log, not a database\n" * 200)
    return path


async def test_a_file_that_is_not_a_database_is_broken(not_a_database: Path) -> None:
    """Opening a file that is not a SQLite database raises ``Broken`` naming the file."""
    path = not_a_database
    with pytest.raises(Broken) as caught:
        await SqliteStore.open(path)
    assert str(path) in str(caught.value)
    assert "not a database" in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


async def test_group_commit_batches_concurrent_appends(path: Path) -> None:
    """500 appends queued while a commit is held up go out in at most 2 transactions."""
    store = await SqliteStore.open(path)
    before = store.statistics()
    with write_lock(path):
        tasks = [asyncio.create_task(store.append(draft(f"#r{i % 5}"))) for i in range(500)]
        await turn()  # every task has queued its append
    messages = await asyncio.gather(*tasks)
    stats = store.statistics()
    await store.close()
    assert stats.commits - before.commits <= 2
    assert stats.writes - before.writes == 500
    assert stats.largest_batch >= 250
    assert stats.pending == 0
    for room in [f"#r{i}" for i in range(5)]:
        assert sorted(m.seq for m in messages if m.room == room) == list(range(1, 101))


async def test_the_loop_runs_while_the_writer_waits(path: Path) -> None:
    """While the writer waits for the disk (here: a lock), the event loop keeps turning and
    reads are answered from the last committed state."""
    store = await SqliteStore.open(path)
    first = await store.append(draft())
    with write_lock(path):
        tasks = [asyncio.create_task(store.append(draft())) for _ in range(1000)]
        page = await store.history("#a", limit=10)
        turns = 0
        while turns < 1000:
            await turn()
            turns += 1
        assert not any(task.done() for task in tasks)
    assert page.messages == (first,)
    assert [m.seq for m in await asyncio.gather(*tasks)] == list(range(2, 1002))
    await store.close()


async def test_a_lost_transaction_fails_its_appends_with_broken(path: Path) -> None:
    """A driver error (the write lock cannot be had) reaches the caller as ``Broken``, and
    the numbering stays gap-free after it."""
    store = await SqliteStore.open(path, busy_timeout=0)
    await store.append(draft())
    with write_lock(path):
        with pytest.raises(Broken, match="locked") as caught:
            await store.append(draft())
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert (await store.append(draft())).seq == 2
    await store.close()


async def test_a_batch_lost_midway_fails_every_job_in_it(path: Path) -> None:
    """When the database fails in the middle of a batch, every write of that batch fails
    with ``Broken`` (even those that ran before the failure) and no number is skipped."""
    store = await SqliteStore.open(path)
    await store.append(draft())
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute(  # an error that is no constraint violation: the transaction is lost
            "CREATE TRIGGER fail AFTER INSERT ON private_messages BEGIN SELECT json(new.text); END"
        )
    bad = PrivateDraft(id="p", sender="a", recipient="b", kind=Kind.MESSAGE, text="{", ts=1.0)
    with write_lock(path):
        tasks = [asyncio.create_task(store.append(draft())), store.append_private(bad)]
        lost = asyncio.gather(*tasks, return_exceptions=True)
        await turn()
    results = await lost
    assert all(isinstance(r, Broken) and "malformed JSON" in str(r) for r in results), results
    assert (await store.append(draft())).seq == 2
    assert [m.seq for m in (await store.history("#a", limit=5)).messages] == [1, 2]
    await store.close()


async def test_a_refused_append_fails_alone(path: Path) -> None:
    """An append the database refuses (a reused id) fails with ``Broken`` without taking a
    sequence number or failing the others in its batch."""
    store = await SqliteStore.open(path)
    with write_lock(path):
        tasks = [
            asyncio.create_task(store.append(d))
            for d in [draft(id="same"), draft(id="same"), draft()]
        ]
        await turn()
    first, second, third = await asyncio.gather(*tasks, return_exceptions=True)
    await store.close()
    assert isinstance(first, Message) and first.seq == 1
    assert isinstance(second, Broken) and "UNIQUE" in str(second)
    assert isinstance(third, Message) and third.seq == 2


async def test_another_writer_is_noticed(path: Path) -> None:
    """When another connection appends to a room, the store's numbering goes on after it."""
    store = await SqliteStore.open(path)
    await store.append(draft())
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        other.execute(
            "INSERT INTO messages (id, room, seq, sender, kind, text, ts)"
            " VALUES ('other', '#a', 2, 'bob', 'message', 'hi', 1.0)"
        )
        other.execute("UPDATE rooms SET last_seq = 2 WHERE name = '#a'")
        other.execute("COMMIT")
    assert (await store.append(draft())).seq == 3
    await store.close()


async def test_close_flushes_what_is_queued_and_is_idempotent(path: Path) -> None:
    """``close`` commits every append already queued, can be called again, and afterwards
    every call raises ``Broken``."""
    store = await SqliteStore.open(path)
    tasks = [asyncio.create_task(store.append(draft())) for _ in range(100)]
    await turn()
    await asyncio.gather(store.close(), store.close())
    await store.close()
    assert sorted(task.result().seq for task in tasks) == list(range(1, 101))
    with pytest.raises(Broken, match="closed"):
        await store.append(draft())
    with pytest.raises(Broken, match="closed"):
        await store.history("#a", limit=1)
    store = await SqliteStore.open(path)
    assert (await store.room("#a")).latest_seq == 100
    await store.close()


async def test_history_and_search_use_indexes(path: Path) -> None:
    """The page, room, conversation and search queries seek an index and never sort or scan
    a table."""
    from roomcast.store import sqlite as module

    store = await SqliteStore.open(path)
    await store.close()
    queries = [
        (module._HISTORY_NEWEST, ("#a", 50, 0, 50)),
        (module._HISTORY_OLDEST, ("#a", 0, 50, 50)),
        (module._ROOM_INFO, ("#a", "#a")),
        (module._PRIVATES, ("bob", 0, 50)),
        (module._CONVERSATION_NEWEST, ("ann bob", 1, "ann", 1, "ann", 1, 90, 0, 50)),
        (module._CONVERSATION_OLDEST, ("ann bob", 1, "ann", 1, "ann", 1, 0, 90, 50)),
        (module._CONVERSATION_ENDS, ("ann bob", 1, "ann", 1, "ann", 1) * 2),
        (module._SEARCH, ('"word"', "#a", 50)),
    ]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        for sql, args in queries:
            plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
            assert "TEMP B-TREE" not in plan, plan
            scans = plan
            for allowed in ("SCAN messages_fts VIRTUAL TABLE", "SCAN CONSTANT ROW"):
                scans = scans.replace(allowed, "")
            assert "SCAN" not in scans, plan


CHILD = """
import asyncio, sys
from roomcast.model import Draft, Kind
from roomcast.store import sqlite_writer
from roomcast.store.sqlite import SqliteStore

async def sender(store, n):
    for i in range(10**9):
        d = Draft(id=f"{n}-{i}", room=f"#r{n % 3}", sender="k", kind=Kind.MESSAGE,
                  text=f"text {i}", ts=0.0)
        m = await store.append(d)
        sys.stdout.write(f"{m.room} {m.seq} {m.id}\\n")
        sys.stdout.flush()

async def main():
    store = await SqliteStore.open(sys.argv[1])
    await asyncio.gather(*(sender(store, n) for n in range(20)))

asyncio.run(main())
"""


async def test_a_killed_process_loses_no_acknowledged_message(path: Path) -> None:
    """Every append a process saw acknowledged is in the file after the process is killed
    with SIGKILL mid-stream."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    acked: list[str] = []
    while len(acked) < 500:
        line = await child.stdout.readline()
        assert line, f"the child stopped early: exit status {await child.wait()}"
        acked.append(line.decode())
    child.kill()
    acked.extend(line.decode() for line in (await child.stdout.read()).splitlines(True))
    assert await child.wait() == -9

    store = await SqliteStore.open(path)
    try:
        stored: dict[tuple[str, int], str] = {}
        for room in ["#r0", "#r1", "#r2"]:
            page = await store.history(room, after=0, limit=1_000_000)
            stored.update(((m.room, m.seq), m.id) for m in page.messages)
            assert [m.seq for m in page.messages] == list(range(1, len(page.messages) + 1))
    finally:
        await store.close()
    for ack in acked:
        if ack.endswith("\n"):  # a line cut short by the kill says nothing
            room, seq, id_ = ack.split()
            assert stored.get((room, int(seq))) == id_, ack


async def test_the_search_index_is_filled_in_batches_and_stays_whole(path: Path) -> None:
    """Messages are indexed after their commit, yet search and retention always see them
    all, and the index stays consistent when retention cuts messages not yet indexed."""
    store = await SqliteStore.open(path)
    try:
        await asyncio.gather(*(store.append(draft(text=f"word{i} common")) for i in range(50)))
        assert len(await store.search("#a", "common", limit=100)) == 50
        appends = [store.append(draft(text=f"late{i} common")) for i in range(20)]
        cut = store.retain("#a", max_age=None, max_count=10, now=2.0)  # same batch: unindexed
        *_, removed = await asyncio.gather(*appends, cut)
        assert removed == 60
        found = await store.search("#a", "common", limit=100)
        assert [m.text for m in found] == [f"late{i} common" for i in range(19, 9, -1)]
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        (indexed,) = conn.execute("SELECT value FROM counters WHERE name = 'fts_serial'").fetchone()
        (newest,) = conn.execute("SELECT MAX(serial) FROM messages").fetchone()
        assert indexed == newest
    finally:
        conn.close()


def indexed_up_to(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        (serial,) = conn.execute("SELECT value FROM counters WHERE name = 'fts_serial'").fetchone()
        return int(serial)
    finally:
        conn.close()


async def test_the_index_is_filled_in_big_passes_and_when_writes_pause(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass runs once INDEX_ROWS messages wait, not after every commit; the rest is
    indexed once no write has come for INDEX_DELAY seconds."""
    monkeypatch.setattr(sqlite_writer, "INDEX_ROWS", 10)
    monkeypatch.setattr(sqlite_writer, "INDEX_DELAY", 3600.0)
    store = await SqliteStore.open(path)
    try:
        for i in range(9):
            await store.append(draft(text=f"t{i}"))
        assert indexed_up_to(path) == 0  # 9 wait: below the pass size, and never idle
        for i in range(9, 25):
            await store.append(draft(text=f"t{i}"))
        assert indexed_up_to(path) == 20  # a pass ran each time 10 were waiting
        assert len(await store.search("#a", "t24", limit=5)) == 1  # search indexes first
        assert indexed_up_to(path) == 25
    finally:
        await store.close()
    monkeypatch.setattr(sqlite_writer, "INDEX_DELAY", 0.01)
    store = await SqliteStore.open(path)
    try:
        await store.append(draft(text="late"))
        async with asyncio.timeout(5):
            # the writer thread indexes it once idle; it tells the loop nothing, so look
            while indexed_up_to(path) != 26:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await store.close()


async def test_a_refused_run_stores_nothing_and_numbering_goes_on(path: Path) -> None:
    """A run with a message the store refuses (a duplicate id) is undone whole, and the next
    append takes the number the refused run would have taken."""
    store = await SqliteStore.open(path)
    try:
        await store.append(draft("#a", id="dup"))
        with pytest.raises(Broken):
            await store.append_many([draft("#a"), draft("#b"), draft("#a", id="dup")])
        assert (await store.append(draft("#a"))).seq == 2
        assert (await store.append(draft("#b"))).seq == 1
        assert [m.seq for m in (await store.history("#a", limit=10)).messages] == [1, 2]
    finally:
        await store.close()
