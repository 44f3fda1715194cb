"""The chat core: users, rooms and sessions; commands in, events out. No sockets, no SQL.

Rules
-----
A session is one connection. It starts NEW, becomes ACTIVE once it has a name, and ends
CLOSED. What each state accepts is the table ``_ACCEPTS`` below; any other command gets one
precise error ("expected a name first, got Join").

    NEW     SetName -> ACTIVE; Quit -> CLOSED
    ACTIVE  Join Leave Say Action PrivateMessage Nick Who Rooms; Quit -> CLOSED
    CLOSED  nothing

Names are unique case-insensitively among online users. Every named session joins
``#general``. Room membership belongs to the user: every session of a user is in the same
rooms; the current room (where plain text goes) belongs to the session.

Data flow
---------
Every room is a broadcast channel of ``Message`` values. A room message is built as a
``Draft``, stored (the store gives it the room's next sequence number and returns once it is
durable), then sent into the room's channel: every member's session holds a receiver on it,
so the sender gets its own message back like everyone else, and that echo is its
acknowledgement. Private messages go through a per-user channel the same way.

``Hub.handle`` returns only the replies meant for the calling session (errors, lists); what
the session receives from rooms and other users comes out of ``Session.receive``, in batches.
A session whose receiver lagged behind its room's ring is refilled from the store, in order,
before it reads on from the ring; what the store no longer holds is reported as ``Missed``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from roomcast.broadcast import Closed as ChannelClosed
from roomcast.broadcast import Empty, Lagged, Receiver, Sender, channel
from roomcast.errors import Broken, ClientError, Closed
from roomcast.model import (
    Action,
    Command,
    Draft,
    Error,
    Event,
    Info,
    Join,
    Kind,
    Leave,
    Message,
    Missed,
    Nick,
    Private,
    PrivateDraft,
    PrivateMessage,
    Quit,
    RoomList,
    Rooms,
    Say,
    SetName,
    Welcome,
    Who,
    WhoList,
    fold,
)
from roomcast.store.base import Store

__all__ = ["GENERAL", "Hub", "Limits", "Session", "State"]

log = logging.getLogger("roomcast.hub")

GENERAL = "#general"  # the room every named session joins


class State(Enum):
    """Where a session stands."""

    NEW = "new"  # connected, no name yet
    ACTIVE = "active"  # named; may chat
    CLOSED = "closed"  # ended; accepts nothing


_ACCEPTS: dict[State, tuple[type, ...]] = {
    State.NEW: (SetName, Quit),
    State.ACTIVE: (Join, Leave, Say, Action, PrivateMessage, Nick, Who, Rooms, Quit),
    State.CLOSED: (),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Tunable limits; the defaults suit a public server."""

    ring_capacity: int = 1024  # messages each room's channel holds for members that lag
    inbox_capacity: int = 256  # private messages each user's channel holds
    rate: float = 10.0  # commands per second a session may send, sustained
    burst: int = 30  # commands a session may send at once before the rate applies
    max_rooms: int = 50  # rooms one user may be in
    refill_page: int = 500  # messages fetched from the store per read when refilling a gap


def _new_id() -> str:
    """A random 96-bit message id, URL-safe (16 characters)."""
    return base64.urlsafe_b64encode(os.urandom(12)).decode("ascii")


# --- rooms and users ----------------------------------------------------------------------


class _Room:
    """A room: its broadcast channel and its members."""

    __slots__ = ("appending", "members", "name", "tx")

    def __init__(self, name: str, tx: Sender[Message]) -> None:
        self.name = name  # '#name'
        self.tx = tx  # the room's channel; the hub holds the only sender
        self.members: dict[str, _User] = {}  # folded name -> user
        self.appending = 0  # messages being stored, not yet sent: the room must stay open

    def send(self, message: Message) -> None:
        if message.seq != self.tx.next_seq:
            # The store assigns sequence numbers; the ring must follow them exactly.
            raise Broken(
                f"{self.name}: store gave seq {message.seq}, room expected {self.tx.next_seq}"
            )
        self.tx.send(message)


