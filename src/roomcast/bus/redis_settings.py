"""The Redis bus's settings, from its URL, and its reconnection waits; no I/O.

``redis://[:password@]host[:port][/db]?prefix=roomcast:&max_pending=8388608&timeout=5
&health_check=5&backoff_min=0.05&backoff_max=5`` (the defaults): the bus's own settings
live in the URL's query, like the PostgreSQL store's limits, so ``--bus`` carries them all.
Any other query parameter is left to redis-py.
"""

from __future__ import annotations

import math
import random
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from roomcast.store import public_url

__all__ = ["DEFAULT_PREFIX", "Settings", "backoff", "public_url"]

DEFAULT_PREFIX = "roomcast:"
MAX_PREFIX = 100  # characters in a prefix
_PREFIX_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))  # printable ASCII, no space

# The numbers the URL's query may set, with their defaults.
_NUMBERS: Final[dict[str, tuple[type[int] | type[float], int | float]]] = {
    "max_pending": (int, 8 * 1024 * 1024),  # payload bytes queued and in flight at most
    "timeout": (float, 5.0),  # seconds Redis has to connect and to answer
    "health_check": (float, 5.0),  # seconds of silence on a connection before a PING
    "backoff_min": (float, 0.05),  # seconds before the first reconnection attempt, at most
    "backoff_max": (float, 5.0),  # seconds between two attempts, at most
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """What a bus URL says; ``Settings.parse`` checks it."""

    redis_url: str  # for redis-py: the URL without the bus's own settings
    where: str  # the URL without its password, for logs and errors
    prefix: str  # of every channel
    max_pending: int  # payload bytes queued and in flight to Redis, at most
    timeout: float  # seconds Redis has to connect and to answer
    health_check: float  # seconds of silence on a connection before a PING
    backoff_min: float  # seconds: the first reconnection wait is at most this
    backoff_max: float  # seconds: no reconnection wait is longer

    @classmethod
    def parse(cls, url: str) -> Settings:
        """The settings ``url`` holds, defaults for the others; ``ValueError`` saying
        which is wrong."""
        parts = urllib.parse.urlsplit(url)
        numbers: dict[str, int | float] = {n: default for n, (_, default) in _NUMBERS.items()}
        prefix = DEFAULT_PREFIX
        rest = []
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                if not 0 < len(value) <= MAX_PREFIX or not set(value) <= _PREFIX_CHARS:
                    raise ValueError(
                        f"the bus prefix {value[:40]!r} must be 1-{MAX_PREFIX} printable ASCII"
                    )
                prefix = value
            elif name in _NUMBERS:
                numbers[name] = _number(name, value)
            else:
                rest.append((name, value))
        if numbers["backoff_max"] < numbers["backoff_min"]:
            raise ValueError("the bus setting backoff_max must be at least backoff_min")
        return cls(
            redis_url=urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest))),
            where=public_url(url),
            prefix=prefix,
            max_pending=int(numbers["max_pending"]),
            timeout=float(numbers["timeout"]),
            health_check=float(numbers["health_check"]),
            backoff_min=float(numbers["backoff_min"]),
            backoff_max=float(numbers["backoff_max"]),
        )


def _number(name: str, value: str) -> int | float:
    kind, _ = _NUMBERS[name]
    try:
        number = kind(value)
    except ValueError:
        raise ValueError(f"the bus setting {name}={value!r} is not a number") from None
    if not number > 0 or not math.isfinite(number):
        raise ValueError(f"the bus setting {name}={value!r} must be above 0")
    return number


def backoff(
    first: float, cap: float, random: Callable[[], float] = random.random
) -> Iterator[float]:
    """The waits before successive reconnection attempts: ``first``, doubling each time up
    to ``cap``, each drawn uniformly between half of that and all of it (equal jitter:
    nodes cut at once spread out, and each wait is at least half the exponential one)."""
    limit = first
    while True:
        yield limit / 2 + random() * limit / 2
        limit = min(cap, limit * 2)
