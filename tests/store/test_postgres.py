"""What only the PostgreSQL store promises: several nodes on one database, group commit,
recovery from lost connections, concurrent migrations, storage that cannot take writes.

Each test works in a schema of its own (the ``postgres`` fixture, ``tests/conftest.py``).
Where a test needs the store's write to be in flight, another connection holds a lock the
write needs, as another node would, and the test waits until the store's connection is
seen waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.model import Draft, Kind, Message, PrivateDraft
from roomcast.store.base import Account, conversation_key
from roomcast.store.postgres import DRIVER_ERRORS, PostgresStore
from roomcast.store.postgres_schema import MIGRATIONS, SCHEMA_VERSION, schema_version
from roomcast.store.postgres_sql import CONVERSATION_NEWEST, NO_SEQ
from tests.conftest import PgSchema, PgSmallDisk

_ids = itertools.count()


def draft(room: str = "#a", text: str = "hello", *, id: str | None = None) -> Draft:
    return Draft(
        id=id or f"m{next(_ids)}", room=room, sender="ann", kind=Kind.MESSAGE, text=text, ts=1.0
    )


def private(recipient: str = "bob", text: str = "psst") -> PrivateDraft:
    return PrivateDraft(
        id=f"p{next(_ids)}", sender="ann", recipient=recipient, kind=Kind.MESSAGE, text=text, ts=1.0
    )


async def turn() -> None:
    """Let every task that is ready run one step (one loop turn, not a wait on the clock)."""
    await asyncio.sleep(0)


async def lock_waiter(watcher: Any, schema: PgSchema, *, within: float = 10.0) -> int:
    """The backend pid of a store connection in ``schema`` that waits for a lock, once one
    does. PostgreSQL has no event to await for this: poll ``pg_stat_activity``, bounded in
    count and time."""
    async with asyncio.timeout(within):
        for _ in range(10_000):
            pid = await watcher.fetchval(
                "SELECT pid FROM pg_stat_activity"
                " WHERE application_name = $1 AND wait_event_type = 'Lock'",
                schema.name,
            )
            if pid is not None:
                return int(pid)
            await asyncio.sleep(0.002)
    raise AssertionError("no store connection ever waited for the lock")


class Lock:
    """A lock on a table, held in an open transaction on another connection."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn  # the connection holding it
        self.transaction = conn.transaction()  # the open transaction

    async def take(self, statement: str) -> Lock:
        await self.transaction.start()
        await self.conn.execute(statement)
        return self

    async def release(self, *, commit: bool = False) -> None:
        await (self.transaction.commit() if commit else self.transaction.rollback())


async def hold(schema: PgSchema, statement: str) -> Lock:
    """Run ``statement`` (a ``LOCK TABLE``, a ``DELETE``) in a transaction left open on
    another connection."""
    return await Lock(await schema.connect()).take(statement)


# --- several nodes ------------------------------------------------------------------------


async def test_two_nodes_appending_to_the_same_rooms_get_gap_free_unique_ordered_seqs(
    postgres: PgSchema,
) -> None:
    """Two stores on one database (two nodes), 20 senders each, single appends and runs of
    three across 3 rooms: every room is numbered 1..n without a gap or a duplicate, history
    holds exactly what was acknowledged in that order, and a run is never split by another
    node's messages."""
    nodes = [await postgres.open_store(), await postgres.open_store()]
    rooms = ["#a", "#b", "#c"]

    async def sender(node: PostgresStore, n: int) -> list[list[Message]]:
        sent = []
        for i in range(15):
            room = rooms[(n + i) % 3]
            if i % 3 == 0:
                sent.append(await node.append_many([draft(room, f"{n}.{i}.{k}") for k in "xyz"]))
            else:
                sent.append([await node.append(draft(room, f"{n}.{i}"))])
        return sent

    runs = await asyncio.gather(*(sender(nodes[n % 2], n) for n in range(40)))
    acked = [m for per_sender in runs for run in per_sender for m in run]
    for room in rooms:
        mine = sorted((m for m in acked if m.room == room), key=lambda m: m.seq)
        assert [m.seq for m in mine] == list(range(1, len(mine) + 1)), room
        page = await nodes[0].history(room, limit=1000)
        assert page.messages == tuple(mine)
    for per_sender in runs:
        for run in per_sender:
            assert [m.seq for m in run] == list(range(run[0].seq, run[0].seq + len(run)))


