"""Benchmarks of the SQLite store, each beside its baseline in the same run.

1. Appends per second: the store's group commit (many senders, each awaiting its ack) against
   one COMMIT per message on a plain ``sqlite3`` connection with the same schema and pragmas
   (WAL, ``synchronous=FULL``). The same workload on the PostgreSQL store (``--postgres URL``,
   default ``$ROOMCAST_BENCH_POSTGRES`` or ``postgres@127.0.0.1/test``; in a schema of its
   own, dropped afterwards), run in turns with SQLite's, against one INSERT per statement on
   a plain asyncpg connection. Skipped, with a note, when the server cannot be reached.
2. History page latency: 50 messages at the start, middle and end of a room of 1,000,000
   messages, through the store API (p50/p99), against OFFSET paging (a pager without the
   ``(room, seq)`` seek) at the middle.
3. Catch-up: messages per second replayed to one returning client reading pages of 200 with
   ``history(after=...)``.
4. Catch-up through the server: an in-process ``Server`` on a file whose room holds 100,000
   messages, and one raw TCP client that sends ``/join #room since 0`` and reads until the
   last message arrives, against paging the same messages through the store API (as in 3).

Run ``python bench/store.py`` (about 1-2 minutes) or ``--quick`` (a few seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from roomcast.config import Config
from roomcast.model import Draft, Kind
from roomcast.server import Server
from roomcast.store.base import Store, search_tokens
from roomcast.store.sqlite import SqliteStore
from roomcast.store.sqlite_schema import configure, migrate

PAGE = 50  # messages in a history page
CATCH_UP_PAGE = 200  # messages in a catch-up page


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each benchmark does."""

    group_messages: int  # appended through the store
    senders: int  # concurrent senders, each awaiting its ack before sending again
    rounds: int  # group-commit runs of each store, in turns
    single_messages: int  # appended one COMMIT at a time (the baseline)
    big_room: int  # messages in the history room
    samples: int  # history pages timed at each position
    offset_samples: int  # OFFSET pages timed (the slow baseline)
    catch_up: int  # messages replayed to the returning client (and in section 4's room)


FULL = Sizes(
    group_messages=100_000,
    senders=200,
    rounds=3,
    single_messages=3_000,
    big_room=1_000_000,
    samples=1_000,
    offset_samples=20,
    catch_up=100_000,
)
QUICK = Sizes(
    group_messages=10_000,
    senders=100,
    rounds=1,
    single_messages=500,
    big_room=200_000,
    samples=200,
    offset_samples=5,
    catch_up=20_000,
)


def text_of(i: int) -> str:
    return f"message {i} about topic {i % 97}: the quick brown fox jumps over the lazy dog"


def sender_of(i: int) -> str:
    return f"user{i % 50}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@contextlib.contextmanager
def plain(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to ``path`` with the store's schema and pragmas."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        configure(conn)
        migrate(conn)
        yield conn
    finally:
        conn.close()


# --- 1. appends ---------------------------------------------------------------------------


class Counted(Protocol):
    """What ``statistics()`` of both durable stores tells."""

    @property
    def commits(self) -> int: ...
    @property
    def writes(self) -> int: ...
    @property
    def largest_batch(self) -> int: ...


class Benched(Store, Protocol):
    """A store with a group-commit writer."""

    def statistics(self) -> Counted: ...


async def group_commit(store: Benched, label: str, sizes: Sizes) -> float:
    """Appends per second through ``store`` (closed afterwards), ``senders`` at a time."""
    per_sender = sizes.group_messages // sizes.senders

    async def sender(n: int) -> None:
        for i in range(per_sender):
            await store.append(
                Draft(
                    id=f"g{n}-{i}",
                    room=f"#room{n % 10}",
                    sender=f"user{n}",
                    kind=Kind.MESSAGE,
                    text=text_of(i),
                    ts=time.time(),
                )
            )

    start = time.perf_counter()
    await asyncio.gather(*(sender(n) for n in range(sizes.senders)))
    elapsed = time.perf_counter() - start
    stats = store.statistics()
    await store.close()
    total = per_sender * sizes.senders
    rate = total / elapsed
    print(
        f"  {label:<15}{rate:10,.0f} appends/s  ({total:,} messages, {sizes.senders} senders,"
        f" {stats.commits:,} commits, {stats.writes / max(stats.commits, 1):.1f} per commit,"
        f" largest {stats.largest_batch})"
    )
    return rate


def one_commit_each(path: Path, sizes: Sizes) -> float:
    """Appends per second with INSERT + COMMIT per message (the baseline)."""
    with plain(path) as conn:
        conn.execute("INSERT INTO rooms (name, created) VALUES ('#room', 0)")
        start = time.perf_counter()
        for i in range(1, sizes.single_messages + 1):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO messages (id, room, seq, sender, kind, text, ts)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (f"s{i}", "#room", i, "user", "message", text_of(i), time.time()),
            )
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
    rate = sizes.single_messages / elapsed
    print(
        f"  one commit each{rate:10,.0f} appends/s  ({sizes.single_messages:,} messages,"
        " plain sqlite3, same schema and pragmas)"
    )
    return rate


