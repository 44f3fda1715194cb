"""The store for several nodes: PostgreSQL through asyncpg, with group commit on each node.

Theory of operation
-------------------
A pool of asyncpg connections serves everything. **Appends** (room and private messages) go
through one **writer task** per store: each call queues a job at once (so writes are made in
call order) with a future; the writer takes the first job and everything queued behind it
(up to ``max_batch``) and writes all the room messages of that batch in one statement, and
all its private messages in another. A statement on its own is a transaction: one commit,
one WAL flush, shared by the whole batch. While a commit is in flight the next jobs queue
up, and go together in the next one. Once a statement has committed, the writer calls each
job's ``then`` with the stored messages, on the loop, then resolves its future: the same
contract as the SQLite store (``roomcast.store.base.Store.append_many``).

**Sequence numbers** are assigned inside the insert's transaction, by the database, so that
several nodes writing the same room get gap-free, unique, ordered numbers. The statement
upserts one row per room of the batch, ``last_seq = last_seq + n`` (the room is created on
first use), which locks that row until the commit: another node's batch for the same room
waits, then numbers on from the committed value. A rolled-back batch gives its numbers back
with its row update. Rooms are locked in name order, so two nodes' batches never wait on
each other in a cycle. Private messages take theirs the same way from the ``counters`` row
``private_seq`` (not a SEQUENCE: a sequence keeps the numbers of rolled-back transactions,
and would leave gaps). ``UNIQUE (room, seq)`` backs this up.

**Reads and account changes** run one statement each on a connection from the pool, each
its own snapshot. Connections go back to the pool without the reset query asyncpg sends by
default (one round trip per use): the store never changes session state, listens or holds
session locks, and asyncpg still rolls back a transaction left open.

**Search** matches ``words`` (see ``roomcast.store.postgres_schema``) against one
``phraseto_tsquery('simple', $n)`` per query word, all required. Each word is a bound
parameter made of the words' search tokens: no user text is ever query syntax.

**Failures**: every driver error (``asyncpg``'s, and ``OSError``) becomes
``roomcast.errors.Broken`` at this seam. A batch whose statement fails (connection lost,
server restart, ``pg_terminate_backend``) fails every job in it: a sender gets an error,
never an acknowledgement for a message that is not stored. The pool replaces a dead
connection when it is next taken, so the store recovers without a restart. A statement the
database refuses for one job's data (a reused message id) is retried job by job, so the
refusal fails that job alone.

Use: ``store = await PostgresStore.open("postgresql://user@host/db")`` ... ``await
store.close()``; from one event loop only. Limits come from the URL's query
(``?pool_size=20&command_timeout=10``, see ``open``); any other query parameter is a server
setting (``?search_path=chat`` keeps the tables in schema ``chat``).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from roomcast.errors import Broken, ClientError
from roomcast.model import Draft, Kind, Message, Private, PrivateDraft, fold
from roomcast.store import public_url
from roomcast.store.base import Account, Page, RoomInfo, search_tokens
from roomcast.store.postgres_schema import migrate

__all__ = ["DRIVER_ERRORS", "PostgresStore", "Statistics"]

log = logging.getLogger("roomcast.store")

# Everything asyncpg raises when the server, the connection or a statement fails.
DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
)
# What the database refuses because of one write's data: that write fails alone.
_REFUSALS: Final = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

# The limits the URL's query may set, with their defaults.
_LIMITS: Final[dict[str, tuple[type[int] | type[float], int | float]]] = {
    "pool_size": (int, 10),  # connections at most
    "max_batch": (int, 1000),  # appends (jobs) in one group commit at most
    "connect_timeout": (float, 10.0),  # seconds to open a connection
    "command_timeout": (float, 60.0),  # seconds one statement may run
}

_COLUMNS = "id, seq, sender, kind, text, ts"

# One statement for a batch's room messages: reserve each room's numbers (rooms in name
# order, created on first use), then insert every message under its number.
_APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::float8[], $7::text[])
        WITH ORDINALITY AS b (id, room, sender, kind, text, ts, words, ord)
), per_room AS (
    SELECT room, count(*) AS n, min(ts) AS created FROM batch GROUP BY room
), reserved AS (
    INSERT INTO rooms AS r (name, created, last_seq)
    SELECT room, created, n FROM per_room ORDER BY room COLLATE "C"
    ON CONFLICT (name) DO UPDATE SET last_seq = r.last_seq + excluded.last_seq
    RETURNING r.name, r.last_seq
)
INSERT INTO messages (room, seq, id, sender, kind, text, ts, words)
SELECT b.room, r.last_seq - p.n + row_number() OVER (PARTITION BY b.room ORDER BY b.ord),
       b.id, b.sender, b.kind, b.text, b.ts, to_tsvector('simple', b.words)
FROM batch AS b JOIN per_room AS p USING (room) JOIN reserved AS r ON r.name = b.room
RETURNING id, seq
"""
# The same for private messages, numbered from the one 'private_seq' counter.
_APPEND_PRIVATE = """
WITH reserved AS (
    UPDATE counters SET value = value + cardinality($1::text[])
    WHERE name = 'private_seq' RETURNING value
)
INSERT INTO private_messages (seq, id, sender, recipient, recipient_key, kind, text, ts)
SELECT r.value - cardinality($1::text[]) + p.ord, p.id, p.sender, p.recipient, p.key,
       p.kind, p.text, p.ts
FROM reserved AS r,
     unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::float8[]) WITH ORDINALITY AS p (id, sender, recipient, key, kind, text, ts, ord)
RETURNING id, seq
"""
# Where a room's history stands: (latest, oldest or NULL), one row even for no room.
_INFO = """
SELECT COALESCE((SELECT last_seq FROM rooms WHERE name = $1), 0) AS latest,
       (SELECT seq FROM messages WHERE room = $1 ORDER BY seq LIMIT 1) AS oldest
"""
# A page and where the room stands, in one snapshot: the info row, joined to the page's
# messages (none: one row of NULLs). $2..$4: below, above, limit.
_PAGE = f"""
SELECT i.latest, i.oldest, m.* FROM ({_INFO}) AS i LEFT JOIN LATERAL (
    SELECT {_COLUMNS} FROM messages WHERE room = $1 AND seq < $2 AND seq > $3
    ORDER BY seq {{order}} LIMIT $4
) AS m ON true ORDER BY m.seq
"""
_PAGE_NEWEST = _PAGE.format(order="DESC")
_PAGE_OLDEST = _PAGE.format(order="ASC")
# Retention: the cut is the highest of the count's and the age's (GREATEST skips a NULL,
# which is what a missing limit gives); only seq < cut goes.
_RETAIN = """
WITH cut AS (
    SELECT GREATEST(
        1,
        r.last_seq - $2::bigint + 1,
        CASE WHEN $3::float8 IS NOT NULL THEN COALESCE(
            (SELECT seq FROM messages WHERE room = $1 AND ts >= $3 ORDER BY seq LIMIT 1),
            r.last_seq + 1
        ) END
    ) AS below
    FROM rooms AS r WHERE r.name = $1
), gone AS (
    DELETE FROM messages AS m USING cut WHERE m.room = $1 AND m.seq < cut.below RETURNING 1
)
SELECT count(*) FROM gone
"""
_NO_SEQ: Final = 2**62  # an upper bound above any sequence number


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """What the writer has done since the store was opened (feeds ``/metrics``)."""

    commits: int  # statements (each its own transaction) the writer committed
    writes: int  # jobs (appends) in those
    largest_batch: int  # most jobs in one commit
    pending: int  # jobs queued and not yet taken