async def test_private_messages_from_two_nodes_share_one_gap_free_sequence(
    postgres: PgSchema,
) -> None:
    """200 private messages sent through two stores at once are numbered 1..200, once each."""
    nodes = [await postgres.open_store(), await postgres.open_store()]
    sent = await asyncio.gather(*(nodes[i % 2].append_private(private()) for i in range(200)))
    assert sorted(p.seq for p in sent) == list(range(1, 201))
    stored = await nodes[1].privates("bob", after=0, limit=500)
    assert sorted(sent, key=lambda p: p.seq) == list(stored)


async def test_a_node_numbers_on_after_another_nodes_messages(postgres: PgSchema) -> None:
    """What one node appended, the other sees, and its own next message follows it."""
    first, second = await postgres.open_store(), await postgres.open_store()
    await first.append(draft("#a"))
    await second.append_many([draft("#a"), draft("#a")])
    assert (await first.append(draft("#a"))).seq == 4
    assert (await first.room("#a")).latest_seq == 4


async def test_look_alikes_registered_on_two_nodes_at_once_store_one_of_each(
    postgres: PgSchema,
) -> None:
    """Two nodes registering look-alike names at the same moment (``alice`` on one,
    ``aIice`` on the other; 20 such pairs) store exactly one name of each pair, and refuse
    the other as a look-alike of it."""
    one, two = await postgres.open_store(), await postgres.open_store()
    pairs = [(f"alice{i}", f"aIice{i}") for i in range(20)]  # 20 skeletons, one per pair
    results = await asyncio.gather(
        *(
            node.create_account(name, "h", now=1.0)
            for pair in pairs
            for node, name in zip((one, two), pair, strict=True)
        ),
        return_exceptions=True,
    )
    for (a, b), got in zip(pairs, zip(results[::2], results[1::2], strict=True), strict=True):
        won = [r for r in got if isinstance(r, Account)]
        refused = [r for r in got if isinstance(r, ClientError)]
        assert len(won) == 1 and len(refused) == 1, (a, b, got)
        assert refused[0].code == "lookalike" and repr(won[0].name) in refused[0].message
        assert await one.account_like(a) == await two.account_like(b) == won[0]


# --- group commit and its callback --------------------------------------------------------


async def test_appends_queued_during_a_commit_go_out_together_in_the_next(
    postgres: PgSchema,
) -> None:
    """While one append's commit waits (for a lock another node holds), 499 more queue up;
    they are all written in the one commit that follows, numbered in queue order."""
    store = await postgres.open_store()
    watcher = await postgres.connect()
    lock = await hold(postgres, "LOCK TABLE rooms IN EXCLUSIVE MODE")
    first = asyncio.create_task(store.append(draft("#r0")))
    await lock_waiter(watcher, postgres)
    rest = [asyncio.create_task(store.append(draft(f"#r{i % 5}"))) for i in range(1, 500)]
    await turn()
    assert store.statistics().pending == 499
    await lock.release()
    messages = [await first, *await asyncio.gather(*rest)]
    stats = store.statistics()
    assert (stats.commits, stats.writes, stats.largest_batch, stats.pending) == (2, 500, 499, 0)
    for room in [f"#r{i}" for i in range(5)]:
        assert [m.seq for m in messages if m.room == room] == list(range(1, 101))


