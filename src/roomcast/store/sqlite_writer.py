"""The SQLite store's writer: one thread, one connection, group commits.

See ``roomcast.store.sqlite`` for the theory of operation. The store puts ``Job`` values on
the writer's queue from the event loop; everything else here runs on the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.model import Draft, Message, Private, PrivateDraft, fold
from roomcast.names import lookalike_registered, skeleton
from roomcast.store.base import Account, conversation_key, new_account_id

__all__ = ["STOP", "Guard", "Job", "Writer", "broken", "read_account", "read_account_like"]

INSERT_MESSAGE = (
    "INSERT INTO messages (id, room, seq, sender, kind, text, ts, signed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_PRIVATE = (
    "INSERT INTO private_messages"
    " (seq, id, sender, recipient, kind, text, ts, signed, recipient_signed, pair)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# What SQLite says when the storage cannot take writes (primary result codes): the disk or
# the database is full; the file (or its file system) is read-only.
_UNWRITABLE: Final = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY})


def broken(e: BaseException) -> Broken:
    """``e`` (a driver error, usually) as the ``Broken`` the store raises (``Unwritable`` when
    SQLite says the storage cannot take writes); a new instance for each caller, so no two
    tasks raise (and annotate) the same exception object."""
    code = getattr(e, "sqlite_errorcode", None)
    error: Broken
    if isinstance(code, int) and code & 0xFF in _UNWRITABLE:  # extended codes keep it low
        error = Unwritable(f"the SQLite store is not writable: {e}")
    else:
        error = Broken(f"the SQLite store failed: {e}")
    error.__cause__ = e
    return error


def _identity(path: Path) -> tuple[int, int] | None:
    """The device and inode of the file at ``path``; ``None`` if there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Guard:
    """Whether the database can still take writes that will last: the files at its path
    (the database and its ``-wal``) are the ones SQLite holds open, and writable.

    SQLite goes on writing to a file deleted or replaced under it, and acknowledges every
    write: the data goes to a file nobody can open again, and the next start finds an empty
    database. An open file keeps its inode, so a file now at the path with another device or
    inode is not the one written to. The check is three system calls (two ``stat``, one
    ``access``), 6 us in all, against the 0.5 ms a commit's fsync takes: the writer runs it
    once per commit batch, before ``BEGIN``, and ``check`` (``/health``) once per call. Each
    change of the answer is logged once, not per batch.
    """

    def __init__(self, path: Path) -> None:
        """Take the identity of the files at ``path`` now: call it once SQLite has them open."""
        self.path = path  # the database file
        self._wal = path.with_name(path.name + "-wal")  # its write-ahead log
        self._db_id = _identity(path)  # (device, inode) of the database file opened
        self._wal_id = _identity(self._wal)  # ... and of the -wal, if it exists yet
        self._last: str | None = None  # the problem last found, to log changes only
        self._lock = threading.Lock()  # the writer and /health may look at once

    def problem(self) -> str | None:
        """Why writes would not last or not succeed now, as a phrase; ``None`` if they would."""
        found = self._look()
        with self._lock:
            changed, self._last = found != self._last, found
        if changed and found is None:
            log.warning("the SQLite store %s is writable again: writes are accepted", self.path)
        elif changed:
            log.error(
                "the SQLite store is not writable, so writes are refused: %s%s",
                found,
                _still_open(self.path, self._wal),
            )
        return found

    def _look(self) -> str | None:
        path = self.path
        try:
            db_id, wal_id = _identity(path), _identity(self._wal)
            writable = os.access(path, os.W_OK)
        except OSError as e:  # a path we cannot even look at (permissions, I/O error)
            return f"its file {path} cannot be checked ({e.strerror})"
        if db_id is None:
            return f"its file {path} was deleted while the server ran: restart the server"
        if db_id != self._db_id:
            return f"its file {path} was replaced while the server ran: restart the server"
        if self._wal_id is not None and wal_id != self._wal_id:
            how = "deleted" if wal_id is None else "replaced"
            return f"its file {self._wal} was {how} while the server ran: restart the server"
        if not writable:  # EROFS too: access() answers for read-only file systems
            return f"its file {path} is read-only (permissions, or a read-only file system)"
        return None


