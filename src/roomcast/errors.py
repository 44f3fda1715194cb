"""Errors, each saying whose fault it is.

::

    RoomcastError
    ├── ClientError     the client sent something wrong; carries the code and the reply to send
    ├── Closed          we closed the session or the server (shutdown, quit, too slow)
    └── Broken          something we depend on failed (store, bus, peer)
        └── Unwritable  the store cannot take writes now (file deleted, read-only, disk full)

The broadcast channel has its own errors (``roomcast.broadcast``): it knows nothing of chat.
"""

from __future__ import annotations

__all__ = ["Broken", "ClientError", "Closed", "RoomcastError", "Unwritable"]


class RoomcastError(Exception):
    """Root of roomcast's own errors."""


class ClientError(RoomcastError):
    """The client sent something wrong. ``code`` is stable; ``message`` is for a human.

    ``retry_after`` (seconds), when set, says the request was refused for now only (a
    throttle, a busy server) and when to try again: HTTP sends it as ``Retry-After``.
    """

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(code, message)
        self.code = code  # stable, machine-readable: "bad_name", "unknown_command", ...
        self.message = message  # what was wrong and what to do, as a sentence
        self.retry_after = retry_after  # seconds to wait before trying again, if that helps

    def __str__(self) -> str:
        return self.message


class Closed(RoomcastError):
    """We closed the session; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # told to the client and logged

    def __str__(self) -> str:
        return f"closed: {self.reason}"


class Broken(RoomcastError):
    """A dependency failed (store, bus or peer); the request may be retried."""


class Unwritable(Broken):
    """The store cannot take writes now: its file was deleted or replaced, it is read-only,
    or its disk is full. Reads may still work; writes are refused until an operator acts."""