@dataclass(slots=True)
class _Job:
    """One append waiting for the writer: what to store, and whom to tell."""

    drafts: Sequence[Draft]  # a run of room messages (empty for a private message)
    private: PrivateDraft | None  # or one private message
    future: asyncio.Future[Any]  # list[Message] or Private once committed
    then: Callable[[Any], None] | None  # called with the result on the loop, after COMMIT


_Outcome = tuple[_Job, bool, Any]  # a job, whether it succeeded, its result or its exception
_STOP: Final = None  # the queue item that tells the writer to finish


def broken(e: BaseException) -> Broken:
    """``e`` (a driver error) as the ``Broken`` the store raises; a new one for each caller."""
    error = Broken(f"the PostgreSQL store failed: {e}")
    error.__cause__ = e
    return error


def _limits(url: str) -> tuple[str, dict[str, Any]]:
    """Split the store's own limits out of ``url``'s query; ``ValueError`` for a bad one."""
    parts = urllib.parse.urlsplit(url)
    limits: dict[str, Any] = {name: default for name, (_, default) in _LIMITS.items()}
    rest = []
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in _LIMITS:
            rest.append((name, value))
            continue
        kind = _LIMITS[name][0]
        try:
            limits[name] = kind(value)
        except ValueError:
            limits[name] = 0
        if not limits[name] > 0:
            raise ValueError(
                f"{name}={value!r} in the store URL: expected a positive {kind.__name__}"
            )
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest))), limits


