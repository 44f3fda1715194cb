"""The default durable store: one SQLite file in WAL mode, written by one thread in group commits.

Theory of operation
-------------------
One **writer thread** owns the only writing connection. Every write (an append, an account
change, a retention cut) is a job on a queue with an asyncio future. The writer takes the
first job, then everything else already queued (up to ``max_batch``), runs them all in one
transaction and commits once; only after COMMIT does it resolve the batch's futures, in queue
order, with one ``loop.call_soon_threadsafe`` per batch. Under load many appends share one
commit, so the cost of making them durable is paid once per batch, not once per message.

**Sequence numbers** are assigned inside that transaction from a per-room cache of the latest
sequence number (loaded from ``rooms.last_seq`` on first use), so they are gap-free and follow
the queue order; ``UNIQUE(room, seq)`` backs that up. ``rooms.last_seq`` is written once per
room per batch and never moves back, even when retention deletes every message, so numbers
are never reused. Private messages take theirs from the ``counters`` row ``private_seq``. The
writer checks ``PRAGMA data_version`` at the start of each batch and drops its caches when
another connection has committed since, so a second writer process cannot make them stale.

**Reads** never touch the writer: a small thread pool, one read-only connection per thread,
each read in its own transaction (a consistent snapshot). WAL lets them run while the writer
commits. The event loop itself never waits on the disk.

Durability: ``synchronous=FULL``
--------------------------------
A sender's echo is its acknowledgement: once ``append`` returns, the message must survive
anything. In WAL mode ``synchronous=NORMAL`` writes each commit to the WAL file but syncs it
only at checkpoints: a killed *process* loses nothing (the OS holds the written pages), but a
power loss or kernel crash can lose the last commits, messages whose senders were already
told they were stored. ``FULL`` syncs the WAL at every commit, so an acked message survives
both. Its cost is one fsync per commit, and group commit spreads that over the whole batch.

Storage that goes away
----------------------
SQLite writes on, and acknowledges, after its file was deleted or replaced under it: the
writes go to a file nobody can open again, and the next start finds an empty database. So
the writer checks before each batch (``sqlite_writer.Guard``: the device and inode at the
path against those opened, and that the file is writable; a few microseconds per batch, not
per message) and refuses the batch with ``Unwritable`` when it fails. A full disk and a
read-only file come back from SQLite as ``SQLITE_FULL`` and ``SQLITE_READONLY``, also
``Unwritable``. ``check`` (``/health``) runs the same test plus the disk's free space.
``open`` proves the file writable and refuses one that is not: SQLite would open it
read-only without a word, and a server on it could store nothing.

Search runs FTS5 (``messages_fts``, external content over ``messages.text``); each query
word is passed as a quoted FTS5 string, so no user text is ever query syntax. The schema and
its migrations are in ``roomcast.store.sqlite_schema``, the writer in
``roomcast.store.sqlite_writer``. ``sqlite3.Error`` never leaves these modules: it becomes
``roomcast.errors.Broken``.

Use: ``store = await SqliteStore.open(path)`` ... ``await store.close()``. The loop that
calls ``open`` is the one whose futures the writer resolves; use the store from it only.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from roomcast.errors import Broken, Unwritable
from roomcast.model import Draft, Kind, Message, Private, PrivateDraft, fold
from roomcast.store.base import Account, Page, PrivatePage, RoomInfo, conversation_key
from roomcast.store.sqlite_schema import open_writer
from roomcast.store.sqlite_writer import (
    STOP,
    Guard,
    Job,
    Writer,
    broken,
    read_account,
    read_account_like,
)

__all__ = ["SqliteStore", "Statistics"]

log = logging.getLogger("roomcast.store")

T = TypeVar("T")

_MESSAGE_COLUMNS = "id, seq, sender, kind, text, ts, signed"
_HISTORY_NEWEST = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND seq < ? AND seq > ?"
    " ORDER BY seq DESC LIMIT ?"
)
_HISTORY_OLDEST = (
    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room = ? AND seq > ? AND seq < ?"
    " ORDER BY seq LIMIT ?"
)
_ROOM_INFO = (
    "SELECT last_seq, (SELECT seq FROM messages WHERE room = ? ORDER BY seq LIMIT 1)"
    " FROM rooms WHERE name = ?"
)
_SEARCH = (
    "SELECT m.id, m.seq, m.sender, m.kind, m.text, m.ts, m.signed"
    " FROM messages_fts JOIN messages AS m ON m.serial = messages_fts.rowid"
    " WHERE messages_fts MATCH ? AND m.room = ? ORDER BY messages_fts.rowid DESC LIMIT ?"
)
_PRIVATE_COLUMNS = "seq, id, sender, recipient, kind, text, ts, signed, recipient_signed"
_PRIVATES = (
    f"SELECT {_PRIVATE_COLUMNS} FROM private_messages"
    " WHERE recipient = ? AND seq > ? ORDER BY seq LIMIT ?"
)
# The messages of one conversation (index private_messages_pair) that its reader took part
# in as the identity it has now: parameters pair, first, reader, signed, reader, signed.
_CONVERSATION = (
    "pair = ? AND seq >= ?"
    " AND ((sender = ? COLLATE NOCASE AND signed = ?) OR (recipient = ? AND recipient_signed = ?))"
)
_CONVERSATION_NEWEST = (
    f"SELECT {_PRIVATE_COLUMNS} FROM private_messages WHERE {_CONVERSATION}"
    " AND seq < ? AND seq > ? ORDER BY seq DESC LIMIT ?"
)
_CONVERSATION_OLDEST = (
    f"SELECT {_PRIVATE_COLUMNS} FROM private_messages WHERE {_CONVERSATION}"
    " AND seq > ? AND seq < ? ORDER BY seq LIMIT ?"
)
_CONVERSATION_ENDS = (
    f"SELECT (SELECT seq FROM private_messages WHERE {_CONVERSATION} ORDER BY seq LIMIT 1),"
    f" (SELECT seq FROM private_messages WHERE {_CONVERSATION} ORDER BY seq DESC LIMIT 1)"
)
_NO_SEQ = 2**62  # an upper bound above any sequence number


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """What the writer has done since the store was opened (feeds ``/metrics``)."""

    commits: int  # transactions committed by the writer
    writes: int  # jobs (appends, account changes, ...) in those transactions
    largest_batch: int  # most jobs in one transaction
    pending: int  # jobs queued and not yet taken (approximate)


def _message(room: str, row: tuple[Any, ...]) -> Message:
    id_, seq, sender, kind, text, ts, signed = row
    return Message(
        id=id_,
        room=room,
        seq=seq,
        sender=sender,
        kind=Kind(kind),
        text=text,
        ts=ts,
        signed=bool(signed),
    )


def _private(row: tuple[Any, ...]) -> Private:
    seq, id_, sender, recipient, kind, text, ts, signed, recipient_signed = row
    return Private(
        id=id_,
        seq=seq,
        sender=sender,
        recipient=recipient,
        kind=Kind(kind),
        text=text,
        ts=ts,
        signed=bool(signed),
        recipient_signed=bool(recipient_signed),
    )


def _fts_query(words: str) -> str | None:
    """``words`` as an FTS5 query: each word a quoted string (so it is never syntax), all
    required; ``None`` when no word has a letter or digit (see ``store.base``). A NUL ends
    an FTS5 string early ("unterminated string"): like any other character that is not a
    letter or digit, it separates tokens, so it becomes a space."""
    spaced = words.replace("\x00", " ")
    quoted = ['"' + w.replace('"', '""') + '"' for w in spaced.split() if _has_token(w)]
    return " ".join(quoted) or None


def _has_token(word: str) -> bool:
    return any(c.isalnum() for c in word)


# --- the store ----------------------------------------------------------------------------


class SqliteStore:
    """A ``Storage`` in one SQLite file. Open with ``await SqliteStore.open(path)``."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        max_batch: int,
        readers: int,
        guard: Guard | None = None,
    ) -> None:
        """Private: use ``open``, which creates and migrates the file off the event loop."""
        self.path = path  # the database file, absolute
        self._guard = guard  # is the file still the one written to, and writable?
        self._disk_full = False  # what check() last found of the disk's space, to log changes
        self._writer = Writer(conn, max_batch, guard)  # the one writing connection, its thread
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="roomcast-sqlite-reader")
        self._local = threading.local()  # .conn: each reader thread's own connection
        self._reader_conns: list[sqlite3.Connection] = []  # every reader connection, to close
        self._reader_lock = threading.Lock()  # guards _reader_conns
        self._closing = False  # set by close(): no new work is accepted
        self._closed: asyncio.Future[None] | None = None  # the shutdown, once started
        self._writer.thread.start()

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_batch: int = 1000,
        readers: int = 2,
        busy_timeout: float = 5.0,
    ) -> SqliteStore:
        """Open (creating it and its directories if needed) and migrate the store at ``path``
        (``~`` is expanded).

        ``max_batch`` caps the jobs in one group commit; ``readers`` is the number of reader
        threads; ``busy_timeout`` is how many seconds a write waits for a lock held by another
        process (another program using the file) before failing with ``Broken``. Raises
        ``Broken`` when the file cannot be used (not a database, newer schema, no permission),
        ``Unwritable`` when it can be read but not written (a read-only file or file system):
        a store that cannot keep what it is told is not opened.
        """
        if max_batch < 1 or readers < 1:
            raise ValueError(f"max_batch and readers must be at least 1: {max_batch}, {readers}")
        where, conn, guard = await asyncio.to_thread(_open_writable, Path(path), busy_timeout)
        return cls(where, conn, max_batch=max_batch, readers=readers, guard=guard)

    def statistics(self) -> Statistics:
        """A snapshot of the writer's counters."""
        w = self._writer
        return Statistics(
            commits=w.commits,
            writes=w.writes,
            largest_batch=w.largest_batch,
            pending=w.pending(),
        )

    async def check(self) -> None:
        """Raise ``Unwritable`` when the database file was deleted or replaced, is read-only,
        or its disk has no space left; ``Broken`` once closed. Three system calls and a
        ``statvfs``, in a thread."""
        if self._closing:
            raise Broken("the SQLite store is closed")
        problem = await asyncio.to_thread(self._problem)
        if problem is not None:
            raise Unwritable(f"the SQLite store is not writable: {problem}")

    def _problem(self) -> str | None:
        if self._guard is not None and (problem := self._guard.problem()) is not None:
            return problem  # the guard logged it
        try:
            space = os.statvfs(self.path.parent)
        except OSError as e:
            return f"its directory {self.path.parent} cannot be checked ({e.strerror})"
        # root may use the blocks a file system keeps in reserve; others may not
        full = (space.f_bfree if os.geteuid() == 0 else space.f_bavail) == 0
        if full != self._disk_full:
            self._disk_full = full
            if full:
                log.error("the disk of the SQLite store %s is full: writes will fail", self.path)
            else:
                log.warning("the disk of the SQLite store %s has space again", self.path)
        return f"the disk of {self.path} is full" if full else None

    async def close(self) -> None:
        """Let the writer commit everything queued, stop the threads, close the connections.

        Idempotent; afterwards every method raises ``Broken``.
        """
        if self._closed is None:
            self._closing = True
            self._closed = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._closed)

    async def _shut_down(self) -> None:
        self._writer.put(STOP)
        await asyncio.to_thread(self._writer.thread.join)
        await asyncio.to_thread(self._readers.shutdown)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # --- the two ways to the database ---------------------------------------------------

    async def _write(self, run: Callable[[], T], *, atomic: bool = False) -> T:
        """Queue ``run`` for the writer; return its result once its batch is committed.

        Cancelling the caller does not withdraw the write: it is committed all the same.
        """
        return await self._queue(run, atomic=atomic)

    def _queue(
        self,
        run: Callable[[], T],
        *,
        atomic: bool = False,
        then: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        """Queue ``run`` for the writer now; the future is done once its batch is committed,
        after ``then`` was called with the result (on the loop, even if it was cancelled)."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(Broken("the SQLite store is closed"))
        else:
            self._writer.put(Job(run=run, future=future, atomic=atomic, then=then))
        return future

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``run`` on a reader thread, in one read transaction."""
        if self._closing:
            raise Broken("the SQLite store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._in_reader, run)

    def _in_reader(self, run: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect_reader()
            conn.execute("BEGIN")
            try:
                return run(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")  # nothing to keep: it only read
        except sqlite3.Error as e:
            raise broken(e) from e

    def _connect_reader(self) -> sqlite3.Connection:
        uri = self.path.as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        with self._reader_lock:
            self._reader_conns.append(conn)
        return conn

    # --- Store ------------------------------------------------------------------------------

    async def room(self, room: str) -> RoomInfo:
        def run(conn: sqlite3.Connection) -> RoomInfo:
            latest, oldest = _room_info(conn, room)
            return RoomInfo(room=room, latest_seq=latest, oldest_seq=oldest)

        return await self._read(run)

    async def rooms(self) -> Sequence[str]:
        def run(conn: sqlite3.Connection) -> list[str]:
            return [name for (name,) in conn.execute("SELECT name FROM rooms ORDER BY name")]

        return await self._read(run)

    async def append(self, draft: Draft) -> Message:
        return await self._write(functools.partial(self._writer.append, draft))

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        run = functools.partial(self._writer.append_many, drafts)
        return self._queue(run, atomic=len(drafts) > 1, then=then)

    async def append_private(self, draft: PrivateDraft) -> Private:
        return await self._write(functools.partial(self._writer.append_private, draft))

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        upper = _NO_SEQ if before is None else before
        lower = -1 if after is None else after

        def run(conn: sqlite3.Connection) -> Page:
            latest, oldest = _room_info(conn, room)
            if limit < 1:
                rows: list[Any] = []
            elif after is None:  # the newest `limit` below `before`
                rows = conn.execute(_HISTORY_NEWEST, (room, upper, lower, limit)).fetchall()
                rows.reverse()
            else:  # the oldest `limit` above `after`
                rows = conn.execute(_HISTORY_OLDEST, (room, lower, upper, limit)).fetchall()
            messages = tuple(_message(room, row) for row in rows)
            return Page(room=room, messages=messages, oldest_seq=oldest, latest_seq=latest)

        return await self._read(run)

    async def privates(self, name: str, *, after: int, limit: int) -> Sequence[Private]:
        def run(conn: sqlite3.Connection) -> list[Private]:
            rows = conn.execute(_PRIVATES, (name, after, limit)).fetchall()
            return [_private(row) for row in rows]

        return [] if limit < 1 else await self._read(run)

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
        who = (conversation_key(name, other), max(first, 0), name, signed, name, signed)
        upper = _NO_SEQ if before is None else before
        lower = -1 if after is None else after

        def run(conn: sqlite3.Connection) -> PrivatePage:
            oldest, latest = conn.execute(_CONVERSATION_ENDS, who + who).fetchone()
            if limit < 1:
                rows: list[Any] = []
            elif after is None:  # the newest `limit` below `before`
                rows = conn.execute(_CONVERSATION_NEWEST, (*who, upper, lower, limit)).fetchall()
                rows.reverse()
            else:  # the oldest `limit` above `after`
                rows = conn.execute(_CONVERSATION_OLDEST, (*who, lower, upper, limit)).fetchall()
            latest = latest or 0
            return PrivatePage(
                messages=tuple(_private(row) for row in rows),
                oldest_seq=latest + 1 if oldest is None else oldest,
                latest_seq=latest,
            )

        return await self._read(run)

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        query = _fts_query(words)
        if query is None or limit < 1:
            return []

        def run(conn: sqlite3.Connection) -> list[Message]:
            rows = conn.execute(_SEARCH, (query, room, limit)).fetchall()
            return [_message(room, row) for row in rows]

        await self._write(self._writer.index)  # search sees every message stored before it
        return await self._read(run)

    async def retain(
        self, room: str, *, max_age: float | None, max_count: int | None, now: float
    ) -> int:
        if max_age is not None and max_age < 0:
            raise ValueError(f"max_age must be at least 0, got {max_age}")
        if max_count is not None and max_count < 0:
            raise ValueError(f"max_count must be at least 0, got {max_count}")
        cut = functools.partial(self._writer.retain, room, max_age, max_count, now)
        return await self._write(cut)

    # --- Accounts ---------------------------------------------------------------------------

    async def account(self, name: str) -> Account | None:
        return await self._read(functools.partial(read_account, column="key", value=fold(name)))

    async def account_like(self, name: str) -> Account | None:
        return await self._read(functools.partial(read_account_like, name=name))

    async def account_by_id(self, account_id: str) -> Account | None:
        return await self._read(functools.partial(read_account, column="id", value=account_id))

    async def create_account(self, name: str, password_hash: str, *, now: float) -> Account:
        create = functools.partial(self._writer.create_account, name, password_hash, now)
        return await self._write(create)

    async def set_password(self, name: str, password_hash: str) -> None:
        await self._write(functools.partial(self._writer.set_password, name, password_hash))

    async def revoke(self, account_id: str) -> Account | None:
        return await self._write(functools.partial(self._writer.revoke, account_id))

    async def delete_account(self, name: str) -> bool:
        delete = functools.partial(self._writer.delete_account, name)
        return await self._write(delete, atomic=True)

    async def memberships(self, name: str) -> Mapping[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute(
                "SELECT room, read_seq FROM memberships WHERE account = ? ORDER BY room",
                (fold(name),),
            )
            return dict(rows.fetchall())

        return await self._read(run)

    async def set_membership(self, name: str, room: str, *, read_seq: int | None) -> None:
        await self._write(functools.partial(self._writer.set_membership, name, room, read_seq))

    async def advance_read(self, markers: Mapping[tuple[str, str], int]) -> None:
        rows = [(seq, fold(name), room, seq) for (name, room), seq in markers.items()]
        if rows:
            await self._write(functools.partial(self._writer.advance_read, rows), atomic=True)

    async def advance_private_read(self, name: str, seq: int) -> None:
        await self._write(functools.partial(self._writer.advance_private_read, name, seq))


def _open_writable(path: Path, busy_timeout: float) -> tuple[Path, sqlite3.Connection, Guard]:
    """``open_writer``, then prove the file takes writes: SQLite opens a file it may only
    read without a word, and every write would then fail. The probe is an ``UPDATE`` that
    matches no row, rolled back: it needs the write lock of a writable file, changes nothing.
    """
    try:
        where, conn = open_writer(path, busy_timeout)
    except Broken as e:
        folder = path.expanduser().absolute().parent
        if folder.is_dir() and not os.access(folder, os.W_OK):
            raise Unwritable(
                f"the SQLite store {str(path)!r} is not writable: its directory is not, and"
                f" SQLite must create its -wal and -shm files there ({e})"
            ) from e
        raise
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("UPDATE counters SET value = value WHERE 0")
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise Unwritable(f"the SQLite store {str(where)!r} is not writable: {e}") from e
        guard = Guard(where)
        problem = guard.problem()
        if problem is not None:
            raise Unwritable(f"the SQLite store {str(where)!r} is not writable: {problem}")
    except BaseException:
        conn.close()
        raise
    return where, conn, guard


def _room_info(conn: sqlite3.Connection, room: str) -> tuple[int, int]:
    """``(latest_seq, oldest_seq)`` of ``room``, in the caller's read transaction."""
    row = conn.execute(_ROOM_INFO, (room, room)).fetchone()
    if row is None:
        return 0, 1
    latest, oldest = row
    return latest, latest + 1 if oldest is None else oldest
