"""Admission: how many connections one address, and the whole server, may hold at once.

Theory of operation. Every connection either listener accepts takes a ``Ticket`` at once, in
``connection_made``, and gives it back in ``connection_lost``: the ticket stands for the
connection's file descriptor, so every open socket is counted, admitted or not, per address
(IPv4 by address, IPv6 by /64: ``auth.address_key``) and in total. The line listener and the
HTTP listener share one ``Admission``: twenty line connections and one WebSocket from one
address are twenty-one.

A connection past a cap is refused: ``Ticket.refusal`` says why, as a ``ClientError`` for the
listener to send (a line client gets one ``! ...`` line; an HTTP client, once its request
has come, a JSON error, 429 or 503), then the connection closes. Telling why costs the
descriptor a moment longer (an HTTP client must send its request first), so refusals that
are told are bounded too: an address holding twice its cap, or a server ``spare`` connections
over its cap, has its next connections closed at once without a word (``Ticket.told`` is
false). Either way the refusal is logged and counted.

The total cap keeps the process below its open-files limit (``RLIMIT_NOFILE``): past it,
``accept`` fails with EMFILE, asyncio pauses its listener, and nobody gets in, while the
store may fail to open its files. ``raise_descriptor_limit`` raises the soft limit to the
hard one at start, and ``connection_cap`` derives the default cap from it, keeping headroom
for the store, the listeners and the refusals being told.

``refused`` counts, per limit (named as its setting), every connection refused or cut by
it since the start, including those cut by deadlines the listeners keep (``note``); ``GET
/health`` shows them. No sockets here: the listeners hand in addresses and act on the ticket.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from roomcast.auth import address_key
from roomcast.errors import ClientError

__all__ = [
    "LIMITS",
    "Admission",
    "AdmissionLimits",
    "Ticket",
    "connection_cap",
    "raise_descriptor_limit",
]

log = logging.getLogger("roomcast.admission")

# The limits whose refusals and cuts are counted, by setting name (``GET /health``).
LIMITS = (
    "max_per_address",  # connections from one address at once
    "max_connections",  # connections at once
    "name_timeout",  # a line connection that gave no name in time
    "header_timeout",  # an HTTP connection that did not send its request's headers in time
    "body_timeout",  # an HTTP request whose body did not come in time
    "ws_heartbeat",  # a WebSocket that answered no ping
    "stall_timeout",  # a client that did not read what it was sent (line, WebSocket, SSE)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionLimits:
    """The caps on open connections, both listeners together."""

    per_address: int = 20  # connections from one address (IPv6: one /64) at once; 0 = no cap
    total: int = 1000  # connections at once
    spare: int = 64  # connections past ``total`` still told why they are refused


class Ticket:
    """One accepted connection's place in the counts, from accept to close.

    ``refusal`` is ``None`` for an admitted connection; else what to tell the client, if
    ``told`` (otherwise close at once). ``release`` gives the place back (more calls do
    nothing).
    """

    __slots__ = ("_admission", "key", "refusal", "told")

    def __init__(
        self, admission: Admission | None, key: str, refusal: ClientError | None, told: bool
    ) -> None:
        self._admission = admission  # None once released
        self.key = key  # the address as counted (an IPv6 address's /64)
        self.refusal = refusal  # why the connection is refused; None: admitted
        self.told = told  # whether the client is told why before the connection closes

    def release(self) -> None:
        """The connection is closed: its place is free."""
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self.key)


class Admission:
    """Counts the open connections of both listeners and refuses those past the caps."""

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self._open = 0  # connections open, admitted or being refused
        self._by_key: dict[str, int] = {}  # connections open per address key (none at 0)
        self.refused: dict[str, int] = dict.fromkeys(LIMITS, 0)  # per limit, since the start
        per, total = self.limits.per_address, self.limits.total
        # One refusal per limit, made once: the listeners send them as they are.
        self._crowded = ClientError(
            "too_many_connections",
            f"too many connections from your address (at most {per} at once):"
            " close one and try again",
        )
        self._full = ClientError(
            "server_full", f"the server is full ({total} connections): try again later"
        )

    @property
    def open(self) -> int:
        """Connections open now, both listeners, admitted or being refused."""
        return self._open

    def open_from(self, host: str) -> int:
        """Connections open now from ``host``'s address (its /64 for IPv6)."""
        return self._by_key.get(address_key(host), 0)

    def admit(self, host: str, peer: str, transport: str) -> Ticket:
        """A ticket for a connection just accepted from ``host`` (``peer`` and ``transport``
        name it in the log). It counts until released, whether admitted or refused."""
        key = address_key(host)
        count = self._by_key.get(key, 0)
        limits = self.limits
        refusal: ClientError | None = None
        told = True
        if self._open >= limits.total:
            refusal, told = self._full, self._open < limits.total + limits.spare
            self._refused("max_connections", self._open, told, peer, transport)
        elif limits.per_address and count >= limits.per_address:
            refusal, told = self._crowded, count < 2 * limits.per_address
            self._refused("max_per_address", count, told, peer, transport)
        self._open += 1
        self._by_key[key] = count + 1
        return Ticket(self, key, refusal, told)

    def _refused(self, limit: str, held: int, told: bool, peer: str, transport: str) -> None:
        self.refused[limit] += 1
        log.warning(
            "connection refused peer=%s transport=%s limit=%s open=%d%s",
            peer,
            transport,
            limit,
            held,
            "" if told else ": closed without an answer, far over the limit",
        )

    def note(self, limit: str) -> None:
        """Count a connection cut by ``limit`` (one of ``LIMITS``); the caller logs it."""
        self.refused[limit] += 1

    def _release(self, key: str) -> None:
        self._open -= 1
        count = self._by_key[key] - 1
        if count:
            self._by_key[key] = count
        else:
            del self._by_key[key]


def raise_descriptor_limit() -> tuple[int, int] | None:
    """Raise the soft open-files limit to the hard one; ``(before, now)``, or ``None`` where
    there is no such limit (not POSIX). An unlimited hard limit leaves the soft one as it is."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # pragma: no cover - a sandbox that forbids it
            pass
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(asked: int, descriptors: int) -> tuple[int, int]:
    """The cap on open connections and the spare refusals told past it, for a process that
    may open ``descriptors`` files: ``asked`` if given (> 0) and below what the descriptors
    allow, else what they allow. A tenth of them (at least 64) is kept back: half for the
    store, the listeners and the event loop, half for the refusals told past the cap."""
    headroom = max(64, descriptors // 10)
    most = max(1, descriptors - headroom)
    cap = most if asked <= 0 else min(asked, most)
    return cap, headroom // 2
