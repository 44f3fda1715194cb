"""The online state of the chat core: rooms, users and sessions. No sockets, no SQL.

The hub (``roomcast.hub``) and its parts (``roomcast.core`` draws the map) hold the rules and
change this state; this module holds the state and the delivery side: what one connection
reads.

A ``Session`` holds one receiver per joined room plus one on its user's private-message
channel, and turns them into batches of events (``receive``, ``take``). It guarantees that
every room message reaches it once and in order:

- a receiver that lagged behind its room's ring is refilled from the store by sequence number,
  page by page, before the session reads on from the ring;
- what the store no longer holds (retention) is reported exactly, as ``Missed``;
- a replay asked for (login catch-up, ``join since``) is the same refill, started on purpose,
  so there is no seam between replay and live: the receiver was subscribed first and the
  replay ends exactly where it starts.

For a registered user the session also advances the user's read markers as messages are
handed to the transport; the hub writes them to the store in batches.

A connection hears from its session through a ``Listener`` it gives ``Hub.connect``: the
session tells it when something is ready (once the hub has started its delivery: after the
welcome), when it gets or loses a name, and when it has ended. The connection never reads the
session's state: the hub decides its life.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from enum import Enum
from typing import Protocol

from roomcast.broadcast import Closed as ChannelClosed
from roomcast.broadcast import Empty, Lagged, Receiver, Sender
from roomcast.errors import Broken, Closed
from roomcast.model import Event, Message, Missed, Private, fold
from roomcast.store.base import Store

__all__ = ["Listener", "Room", "Session", "State", "User"]


class State(Enum):
    """Where a session stands."""

    NEW = "new"  # connected, no name yet
    ACTIVE = "active"  # named (guest) or logged in; may chat
    CLOSING = "closing"  # ending: out of the hub already, its quits being stored; accepts nothing
    CLOSED = "closed"  # ended; accepts nothing


class Listener(Protocol):
    """What a connection hears from its session. The hub and the session call these, on the
    event loop, never from inside a transport callback; each returns at once."""

    def ready(self) -> None:
        """Something is ready for the session (``Session.take_ready``, ``take``). Called
        only once the hub has started the session's delivery (after its welcome)."""
        ...

    def named(self, named: bool) -> None:
        """The session has a name now (``True``: its plain text is said) or has none."""
        ...

    def ended(self, reason: str) -> None:
        """The session has ended (``reason`` is why): what is ready for it is its last, and
        it accepts nothing more."""
        ...


class Room:
    """A room: its broadcast channel and its online members."""

    __slots__ = ("appending", "members", "name", "tx", "watchers")

    def __init__(self, name: str, tx: Sender[Message]) -> None:
        self.name = name  # '#name'
        self.tx = tx  # the room's channel; the hub holds the only sender
        self.members: dict[str, User] = {}  # folded name -> user
        self.appending = 0  # messages being stored, not yet sent: the room must stay open
        self.watchers = 0  # read-only sessions (event streams): the room must stay open

    def send(self, message: Message) -> None:
        """Broadcast a stored message; its seq must be the channel's next."""
        if message.seq != self.tx.next_seq:
            # The store assigns sequence numbers; the ring must follow them exactly.
            raise Broken(
                f"{self.name}: store gave seq {message.seq}, room expected {self.tx.next_seq}"
            )
        self.tx.send(message)


