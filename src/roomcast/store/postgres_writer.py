"""The PostgreSQL store's writer: one task per store, group commits, seqs from the database.

See ``roomcast.store.postgres`` for the theory of operation. The store hands appends to
``Writer.queue`` on the event loop; the writer's task takes them in batches and settles each
one on the loop once its statement has committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from roomcast.errors import Broken, Unwritable
from roomcast.model import Draft, Message, Private, PrivateDraft, fold
from roomcast.store.base import conversation_key, search_tokens

__all__ = ["DRIVER_ERRORS", "READ_ONLY", "Statistics", "Writable", "Writer", "broken"]

log = logging.getLogger("roomcast.store")

# Everything asyncpg raises when the server, the connection or a statement fails.
DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # refused, reset, timed out (TimeoutError is an OSError)
)
# What PostgreSQL answers when the database cannot take writes (SQLSTATE 53100: a file could
# not be extended or written for want of space; 25006: a write in a read-only transaction,
# on a standby server or with default_transaction_read_only), and how it is told.
READ_ONLY: Final = (
    "its transactions are read-only (a standby server, or default_transaction_read_only)"
)
_UNWRITABLE: Final[dict[type[BaseException], str]] = {
    asyncpg.DiskFullError: "its disk is full",
    asyncpg.ReadOnlySQLTransactionError: READ_ONLY,
}
# What the database refuses because of one write's data: that write fails alone.
_REFUSALS: Final = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)

# One statement for a batch's room messages: reserve each room's numbers (rooms in name
# order, created on first use), then insert every message under its number.
_APPEND = """
WITH batch AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::float8[], $7::text[], $8::boolean[])
        WITH ORDINALITY AS b (id, room, sender, kind, text, ts, words, signed, ord)
), per_room AS (
    SELECT room, count(*) AS n, min(ts) AS created FROM batch GROUP BY room
), reserved AS (
    INSERT INTO rooms AS r (name, created, last_seq)
    SELECT room, created, n FROM per_room ORDER BY room COLLATE "C"
    ON CONFLICT (name) DO UPDATE SET last_seq = r.last_seq + excluded.last_seq
    RETURNING r.name, r.last_seq
)
INSERT INTO messages (room, seq, id, sender, kind, text, ts, words, signed)
SELECT b.room, r.last_seq - p.n + row_number() OVER (PARTITION BY b.room ORDER BY b.ord),
       b.id, b.sender, b.kind, b.text, b.ts, to_tsvector('simple', b.words), b.signed
FROM batch AS b JOIN per_room AS p USING (room) JOIN reserved AS r ON r.name = b.room
RETURNING id, seq
"""
# The same for private messages, numbered from the one 'private_seq' counter.
_APPEND_PRIVATE = """
WITH reserved AS (
    UPDATE counters SET value = value + cardinality($1::text[])
    WHERE name = 'private_seq' RETURNING value
)
INSERT INTO private_messages (seq, id, sender, sender_key, recipient, recipient_key, pair,
                              kind, text, ts, signed, recipient_signed)
SELECT r.value - cardinality($1::text[]) + p.ord, p.id, p.sender, p.sender_key, p.recipient,
       p.recipient_key, p.pair, p.kind, p.text, p.ts, p.signed, p.recipient_signed
FROM reserved AS r,
     unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::float8[], $10::boolean[], $11::boolean[])
         WITH ORDINALITY AS p (id, sender, sender_key, recipient, recipient_key, pair, kind,
                               text, ts, signed, recipient_signed, ord)
