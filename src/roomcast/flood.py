"""Flood control: how fast a session may send, with a bucket that says how long to wait.

Each open session has a token bucket (``Flood.open``), and so has each account that posts
without a session (``Messages.post``). A bucket holds ``burst`` tokens and refills at
``rate`` per second; a command spends one (``Hub.handle``, ``Hub.say``). ``Flood.pace`` is
the delaying side ("fakelag", as IRC servers apply it): a transport asks it before each
command and waits as told; the bucket also keeps how long the client has been held back
without a break, so that one that never slows down is refused after ``Limits.flood_hold``.
Arithmetic on the core's clock: no sockets, no tasks, no sleeps.
"""

from __future__ import annotations

import logging

from roomcast.core import Core
from roomcast.errors import ClientError
from roomcast.model import Error
from roomcast.session import Session

__all__ = ["FLOOD", "Bucket", "Flood"]

log = logging.getLogger("roomcast.hub")  # the chat core logs as one (see roomcast.core)

FLOOD = "you are sending too fast: wait a moment, then retry"


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


class Flood:
    """The buckets of the open sessions: pace, allowance, and the requests a transport
    answers by itself."""

    def __init__(self, core: Core) -> None:
        self._limits = core.limits
        self._clock = core.clock  # wall-clock seconds; injected for tests
        self.buckets: dict[Session, Bucket] = {}  # open session -> its bucket

    def open(self, session: Session) -> None:
        """Give a new session a full bucket."""
        limits = self._limits
        self.buckets[session] = Bucket(limits.rate, limits.burst, self._clock())

    def close(self, session: Session) -> None:
        """Forget an ended session's bucket."""
        self.buckets.pop(session, None)

    def pace(self, session: Session) -> float:
        """Seconds ``session`` must wait before its next command: 0.0 if it may send it now.

        Flood control that delays instead of refusing ("fakelag", as IRC servers apply it): a
        transport asks before each command (again after waiting, until it gets 0.0) and waits
        as told, reading no further ahead meanwhile; a paste goes through whole at
        ``Limits.rate`` and TCP flow control slows the client down. A session held back
        without a break for more than ``Limits.flood_hold`` seconds is refused instead: this
        raises ``ClientError`` "flood", whose message is the reason to close it with.
        ``Hub.handle`` still refuses a command that comes early, for callers that do not ask.
        """
        bucket = self.buckets.get(session)
        if bucket is None:
            return 0.0
        hold = self._limits.flood_hold
        wait = bucket.turn(self._clock(), hold)
        if wait is None:
            log.warning("flooding peer=%s name=%s", session.peer, session.name)
            raise ClientError("flood", f"sending too fast: held back for more than {hold:g} s")
        return wait

    def allowance(self, session: Session) -> int:
        """How many commands ``session`` may send now, at once, without being refused for
        flooding (a run of lines handed to ``Hub.say`` together takes at most this many)."""
        bucket = self.buckets.get(session)
        return self._limits.burst if bucket is None else bucket.available(self._clock())

    def spend(self, session: Session) -> Error | None:
        """Count a request the transport answers by itself (a malformed frame, a ping)
        against the session's flood limit; the error to send instead when over it."""
        bucket = self.buckets.get(session)
        if bucket is None or bucket.take(self._clock()):
            return None
        return Error(code="flood", message=FLOOD)