# --- 1b. the same on PostgreSQL -----------------------------------------------------------


@contextlib.asynccontextmanager
async def postgres_schema(url: str) -> AsyncIterator[dict[str, str] | None]:
    """Server settings for a new schema in ``url``'s database, dropped on exit; ``None``
    when the server cannot be reached or asyncpg is not installed."""
    try:
        import asyncpg
    except ImportError as e:
        print(f"  PostgreSQL: skipped ({e})")
        yield None
        return
    try:
        admin = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        print(f"  PostgreSQL: skipped, {url} is unreachable ({e})")
        yield None
        return
    name = f"roomcast_bench_{os.getpid()}"  # ours: letters, digits and '_'
    try:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE; CREATE SCHEMA "{name}"')
        yield {"search_path": name}
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await admin.close()


async def postgres_info(url: str, settings: dict[str, str]) -> str:
    import asyncpg

    conn = await asyncpg.connect(url, server_settings=settings)
    try:
        row = await conn.fetchrow(
            "SELECT current_setting('server_version') AS version,"
            " current_setting('fsync') AS fsync,"
            " current_setting('synchronous_commit') AS synchronous_commit"
        )
    finally:
        await conn.close()
    return (
        f"PostgreSQL {row['version']} (fsync={row['fsync']},"
        f" synchronous_commit={row['synchronous_commit']})"
    )


async def open_postgres(url: str, settings: dict[str, str]) -> Benched:
    """A fresh PostgreSQL store: its tables dropped, then created again."""
    import asyncpg

    from roomcast.store.postgres import PostgresStore

    conn: Any = await asyncpg.connect(url, server_settings=settings)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS schema_version, rooms, messages, private_messages,"
            " memberships, accounts, counters CASCADE"
        )
    finally:
        await conn.close()
    return await PostgresStore.open(url, server_settings=settings)


async def postgres_one_commit_each(url: str, settings: dict[str, str], sizes: Sizes) -> float:
    """Appends per second with one INSERT statement (its own transaction) per message on a
    plain asyncpg connection, into the store's tables (the baseline)."""
    import asyncpg

    await (await open_postgres(url, settings)).close()  # the tables, empty
    conn: Any = await asyncpg.connect(url, server_settings=settings)
    try:
        start = time.perf_counter()
        for i in range(1, sizes.single_messages + 1):
            text = text_of(i)
            await conn.execute(
                "INSERT INTO messages (room, seq, id, sender, kind, text, ts, words)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, to_tsvector('simple', $8))",
                "#room",
                i,
                f"s{i}",
                "user",
                "message",
                text,
                time.time(),
                " ".join(search_tokens(text)),
            )
        elapsed = time.perf_counter() - start
    finally:
        await conn.close()
    rate = sizes.single_messages / elapsed
    print(
        f"  one commit each{rate:10,.0f} appends/s  ({sizes.single_messages:,} messages,"
        " plain asyncpg, one INSERT statement each, same tables)"
    )
    return rate


async def appends(where: Path, sizes: Sizes, postgres: str | None) -> None:
    """Section 1: group commit on SQLite and (when reachable) PostgreSQL, in turns, then
    each against its one-commit-per-message baseline."""
    path = where / "group.db"

    async def fresh_sqlite() -> Benched:
        for suffix in ["", "-wal", "-shm"]:
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return await SqliteStore.open(path)

    async with contextlib.AsyncExitStack() as stack:
        settings = (
            None if postgres is None else await stack.enter_async_context(postgres_schema(postgres))
        )
        if postgres is not None and settings is not None:
            print(f"  ({await postgres_info(postgres, settings)})")
        lite: list[float] = []
        pg: list[float] = []
        for _ in range(sizes.rounds):  # in turns, so that both see the same machine
            lite.append(await group_commit(await fresh_sqlite(), "SQLite", sizes))
            if postgres is not None and settings is not None:
                store = await open_postgres(postgres, settings)
                pg.append(await group_commit(store, "PostgreSQL", sizes))
        single = await asyncio.to_thread(one_commit_each, where / "single.db", sizes)
        lite_rate = statistics.median(lite)
        print(f"  ratio          {lite_rate / single:10.1f} x  (SQLite: group commit / one each)")
        if postgres is not None and settings is not None:
            pg_single = await postgres_one_commit_each(postgres, settings, sizes)
            pg_rate = statistics.median(pg)
            print(
                f"  ratio          {pg_rate / pg_single:10.1f} x"
                "  (PostgreSQL: group commit / one each)"
            )
            print(
                f"  ratio          {pg_rate / lite_rate:10.2f} x"
                f"  (PostgreSQL / SQLite, group commit, medians of {sizes.rounds})"
            )