async def test_max_batch_in_the_url_caps_a_commit(postgres: PgSchema) -> None:
    """With ``max_batch=7`` in the URL, 50 queued appends take 8 commits of at most 7."""
    store = await postgres.open_store("max_batch=7")
    lock = await hold(postgres, "LOCK TABLE rooms IN EXCLUSIVE MODE")
    tasks = [asyncio.create_task(store.append(draft())) for _ in range(50)]
    await turn()
    await lock.release()
    assert sorted(m.seq for m in await asyncio.gather(*tasks)) == list(range(1, 51))
    stats = store.statistics()
    assert (stats.commits, stats.largest_batch) == (8, 7)


async def test_then_runs_before_the_future_is_done_even_for_a_cancelled_caller(
    postgres: PgSchema,
) -> None:
    """``then`` gets the stored messages on the loop before the future is done; a caller
    cancelled while its write waited still has it stored and its ``then`` called."""
    store = await postgres.open_store()
    watcher = await postgres.connect()
    seen: list[tuple[str, list[Message], bool]] = []
    lock = await hold(postgres, "LOCK TABLE rooms IN EXCLUSIVE MODE")
    cancelled = store.append_many(
        [draft("#a", "one"), draft("#a", "two")],
        then=lambda ms: seen.append(("cancelled", ms, cancelled.done())),
    )
    await lock_waiter(watcher, postgres)
    cancelled.cancel()
    waited = store.append_many(
        [draft("#a", "three")], then=lambda ms: seen.append(("waited", ms, waited.done()))
    )
    await lock.release()
    stored = await waited
    assert cancelled.cancelled()
    assert [(who, [m.text for m in ms], done) for who, ms, done in seen] == [
        ("cancelled", ["one", "two"], True),  # done: by cancellation, before the commit
        ("waited", ["three"], False),
    ]
    page = await store.history("#a", limit=10)
    assert page.messages == (*seen[0][1], *stored)


async def test_a_failing_then_fails_its_future_and_the_writer_goes_on(
    postgres: PgSchema,
) -> None:
    """An exception in ``then`` reaches that caller; the message is stored and later writes
    work."""
    store = await postgres.open_store()

    def explode(messages: list[Message]) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        await store.append_many([draft("#a")], then=explode)
    assert (await store.append(draft("#a"))).seq == 2


# --- failures -------------------------------------------------------------------------------


async def test_a_write_whose_connection_is_killed_fails_with_broken_and_stores_nothing(
    postgres: PgSchema,
) -> None:
    """When the server ends the connection of a write in flight (``pg_terminate_backend``),
    its sender gets ``Broken``, not an acknowledgement; nothing of it is stored, and the
    next append takes the number it would have had."""
    store = await postgres.open_store()
    watcher = await postgres.connect()
    await store.append(draft("#a", "kept"))
    lock = await hold(postgres, "LOCK TABLE rooms IN EXCLUSIVE MODE")
    doomed = asyncio.ensure_future(store.append_many([draft("#a", "lost"), draft("#b", "lost")]))
    pid = await lock_waiter(watcher, postgres)
    assert await watcher.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
    with pytest.raises(Broken, match="PostgreSQL store failed") as caught:
        await doomed
    assert isinstance(caught.value.__cause__, DRIVER_ERRORS)
    await lock.release()
    assert (await store.append(draft("#a", "next"))).seq == 2
    assert [m.text for m in (await store.history("#a", limit=10)).messages] == ["kept", "next"]
    assert (await store.room("#b")).latest_seq == 0


