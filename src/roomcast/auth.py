"""Passwords and login throttling. No I/O: hashing runs in a worker thread, off the loop.

Passwords are hashed with argon2id (argon2-cffi). The default cost is the RFC 9106
"low memory" profile (64 MiB, 3 passes, 4 lanes), about 0.2 s on a current core; it is a
setting, so a test suite can use a cheaper one.

Throttling counts failed logins per key (a name, an address) in a sliding window; once a key
has too many, it is refused until the oldest failure leaves the window.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from roomcast.errors import ClientError

__all__ = ["MAX_PASSWORD", "MIN_PASSWORD", "Cost", "Passwords", "Throttle", "check_password"]

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
    """Hashes and verifies passwords with argon2id, in a worker thread."""

    def __init__(self, cost: Cost | None = None) -> None:
        cost = cost or Cost()
        self._hasher = PasswordHasher(
            time_cost=cost.time_cost, memory_cost=cost.memory_cost, parallelism=cost.parallelism
        )

    async def hash(self, password: str) -> str:
        """The argon2id hash of ``password`` (checked for length first)."""
        check_password(password)
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``password_hash``. A malformed hash never matches."""
        if len(password) > MAX_PASSWORD:
            return False
        try:
            return await asyncio.to_thread(self._hasher.verify, password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


class Throttle:
    """At most ``limit`` failures per key within ``window`` seconds."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit = limit  # failures allowed in the window
        self.window = window  # seconds a failure counts
        self._clock = clock  # monotonic seconds; injected for tests
        self._failures: dict[str, deque[float]] = {}  # key -> times of recent failures

    def _recent(self, key: str) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        horizon = self._clock() - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may try again (0 when it may now)."""
        times = self._recent(key)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self._clock())

    def fail(self, key: str) -> None:
        """Record a failure for ``key``."""
        times = self._recent(key)
        if times is None:
            times = self._failures[key] = deque()
        times.append(self._clock())
        if len(times) > self.limit:
            times.popleft()

    def clear(self, key: str) -> None:
        """Forget ``key``'s failures (after a success)."""
        self._failures.pop(key, None)