def _still_open(*paths: Path) -> str:
    """Where the deleted files among ``paths`` can still be read while this process lives,
    for the operator's log (Linux's /proc/self/fd; nothing elsewhere)."""
    gone = {f"{p} (deleted)" for p in paths}
    found = []
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") in gone:
                    found.append(f"/proc/{os.getpid()}/fd/{fd}")
    if not found:
        return ""
    return f" (until the server stops, the deleted data can be copied from {', '.join(found)})"


@dataclass(slots=True)
class Job:
    """One write waiting for the writer: what to run, and whom to tell."""

    run: Callable[[], Any]  # runs on the writer thread, inside the batch's transaction
    future: asyncio.Future[Any]  # resolved on its loop after COMMIT
    atomic: bool  # several statements: wrap in a savepoint so a refusal undoes them all
    then: Callable[[Any], None] | None = None  # called with the result on the loop after COMMIT


Outcome = tuple[Job, bool, Any]  # a job, whether it succeeded, its result or its exception


log = logging.getLogger("roomcast.store")

STOP: Final = None  # the queue item that tells the writer to finish
# The search index is filled in passes, not per commit: an FTS5 insert costs 31 us a row in
# passes of 10 rows, 4.6 in passes of 1,000 and 2.8 in passes of 5,000 (each pass writes a
# segment that later passes merge). Search and retention bring it up to date first.
INDEX_ROWS: Final = 4096  # unindexed messages that start a pass at once
INDEX_DELAY: Final = 1.0  # seconds after the last pass before the rest is indexed when idle