async def test_the_pool_recovers_after_its_backends_are_terminated(postgres: PgSchema) -> None:
    """After every connection of the store is terminated from another connection, a call
    fails at most once, with ``Broken``; then appends and reads work without a restart."""
    store = await postgres.open_store()
    watcher = await postgres.connect()
    await store.append(draft("#a"))
    await store.history("#a", limit=1)
    killed = await watcher.fetchval(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
        " WHERE application_name = $1",
        postgres.name,
    )
    assert killed >= 1
    failures: list[Broken] = []
    stored: Message | None = None
    for _ in range(3):
        try:
            stored = await store.append(draft("#a"))
            break
        except Broken as e:
            failures.append(e)
    assert stored is not None and stored.seq == 2, failures
    assert len(failures) <= 1
    assert [m.seq for m in (await store.history("#a", limit=10)).messages] == [1, 2]
    assert (await store.append_private(private())).seq == 1


async def test_a_refused_append_fails_alone(postgres: PgSchema) -> None:
    """An append the database refuses (a reused id) fails with ``Broken`` without taking a
    number or failing the others of its batch."""
    store = await postgres.open_store()
    lock = await hold(postgres, "LOCK TABLE rooms IN EXCLUSIVE MODE")
    tasks = [
        asyncio.create_task(store.append(d)) for d in [draft(id="same"), draft(id="same"), draft()]
    ]
    await turn()
    await lock.release()
    first, second, third = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(first, Message) and first.seq == 1
    assert isinstance(second, Broken) and "duplicate key" in str(second)
    assert isinstance(third, Message) and third.seq == 2


async def test_a_membership_written_while_its_account_is_deleted_is_ignored(
    postgres: PgSchema,
) -> None:
    """A read-marker write that races the deletion of its account is dropped quietly, as
    the ``Accounts`` contract says, rather than failing."""
    store = await postgres.open_store()
    watcher = await postgres.connect()
    await store.create_account("ann", "h", now=1.0)
    deletion = await hold(postgres, "DELETE FROM accounts WHERE key = 'ann'")
    joining = asyncio.ensure_future(store.set_membership("ann", "#a", read_seq=3))
    await lock_waiter(watcher, postgres)
    await deletion.release(commit=True)
    await joining
    assert await store.memberships("ann") == {}
    assert await store.account("ann") is None


async def test_a_read_only_database_is_not_opened(postgres: PgSchema) -> None:
    """A database whose transactions are read-only (a standby, or one an operator set
    read-only) is refused with ``Unwritable`` saying so: a server on it could store
    nothing."""
    with pytest.raises(Unwritable, match="is not writable: its transactions are read-only"):
        await postgres.open_store("default_transaction_read_only=on")


@contextlib.asynccontextmanager
async def own_role(postgres: PgSchema) -> AsyncIterator[str]:
    """A login role of the test's own (named as its schema) that may use the schema; its
    objects are dropped with it at the end. An operator's ``ALTER ROLE ... SET`` on it
    reaches only this test's connections."""
    admin = await postgres.connect()
    role = postgres.name  # a name of ours, not user text: quoting is enough
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    try:
        await admin.execute(f'GRANT ALL ON SCHEMA "{postgres.name}" TO "{role}"')
        yield role
    finally:
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')


async def reconnect(watcher: Any, postgres: PgSchema) -> None:
    """End every store connection of the test (they come back at their next use, with the
    role's settings of now)."""
    await watcher.fetchval(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
        " WHERE application_name = $1",
        postgres.name,
    )


async def append_through(store: PostgresStore, d: Draft) -> Message | Broken:
    """Append ``d``; a connection the server ended fails the call once (the pool reconnects
    for the next), so try once more then. The message, or the error of the last try."""
    outcome: Message | Broken = Broken("not tried")
    for _ in range(2):
        try:
            return await store.append(d)
        except Unwritable as e:
            return e
        except Broken as e:
            outcome = e
    return outcome