# --- 2. and 3. a big room -------------------------------------------------------------------


def build_big_room(path: Path, count: int, room: str = "#big") -> float:
    """Bulk-load ``count`` messages into ``room``; return the seconds it took.

    The search index is left out (the rows are marked as indexed, so the store's writer does
    not index them later): history never reads it, and indexing a million texts would
    dominate the run.
    """
    with plain(path) as conn:
        start = time.perf_counter()
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO rooms (name, created, last_seq) VALUES (?, ?, ?)", (room, 0.0, count)
        )
        conn.executemany(
            "INSERT INTO messages (id, room, seq, sender, kind, text, ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (f"b{i}", room, i, sender_of(i), "message", text_of(i), 1.7e9 + i)
                for i in range(1, count + 1)
            ),
        )
        conn.execute(
            "UPDATE counters SET value = (SELECT MAX(serial) FROM messages)"
            " WHERE name = 'fts_serial'"
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return time.perf_counter() - start


async def timed(call: Callable[[], Awaitable[object]], samples: int) -> list[float]:
    latencies = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    return latencies


async def history_pages(path: Path, sizes: Sizes) -> None:
    """p50/p99 of a 50-message page at the start, middle and end of ``#big``."""
    count = sizes.big_room
    store = await SqliteStore.open(path)
    try:
        middle = count // 2
        positions: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("start", lambda: store.history("#big", after=0, limit=PAGE)),
            ("middle", lambda: store.history("#big", before=middle, limit=PAGE)),
            ("end", lambda: store.history("#big", limit=PAGE)),
        ]
        for name, call in positions:
            await timed(call, 20)  # warm up: reader connections, caches, as on a live server
            latencies = await timed(call, sizes.samples)
            print(
                f"  {name:<6} p50 {ms(statistics.median(latencies))}"
                f"   p99 {ms(percentile(latencies, 99))}   ({sizes.samples} pages)"
            )
    finally:
        await store.close()
    with plain(path) as conn:
        query = (
            "SELECT id, seq, sender, kind, text, ts FROM messages WHERE room = ?"
            " ORDER BY seq LIMIT ? OFFSET ?"
        )
        latencies = []
        for _ in range(sizes.offset_samples):
            start = time.perf_counter()
            conn.execute(query, ("#big", PAGE, middle)).fetchall()
            latencies.append(time.perf_counter() - start)
    print(
        f"  baseline: OFFSET paging at the middle, plain sqlite3:"
        f" p50 {ms(statistics.median(latencies))}  ({sizes.offset_samples} pages)"
    )


async def page_through(path: Path, room: str, after: int) -> tuple[int, int, float]:
    """Read ``room`` from ``after`` to its end through the store API, in pages of
    ``CATCH_UP_PAGE``; return the messages read, the pages and the seconds it took."""
    store = await SqliteStore.open(path)
    try:
        replayed = 0
        pages = 0
        start = time.perf_counter()
        while True:
            page = await store.history(room, after=after, limit=CATCH_UP_PAGE)
            if not page.messages:
                break
            replayed += len(page.messages)
            pages += 1
            after = page.messages[-1].seq
        elapsed = time.perf_counter() - start
    finally:
        await store.close()
    return replayed, pages, elapsed


async def catch_up(path: Path, sizes: Sizes) -> None:
    """Messages per second replayed to a client that returns ``catch_up`` messages behind."""
    replayed, pages, elapsed = await page_through(path, "#big", sizes.big_room - sizes.catch_up)
    print(
        f"  {replayed / elapsed:10,.0f} messages/s  ({replayed:,} messages in {pages:,} pages"
        f" of {CATCH_UP_PAGE}, {elapsed:.2f} s)"
    )


# --- 4. catch-up through the server ---------------------------------------------------------