class Writer:
    """The only writing connection, its thread and its sequence caches.

    Everything but ``put`` and the counters runs on the writer thread.
    """

    def __init__(
        self, conn: sqlite3.Connection, max_batch: int, guard: Guard | None = None
    ) -> None:
        self._conn = conn  # the only connection that writes; used by the thread only
        self._max_batch = max_batch  # most jobs in one transaction
        self.guard = guard  # checks, before each batch, that its writes would last
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # jobs, then STOP
        self._room_seq: dict[str, int] = {}  # room -> latest seq, as of this transaction
        self._dirty: set[str] = set()  # rooms whose last_seq this transaction moved
        self._private_seq: int | None = None  # latest private seq, once loaded
        self._private_dirty = False  # whether this transaction moved it
        self._data_version: int | None = None  # seen after our last commit
        self.commits = 0  # transactions committed
        self.writes = 0  # jobs committed
        self.largest_batch = 0  # most jobs in one committed transaction
        self._unindexed = 0  # messages appended since the last index pass (at least)
        self._indexed_at = time.monotonic()  # when the last index pass ran
        self.thread = threading.Thread(target=self._run, name="roomcast-sqlite-writer", daemon=True)

    def put(self, job: Job | None) -> None:
        self._queue.put(job)

    def pending(self) -> int:
        return self._queue.qsize()

    # --- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                job = self._next_job()
                batch: list[Job] = []
                while job is not STOP:
                    batch.append(job)
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._commit(batch)
                if job is STOP:
                    break
                if self._unindexed >= INDEX_ROWS:
                    self._index_now()
            if self._unindexed:
                self._index_now()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            self._conn.close()

    def _next_job(self) -> Job | None:
        """The next job; while messages wait for the index, index them once no job has come
        for ``INDEX_DELAY`` seconds after the last pass."""
        while self._unindexed:
            wait = self._indexed_at + INDEX_DELAY - time.monotonic()
            if wait > 0:
                try:
                    return self._queue.get(timeout=wait)
                except queue.Empty:
                    pass
            self._index_now()
        return self._queue.get()

    def _commit(self, batch: list[Job]) -> None:
        """Run ``batch`` in one transaction, commit, then settle every job's future; refuse it
        whole when the guard says its writes would not last."""
        problem = None if self.guard is None else self.guard.problem()
        if problem is not None:
            refused = f"the SQLite store is not writable: {problem}"
            settle_threadsafe([(job, False, Unwritable(refused)) for job in batch])
            return
        outcomes: list[Outcome] = []
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            if version != self._data_version:  # someone else wrote: the caches may be stale
                self._forget()
                self._data_version = version
            outcomes = [self._attempt(job) for job in batch]
            self._flush_counters()
            self._conn.execute("COMMIT")
        except Exception as e:  # the transaction is lost: every job in it failed
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            self._forget()
            outcomes = [(job, False, broken(e)) for job in batch]
            self._unindexed += 1  # an index pass in the batch may be undone: run one again
        else:
            self.commits += 1
            self.writes += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
        settle_threadsafe(outcomes)

    def _attempt(self, job: Job) -> Outcome:
        """Run one job; a refusal (``ClientError``, a violated constraint) fails that job
        alone, any other error fails the whole batch."""
        if job.atomic:
            self._conn.execute("SAVEPOINT job")
            counters = (
                self._room_seq.copy(),
                self._dirty.copy(),
                self._private_seq,
                self._private_dirty,
            )
        try:
            value = job.run()
        except (ClientError, sqlite3.IntegrityError) as e:
            if job.atomic:
                self._conn.execute("ROLLBACK TO job")
                self._conn.execute("RELEASE job")
                # the caches go back with the rows
                self._room_seq, self._dirty, self._private_seq, self._private_dirty = counters
            return job, False, e if isinstance(e, ClientError) else broken(e)
        if job.atomic:
            self._conn.execute("RELEASE job")
        return job, True, value

    def _forget(self) -> None:
        self._room_seq.clear()
        self._dirty.clear()
        self._private_seq = None
        self._private_dirty = False

    def _flush_counters(self) -> None:
        if self._dirty:
            self._conn.executemany(
                "UPDATE rooms SET last_seq = ? WHERE name = ?",
                [(self._room_seq[room], room) for room in self._dirty],
            )
            self._dirty.clear()
        if self._private_dirty:
            self._conn.execute(
                "UPDATE counters SET value = ? WHERE name = 'private_seq'", (self._private_seq,)
            )
            self._private_dirty = False

    def _latest(self, room: str, *, create_at: float | None = None) -> int | None:
        """The room's latest seq; ``None`` for an unknown room unless ``create_at`` is given,
        which creates it (created at that time)."""
        seq = self._room_seq.get(room)
        if seq is None:
            row = self._conn.execute("SELECT last_seq FROM rooms WHERE name = ?", (room,))
            found = row.fetchone()
            if found is not None:
                seq = self._room_seq[room] = found[0]
            elif create_at is not None:
                self._conn.execute(
                    "INSERT INTO rooms (name, created) VALUES (?, ?)", (room, create_at)
                )
                seq = self._room_seq[room] = 0
        return seq

    def _latest_private(self) -> int:
        if self._private_seq is None:
            row = self._conn.execute("SELECT value FROM counters WHERE name = 'private_seq'")
            (self._private_seq,) = row.fetchone()
        return self._private_seq

    # --- jobs: each runs inside the batch's transaction ---------------------------------

    def append(self, d: Draft) -> Message:
        seq = (self._latest(d.room, create_at=d.ts) or 0) + 1
        self._conn.execute(
            INSERT_MESSAGE, (d.id, d.room, seq, d.sender, d.kind.value, d.text, d.ts, d.signed)
        )
        self._room_seq[d.room] = seq  # only once the row is in
        self._dirty.add(d.room)
        self._unindexed += 1
        return d.with_seq(seq)

    def append_many(self, drafts: Sequence[Draft]) -> list[Message]:
        """Several messages in one statement: runs as an atomic job (see ``_attempt``), which
        puts the sequence caches back if the insert fails."""
        if len(drafts) == 1:
            return [self.append(drafts[0])]
        messages = []
        for d in drafts:
            seq = self._room_seq[d.room] = (self._latest(d.room, create_at=d.ts) or 0) + 1
            self._dirty.add(d.room)
            messages.append(d.with_seq(seq))
        self._conn.executemany(
            INSERT_MESSAGE,
            [
                (m.id, m.room, m.seq, m.sender, m.kind.value, m.text, m.ts, m.signed)
                for m in messages
            ],
        )
        self._unindexed += len(messages)
        return messages

    def append_private(self, d: PrivateDraft) -> Private:
        seq = self._latest_private() + 1
        pair = conversation_key(d.sender, d.recipient)
        self._conn.execute(
            INSERT_PRIVATE,
            (seq, d.id, d.sender, d.recipient, d.kind.value, d.text, d.ts)
            + (d.signed, d.recipient_signed, pair),
        )
        self._private_seq = seq
        self._private_dirty = True
        return d.with_seq(seq)

    def index(self) -> int:
        """Add the messages stored since the last call to the search index; return how many.
        Runs inside the caller's transaction."""
        conn = self._conn
        (done,) = conn.execute("SELECT value FROM counters WHERE name = 'fts_serial'").fetchone()
        added = conn.execute(
            "INSERT INTO messages_fts (rowid, text) SELECT serial, text FROM messages"
            " WHERE serial > ?",
            (done,),
        ).rowcount
        if added:
            conn.execute(
                "UPDATE counters SET value = (SELECT MAX(serial) FROM messages)"
                " WHERE name = 'fts_serial'"
            )
        self._unindexed = 0
        self._indexed_at = time.monotonic()
        return added

    def _index_now(self) -> None:
        """Bring the search index up to date in a transaction of its own; a failure leaves
        it for the next pass (search and retention index first, inside their own jobs), as
        does a guard that says the writes would not last."""
        if self.guard is not None and self.guard.problem() is not None:
            self._indexed_at = time.monotonic()  # ask again in INDEX_DELAY, not at once
            return
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            self.index()
            self._conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            self._unindexed += 1
            self._indexed_at = time.monotonic()  # the next try waits INDEX_DELAY

    def retain(self, room: str, max_age: float | None, max_count: int | None, now: float) -> int:
        self.index()  # the delete trigger may only remove what the index holds
        latest = self._latest(room)
        if latest is None:
            return 0
        cut = 1  # delete seq < cut
        if max_count is not None:
            cut = max(cut, latest - max_count + 1)
        if max_age is not None:
            row = self._conn.execute(
                "SELECT seq FROM messages WHERE room = ? AND ts >= ? ORDER BY seq LIMIT 1",
                (room, now - max_age),
            ).fetchone()
            cut = max(cut, latest + 1 if row is None else row[0])
        if cut <= 1:
            return 0
        done = self._conn.execute("DELETE FROM messages WHERE room = ? AND seq < ?", (room, cut))
        return done.rowcount

    def create_account(self, name: str, password_hash: str, now: float) -> Account:
        key, like = fold(name), skeleton(name)
        if self._conn.execute("SELECT 1 FROM accounts WHERE key = ?", (key,)).fetchone():
            raise ClientError("name_taken", f"the name {name!r} is registered: choose another")
        other = self._conn.execute(
            "SELECT name FROM accounts INDEXED BY accounts_by_skeleton"
            " WHERE skeleton = ? ORDER BY key LIMIT 1",
            (like,),
        ).fetchone()
        if other is not None:
            raise lookalike_registered(name, other[0])
        account = Account(
            id=new_account_id(),
            generation=0,
            name=name,
            password_hash=password_hash,
            created=now,
            private_read_seq=self._latest_private(),
        )
        self._conn.execute(
            "INSERT INTO accounts (key, id, generation, name, password_hash, created,"
            " private_read_seq, skeleton) VALUES (?, ?, 0, ?, ?, ?, ?, ?)",
            (key, account.id, name, password_hash, now, account.private_read_seq, like),
        )
        return account

    def set_password(self, name: str, password_hash: str) -> None:
        done = self._conn.execute(
            "UPDATE accounts SET password_hash = ?, generation = generation + 1 WHERE key = ?",
            (password_hash, fold(name)),
        )
        if done.rowcount == 0:
            raise ClientError("no_account", f"there is no account named {name!r}")

    def revoke(self, account_id: str) -> Account | None:
        self._conn.execute(
            "UPDATE accounts SET generation = generation + 1 WHERE id = ?", (account_id,)
        )
        return read_account(self._conn, "id", account_id)

    def delete_account(self, name: str) -> bool:
        key = fold(name)
        self._conn.execute("DELETE FROM memberships WHERE account = ?", (key,))
        self._conn.execute(
            "DELETE FROM private_messages"
            " WHERE recipient = ? OR (sender = ? COLLATE NOCASE AND signed)",
            (key, key),
        )
        done = self._conn.execute("DELETE FROM accounts WHERE key = ?", (key,))
        return done.rowcount > 0

    def set_membership(self, name: str, room: str, read_seq: int | None) -> None:
        if read_seq is None:
            self._conn.execute(
                "DELETE FROM memberships WHERE account = ? AND room = ?", (fold(name), room)
            )
            return
        self._conn.execute(
            "INSERT INTO memberships (account, room, read_seq)"
            " SELECT key, ?, ? FROM accounts WHERE key = ?"
            " ON CONFLICT (account, room) DO UPDATE"
            " SET read_seq = max(read_seq, excluded.read_seq)",
            (room, read_seq, fold(name)),
        )

    def advance_read(self, markers: list[tuple[int, str, str, int]]) -> None:
        self._conn.executemany(
            "UPDATE memberships SET read_seq = ? WHERE account = ? AND room = ? AND read_seq < ?",
            markers,
        )

    def advance_private_read(self, name: str, seq: int) -> None:
        self._conn.execute(
            "UPDATE accounts SET private_read_seq = ? WHERE key = ? AND private_read_seq < ?",
            (seq, fold(name), seq),
        )