class _User:
    """An online user: one name, one or more sessions, the rooms it is in."""

    __slots__ = ("inbox", "name", "rooms", "sessions")

    def __init__(self, name: str, inbox: Sender[Private]) -> None:
        self.name = name  # as the user spelled it
        self.inbox = inbox  # the user's private-message channel
        self.rooms: dict[str, _Room] = {}  # room name -> room, in join order
        self.sessions: list[Session] = []  # open sessions of this user


# --- sessions -----------------------------------------------------------------------------


class _Bucket:
    """Token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate  # tokens per second
        self.burst = burst  # bucket size
        self.tokens = float(burst)  # tokens left
        self.last = now  # when tokens was last brought up to date

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Session:
    """One connection's view of the hub: its state, its receivers, and what it has to read.

    Transports call ``Hub.handle`` with each command and write out what ``receive`` returns.
    """

    def __init__(self, hub: Hub, peer: str, bucket: _Bucket) -> None:
        self.hub = hub  # the hub this session belongs to
        self.peer = peer  # the remote address, for logs
        self.state = State.NEW
        self.user: _User | None = None  # set once named
        self.current: str | None = None  # room that plain text goes to
        self.close_reason = ""  # why it was closed, once CLOSED
        self._bucket = bucket  # flood control
        self._rooms: dict[str, Receiver[Message]] = {}  # room name -> receiver
        self._inbox: Receiver[Private] | None = None  # the user's private messages
        self._refill: dict[str, tuple[int, int]] = {}  # room -> (next seq, end seq) to refill
        self._leftover: list[Event] = []  # read from rooms just left, not yet delivered
        self._wakeup = asyncio.Event()  # set when any receiver has something

    @property
    def name(self) -> str | None:
        """The user's name, once it has one."""
        return None if self.user is None else self.user.name

    @property
    def rooms(self) -> list[str]:
        """The rooms this session is in, in join order."""
        return list(self._rooms)

    def backlog(self) -> int:
        """How many messages wait for this session in its rooms' rings."""
        total = sum(len(rx) for rx in self._rooms.values())
        return total + (len(self._inbox) if self._inbox is not None else 0)

    # -- receiving --

    async def receive(self, max_count: int = 512) -> list[Event]:
        """Wait until something is ready for this session, then return up to ``max_count``.

        Room messages come in sequence order per room, every message once: a receiver that
        lagged is refilled from the store first. Raises ``Closed`` once the session is closed.
        """
        while True:
            if self.state is State.CLOSED:
                raise Closed(self.close_reason)
            events = await self.take(max_count)
            if events:
                return events
            self._wakeup.clear()
            for rx in self._rooms.values():
                rx.notify(self._wakeup.set)
            if self._inbox is not None:
                self._inbox.notify(self._wakeup.set)
            await self._wakeup.wait()

    async def take(self, max_count: int = 512) -> list[Event]:
        """Return up to ``max_count`` events that are ready now, without waiting for more.

        May await the store to refill a lag; returns an empty list when nothing is ready.
        """
        out = self._leftover[:max_count]
        del self._leftover[:max_count]
        for room, rx in list(self._rooms.items()):
            if len(out) >= max_count:
                break
            if room in self._refill:
                await self._refill_from_store(room, out, max_count)
                continue
            try:
                _, values = rx.try_recv_many(max_count - len(out))
            except Lagged as lag:
                self._refill[room] = (lag.first_missed_seq, lag.next_seq)
                await self._refill_from_store(room, out, max_count)
                continue
            except (Empty, ChannelClosed):
                continue
            out.extend(values)
        if self._inbox is not None and len(out) < max_count:
            try:
                _, privates = self._inbox.try_recv_many(max_count - len(out))
            except Lagged as lag:
                out.append(Missed(room=None, first_seq=lag.first_missed_seq, count=lag.count))
            except (Empty, ChannelClosed):
                pass
            else:
                out.extend(privates)
        return out

    async def _refill_from_store(self, room: str, out: list[Event], max_count: int) -> None:
        """Append the next page of ``room``'s missed range to ``out``."""
        first, end = self._refill[room]
        limit = min(max_count - len(out), self.hub.limits.refill_page, end - first)
        if limit <= 0:
            return
        page = await self.hub.store.history(room, after=first - 1, before=end, limit=limit)
        if page.oldest_seq > first:  # retention cut part of the range: say exactly what
            lost = min(page.oldest_seq, end) - first
            out.append(Missed(room=room, first_seq=first, count=lost))
            first += lost
        out.extend(page.messages)
        if page.messages:
            first = page.messages[-1].seq + 1
        elif first < end:  # the store holds nothing more of the range
            out.append(Missed(room=room, first_seq=first, count=end - first))
            first = end
        if first >= end:
            del self._refill[room]
        else:
            self._refill[room] = (first, end)

    # -- bookkeeping used by the hub --

    def _subscribe(self, room: _Room) -> None:
        self._rooms[room.name] = room.tx.subscribe()
        self._wakeup.set()  # the writer re-arms on the new receiver

    def _unsubscribe(self, room: str) -> None:
        rx = self._rooms.pop(room, None)
        if rx is not None:  # keep what was said up to the leave: the member still sees it
            while True:
                try:
                    self._leftover += rx.try_recv_many(len(rx) or 1)[1]
                except Lagged as lag:
                    self._leftover.append(
                        Missed(room=room, first_seq=lag.first_missed_seq, count=lag.count)
                    )
                except (Empty, ChannelClosed):
                    break
            rx.close()
            self._wakeup.set()
        self._refill.pop(room, None)
        if self.current == room:
            self.current = next(reversed(self._rooms), None)

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self.close_reason = reason
        for rx in self._rooms.values():
            rx.close()
        self._rooms.clear()
        if self._inbox is not None:
            self._inbox.close()
        self._wakeup.set()

    def __repr__(self) -> str:
        return f"<Session {self.peer} {self.state.value} {self.name or '-'}>"