RETURNING id, seq
"""


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
    """``e`` (a driver error) as the ``Broken`` the store raises (``Unwritable`` when the
    database says it cannot take writes); a new one for each caller, so no two tasks raise
    (and annotate) the same exception object."""
    why = _UNWRITABLE.get(type(e))
    error = (
        Broken(f"the PostgreSQL store failed: {e}")
        if why is None
        else Unwritable(f"the PostgreSQL store is not writable: {why} ({e})")
    )
    error.__cause__ = e
    return error


class Writable:
    """Whether the database takes this store's writes, as far as the store can tell; each
    change of the answer (writable, disk full, read-only) is logged once.

    PostgreSQL says that its disk is full only by failing a write that needed space: no
    query tells it beforehand, and the server's disk is not this machine's. So the answer
    is the outcome of the last write: one refused as ``Unwritable`` (disk full, read-only)
    makes the store unwritable until a write succeeds. ``probed`` adds what a query can
    tell now, without writing: whether the server's transactions are read-only, which
    settles the read-only kind either way.
    """

    def __init__(self, where: str) -> None:
        self.where = where  # the store's URL without its password, for the log
        self._why: str | None = None  # what is wrong (a value of _UNWRITABLE); None: nothing
        self._problem: str | None = None  # ... said as a sentence, with the server's words

    def wrote(self, error: BaseException | None) -> None:
        """A write succeeded (``error`` is ``None``) or failed with ``error``; only a failure
        that is ``Unwritable`` says anything about the store's writability."""
        if error is None:
            self._set(None, None)
        elif isinstance(error, Unwritable):
            cause = error.__cause__  # the driver's error: which of _UNWRITABLE it is
            why = None if cause is None else _UNWRITABLE.get(type(cause))
            self._set(why or str(error), str(error))

    def probed(self, *, read_only: bool) -> str | None:
        """What a probe found: whether the server's transactions are read-only now. Returns
        why the store cannot take writes, as a sentence, or ``None`` if it can."""
        if read_only and self._why != READ_ONLY:
            self._set(READ_ONLY, f"the PostgreSQL store is not writable: {READ_ONLY}")
        elif not read_only and self._why == READ_ONLY:
            self._set(None, None)
        return self._problem

    def _set(self, why: str | None, problem: str | None) -> None:
        changed = why != self._why
        self._why, self._problem = why, problem
        if changed and problem is None:
            log.warning("the PostgreSQL store %s is writable again: writes succeed", self.where)
        elif changed:
            log.error("writes to the PostgreSQL store %s fail: %s", self.where, problem)


class Writer:
    """The task that writes a store's appends in group commits, and its counters."""

    def __init__(self, pool: asyncpg.Pool, max_batch: int, writable: Writable) -> None:
        """Start the task, on the running loop."""
        self._pool = pool  # the store's connections: one is taken per statement
        self._max_batch = max_batch  # most jobs in one commit
        self._writable = writable  # told the outcome of every commit
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()  # appends, then _STOP
        self.commits = 0  # statements committed
        self.writes = 0  # jobs in them
        self.largest_batch = 0  # most jobs in one of them
        self._task = asyncio.create_task(self._run(), name="roomcast-pg-writer")

    def queue(
        self,
        drafts: Sequence[Draft],
        private: PrivateDraft | None,
        then: Callable[[Any], None] | None,
    ) -> asyncio.Future[Any]:
        """Queue a run of room messages, or a private message, now; the future is done once
        it is committed, after ``then`` was called with the result (on the loop, even if the
        future was cancelled)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait(_Job(drafts=drafts, private=private, future=future, then=then))
        return future

    def pending(self) -> int:
        return self._jobs.qsize()

    async def stop(self) -> None:
        """Write everything queued, then end the task."""
        self._jobs.put_nowait(_STOP)
        await self._task

    async def _run(self) -> None:
        """Take a job and all queued behind it, commit them, settle them; until _STOP."""
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
            self._writable.wrote(failure := broken(e))
            return [(job, False, broken(e) if i else failure) for i, job in enumerate(jobs)]
        except Exception as e:  # a bug of ours: fail the jobs, keep the writer running
            log.exception("the PostgreSQL writer failed")
            return [(job, False, e) for job in jobs]
        self._writable.wrote(None)
        self.commits += 1
        self.writes += len(jobs)
        self.largest_batch = max(self.largest_batch, len(jobs))
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
            [d.signed for d in drafts],
        )
        seqs: dict[str, int] = {row["id"]: row["seq"] for row in rows}
        return [[d.with_seq(seqs[d.id]) for d in job.drafts] for job in jobs]

    async def _append_privates(self, conn: Any, jobs: list[_Job]) -> list[Private]:
        drafts = [job.private for job in jobs if job.private is not None]
        rows = await conn.fetch(
            _APPEND_PRIVATE,
            [d.id for d in drafts],
            [d.sender for d in drafts],
            [fold(d.sender) for d in drafts],
            [d.recipient for d in drafts],
            [fold(d.recipient) for d in drafts],
            [conversation_key(d.sender, d.recipient) for d in drafts],
            [d.kind.value for d in drafts],
            [d.text for d in drafts],
            [d.ts for d in drafts],
            [d.signed for d in drafts],
            [d.recipient_signed for d in drafts],
        )
        seqs: dict[str, int] = {row["id"]: row["seq"] for row in rows}
        return [d.with_seq(seqs[d.id]) for d in drafts]


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