async def join_since_zero(path: Path, room: str, count: int) -> tuple[int, float]:
    """Start a server on ``path``; one raw TCP client sends ``/join ROOM since 0`` and reads
    until the line of message ``count`` (the room's last) arrives. Return the room's messages
    it read and the seconds from sending the command to that line."""
    config = Config(host="127.0.0.1", port=0, http_port=-1, store=f"sqlite:{path}")
    server = Server(config)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.line.port)
        writer.write(b"reader\n")
        await writer.drain()
        await reader.readuntil(b"[#general] --> reader joined\n")
        prefix = f"\n[{room}] ".encode()  # how a line of the room starts
        last = f"\n[{room}] {sender_of(count)}: {text_of(count)}\n".encode()
        received = 0
        pending = b"\n"  # what was read after the last complete line, after a line end
        start = time.perf_counter()
        writer.write(f"/join {room} since 0\n".encode())
        await writer.drain()
        while True:
            data = await reader.read(1 << 16)
            if not data:
                raise RuntimeError("the server closed the connection")
            pending += data
            end = pending.rfind(b"\n")
            lines, pending = pending[: end + 1], pending[end:]  # complete lines, from a line end
            received += lines.count(prefix)
            if last in lines:
                elapsed = time.perf_counter() - start
                received -= lines[lines.index(last) + 1 :].count(prefix)  # read past the last
                break
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()
    return received, elapsed


def on_uvloop(path: Path, room: str, count: int) -> tuple[int, float] | None:
    """``join_since_zero`` on a uvloop event loop of its own (what ``roomcast serve`` runs);
    ``None`` when uvloop is not installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for Windows
        return None
    result: tuple[int, float] = uvloop.run(join_since_zero(path, room, count))
    return result


async def catch_up_through_server(path: Path, sizes: Sizes) -> None:
    """``/join #room since 0`` over TCP against paging the same messages through the store."""
    count = sizes.catch_up
    built = await asyncio.to_thread(build_big_room, path, count, "#room")
    print(f"  (room of {count:,} messages bulk-loaded in {built:.1f} s)")
    replayed, pages, paged_for = await page_through(path, "#room", 0)  # before any join
    paged = replayed / paged_for
    print(
        f"  store API      {paged:10,.0f} messages/s  ({replayed:,} messages in {pages:,} pages"
        f" of {CATCH_UP_PAGE}, {paged_for:.2f} s; the baseline)"
    )
    runs: list[tuple[str, tuple[int, float] | None]] = [
        ("asyncio", await join_since_zero(path, "#room", count)),
        ("uvloop", await asyncio.to_thread(on_uvloop, path, "#room", count)),
    ]
    for loop, result in runs:
        if result is None:
            print(f"  server, {loop:<7} (not installed)")
            continue
        received, elapsed = result
        if received != count:
            raise RuntimeError(f"the client read {received:,} messages of the room, not {count:,}")
        served = received / elapsed
        print(
            f"  server, {loop:<7}{served:10,.0f} messages/s  ({received:,} lines to one TCP"
            f" client, {elapsed:.2f} s; {served / paged:.2f} x the store API)"
        )


# --- main ---------------------------------------------------------------------------------


async def run(sizes: Sizes, where: Path, postgres: str | None, appends_only: bool) -> None:
    print(
        f"roomcast store benchmark: SQLite {sqlite3.sqlite_version}, Python"
        f" {platform.python_version()}, WAL + synchronous=FULL, files in {where}"
    )
    for name in ["group.db", "single.db", "big.db", "catchup.db"]:  # a fresh start in --dir
        for suffix in ["", "-wal", "-shm"]:
            (where / (name + suffix)).unlink(missing_ok=True)
    print("\n1. appends (each acknowledged only once durable)")
    await appends(where, sizes, postgres)
    if appends_only:
        return

    big = where / "big.db"
    print(f"\n2. history: {PAGE}-message pages in a room of {sizes.big_room:,} messages")
    built = await asyncio.to_thread(build_big_room, big, sizes.big_room)
    print(f"  (room bulk-loaded in {built:.1f} s, without the search index)")
    await history_pages(big, sizes)

    print(f"\n3. catch-up: a client returns {sizes.catch_up:,} messages behind")
    await catch_up(big, sizes)

    print(f"\n4. catch-up through the server: '/join #room since 0', {sizes.catch_up:,} messages")
    await catch_up_through_server(where / "catchup.db", sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("ROOMCAST_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/test"),
        help="the PostgreSQL database for section 1 (a schema is made there and dropped)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--appends-only", action="store_true", help="section 1 only (appends per second)"
    )
    parser.add_argument(
        "--dir", type=Path, help="where to put the database files (default: a temporary folder)"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    postgres = None if args.no_postgres else args.postgres
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(sizes, args.dir, postgres, args.appends_only))
        return 0
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as tmp:
        asyncio.run(run(sizes, Path(tmp), postgres, args.appends_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
