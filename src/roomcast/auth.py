"""Passwords and throttling. No sockets, no SQL: hashing runs on worker threads, off the loop.

Passwords are hashed with argon2id (argon2-cffi). The default cost is the RFC 9106
"low memory" profile (64 MiB, 3 passes, 4 lanes), about 0.2 s on a current core; it is a
setting, so a test suite can use a cheaper one. Every hash costs that memory and that time,
so a flood of logins or registrations must not start as many hashes as it sends: hashing
runs on a small pool of threads (``workers``) behind a bounded queue (``queue``), and a
request beyond both is refused at once as ``busy``, with a retry hint, before any work.

A ``Throttle`` counts attempts per key (a name, an address, a pair) in a sliding window. It
counts the attempts still in flight as well as those recorded, and a caller takes its slot
(``begin``) before the costly check: requests sent together cannot all pass the check
before the first of them is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from roomcast.errors import ClientError

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "Cost",
    "Passwords",
    "Throttle",
    "address_key",
    "check_password",
]

log = logging.getLogger("roomcast.auth")

T = TypeVar("T")

MIN_PASSWORD = 8  # characters
MAX_PASSWORD = 256  # characters: hashing cost must not be the client's to choose


def check_password(password: str) -> str:
    """Return ``password`` if its length is acceptable, else raise ``bad_password``."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ClientError(
            "bad_password",
            f"a password needs {MIN_PASSWORD}-{MAX_PASSWORD} characters; "
            f"this one has {len(password)}",
        )
    return password


@dataclass(frozen=True, slots=True, kw_only=True)
class Cost:
    """argon2id parameters."""

    time_cost: int = 3  # passes
    memory_cost: int = 65536  # KiB
    parallelism: int = 4  # lanes


