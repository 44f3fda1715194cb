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
parameter made of the words' search tokens: no user text is ever query syntax, and none of
its other characters reaches the database (a NUL, which PostgreSQL text cannot hold,
separates tokens as any other character that is not a letter or digit does).

**Private conversations** are read through the index on ``(pair, seq)``: ``pair`` is the
conversation's key (``store.base.conversation_key``), written with each message. A page, and
the ends of what its reader may read, come from one statement (one snapshot).

**Registrations** take a transaction-scoped advisory lock on the new name's skeleton
(``roomcast.names.skeleton``) before they look for the name and its look-alikes, then
insert in the same transaction. A name and its look-alikes share a skeleton, so two nodes
registering ``alice`` and ``aIice`` at once take turns, and the second sees the first's
account and is refused. A unique index on the skeleton would do it without a lock, but
accounts registered before look-alikes were refused may share a skeleton, and such a
database could not be migrated to it.

**Failures**: every driver error (``asyncpg``'s, and ``OSError``) becomes
``roomcast.errors.Broken`` at this seam; ``Unwritable`` when the database says it cannot
take writes (its disk full, its transactions read-only). ``check`` (``/health``) cannot ask
the server how much space its disk has: it answers from a probe (one ``SELECT``: the server
is reachable and its transactions are not read-only) and from the outcome of the last write,
so a full disk is reported from the first write it refused until a write succeeds
(``postgres_writer.Writable``). ``open`` refuses a read-only database, as the SQLite store
refuses a read-only file: a server on it could store nothing.

A batch whose statement fails (connection lost, server restart, ``pg_terminate_backend``)
fails every job in it: a sender gets an error, never an acknowledgement for a message that
is not stored. The pool replaces a dead connection when it is next taken, so the store
recovers without a restart. A statement the database refuses for one job's data (a reused
message id) is retried job by job, so the refusal fails that job alone.

Use: ``store = await PostgresStore.open("postgresql://user@host/db")`` ... ``await
store.close()``; from one event loop only. Limits come from the URL's query
(``?pool_size=20&command_timeout=10``, see ``open``); any other query parameter is a server
setting (``?search_path=chat`` keeps the tables in schema ``chat``).
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import asyncpg

from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.model import Draft, Message, Private, PrivateDraft, fold
from roomcast.names import lookalike_registered, skeleton
from roomcast.store import public_url
from roomcast.store.base import (
    Account,
    Page,
    PrivatePage,
    RoomInfo,
    Said,
    conversation_key,
    new_account_id,
    search_tokens,
)
from roomcast.store.postgres_schema import migrate
from roomcast.store.postgres_sql import (
    ACCOUNT_COLUMNS,
    ACCOUNT_LIKE,
    CONVERSATION_NEWEST,
    CONVERSATION_OLDEST,
    CREATE_ACCOUNT,
    MESSAGE_COLUMNS,
    NO_SEQ,
    PAGE_NEWEST,
    PAGE_OLDEST,
    PRIVATE_COLUMNS,
    PROBE_READ_ONLY,
    REGISTRATION_LOCK,
    RETAIN,
    ROOM_INFO,
    SAID,
    account_row,
    message_row,
    private_row,
    skeleton_lock,
)
from roomcast.store.postgres_writer import (
    DRIVER_ERRORS,
    READ_ONLY,
    Statistics,
    Writable,
    Writer,
    broken,
)

__all__ = ["DRIVER_ERRORS", "PostgresStore", "Statistics"]

# The limits the URL's query may set, with their defaults.
_LIMITS: Final[dict[str, tuple[type[int] | type[float], int | float]]] = {
    "pool_size": (int, 10),  # connections at most
    "max_batch": (int, 1000),  # appends (jobs) in one group commit at most
    "connect_timeout": (float, 10.0),  # seconds to open a connection
    "command_timeout": (float, 60.0),  # seconds one statement may run
}


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


# --- the store ----------------------------------------------------------------------------