# --- the hub ------------------------------------------------------------------------------


class Hub:
    """All rooms and online users of one server process."""

    def __init__(
        self,
        store: Store,
        *,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.store = store  # durable history; assigns sequence numbers
        self.limits = limits or Limits()
        self._clock = clock  # wall-clock seconds (UTC epoch); injected for tests
        self._new_id = new_id  # message id generator
        self._rooms: dict[str, _Room] = {}  # room name -> room with members
        self._users: dict[str, _User] = {}  # folded name -> online user
        self._sessions: set[Session] = set()  # every open session
        self._room_lock = asyncio.Lock()  # serializes room creation (it reads the store)

    # -- sessions --

    def connect(self, peer: str) -> Session:
        """Open a session for a new connection from ``peer``."""
        session = Session(self, peer, _Bucket(self.limits.rate, self.limits.burst, self._clock()))
        self._sessions.add(session)
        return session

    async def handle(self, session: Session, command: Command) -> list[Event]:
        """Carry out ``command`` for ``session``; return the replies for that session only.

        A client's mistake comes back as an ``Error`` event (and a log line), never raised.
        """
        try:
            if not isinstance(command, _ACCEPTS[session.state]):
                raise self._illegal(session, command)
            if not session._bucket.take(self._clock()):
                raise ClientError("flood", "you are sending too fast: wait a moment, then retry")
            return await self._dispatch(session, command)
        except ClientError as e:
            log.info("client error peer=%s name=%s code=%s", session.peer, session.name, e.code)
            return [Error(code=e.code, message=e.message)]
        except Broken:
            log.exception("store failure for peer=%s", session.peer)
            return [
                Error(code="unavailable", message="the server could not do that now; try again")
            ]

    def _illegal(self, session: Session, command: Command) -> ClientError:
        got = type(command).__name__
        if session.state is State.NEW:
            return ClientError("no_name", f"expected a name first, got {got}: choose a name")
        if session.state is State.ACTIVE and isinstance(command, SetName):
            return ClientError("has_name", "you already have a name: use nick to change it")
        return ClientError("closed", f"the session is closed, got {got}")

    async def _dispatch(self, session: Session, command: Command) -> list[Event]:
        match command:
            case SetName(name=name):
                return await self._set_name(session, name)
            case Join(room=room):
                return await self._join(session, room)
            case Leave(room=room):
                return await self._leave(session, self._room_of(session, room))
            case Say(text=text, room=room):
                await self._say(session, self._room_of(session, room), Kind.MESSAGE, text)
                return []
            case Action(text=text, room=room):
                await self._say(session, self._room_of(session, room), Kind.ACTION, text)
                return []
            case PrivateMessage(to=to, text=text):
                await self._private(session, to, text)
                return []
            case Nick(name=name):
                return await self._nick(session, name)
            case Who(room=room):
                return self._who(self._room_of(session, room, member=False))
            case Rooms():
                return [self.room_list()]
            case Quit(reason=reason):
                await self.disconnect(session, reason)
                return [Info(text="goodbye")]
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    async def disconnect(self, session: Session, reason: str) -> None:
        """End ``session``; a user's last session leaving tells its rooms it quit."""
        if session.state is State.CLOSED:
            return
        user = session.user
        session._close(reason)
        self._sessions.discard(session)
        if user is None:
            return
        user.sessions.remove(session)
        if user.sessions:
            return
        del self._users[fold(user.name)]
        user.inbox.close()
        for room in list(user.rooms.values()):
            try:
                await self._publish(room, user.name, Kind.QUIT, reason)
            except Broken:
                log.exception("could not store the quit of %s in %s", user.name, room.name)
            self._remove_member(user, room)
        log.info("quit name=%s peer=%s reason=%s", user.name, session.peer, reason)

    async def close(self, reason: str = "server shutting down") -> None:
        """Close every session (telling their rooms) and every room channel."""
        for session in list(self._sessions):
            await self.disconnect(session, reason)
        for room in self._rooms.values():
            room.tx.close()
        self._rooms.clear()

    # -- queries --

    def room_list(self) -> RoomList:
        """Every room with its member count, sorted by name."""
        return RoomList(
            rooms=tuple(sorted((name, len(r.members)) for name, r in self._rooms.items()))
        )

    @property
    def online(self) -> int:
        """How many users are online."""
        return len(self._users)

    # -- commands --

    async def _set_name(self, session: Session, name: str) -> list[Event]:
        if fold(name) in self._users:
            raise ClientError("name_taken", f"the name {name!r} is taken: choose another")
        inbox: Sender[Private]
        inbox, first_rx = channel(self.limits.inbox_capacity)
        first_rx.close()
        user = _User(name, inbox)
        self._users[fold(name)] = user
        user.sessions.append(session)
        session.user = user
        session._inbox = inbox.subscribe()
        session.state = State.ACTIVE
        log.info("named name=%s peer=%s", name, session.peer)
        replies: list[Event] = [Welcome(name=name)]
        replies += await self._join(session, GENERAL)
        return replies

    async def _join(self, session: Session, name: str) -> list[Event]:
        user = self._user(session)
        room = user.rooms.get(name)
        if room is not None:
            session.current = name
            return [Info(text=f"you are in {name}")]
        if len(user.rooms) >= self.limits.max_rooms:
            raise ClientError(
                "too_many_rooms", f"you are in {len(user.rooms)} rooms, the most allowed: leave one"
            )
        room = await self._open_room(name)
        if not user.sessions:  # quit while the room was being opened
            raise ClientError("closed", "the session is closed")
        user.rooms[name] = room
        room.members[fold(user.name)] = user
        for s in user.sessions:
            s._subscribe(room)
        session.current = name
        await self._publish(room, user.name, Kind.JOIN, "")
        return [self._who(room)[0]]

    async def _open_room(self, name: str) -> _Room:
        room = self._rooms.get(name)
        if room is not None:
            return room
        async with self._room_lock:
            room = self._rooms.get(name)
            if room is None:
                info = await self.store.room(name)
                tx: Sender[Message]
                tx, rx = channel(self.limits.ring_capacity, first_seq=info.latest_seq + 1)
                rx.close()
                room = self._rooms[name] = _Room(name, tx)
            return room

    async def _leave(self, session: Session, room: _Room) -> list[Event]:
        user = self._user(session)
        await self._publish(room, user.name, Kind.LEAVE, "left")
        self._remove_member(user, room)
        return [Info(text=f"you left {room.name}")]

    def _remove_member(self, user: _User, room: _Room) -> None:
        user.rooms.pop(room.name, None)
        room.members.pop(fold(user.name), None)
        for s in user.sessions:
            s._unsubscribe(room.name)
        self._drop_if_unused(room)

    def _drop_if_unused(self, room: _Room) -> None:
        """Forget an empty room (its history stays in the store); #general always stays."""
        if room.members or room.appending or room.name == GENERAL:
            return
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        room.tx.close()

    async def _say(self, session: Session, room: _Room, kind: Kind, text: str) -> None:
        await self._publish(room, self._user(session).name, kind, text)

    async def _publish(self, room: _Room, sender: str, kind: Kind, text: str) -> None:
        draft = Draft(
            id=self._new_id(), room=room.name, sender=sender, kind=kind, text=text, ts=self._clock()
        )
        room.appending += 1
        try:
            message = await self.store.append(draft)
        finally:
            room.appending -= 1
        if not room.tx.closed:
            room.send(message)
        self._drop_if_unused(room)

    async def _private(self, session: Session, to: str, text: str) -> None:
        user = self._user(session)
        recipient = self._users.get(fold(to))
        if recipient is None:
            raise ClientError("no_such_user", f"nobody named {to!r} is online: check /who")
        draft = PrivateDraft(
            id=self._new_id(),
            sender=user.name,
            recipient=recipient.name,
            kind=Kind.MESSAGE,
            text=text,
            ts=self._clock(),
        )
        private = await self.store.append_private(draft)
        if not recipient.inbox.closed:
            recipient.inbox.send(private)
        if recipient is not user and not user.inbox.closed:
            user.inbox.send(private)

    async def _nick(self, session: Session, name: str) -> list[Event]:
        user = self._user(session)
        old = user.name
        holder = self._users.get(fold(name))
        if holder is not None and holder is not user:
            raise ClientError("name_taken", f"the name {name!r} is taken: choose another")
        del self._users[fold(old)]
        self._users[fold(name)] = user
        user.name = name
        for room in list(user.rooms.values()):
            room.members[fold(name)] = room.members.pop(fold(old))
            await self._publish(room, old, Kind.NICK, name)
        log.info("nick old=%s new=%s", old, name)
        return [Info(text=f"you are now known as {name}")]

    def _who(self, room: _Room) -> list[Event]:
        names = tuple(sorted((u.name for u in room.members.values()), key=fold))
        return [WhoList(room=room.name, names=names)]

    # -- lookups --

    def _user(self, session: Session) -> _User:
        if session.user is None:  # pragma: no cover - the state table prevents it
            raise ClientError("no_name", "expected a name first: choose a name")
        return session.user

    def _room_of(self, session: Session, name: str | None, *, member: bool = True) -> _Room:
        """The room named (or the session's current room), checking membership if asked."""
        if name is None:
            name = session.current
            if name is None:
                raise ClientError("no_room", "you are in no room: join one first")
        user = self._user(session)
        room = user.rooms.get(name)
        if room is not None:
            return room
        if member:
            raise ClientError("not_member", f"you are not in {name}: join it first")
        room = self._rooms.get(name)
        if room is None:
            raise ClientError("no_such_room", f"there is no room {name}: /rooms lists them")
        return room