ACCOUNT_COLUMNS: Final = "id, generation, name, password_hash, created, private_read_seq"
ACCOUNT_LIKE: Final = (  # one seek, whatever statistics the planner has (PRAGMA optimize)
    f"SELECT {ACCOUNT_COLUMNS} FROM accounts INDEXED BY accounts_by_skeleton"
    " WHERE skeleton = ? ORDER BY key LIMIT 1"
)


def read_account(conn: sqlite3.Connection, column: str, value: str) -> Account | None:
    """The account whose ``column`` (``key`` or ``id``, both unique) is ``value``."""
    assert column in ("key", "id")  # a column of ours, never user text
    row = conn.execute(
        f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE {column} = ?", (value,)
    ).fetchone()
    return _account(row)


def read_account_like(conn: sqlite3.Connection, name: str) -> Account | None:
    """The account registered as ``name`` in any case, else the first (by folded name) whose
    name has ``name``'s skeleton (``Accounts.account_like``)."""
    found = read_account(conn, "key", fold(name))
    if found is None:
        found = _account(conn.execute(ACCOUNT_LIKE, (skeleton(name),)).fetchone())
    return found


def _account(row: tuple[Any, ...] | None) -> Account | None:
    if row is None:
        return None
    account_id, generation, name, password_hash, created, private_read_seq = row
    return Account(
        id=account_id,
        generation=generation,
        name=name,
        password_hash=password_hash,
        created=created,
        private_read_seq=private_read_seq,
    )


def settle_threadsafe(outcomes: list[Outcome]) -> None:
    """Hand the outcomes to each future's loop, in order, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].future.get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[Outcome]) -> None:
    for job, ok, value in items:
        if ok and job.then is not None:  # even if the caller was cancelled: it is stored
            try:
                job.then(value)
            except Exception as e:  # the caller hears of it; if it is gone, the log does
                log.exception("after a write")
                ok, value = False, e
        future = job.future
        if future.done():  # the caller was cancelled; the write stands all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