class PostgresStore:
    """A ``Storage`` in a PostgreSQL database. Open with ``await PostgresStore.open(url)``.

    Appends go through the writer (``roomcast.store.postgres_writer``); everything else is
    one statement on a pooled connection."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int, where: str) -> None:
        """Private: use ``open``, which connects and migrates first."""
        self.where = where  # the URL without its password, for messages
        self._pool = pool  # every connection: the writer takes one per batch, reads one each
        self._writable = Writable(where)  # whether writes succeed: the last one's outcome
        self._writer = Writer(pool, max_batch, self._writable)  # the appends' group commits
        self._closing = False  # set by close(): no new work is accepted
        self._closed: asyncio.Future[None] | None = None  # the shutdown, once started

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
        ``Broken`` when the database cannot be reached or used (or its schema is newer),
        ``Unwritable`` when it cannot take writes (its transactions are read-only).
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
                if await conn.fetchval(PROBE_READ_ONLY):
                    raise Unwritable(f"the PostgreSQL store {where} is not writable: {READ_ONLY}")
                await migrate(conn)
        except BaseException as e:
            pool.terminate()
            if isinstance(e, DRIVER_ERRORS):
                error = broken(e)
                if isinstance(error, Unwritable):
                    raise Unwritable(f"cannot migrate {where}: {error}") from e
                raise Broken(f"cannot use {where} as a PostgreSQL store: {e}") from e
            raise
        return cls(pool, max_batch=limits["max_batch"], where=where)

    def statistics(self) -> Statistics:
        """A snapshot of the writer's counters."""
        w = self._writer
        return Statistics(
            commits=w.commits, writes=w.writes, largest_batch=w.largest_batch, pending=w.pending()
        )

    async def check(self) -> None:
        """Raise ``Broken`` when the database cannot be reached (or the store is closed),
        ``Unwritable`` when its transactions are read-only or the last write was refused as
        unwritable (a full disk) and none has succeeded since. One ``SELECT``, no write."""
        if self._closing:
            raise Broken("the PostgreSQL store is closed")
        try:
            read_only = await self._pool.fetchval(PROBE_READ_ONLY)
        except DRIVER_ERRORS as e:
            raise Broken(f"the PostgreSQL store {self.where} cannot be reached: {e}") from e
        problem = self._writable.probed(read_only=bool(read_only))
        if problem is not None:
            raise Unwritable(problem)

    async def close(self) -> None:
        """Let the writer commit everything queued, then close the pool.

        Idempotent; afterwards every method raises ``Broken``.
        """
        if self._closed is None:
            self._closing = True
            self._closed = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._closed)

    async def _shut_down(self) -> None:
        await self._writer.stop()
        try:
            await self._pool.close()
        except DRIVER_ERRORS:  # a connection died on the way out: drop them all
            self._pool.terminate()

    def _queue(
        self,
        drafts: Sequence[Draft],
        private: PrivateDraft | None = None,
        then: Callable[[Any], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Hand an append to the writer (see ``Writer.queue``), unless the store is closed."""
        if self._closing:
            refused: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            refused.set_exception(Broken("the PostgreSQL store is closed"))
            return refused
        return self._writer.queue(drafts, private, then)

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

    async def _write(self, query: str, *args: Any) -> list[Any]:
        """``_fetch`` for a statement that writes: its outcome tells ``Writable``."""
        try:
            rows = await self._fetch(query, *args)
        except Broken as e:
            self._writable.wrote(e)
            raise
        self._writable.wrote(None)
        return rows

    # --- Store ------------------------------------------------------------------------------

    async def room(self, room: str) -> RoomInfo:
        ((latest, oldest),) = await self._fetch(ROOM_INFO, room)
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
        upper = NO_SEQ if before is None else before
        lower = -1 if after is None else after
        query = PAGE_NEWEST if after is None else PAGE_OLDEST
        rows = await self._fetch(query, room, upper, lower, max(limit, 0))
        latest, oldest = rows[0]["latest"], rows[0]["oldest"]
        messages = tuple(message_row(room, row) for row in rows if row["id"] is not None)
        return Page(
            room=room,
            messages=messages,
            oldest_seq=latest + 1 if oldest is None else oldest,
            latest_seq=latest,
        )

    async def said(self, room: str, *, after: int, before: int) -> Said:
        rows = await self._fetch(SAID, room, after, before)
        return Said(count=rows[0]["count"], first_seq=rows[0]["first"])

    async def privates(self, name: str, *, after: int, limit: int) -> Sequence[Private]:
        if limit < 1:
            return []
        rows = await self._fetch(
            f"SELECT {PRIVATE_COLUMNS} FROM private_messages"
            " WHERE recipient_key = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            fold(name),
            after,
            limit,
        )
        return [private_row(row) for row in rows]

    async def conversation(
        self,
        name: str,
        other: str,
        *,
        signed: bool,
        first: int = 1,
        before: int | None = None,
        after: int | None = None,
        limit: int,
    ) -> PrivatePage:
        upper = NO_SEQ if before is None else before
        lower = -1 if after is None else after
        query = CONVERSATION_NEWEST if after is None else CONVERSATION_OLDEST
        rows = await self._fetch(
            query,
            conversation_key(name, other),
            max(first, 0),
            fold(name),
            signed,
            upper,
            lower,
            max(limit, 0),
        )
        latest, oldest = rows[0]["latest"] or 0, rows[0]["oldest"]
        return PrivatePage(
            messages=tuple(private_row(row) for row in rows if row["id"] is not None),
            oldest_seq=latest + 1 if oldest is None else oldest,
            latest_seq=latest,
        )

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        phrases = [" ".join(tokens) for tokens in map(search_tokens, words.split()) if tokens]
        if not phrases or limit < 1:
            return []
        # One bound parameter per word; only their count shapes the statement.
        match = " && ".join(f"phraseto_tsquery('simple', ${i})" for i in range(3, len(phrases) + 3))
        rows = await self._fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND words @@ ({match})"
            " ORDER BY seq DESC LIMIT $2",
            room,
            limit,
            *phrases,
        )
        return [message_row(room, row) for row in rows]

    async def retain(
        self, room: str, *, max_age: float | None, max_count: int | None, now: float
    ) -> int:
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be at least 0, got {max_age}")
        if max_count is not None and max_count < 0:
            raise ValueError(f"max_count must be at least 0, got {max_count}")
        since = None if max_age is None else now - max_age
        ((removed,),) = await self._write(RETAIN, room, max_count, since)
        return int(removed)

    # --- Accounts ---------------------------------------------------------------------------

    async def account(self, name: str) -> Account | None:
        return account_row(
            await self._fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key = $1", fold(name))
        )

    async def account_by_id(self, account_id: str) -> Account | None:
        return account_row(
            await self._fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = $1", account_id)
        )

    async def account_like(self, name: str) -> Account | None:
        return account_row(await self._fetch(ACCOUNT_LIKE, fold(name), skeleton(name)))

    async def create_account(self, name: str, password_hash: str, *, now: float) -> Account:
        if self._closing:
            raise Broken("the PostgreSQL store is closed")
        key, like, account_id = fold(name), skeleton(name), new_account_id()
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                # Registrations of one skeleton take turns from here to COMMIT (see the
                # module docstring); each statement after the lock sees what they stored.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock($1, $2)", REGISTRATION_LOCK, skeleton_lock(like)
                )
                taken = account_row(await conn.fetch(ACCOUNT_LIKE, key, like))
                if taken is not None and fold(taken.name) == key:
                    raise ClientError(
                        "name_taken", f"the name {name!r} is registered: choose another"
                    )
                if taken is not None:
                    raise lookalike_registered(name, taken.name)
                seq = await conn.fetchval(
                    CREATE_ACCOUNT, key, account_id, name, like, password_hash, now
                )
        except DRIVER_ERRORS as e:
            self._writable.wrote(error := broken(e))
            raise error from e
        self._writable.wrote(None)
        return Account(
            id=account_id,
            generation=0,
            name=name,
            password_hash=password_hash,
            created=now,
            private_read_seq=seq,
        )

    async def set_password(self, name: str, password_hash: str) -> None:
        rows = await self._write(
            "UPDATE accounts SET password_hash = $2, generation = generation + 1"
            " WHERE key = $1 RETURNING key",
            fold(name),
            password_hash,
        )
        if not rows:
            raise ClientError("no_account", f"there is no account named {name!r}")

    async def revoke(self, account_id: str) -> Account | None:
        return account_row(
            await self._write(
                "UPDATE accounts SET generation = generation + 1 WHERE id = $1"
                f" RETURNING {ACCOUNT_COLUMNS}",
                account_id,
            )
        )

    async def delete_account(self, name: str) -> bool:
        # Its memberships go with it (ON DELETE CASCADE); so do the private messages sent to
        # the name and those it sent signed in, so that a later account of the name starts
        # with no conversation (a guest's of that name stay).
        rows = await self._write(
            "WITH privates AS (DELETE FROM private_messages"
            " WHERE recipient_key = $1 OR (sender_key = $1 AND signed))"
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
            await self._write(
                "DELETE FROM memberships WHERE account = $1 AND room = $2", fold(name), room
            )
            return
        try:
            await self._write(
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
        await self._write(
            "UPDATE memberships AS m SET read_seq = u.seq"
            " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS u (account, room, seq)"
            " WHERE m.account = u.account AND m.room = u.room AND m.read_seq < u.seq",
            [account for account, _ in highest],
            [room for _, room in highest],
            list(highest.values()),
        )

    async def advance_private_read(self, name: str, seq: int) -> None:
        await self._write(
            "UPDATE accounts SET private_read_seq = $2 WHERE key = $1 AND private_read_seq < $2",
            fold(name),
            seq,
        )