class Passwords:
    """Hashes and verifies passwords with argon2id on ``workers`` threads of its own.

    At most ``workers`` hashes run at once and ``queue`` more wait; a call beyond that raises
    ``ClientError("busy")`` at once, with a retry hint, so that a flood costs neither the
    memory of a hash per request nor an unbounded wait for the users behind it. A job counts
    until its thread is done with it, even if its caller was cancelled meanwhile: the bound
    is on the work, not on the waiting. Checks of passwords (logins) go before hashes of new
    ones (registrations), which may take only half the queue: a registration flood delays a
    login by the hashes already running, and cannot fill the queue against it.
    """

    def __init__(self, cost: Cost | None = None, *, workers: int = 2, queue: int = 16) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"need workers >= 1 and queue >= 0, got {workers} and {queue}")
        cost = cost or Cost()
        self._hasher = PasswordHasher(
            time_cost=cost.time_cost, memory_cost=cost.memory_cost, parallelism=cost.parallelism
        )
        self.workers = workers  # hashes that run at once
        self.queue = queue  # hashes that may wait for a worker
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="roomcast-argon2")
        self._running = 0  # jobs on a worker (or handed one and about to start)
        # jobs waiting for a worker: checks of passwords first, then hashes of new ones; each
        # is a future set when a worker is handed to it
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())
        self._mean = 0.25  # seconds a hash takes, a running mean: the retry hint
        self._refusing = False  # refused a job since the last one that found room (for logs)

    @property
    def pending(self) -> int:
        """Hashes running or waiting for a worker."""
        return self._running + len(self._waiting[0]) + len(self._waiting[1])

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (checked for length first)."""
        check_password(password)
        return await self._run(1, self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``. A malformed hash never matches."""
        if len(password) > MAX_PASSWORD:
            return False
        return await self._run(0, self._verify, password_hash, password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _run(self, rank: int, work: Callable[..., T], *args: str) -> T:
        """Run ``work(*args)`` on a worker once one is free for it (rank 0, a login, before
        rank 1, a registration), or refuse with ``busy`` if the workers and the queue (half
        of it, for rank 1) are taken."""
        pending = self.pending
        # hashes of new passwords may take half the queue: the rest stays for logins
        if pending >= self.workers + (self.queue if rank == 0 else self.queue // 2):
            wait = max(1, math.ceil(pending / self.workers * self._mean))
            if not self._refusing:
                self._refusing = True
                log.warning("password hashing busy: %d running or waiting; refusing more", pending)
            raise ClientError(
                "busy",
                f"the server is busy checking passwords: try again in {wait} s",
                retry_after=wait,
            )
        self._refusing = False
        if self._running < self.workers:
            self._running += 1
        else:
            turn = asyncio.get_running_loop().create_future()
            self._waiting[rank].append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # handed a worker: hand it on
                    self._release()
                else:  # still waiting (or already skipped by _release)
                    with contextlib.suppress(ValueError):
                        self._waiting[rank].remove(turn)
                raise

        def timed() -> tuple[T, float]:
            start = time.perf_counter()
            result = work(*args)
            return result, time.perf_counter() - start

        job = asyncio.get_running_loop().run_in_executor(self._pool, timed)
        job.add_done_callback(self._done)
        # shielded: a cancelled caller leaves the job counted until its thread is done
        result, _ = await asyncio.shield(job)
        return result

    def _done(self, job: asyncio.Future[tuple[Any, float]]) -> None:
        if not job.cancelled() and job.exception() is None:
            self._mean += (job.result()[1] - self._mean) / 8
        self._release()

    def _release(self) -> None:
        """A worker is free: hand it to the first job waiting, or count it free."""
        for waiting in self._waiting:
            while waiting:
                turn = waiting.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._running -= 1

    def close(self) -> None:
        """Stop the worker threads once their jobs are done; cancel the jobs still waiting."""
        for waiting in self._waiting:
            while waiting:
                waiting.popleft().cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


def address_key(host: str) -> str:
    """What throttling counts a client's address as: an IPv4 address as it is, an IPv6
    address by its /64 (one subscriber's usual allocation: counting single IPv6 addresses
    would give an attacker 2**64 of them), anything else (``?``) as it is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


class Throttle:
    """At most ``limit`` attempts per key in any ``window`` seconds, counting the attempts
    recorded in the window and those in flight.

    A caller asks ``wait(key)``; if it is 0 it calls ``begin(key)`` at once (no await in
    between: the check and the slot are one step on the loop), does the costly work, then
    ``end(key, count=...)``: ``count`` records the attempt in the window (a failed login,
    a registration), otherwise it only frees the slot. Keys whose window has passed are
    swept as the table grows, so its size follows the traffic of one window.
    """

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float], *, retry: float = 1.0
    ) -> None:
        self.limit = limit  # attempts allowed in the window
        self.window = window  # seconds an attempt counts
        self._clock = clock  # seconds; injected for tests
        self._retry = retry  # seconds to suggest when only attempts in flight fill the limit
        self._recorded: dict[str, deque[float]] = {}  # key -> times of its recent attempts
        self._in_flight: dict[str, int] = {}  # key -> attempts begun and not ended
        self._sweep_above = 1024  # sweep the table once it holds more keys than this

    def _recent(self, key: str) -> deque[float] | None:
        times = self._recorded.get(key)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._recorded[key]
            return None
        return times

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        times = self._recent(key)
        recorded = 0 if times is None else len(times)
        if recorded + self._in_flight.get(key, 0) < self.limit:
            return 0.0
        if times is not None and recorded >= self.limit:
            return times[0] + self.window - self._clock()  # > 0: _recent dropped the rest
        return self._retry  # attempts in flight end within a hash or two

    def begin(self, key: str) -> None:
        """Take a slot for an attempt of ``key`` (after ``wait(key)`` was 0)."""
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def end(self, key: str, *, count: bool) -> bool:
        """Free the slot ``begin`` took; with ``count``, record the attempt in the window.
        Return whether ``key`` has just reached its limit (for a log line)."""
        flying = self._in_flight.get(key, 0) - 1
        if flying > 0:
            self._in_flight[key] = flying
        else:
            self._in_flight.pop(key, None)
        if not count:
            return False
        times = self._recent(key)
        if times is None:
            times = self._recorded[key] = deque()
        times.append(self._clock())
        if len(times) > self.limit:
            times.popleft()
        if len(self._recorded) > self._sweep_above:
            self._sweep()
        return len(times) == self.limit

    def clear(self, key: str) -> None:
        """Forget what ``key`` recorded (after a success); its attempts in flight stay."""
        self._recorded.pop(key, None)

    def _sweep(self) -> None:
        """Drop every key whose attempts have all left the window: O(keys), run when the
        table has doubled since the last sweep, so O(1) per attempt on average."""
        for key in list(self._recorded):
            self._recent(key)
        self._sweep_above = max(1024, 2 * len(self._recorded))