async def _keep(conn: Any) -> None:
    """The pool's reset: nothing (see the module docstring)."""


def _message(room: str, row: Any) -> Message:
    return Message(
        id=row["id"],
        room=room,
        seq=row["seq"],
        sender=row["sender"],
        kind=Kind(row["kind"]),
        text=row["text"],
        ts=row["ts"],
    )


# --- the store ----------------------------------------------------------------------------


class PostgresStore:
    """A ``Storage`` in a PostgreSQL database. Open with ``await PostgresStore.open(url)``."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int, where: str) -> None:
        """Private: use ``open``, which connects and migrates first."""
        self.where = where  # the URL without its password, for messages
        self._pool = pool  # every connection: the writer takes one per batch, reads one each
        self._max_batch = max_batch  # most jobs in one commit
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()  # appends, then _STOP
        self._closing = False  # set by close(): no new work is accepted
        self._closed: asyncio.Future[None] | None = None  # the shutdown, once started
        self._commits = 0  # statements the writer committed
        self._writes = 0  # jobs in them
        self._largest_batch = 0  # most jobs in one of them
        self._writer = asyncio.create_task(self._write_batches(), name="roomcast-pg-writer")

    @classmethod
    async def open(
        cls, url: str, *, server_settings: Mapping[str, str] | None = None
    ) -> PostgresStore:
        """Connect to the database ``url`` names, migrate its schema, start the writer.

        The URL's query may set the store's limits: ``pool_size`` (connections, 10),
        ``max_batch`` (appends in one commit, 1000), ``connect_timeout`` (seconds, 10) and
        ``command_timeout`` (seconds one statement may take, 60). Other query parameters,
        and ``server_settings``, are PostgreSQL settings for every connection
        (``search_path``, ``application_name``, ...). Raises ``ValueError`` for a bad limit,
        ``Broken`` when the database cannot be reached or used (or its schema is newer).
        """
        dsn, limits = _limits(url)
        where = public_url(url)
        settings = dict(server_settings or {})
        if "application_name" not in settings and "application_name=" not in dsn:
            settings["application_name"] = "roomcast"  # how pg_stat_activity shows us
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=limits["pool_size"],
                timeout=limits["connect_timeout"],
                command_timeout=limits["command_timeout"],
                server_settings=settings,
                reset=_keep,
            )
        except DRIVER_ERRORS as e:
            raise Broken(f"cannot open the PostgreSQL store {where}: {e}") from e
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException as e:
            pool.terminate()
            if isinstance(e, DRIVER_ERRORS):
                raise Broken(f"cannot use {where} as a PostgreSQL store: {e}") from e
            raise
        return cls(pool, max_batch=limits["max_batch"], where=where)

    def statistics(self) -> Statistics:
        """A snapshot of the writer's counters."""
        return Statistics(
            commits=self._commits,
            writes=self._writes,
            largest_batch=self._largest_batch,
            pending=self._jobs.qsize(),
        )

    async def close(self) -> None:
        """Let the writer commit everything queued, then close the pool.

        Idempotent; afterwards every method raises ``Broken``.
        """
        if self._closed is None:
            self._closing = True
            self._closed = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._closed)

    async def _shut_down(self) -> None:
        self._jobs.put_nowait(_STOP)
        await self._writer
        try:
            await self._pool.close()
        except DRIVER_ERRORS:  # a connection died on the way out: drop them all
            self._pool.terminate()

    # --- the writer ---------------------------------------------------------------------

    def _queue(
        self,
        drafts: Sequence[Draft],
        private: PrivateDraft | None = None,
        then: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue an append now; the future is done once it is committed, after ``then``
        was called with the result (on the loop, even if the future was cancelled)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(Broken("the PostgreSQL store is closed"))
        else:
            self._jobs.put_nowait(_Job(drafts=drafts, private=private, future=future, then=then))
        return future

    async def _write_batches(self) -> None:
        """The writer: take a job and all queued behind it, commit them, settle them."""
        while True:
            batch = [await self._jobs.get()]
            while len(batch) < self._max_batch and not self._jobs.empty():
                batch.append(self._jobs.get_nowait())
            jobs = [job for job in batch if job is not _STOP]
            rooms = [job for job in jobs if job.private is None]
            privates = [job for job in jobs if job.private is not None]
            if rooms:
                _settle(await self._commit(self._append_rooms, rooms))
            if privates:
                _settle(await self._commit(self._append_privates, privates))
            if len(jobs) < len(batch):  # _STOP: nothing is queued after it
                return

    async def _commit(
        self, write: Callable[[Any, list[_Job]], Any], jobs: list[_Job]
    ) -> list[_Outcome]:
        """Run ``write`` for ``jobs`` as one statement; each job's outcome, in order."""
        try:
            async with self._pool.acquire() as conn:
                results = await write(conn, jobs)
        except _REFUSALS as e:
            if len(jobs) == 1:
                return [(jobs[0], False, broken(e))]
            # The statement stored nothing; one job's data was refused: retry them one by
            # one, so that only the guilty one fails.
            outcomes = []
            for job in jobs:
                outcomes.extend(await self._commit(write, [job]))
            return outcomes
        except DRIVER_ERRORS as e:
            return [(job, False, broken(e)) for job in jobs]
        except Exception as e:  # a bug of ours: fail the jobs, keep the writer running
            log.exception("the PostgreSQL writer failed")
            return [(job, False, e) for job in jobs]
        self._commits += 1
        self._writes += len(jobs)
        self._largest_batch = max(self._largest_batch, len(jobs))
        return [(job, True, result) for job, result in zip(jobs, results, strict=True)]

    async def _append_rooms(self, conn: Any, jobs: list[_Job]) -> list[list[Message]]:
        drafts = [d for job in jobs for d in job.drafts]
        if not drafts:
            return [[] for _ in jobs]
        rows = await conn.fetch(
            _APPEND,
            [d.id for d in drafts],
            [d.room for d in drafts],
            [d.sender for d in drafts],
            [d.kind.value for d in drafts],
            [d.text for d in drafts],
            [d.ts for d in drafts],
            [" ".join(search_tokens(d.text)) for d in drafts],
        )
        seqs: dict[str, int] = {row["id"]: row["seq"] for row in rows}
        return [[d.with_seq(seqs[d.id]) for d in job.drafts] for job in jobs]

    async def _append_privates(self, conn: Any, jobs: list[_Job]) -> list[Private]:
        drafts = [job.private for job in jobs if job.private is not None]
        rows = await conn.fetch(
            _APPEND_PRIVATE,
            [d.id for d in drafts],
            [d.sender for d in drafts],
            [d.recipient for d in drafts],
            [fold(d.recipient) for d in drafts],
            [d.kind.value for d in drafts],
            [d.text for d in drafts],
            [d.ts for d in drafts],
        )
        seqs: dict[str, int] = {row["id"]: row["seq"] for row in rows}
        return [d.with_seq(seqs[d.id]) for d in drafts]

    # --- one statement on a pooled connection -------------------------------------------

    async def _fetch(self, query: str, *args: Any) -> list[Any]:
        """The rows of ``query``, run on its own (one transaction) on a pooled connection."""
        if self._closing:
            raise Broken("the PostgreSQL store is closed")
        try:
            rows: list[Any] = await self._pool.fetch(query, *args)
        except DRIVER_ERRORS as e:
            raise broken(e) from e
        return rows

    # --- Store ------------------------------------------------------------------------------

    async def room(self, room: str) -> RoomInfo:
        ((latest, oldest),) = await self._fetch(_INFO, room)
        return RoomInfo(
            room=room, latest_seq=latest, oldest_seq=latest + 1 if oldest is None else oldest
        )

    async def rooms(self) -> Sequence[str]:
        rows = await self._fetch('SELECT name FROM rooms ORDER BY name COLLATE "C"')
        return [row["name"] for row in rows]

    async def append(self, draft: Draft) -> Message:
        message: Message
        (message,) = await self._queue([draft])
        return message

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        return self._queue(list(drafts), then=then)

    async def append_private(self, draft: PrivateDraft) -> Private:
        private: Private = await self._queue((), draft)
        return private

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        upper = _NO_SEQ if before is None else before
        lower = -1 if after is None else after
        query = _PAGE_NEWEST if after is None else _PAGE_OLDEST
        rows = await self._fetch(query, room, upper, lower, max(limit, 0))
        latest, oldest = rows[0]["latest"], rows[0]["oldest"]
        messages = tuple(_message(room, row) for row in rows if row["id"] is not None)
        return Page(
            room=room,
            messages=messages,
            oldest_seq=latest + 1 if oldest is None else oldest,
            latest_seq=latest,
        )

    async def privates(self, name: str, *, after: int, limit: int) -> Sequence[Private]:
        if limit < 1:
            return []
        rows = await self._fetch(
            "SELECT seq, id, sender, recipient, kind, text, ts FROM private_messages"
            " WHERE recipient_key = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            fold(name),
            after,
            limit,
        )
        return [
            Private(
                id=row["id"],
                seq=row["seq"],
                sender=row["sender"],
                recipient=row["recipient"],
                kind=Kind(row["kind"]),
                text=row["text"],
                ts=row["ts"],
            )
            for row in rows
        ]

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        phrases = [" ".join(tokens) for tokens in map(search_tokens, words.split()) if tokens]
        if not phrases or limit < 1:
            return []
        # One bound parameter per word; only their count shapes the statement.
        match = " && ".join(f"phraseto_tsquery('simple', ${i})" for i in range(3, len(phrases) + 3))
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND words @@ ({match})"
            " ORDER BY seq DESC LIMIT $2",
            room,
            limit,
            *phrases,
        )
        return [_message(room, row) for row in rows]

    async def retain(
        self, room: str, *, max_age: float | None, max_count: int | None, now: float
    ) -> int:
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be at least 0, got {max_age}")
        if max_count is not None and max_count < 0:
            raise ValueError(f"max_count must be at least 0, got {max_count}")
        since = None if max_age is None else now - max_age
        ((removed,),) = await self._fetch(_RETAIN, room, max_count, since)
        return int(removed)

    # --- Accounts ---------------------------------------------------------------------------

    async def account(self, name: str) -> Account | None:
        rows = await self._fetch(
            "SELECT name, password_hash, created, private_read_seq FROM accounts WHERE key = $1",
            fold(name),
        )
        if not rows:
            return None
        (row,) = rows
        return Account(
            name=row["name"],
            password_hash=row["password_hash"],
            created=row["created"],
            private_read_seq=row["private_read_seq"],
        )

    async def create_account(self, name: str, password_hash: str, *, now: float) -> Account:
        # FOR SHARE waits for a private message being stored now: the new account has read it.
        rows = await self._fetch(
            "INSERT INTO accounts (key, name, password_hash, created, private_read_seq)"
            " SELECT $1, $2, $3, $4, value FROM counters WHERE name = 'private_seq' FOR SHARE"
            " ON CONFLICT (key) DO NOTHING RETURNING private_read_seq",
            fold(name),
            name,
            password_hash,
            now,
        )
        if not rows:
            raise ClientError("name_taken", f"the name {name!r} is registered: choose another")
        return Account(
            name=name,
            password_hash=password_hash,
            created=now,
            private_read_seq=rows[0]["private_read_seq"],
        )

    async def set_password(self, name: str, password_hash: str) -> None:
        rows = await self._fetch(
            "UPDATE accounts SET password_hash = $2 WHERE key = $1 RETURNING key",
            fold(name),
            password_hash,
        )
        if not rows:
            raise ClientError("no_account", f"there is no account named {name!r}")

    async def delete_account(self, name: str) -> bool:
        # Its memberships go with it (ON DELETE CASCADE).
        rows = await self._fetch(
            "WITH privates AS (DELETE FROM private_messages WHERE recipient_key = $1)"
            " DELETE FROM accounts WHERE key = $1 RETURNING key",
            fold(name),
        )
        return bool(rows)

    async def memberships(self, name: str) -> Mapping[str, int]:
        rows = await self._fetch(
            "SELECT room, read_seq FROM memberships WHERE account = $1", fold(name)
        )
        return {row["room"]: row["read_seq"] for row in rows}

    async def set_membership(self, name: str, room: str, *, read_seq: int | None) -> None:
        if read_seq is None:
            await self._fetch(
                "DELETE FROM memberships WHERE account = $1 AND room = $2", fold(name), room
            )
            return
        try:
            await self._fetch(
                "INSERT INTO memberships (account, room, read_seq)"
                " SELECT key, $2, $3 FROM accounts WHERE key = $1"
                " ON CONFLICT (account, room) DO UPDATE"
                " SET read_seq = GREATEST(memberships.read_seq, excluded.read_seq)",
                fold(name),
                room,
                read_seq,
            )
        except Broken as e:
            if not isinstance(e.__cause__, asyncpg.ForeignKeyViolationError):
                raise
            # the account was deleted meanwhile: a write about it is ignored (see base)

    async def advance_read(self, markers: Mapping[tuple[str, str], int]) -> None:
        highest: dict[tuple[str, str], int] = {}
        for (name, room), seq in markers.items():
            key = (fold(name), room)
            highest[key] = max(seq, highest.get(key, seq))
        if not highest:
            return
        await self._fetch(
            "UPDATE memberships AS m SET read_seq = u.seq"
            " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u (account, room, seq)"
            " WHERE m.account = u.account AND m.room = u.room AND m.read_seq < u.seq",
            [account for account, _ in highest],
            [room for _, room in highest],
            list(highest.values()),
        )

    async def advance_private_read(self, name: str, seq: int) -> None:
        await self._fetch(
            "UPDATE accounts SET private_read_seq = $2 WHERE key = $1 AND private_read_seq < $2",
            fold(name),
            seq,
        )


def _settle(outcomes: list[_Outcome]) -> None:
    """Tell each job's caller, in order: ``then`` first (even if the caller was cancelled:
    the write stands), then the future."""
    for job, ok, value in outcomes:
        if ok and job.then is not None:
            try:
                job.then(value)
            except Exception as e:  # the caller hears of it; if it is gone, the log does
                log.exception("after a write")
                ok, value = False, e
        if job.future.done():  # the caller was cancelled; the write stands all the same
            continue
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
