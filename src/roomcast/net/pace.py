"""Flood control that delays instead of refusing: "fakelag", as IRC servers apply it.

The hub says how long a session must wait before its next command (``Hub.pace``). A listener's
reader waits that long before it hands the command over, and meanwhile reads no further than
its read-ahead (``max_pending`` commands), so the kernel's buffers and then TCP flow control
hold the client back: a paste of any size arrives whole, in order, at the allowed rate.

What is cut is a client held back without a break for longer than ``hold`` seconds: a paste
of more than about ``rate * hold`` lines beyond the burst, or a bot that keeps sending faster
than the rate for that long. A hold ends when a command comes that can go at once: the client
was not ahead of the rate any more.
"""

from __future__ import annotations

import asyncio

from roomcast.hub import Hub
from roomcast.session import Session

__all__ = ["Pacer"]


class Pacer:
    """One connection's flood hold: how long its client has been held back, and the wait."""

    __slots__ = ("_hold", "_since")

    def __init__(self, hold: float) -> None:
        self._hold = hold  # most seconds a client may be held back without a break
        self._since: float | None = None  # loop time the current hold began; None: no hold

    async def wait(self, hub: Hub, session: Session) -> bool:
        """Wait until ``session`` may send its next command, and return ``True``; or return
        ``False`` at once if that would hold the client back for more than ``hold`` seconds
        without a break (the caller cuts it, with a reason).

        Each wait is at most the time one token takes to come (1 / rate), so a caller that
        checks whether it should go on after this returns never waits longer than that.
        """
        wait = hub.pace(session)
        if wait <= 0.0:
            self._since = None  # it came no faster than the rate: whatever hold there was is over
            return True
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._since is None:
            self._since = now
        while wait > 0.0:  # bounded: each turn sleeps, and the hold ends it within _hold
            if now + wait - self._since > self._hold:
                return False
            await asyncio.sleep(wait)
            wait = hub.pace(session)
            now = loop.time()
        return True
