"""Flood control: a token bucket that says how long to wait, not only whether to refuse.

Each session has one (``Hub.connect``), and so has each account that posts without a
session (``Hub.post``). A bucket holds ``burst`` tokens and refills at ``rate`` per second;
a command spends one. ``turn`` is the delaying side ("fakelag", as IRC servers apply it): a
transport asks it before each command and waits as told, and ``turn`` also keeps how long
the client has been held back without a break, so that one that never slows down can be
refused. Pure arithmetic on a clock the caller passes in: no sockets, no tasks, no sleeps.
"""

from __future__ import annotations

__all__ = ["Bucket"]


class Bucket:
    """Token bucket: ``burst`` tokens, refilled at ``rate`` per second; and how long its
    client has been held back for want of one (``turn``)."""

    __slots__ = ("burst", "held", "last", "rate", "told", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate  # tokens per second
        self.burst = burst  # bucket size
        self.tokens = float(burst)  # tokens left
        self.last = now  # when tokens was last brought up to date
        self.held: float | None = None  # when the client began to be held back; None: it is not
        self.told = False  # the last turn said to wait: the command that comes next waited

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now

    def take(self, now: float) -> bool:
        """Spend a token if there is one."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def available(self, now: float) -> int:
        """Whole tokens there are now."""
        self._refill(now)
        return int(self.tokens)

    def wait(self, now: float) -> float:
        """Seconds until there is a whole token: 0.0 if there is one now."""
        self._refill(now)
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def turn(self, now: float, hold: float) -> float | None:
        """Seconds the client must wait before its next command (0.0: none); ``None`` if that
        would hold it back for more than ``hold`` seconds without a break. A hold begins at a
        command that must wait and ends at one that need not (not the one that waited)."""
        wait = self.wait(now)
        if wait <= 0.0:
            if not self.told:  # it came no faster than the rate: whatever hold there was is over
                self.held = None
            self.told = False
            return 0.0
        if self.held is None:
            self.held = now
        if now + wait - self.held > hold:
            return None
        self.told = True
        return wait