async def test_a_database_made_read_only_refuses_writes_until_it_is_writable_again(
    postgres: PgSchema, caplog: pytest.LogCaptureFixture
) -> None:
    """When an operator makes the store's database read-only, writes fail with
    ``Unwritable`` and ``check`` says why, while reads go on; once it is writable again, so
    is the store. Each change is logged once."""
    watcher = await postgres.connect()
    async with own_role(postgres) as role:
        parts = urllib.parse.urlsplit(postgres.url)
        url = parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}").geturl()
        store = await PostgresStore.open(url, server_settings=postgres.settings)
        try:
            assert isinstance(await store.append(draft("#a", "before")), Message)
            await store.check()
            await watcher.execute(f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
            await reconnect(watcher, postgres)
            caplog.set_level(logging.WARNING, "roomcast.store")
            refused = await append_through(store, draft("#a", "while"))
            assert isinstance(refused, Unwritable), refused
            assert "read-only" in str(refused)
            with pytest.raises(Unwritable, match="its transactions are read-only"):
                await store.create_account("ann", "h", now=1.0)
            with pytest.raises(Unwritable, match="its transactions are read-only"):
                await store.check()
            assert [m.text for m in (await store.history("#a", limit=5)).messages] == ["before"]
            await watcher.execute(f'ALTER ROLE "{role}" RESET default_transaction_read_only')
            await reconnect(watcher, postgres)
            stored = await append_through(store, draft("#a", "after"))
            assert isinstance(stored, Message) and stored.seq == 2, stored
            await store.check()
        finally:
            await store.close()
    said = [r.getMessage() for r in caplog.records if r.name == "roomcast.store"]
    assert len([line for line in said if " fail: " in line]) == 1, said
    assert len([line for line in said if "writable again" in line]) == 1, said


async def test_a_full_disk_refuses_writes_until_a_write_succeeds(
    postgres_small_disk: PgSmallDisk, postgres: PgSchema
) -> None:
    """When the database server's disk is full, appends and registrations fail with
    ``Unwritable`` and store nothing, reads go on, and ``check`` says the disk is full;
    it says so until a write succeeds again, once there is space."""
    disk = postgres_small_disk.disk
    store = await postgres.open_store(f"default_tablespace={postgres_small_disk.tablespace}")
    await store.check()
    disk.fill()
    with pytest.raises(Unwritable, match="its disk is full"):
        await store.append(draft("#a"))
    with pytest.raises(Unwritable, match="its disk is full"):
        await store.create_account("ann", "h", now=1.0)
    with pytest.raises(Unwritable, match="its disk is full"):
        await store.check()
    assert (await store.room("#a")).latest_seq == 0
    assert await store.account("ann") is None
    disk.free()
    with pytest.raises(Unwritable, match="its disk is full"):
        await store.check()  # no query tells the server's free space: the last write does
    assert (await store.append(draft("#a"))).seq == 1
    await store.check()
    assert (await store.create_account("ann", "h", now=1.0)).name == "ann"


async def test_a_closed_store_fails_its_check(postgres: PgSchema) -> None:
    """``check`` on a closed store raises ``Broken``, not ``Unwritable``."""
    store = await postgres.open_store()
    await store.check()
    await store.close()
    with pytest.raises(Broken, match="closed") as caught:
        await store.check()
    assert not isinstance(caught.value, Unwritable)


async def test_an_unreachable_server_is_broken_and_its_password_is_not_told() -> None:
    """Opening a store whose server cannot be reached raises ``Broken`` that names the
    server but masks the password."""
    with pytest.raises(Broken, match="cannot open the PostgreSQL store") as caught:
        await PostgresStore.open("postgresql://ann:s3cret@127.0.0.1:1/chat?connect_timeout=5")
    assert "s3cret" not in str(caught.value)
    assert "postgresql://ann:***@127.0.0.1:1/chat" in str(caught.value)


@pytest.mark.parametrize(
    "query", ["pool_size=0", "max_batch=many", "connect_timeout=-1", "command_timeout="]
)
async def test_a_bad_limit_in_the_url_is_refused(query: str) -> None:
    """A limit that is not a positive number is refused with ``ValueError`` naming it."""
    name = query.partition("=")[0]
    with pytest.raises(ValueError, match=f"{name}=.* expected a positive"):
        await PostgresStore.open(f"postgresql://127.0.0.1:1/chat?{query}")


# --- schema ---------------------------------------------------------------------------------


async def test_concurrent_openers_migrate_once(postgres: PgSchema) -> None:
    """Four stores opened at once on an empty schema (nodes starting together) all work;
    the schema is migrated once, and opening again changes nothing."""
    stores = await asyncio.gather(*(postgres.open_store() for _ in range(4)))
    watcher = await postgres.connect()
    assert await watcher.fetch("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    await stores[0].append(draft())
    await stores[3].close()
    again = await postgres.open_store()
    assert await watcher.fetch("SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert (await again.append(draft())).seq == 2


async def test_a_newer_schema_is_refused(postgres: PgSchema) -> None:
    """A database from a newer roomcast is refused with ``Broken`` rather than misread."""
    await (await postgres.open_store()).close()
    watcher = await postgres.connect()
    await watcher.execute("UPDATE schema_version SET version = $1", SCHEMA_VERSION + 1)
    with pytest.raises(Broken, match="newer than this roomcast knows"):
        await postgres.open_store()


async def test_a_database_of_the_first_schema_is_migrated_with_its_rows(
    postgres: PgSchema,
) -> None:
    """A database made by the first schema keeps its rows through the migrations: its
    accounts get distinct ids and their skeletons (two look-alikes registered before both
    stay), its private messages form conversations, and nothing old counts as signed."""
    old = await postgres.connect()
    async with old.transaction():
        assert await schema_version(old) == 0
        for statement in MIGRATIONS[0]:
            assert isinstance(statement, str)
            await old.execute(statement)
        await old.execute("UPDATE schema_version SET version = 1")
    for key, name in [("alice", "Alice"), ("aiice", "aIice"), ("bob", "bob"), ("ab", "ab")]:
        await old.execute(
            "INSERT INTO accounts (key, name, password_hash, created) VALUES ($1, $2, 'h', 1)",
            key,
            name,
        )
    for seq, sender, to in [(1, "Bob", "ALICE"), (2, "alice", "bob"), (3, "a_b", "AB")]:
        await old.execute(
            "INSERT INTO private_messages (seq, id, sender, recipient, recipient_key, kind,"
            " text, ts) VALUES ($1, $2, $3, $4, lower($4), 'message', 'hi', 1)",
            seq,
            f"p{seq}",
            sender,
            to,
        )
    await old.execute("UPDATE counters SET value = 3 WHERE name = 'private_seq'")
    await old.execute(
        "INSERT INTO messages (room, seq, id, sender, kind, text, ts, words)"
        " VALUES ('#a', 1, 'm1', 'bob', 'message', 'old', 1, to_tsvector('simple', 'old'))"
    )
    await old.execute("INSERT INTO rooms (name, created, last_seq) VALUES ('#a', 1, 1)")

    store = await postgres.open_store()
    assert await old.fetchval("SELECT version FROM schema_version") == SCHEMA_VERSION
    accounts = [await store.account(name) for name in ("alice", "aiice", "bob", "ab")]
    assert all(a is not None and re.fullmatch("[0-9a-f]{24}", a.id) for a in accounts)
    assert len({a.id for a in accounts if a is not None}) == 4
    for account in accounts:
        assert account is not None and account.generation == 0
        assert await store.account_by_id(account.id) == account
    assert await store.account_like("a1ice") == accounts[1]  # the first of two by name
    assert await store.account_like("ALICE") == accounts[0]
    with pytest.raises(ClientError) as caught:
        await store.create_account("alice_", "h", now=2.0)
    assert caught.value.code == "lookalike"
    page = await store.conversation("alice", "BOB", signed=False, limit=10)
    assert [(p.seq, p.signed, p.recipient_signed) for p in page.messages] == [
        (1, False, False),
        (2, False, False),
    ]
    assert [
        p.seq for p in (await store.conversation("ab", "A_B", signed=False, limit=5)).messages
    ] == [3]
    pairs = await old.fetch("SELECT sender, recipient, pair FROM private_messages ORDER BY seq")
    assert [pair for _, _, pair in pairs] == [conversation_key(a, b) for a, b, _ in pairs]
    assert (await store.history("#a", limit=5)).messages[0].signed is False
    assert (await store.append_private(private("alice"))).seq == 4


async def test_data_survives_close_and_reopen(postgres: PgSchema) -> None:
    """Messages, privates and accounts outlive the store, and numbering goes on after it."""
    store = await postgres.open_store()
    await store.append_many([draft("#a", "one"), draft("#a", "two")])
    await store.append_private(private("bob"))
    await store.create_account("Bob", "h", now=5.0)
    await store.set_membership("bob", "#a", read_seq=1)
    await store.close()
    store = await postgres.open_store()
    assert [m.text for m in (await store.history("#a", limit=5)).messages] == ["one", "two"]
    assert (await store.append(draft("#a"))).seq == 3
    assert (await store.append_private(private("bob"))).seq == 2
    account = await store.account("BOB")
    assert account is not None and (account.name, account.private_read_seq) == ("Bob", 1)
    assert await store.memberships("bob") == {"#a": 1}


async def test_close_flushes_what_is_queued_and_is_idempotent(postgres: PgSchema) -> None:
    """``close`` commits every append already queued, can be called again, and afterwards
    every call raises ``Broken``."""
    store = await postgres.open_store()
    tasks = [asyncio.create_task(store.append(draft())) for _ in range(100)]
    await turn()
    await asyncio.gather(store.close(), store.close())
    await store.close()
    assert sorted(task.result().seq for task in tasks) == list(range(1, 101))
    with pytest.raises(Broken, match="closed"):
        await store.append(draft())
    with pytest.raises(Broken, match="closed"):
        await store.history("#a", limit=1)
    assert (await (await postgres.open_store()).room("#a")).latest_seq == 100


async def test_search_can_use_the_words_index(postgres: PgSchema) -> None:
    """Search for a rare word among many messages of the room is answered from the GIN
    index, not by reading the room."""
    store = await postgres.open_store()
    await store.append_many([draft("#a", f"word{i} common") for i in range(2000)])
    watcher = await postgres.connect()
    await watcher.execute("ANALYZE messages")
    plan = await watcher.fetch(
        "EXPLAIN SELECT seq FROM messages WHERE room = $1 AND words @@"
        " (phraseto_tsquery('simple', $2) && phraseto_tsquery('simple', $3))"
        " ORDER BY seq DESC LIMIT 10",
        "#a",
        "word7",
        "common",
    )
    assert any("messages_words" in row[0] for row in plan), plan
    assert [m.text for m in await store.search("#a", "WORD7 common", limit=5)] == ["word7 common"]


async def test_a_conversation_is_read_from_its_index(postgres: PgSchema) -> None:
    """A page of a conversation among many private messages of others is read through the
    index on the conversation, not by reading every private message."""
    store = await postgres.open_store()
    for i in range(20):
        await asyncio.gather(*(store.append_private(private(f"user{i}")) for _ in range(100)))
    await store.append_private(private("bob", "the one"))
    watcher = await postgres.connect()
    await watcher.execute("ANALYZE private_messages")
    plan = await watcher.fetch(
        f"EXPLAIN {CONVERSATION_NEWEST}", "ann bob", 1, "bob", False, NO_SEQ, -1, 10
    )
    assert all("Seq Scan" not in row[0] for row in plan), plan
    assert any("private_messages_pair" in row[0] for row in plan), plan
    page = await store.conversation("bob", "ann", signed=False, limit=10)
    assert [p.text for p in page.messages] == ["the one"]