class User:
    """An online user: one name, one or more sessions, the rooms it is in."""

    __slots__ = (
        "account_id",
        "dirty",
        "generation",
        "inbox",
        "marks",
        "name",
        "private_epoch",
        "private_floor",
        "private_mark",
        "registered",
        "rooms",
        "sessions",
    )

    def __init__(self, name: str, *, registered: bool) -> None:
        self.name = name  # as the user spelled it
        # the user's private-message channel, made for its first private message (most users
        # never get one, and an idle channel would cost each connection a tenth of its memory)
        self.inbox: Sender[Private] | None = None
        self.registered = registered  # has an account: memberships and markers persist
        self.account_id: str | None = None  # the account's id, once registered or logged in
        self.generation = 0  # the account's token generation when it logged in
        self.rooms: dict[str, Room] = {}  # room name -> room, in join order
        self.sessions: list[Session] = []  # open sessions of this user
        self.marks: dict[str, int] = {}  # room -> newest seq handed to any of its sessions
        self.private_mark = 0  # newest private message seq handed to any of its sessions
        self.dirty = False  # marks moved since they were last written
        # A guest's private history: what it sent and received under its present name, from
        # its first such private message on (None: none yet). See Archive.private_history
        # (roomcast.history).
        self.private_floor: int | None = None
        self.private_epoch = 0  # how many times the guest changed its name

    def mark(self, room: str, seq: int) -> None:
        """Record that ``room`` was read up to ``seq``."""
        if seq > self.marks.get(room, 0):
            self.marks[room] = seq
            self.dirty = True

    def mark_private(self, seq: int) -> None:
        """Record that private messages were read up to ``seq``."""
        if seq > self.private_mark:
            self.private_mark = seq
            self.dirty = True

    def took_part(self, seq: int, epoch: int) -> None:
        """Private message ``seq``, which this guest sent or was sent under the name it had
        at ``epoch`` (its ``private_epoch`` when the message was queued), is stored: its
        private history starts at the first such message. One stored across a change of
        name is not the new name's."""
        if epoch == self.private_epoch and (self.private_floor is None or seq < self.private_floor):
            self.private_floor = seq

    def renamed(self) -> None:
        """The guest has another name: its private history starts again, empty."""
        self.private_epoch += 1
        self.private_floor = None


class _Refill:
    """A range of a room to read from the store before reading on from the ring."""

    __slots__ = ("end", "first", "header")

    def __init__(self, first: int, end: int, header: Event | None = None) -> None:
        self.first = first  # next seq to fetch
        self.end = end  # the ring receiver's position: fetch up to end - 1
        self.header = header  # an event to emit before the first message (a Summary)


class _Privates:
    """A session's private messages: its receiver on its user's channel, and the range it
    must read from the store first (after a login or a lag). Made when first needed: most
    sessions never have one."""

    __slots__ = ("gap", "held", "rx", "seen")

    def __init__(self) -> None:
        self.rx: Receiver[Private] | None = None  # on the user's private-message channel
        self.seen = 0  # newest private message seq delivered (or read before)
        # to fetch from the store first: (after seq, before seq or None)
        self.gap: tuple[int, int | None] | None = None
        self.held: Sequence[Private] = ()  # read from the ring, waiting for the gap

    def take(self, user: User | None, out: list[Event], max_count: int) -> None:
        """Append what the receiver has ready (``rx`` is set), or note a lag to refill."""
        assert self.rx is not None
        try:
            _, privates = self.rx.try_recv_many(max_count - len(out))
        except Lagged as lag:
            if user is None or not user.registered:  # a guest's are not kept for it
                out.append(Missed(room=None, first_seq=lag.first_missed_seq, count=lag.count))
                return
            with contextlib.suppress(Empty, ChannelClosed):
                self.held = self.rx.try_recv_many(len(self.rx) or 1)[1]
            self.gap = (self.seen, self.held[0].seq if self.held else None)
            return
        except (Empty, ChannelClosed):
            return
        self.emit(user, out, privates)

    def emit(self, user: User | None, out: list[Event], privates: Sequence[Private]) -> None:
        """Append ``privates`` that were not delivered yet, and move the read marker."""
        seen = self.seen
        if seen and privates and privates[0].seq <= seen and user is not None:
            # A store replay delivered those sent to this user up to seq ``seen``; it never
            # holds the copies of what the user sent, which may come with lower numbers.
            me = fold(user.name)
            privates = [p for p in privates if p.seq > seen or fold(p.recipient) != me]
        if privates:
            out += privates
            newest = max(seen, privates[-1].seq)
            self.seen = newest
            if user is not None and user.registered:
                user.mark_private(newest)

    async def read_store(self, store: Store, user: User, out: list[Event], limit: int) -> None:
        """Append the next page (``limit`` at most) of the private messages to ``user`` that
        the store holds in the gap; once it is read, what was held back from the ring."""
        gap = self.gap
        assert gap is not None
        after, before = gap
        page = await store.privates(user.name, after=after, limit=limit)
        if self.gap is not gap:  # detached while the store answered
            return
        found = [p for p in page if before is None or p.seq < before]
        self.emit(user, out, found)
        if len(found) == limit:
            self.gap = (found[-1].seq, before)
            return
        self.gap = None
        held, self.held = self.held, ()
        self.emit(user, out, held)


class Session:
    """One connection's view of the hub: its state, its receivers, and what it has to read.

    Transports call ``Hub.handle`` with each command and write out what ``receive`` returns.
    """

    __slots__ = (
        "_delivering",
        "_listener",
        "_pending",
        "_privates",
        "_refill",
        "_refill_page",
        "_rooms",
        "_store",
        "_wakeup",
        "address",
        "close_reason",
        "current",
        "last_name",
        "peer",
        "state",
        "user",
    )

    def __init__(
        self, peer: str, store: Store, *, refill_page: int, listener: Listener | None = None
    ) -> None:
        self.peer = peer  # the remote address, "host:port", for logs
        self.address = peer.rpartition(":")[0] or peer  # the remote host, for throttling
        self.state = State.NEW
        self.user: User | None = None  # set once named
        self.current: str | None = None  # room that plain text goes to
        self.close_reason = ""  # why it was closed, once CLOSED
        self.last_name = ""  # the name it had before it was detached, for logs
        self._store = store  # where lagged and replayed ranges are read from
        self._refill_page = refill_page  # messages fetched per store read
        self._rooms: dict[str, Receiver[Message]] = {}  # room name -> receiver
        self._privates: _Privates | None = None  # the user's private messages, once any
        self._refill: dict[str, _Refill] = {}  # room -> range still to read from the store
        # to deliver before anything else, in order; made when first needed (an idle
        # connection holds no empty list)
        self._pending: list[Event] | None = None
        self._wakeup: asyncio.Event | None = None  # made by the first receive()
        self._listener = listener  # the connection told of what changes (see Listener)
        self._delivering = False  # the hub started delivery: the listener hears of what is ready

    @property
    def name(self) -> str | None:
        """The user's name, once it has one."""
        return None if self.user is None else self.user.name

    @property
    def rooms(self) -> list[str]:
        """The rooms this session is in, in join order."""
        return list(self._rooms)

    # -- receiving --

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
        if self._delivering and self._listener is not None:
            self._listener.ready()

    @property
    def delivering(self) -> bool:
        """Whether the hub has started this session's delivery (``start_delivery``)."""
        return self._delivering

    def start_delivery(self) -> None:
        """From now on, tell the listener whenever something is ready; tell it once now. The
        hub calls this after the reply that welcomed the session was returned, so that the
        welcome is written before anything the session receives."""
        self._delivering = True
        if self._listener is not None:
            self._listener.ready()

    def arm(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once something is ready (at once if something is)."""
        if self._pending or self.needs_store() or self.state is State.CLOSED:
            callback()
            return
        for rx in self._rooms.values():
            rx.notify(callback)
        if self._privates is not None and self._privates.rx is not None:
            self._privates.rx.notify(callback)

    async def receive(self, max_count: int = 512) -> list[Event]:
        """Wait until something is ready for this session, then return up to ``max_count``.

        Room messages come in sequence order per room, every message once. Raises ``Closed``
        once the session is closed.
        """
        while True:
            if self.state is State.CLOSED and not self._pending:
                raise Closed(self.close_reason)
            events = await self.take(max_count)
            if events:
                return events
            if self._wakeup is None:
                self._wakeup = asyncio.Event()
            self._wakeup.clear()
            self.arm(self._wakeup.set)
            await self._wakeup.wait()

    async def take(self, max_count: int = 512) -> list[Event]:
        """Return up to ``max_count`` events that are ready now, without waiting for more.

        May await the store to refill a range; returns an empty list when nothing is ready.
        """
        out = self.take_ready(max_count)
        if self.needs_store():
            for room in list(self._refill):
                if len(out) >= max_count:
                    break
                if room in self._refill:
                    await self._read_store(room, out, max_count)
            privates, user = self._privates, self.user
            limit = min(max_count - len(out), self._refill_page)
            if privates is not None and privates.gap is not None and limit > 0:
                assert user is not None  # a session with no user has no gap (detach)
                await privates.read_store(self._store, user, out, limit)
        return out

    def take_ready(self, max_count: int = 512) -> list[Event]:
        """Return up to ``max_count`` events that need no store read, without waiting.

        Rooms (and private messages) that must first be refilled from the store are left for
        ``take``: see ``needs_store``. This is the fan-out's fast path: list slices of the
        rings, no task switch, no I/O.
        """
        pending = self._pending
        if pending:
            out = pending[:max_count]
            del pending[:max_count]
        else:
            out = []
        refill, user = self._refill, self.user
        for room, rx in self._rooms.items():
            left = max_count - len(out)
            if left <= 0:
                break
            if refill and room in refill:
                continue
            try:
                values = rx.take(left)
            except Lagged as lag:
                refill[room] = _Refill(lag.first_missed_seq, lag.next_seq)
                continue
            if values:
                out += values
                if user is not None and user.registered:
                    user.mark(room, values[-1].seq)
        privates = self._privates
        if privates is not None and privates.gap is None and len(out) < max_count:
            if privates.rx is not None and privates.rx.ready():
                privates.take(user, out, max_count)
        return out

    def _pend(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` before anything else (after what is pending already)."""
        if self._pending is None:
            self._pending = list(events)
        else:
            self._pending += events

    def needs_store(self) -> bool:
        """Whether something is waiting to be read from the store (a lag, a replay)."""
        return bool(self._refill) or (self._privates is not None and self._privates.gap is not None)

    def delivered(self, room: str) -> int | None:
        """The seq of the newest message of ``room`` this session has handed out; ``None``
        if it is not in ``room``. O(1): read from its receiver, or the range it still has to
        read from the store."""
        rx = self._rooms.get(room)
        if rx is None:
            return None
        refill = self._refill.get(room)
        return rx.next_seq - 1 if refill is None else refill.first - 1

    async def _read_store(self, room: str, out: list[Event], max_count: int) -> None:
        """Append the next page of ``room``'s refill range to ``out``."""
        refill = self._refill[room]
        if refill.header is not None:
            out.append(refill.header)
            refill.header = None
        limit = min(max_count - len(out), self._refill_page, refill.end - refill.first)
        if limit <= 0:
            if refill.first >= refill.end:
                del self._refill[room]
            return
        page = await self._store.history(
            room, after=refill.first - 1, before=refill.end, limit=limit
        )
        if self._refill.get(room) is not refill:  # left the room while the store answered
            return
        first = refill.first
        if page.oldest_seq > first:  # retention cut part of the range: say exactly what
            lost = min(page.oldest_seq, refill.end) - first
            out.append(Missed(room=room, first_seq=first, count=lost))
            first += lost
        out += page.messages
        if page.messages:
            first = page.messages[-1].seq + 1
            if self.user is not None and self.user.registered:
                self.user.mark(room, page.messages[-1].seq)
        elif first < refill.end:  # the store holds nothing more of the range
            out.append(Missed(room=room, first_seq=first, count=refill.end - first))
            first = refill.end
        refill.first = first
        if first >= refill.end:
            del self._refill[room]

    # -- what the hub changes --

    def subscribe(self, room: str, tx: Sender[Message], from_seq: int | None = None) -> int:
        """Start receiving ``room`` live, from its next message or from ``from_seq`` (a
        recent seq: what the ring no longer holds is refilled from the store); return the
        seq of the first message it reads."""
        rx = self._rooms[room] = tx.subscribe(from_seq)  # its start_seq: the first it reads
        self._wake()  # the writer re-arms on the new receiver
        return rx.next_seq

    def replay(self, room: str, first: int, header: Event | None = None) -> None:
        """Deliver ``room``'s stored messages from ``first`` up to where this session started
        receiving it live, before reading on live. What it already delivered is not repeated
        (a replay can then come after live messages it already sent: order by seq)."""
        end = self._rooms[room].start_seq
        current = self._refill.get(room)
        if current is not None:
            first = min(first, current.first)
            end = current.end
            header = header or current.header
        if first < end:
            self._refill[room] = _Refill(first, end, header)
        elif header is not None:
            self._pend([header])
        self._wake()

    def replay_privates(self, after: int) -> None:
        """Deliver the private messages to this user stored after seq ``after`` before the
        live ones (a login). Every one comes, oldest first, in pages."""
        privates = self._privates_made()
        privates.seen = after
        privates.gap = (after, None)
        self._wake()

    def note_private_read(self, seq: int) -> None:
        """Private messages up to ``seq`` are not this session's to deliver (a new account)."""
        privates = self._privates_made()
        privates.seen = max(privates.seen, seq)

    def _privates_made(self) -> _Privates:
        if self._privates is None:
            self._privates = _Privates()
        return self._privates

    def tell(self, event: Event) -> None:
        """Deliver ``event`` (news from the hub about this session) before what its rooms
        have ready, after what is pending already."""
        self._pend([event])
        self._wake()

    def unsubscribe(self, room: str, *, keep: bool = True) -> None:
        """Stop receiving ``room``, keeping what was said in it up to now; with ``keep``
        false, dropping what was not handed out yet (a join undone: it never happened)."""
        rx = self._rooms.pop(room, None)
        if rx is None:
            return
        self._refill.pop(room, None)
        while keep:
            try:
                self._pend(rx.try_recv_many(len(rx) or 1)[1])
            except Lagged as lag:
                self._pend([Missed(room=room, first_seq=lag.first_missed_seq, count=lag.count)])
            except (Empty, ChannelClosed):
                break
        rx.close()
        if self.current == room:
            self.current = next(reversed(self._rooms), None)
        self._wake()

    def attach(self, user: User) -> None:
        """Become a session of ``user``."""
        self.user = user
        self.state = State.ACTIVE
        user.sessions.append(self)
        if user.inbox is not None:
            self._privates_made().rx = user.inbox.subscribe()
        if self._listener is not None:
            self._listener.named(True)

    def open_inbox(self, inbox: Sender[Private]) -> None:
        """Start receiving the user's private-message channel, just made."""
        privates = self._privates_made()
        if privates.rx is None:
            privates.rx = inbox.subscribe()
            self._wake()  # the writer re-arms on the new receiver

    def detach(self, *, keep: bool = True) -> None:
        """Drop the user and every receiver; the session is NEW again.

        What was ready for it is kept and still delivered: nothing said before is lost. With
        ``keep`` false it is dropped: a name or login undone, as if it had never been.
        """
        for room in list(self._rooms):
            self.unsubscribe(room, keep=keep)
        privates, self._privates = self._privates, None
        if privates is not None:
            rx = privates.rx
            if rx is not None:
                with contextlib.suppress(Lagged, Empty, ChannelClosed):
                    if keep:
                        self._pend(rx.try_recv_many(len(rx) or 1)[1])
                rx.close()
            privates.gap = None  # a store read in flight for it finds it gone
            privates.held = ()
        if self.user is not None:
            self.last_name = self.user.name
            self.user.sessions.remove(self)
            self.user = None
            if self._listener is not None:
                self._listener.named(False)
        self.current = None
        self.state = State.NEW
        self._wake()

    def closing(self, reason: str) -> None:
        """Begin the end: drop the user and every receiver and accept nothing more; what was
        ready is still delivered, and ``close`` finishes."""
        self.detach()
        self.state = State.CLOSING
        self.close_reason = reason

    def close(self, reason: str, farewell: Event | None = None) -> None:
        """End the session. ``receive`` returns what was ready, then ``farewell``, then
        raises ``Closed``."""
        self.detach()
        if farewell is not None:
            self._pend([farewell])
        ended = self.state is not State.CLOSED
        self.state = State.CLOSED
        self.close_reason = reason
        self._wake()  # whoever waits for more (a reader of receive) learns of the end
        if ended and self._listener is not None:
            self._listener.ended(reason)

    def __repr__(self) -> str:
        return f"<Session {self.peer} {self.state.value} {self.name or '-'}>"
