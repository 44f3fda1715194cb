"""The chat core: the rules. Commands in, events out. No sockets, no SQL.

Rules
-----
A session is one connection. It starts NEW, becomes ACTIVE once it has a name (a guest name,
or a registered one after login), and ends CLOSED. What each state accepts is the table
``_ACCEPTS`` below; any other command gets one precise error ("expected a name first, got
Join").

    NEW     SetName Login -> ACTIVE; Quit -> CLOSED
    ACTIVE  Join Leave Say Action PrivateMessage Nick Who Rooms Register FetchHistory Search;
            Logout -> NEW; Quit -> CLOSED
    CLOSING nothing (its user has left the hub; its quits are being stored) -> CLOSED
    CLOSED  nothing

Names are unique case-insensitively among online users, and a guest cannot take a registered
name, nor a name that looks like one online or registered (``roomcast.names``: ``aIice``,
``a1ice`` and ``alice_`` look like ``alice``). Every new guest joins ``#general``. Room
membership belongs to the user (all its sessions are in the same rooms); the current room,
where plain text goes, to the session. When a session's current room is left, the room it
joined before becomes current and the session is told so. A room exists while it is open or
has stored history (#general always).
A registered user's memberships and read markers persist: on login it is put back in its
rooms and gets, for each, a summary and the messages it missed (the newest ``replay_cap``),
then its private messages sent while it was away. A private conversation's history is
read by its two people only, each as the identity it has now (``_private_history``). Joins,
leaves and quits are announced (and stored) in rooms of up to ``Limits.quiet_above``
members; in bigger rooms they would drown the conversation, and each would cost a delivery
to every member.

A command the store fails (``unavailable``) leaves nothing half done, so the client may
simply retry: each command writes before it changes the online state, or undoes what it
changed when the write fails. A name or login that fails leaves the session NEW and tells no
room (a login's joins are one write: all rooms are told, or none); a join, leave or nick
that fails leaves the user's rooms and name as they were; a registration whose rooms cannot
be stored deletes its account again.

Accounts and tokens
-------------------
An account has a stable id and a token generation (``store.base.Account``). A token names
both; ``authenticate`` refuses it once the account is gone or its generation has moved on (a
password change, ``/logout all``, ``POST /api/logout``), on every use. Revoking through the
hub also ends the account's open sessions at once; a change made beside the server
(``roomcast user``) ends them at the next ``check_accounts`` (every 30 s in ``maintain``).
``Logout`` ends this session's login only; ``Logout(everywhere=True)`` revokes.

Password checks and registrations are throttled before the hash is computed: each takes a
slot per key (name and address, address, name) that counts while it is in flight, so
requests sent together cannot all be checked (``auth.Throttle``). A name being registered is
reserved while its password hashes: no guest can take it, or a name that looks like it,
meanwhile.

Data flow
---------
Every room is a broadcast channel of ``Message`` values. A room message is built as a
``Draft``, stored (the store gives it the room's next sequence number and returns once it is
durable), then sent into the room's channel: every member's session holds a receiver on it,
so the sender gets its own message back like everyone else, and that echo is its
acknowledgement. Private messages go through a per-user channel the same way; to a registered
user who is away, they are only stored.

``Hub.handle`` returns the replies meant for the calling session (errors, lists, history);
what the session receives from rooms and other users comes out of ``Session.receive``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import heapq
import itertools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from roomcast.auth import Passwords, Throttle, address_key, check_password
from roomcast.broadcast import Receiver, Sender, channel
from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.model import (
    Action,
    Authenticated,
    Command,
    Draft,
    Error,
    Event,
    FetchHistory,
    History,
    Info,
    Join,
    Kind,
    Leave,
    Login,
    Logout,
    Message,
    Nick,
    Private,
    PrivateDraft,
    PrivateHistory,
    PrivateMessage,
    Quit,
    Register,
    RoomEntry,
    RoomList,
    Rooms,
    Say,
    Search,
    SearchResults,
    SetName,
    Summary,
    Unread,
    Welcome,
    Who,
    WhoList,
    fold,
    user_name,
)
from roomcast.names import (
    Lookalikes,
    lookalike_online,
    lookalike_registered,
    lookalike_reserved,
)
from roomcast.session import Listener, Room, Session, State, User
from roomcast.store.base import Account, Storage

__all__ = ["GENERAL", "Hub", "Limits"]

log = logging.getLogger("roomcast.hub")

GENERAL = "#general"  # the room every new guest joins
KNOWN_ADDRESSES = 8  # addresses remembered per name that logged in as it (see verify_login)
WHO_LIMIT = 1000  # names in a who answer
JOIN_WHO_LIMIT = 100  # names in the member list that answers a join

_ACCEPTS: dict[State, tuple[type, ...]] = {
    State.NEW: (SetName, Login, Authenticated, Quit),
    State.ACTIVE: (
        Join,
        Leave,
        Say,
        Action,
        PrivateMessage,
        Nick,
        Who,
        Rooms,
        Register,
        Logout,
        FetchHistory,
        Search,
        Quit,
    ),
    State.CLOSING: (),
    State.CLOSED: (),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Tunable limits; the defaults suit a public server."""

    ring_capacity: int = 1024  # messages each room's channel holds for members that lag
    inbox_capacity: int = 256  # private messages each user's channel holds
    rate: float = 10.0  # commands per second a session may send, sustained
    burst: int = 30  # commands a session may send at once before the rate applies
    flood_hold: float = 10.0  # seconds a session may be held back by the rate, without a break
    max_rooms: int = 50  # rooms one user may be in
    refill_page: int = 500  # messages fetched from the store per read when refilling a gap
    replay_cap: int = 200  # missed messages per room replayed at login (older: history)
    history_cap: int = 500  # messages per history or search answer
    login_failures: int = 5  # failed logins per name from one address in login_window
    name_failures: int = 50  # failed logins per name from all addresses, in login_window
    address_failures: int = 20  # failed logins per address (any names) in login_window
    login_window: float = 300.0  # seconds a failed login counts
    registrations: int = 10  # registrations per address in register_window
    register_window: float = 3600.0  # seconds a registration counts
    retain_age: float | None = None  # seconds a room message is kept; None: forever
    retain_count: int | None = None  # messages kept per room; None: all
    quiet_above: int = 1000  # rooms with more members do not announce joins, leaves, quits


_ID_PREFIX = base64.urlsafe_b64encode(os.urandom(9)).decode("ascii")  # this process's
_id_counter = itertools.count()


def _new_id() -> str:
    """A message id unique across processes and restarts: 72 random bits chosen when the
    process starts, then a counter (a system call per message cost 7 % of the hot path)."""
    return f"{_ID_PREFIX}{next(_id_counter):x}"


FLOOD = "you are sending too fast: wait a moment, then retry"
EVERYWHERE = "logged out everywhere"  # why the sessions of revoked tokens are ended
DELETED = "logged out: the account was deleted"  # why a deleted account's sessions are ended
UNAVAILABLE = Error(code="unavailable", message="the server could not do that now; try again")
NOT_WRITABLE = Error(
    code="unavailable",
    message="the server cannot store anything now: its storage is not writable; try again later",
)


class _Bucket:
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


class Hub:
    """All rooms and online users of one server process."""

    def __init__(
        self,
        store: Storage,
        *,
        passwords: Passwords | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self.store = store  # durable history and accounts; assigns sequence numbers
        self.passwords = passwords or Passwords()
        self.limits = limits = limits or Limits()
        self._clock = clock  # wall-clock seconds (UTC epoch); injected for tests
        self._new_id = new_id  # message id generator
        self._rooms: dict[str, Room] = {}  # room name -> room with online members
        self._users: dict[str, User] = {}  # folded name -> online user
        self._looks = Lookalikes()  # the names of _users, by skeleton
        self._sessions: set[Session] = set()  # every open session
        self._buckets: dict[Session, _Bucket] = {}  # flood control per session
        self._post_buckets: dict[str, _Bucket] = {}  # flood control of posts per account
        self._room_lock = asyncio.Lock()  # serializes room creation (it reads the store)
        window = limits.login_window
        self._pair_throttle = Throttle(limits.login_failures, window, clock)  # name + address
        self._name_throttle = Throttle(limits.name_failures, window, clock)  # all addresses
        self._address_throttle = Throttle(limits.address_failures, window, clock)
        self._register_throttle = Throttle(limits.registrations, limits.register_window, clock)
        # folded name -> addresses (newest last) it logged in from: the name's global limit
        # does not apply to them, so a guesser elsewhere cannot lock the owner out
        self._known: dict[str, deque[str]] = {}
        self._reserved: set[str] = set()  # folded names whose registration is hashing
        self._reserved_looks = Lookalikes()  # the same names, by skeleton

    # -- sessions --

    def connect(self, peer: str, listener: Listener | None = None) -> Session:
        """Open a session for a new connection from ``peer`` ("host:port"); ``listener`` (the
        connection) hears when something is ready for it, when it is named and when it ends
        (``roomcast.session.Listener``)."""
        session = Session(peer, self.store, refill_page=self.limits.refill_page, listener=listener)
        self._sessions.add(session)
        self._buckets[session] = _Bucket(self.limits.rate, self.limits.burst, self._clock())
        return session

    def pace(self, session: Session) -> float:
        """Seconds ``session`` must wait before its next command: 0.0 if it may send it now.

        Flood control that delays instead of refusing ("fakelag", as IRC servers apply it): a
        transport asks before each command (again after waiting, until it gets 0.0) and waits
        as told, reading no further ahead meanwhile; a paste goes through whole at
        ``Limits.rate`` and TCP flow control slows the client down. A session held back
        without a break for more than ``Limits.flood_hold`` seconds is refused instead: this
        raises ``ClientError`` "flood", whose message is the reason to close it with.
        ``handle`` still refuses a command that comes early, for callers that do not ask.
        """
        bucket = self._buckets.get(session)
        if bucket is None:
            return 0.0
        hold = self.limits.flood_hold
        wait = bucket.turn(self._clock(), hold)
        if wait is None:
            log.warning("flooding peer=%s name=%s", session.peer, session.name)
            raise ClientError("flood", f"sending too fast: held back for more than {hold:g} s")
        return wait

    def allowance(self, session: Session) -> int:
        """How many commands ``session`` may send now, at once, without being refused for
        flooding (a run of lines handed to ``say`` together takes at most this many)."""
        bucket = self._buckets.get(session)
        return self.limits.burst if bucket is None else bucket.available(self._clock())

    def spend(self, session: Session) -> Error | None:
        """Count a request the transport answers by itself (a malformed frame, a ping)
        against the session's flood limit; the error to send instead when over it."""
        bucket = self._buckets.get(session)
        if bucket is None or bucket.take(self._clock()):
            return None
        return Error(code="flood", message=FLOOD)

    async def handle(self, session: Session, command: Command) -> list[Event]:
        """Carry out ``command`` for ``session``; return the replies for that session only.

        A client's mistake comes back as an ``Error`` event (and a log line), never raised.
        A store failure comes back as ``unavailable`` with nothing half done: each command
        stores first or undoes what it changed, and a name or login is undone whole.

        The first command that takes the session out of NEW (its name, its login, a quit)
        starts its delivery as this returns: the caller writes the replies (the welcome) in
        the same loop step, and the listener pumps on a later one, so they come first.
        """
        unnamed = session.user is None
        try:
            if not isinstance(command, _ACCEPTS[session.state]):
                raise self._illegal(session, command)
            if not self._buckets[session].take(self._clock()):
                raise ClientError("flood", FLOOD)
            return await self._dispatch(session, command)
        except ClientError as e:
            log.info("client error peer=%s name=%s code=%s", session.peer, session.name, e.code)
            return [Error(code=e.code, message=e.message)]
        except Broken as e:
            if unnamed and session.user is not None:  # named or logged in, then the store failed
                self._unname(session, session.user)
            return [self._failed(session, e)]
        finally:  # no await after this: the replies are written before the first delivery
            if not session.delivering and session.state is not State.NEW:
                session.start_delivery()

    async def say(self, session: Session, commands: Sequence[Say | Action]) -> list[Event]:
        """Carry out a run of ``Say``/``Action`` commands from ``session`` with one store write;
        return the errors, in order. The same as ``handle`` for each, in fewer steps: a client
        that pipelines lines is served at the cost of one write per run, not per line."""
        errors: list[Event] = []
        drafts: list[Draft] = []
        rooms: list[Room] = []
        bucket, now = self._buckets.get(session), self._clock()
        for command in commands:
            try:
                if session.state is not State.ACTIVE:
                    raise self._illegal(session, command)
                assert bucket is not None  # every active session has one
                if not bucket.take(now):
                    raise ClientError("flood", FLOOD)
                room = self._room_of(session, command.room)
            except ClientError as e:
                log.info("client error peer=%s name=%s code=%s", session.peer, session.name, e.code)
                errors.append(Error(code=e.code, message=e.message))
                continue
            kind = Kind.MESSAGE if isinstance(command, Say) else Kind.ACTION
            user = self._user(session)
            drafts.append(self._draft(room, user.name, kind, command.text, now, user.registered))
            rooms.append(room)
        if drafts:
            try:
                await self._queue(rooms, drafts)
            except Broken as e:
                errors.append(self._failed(session, e))
        return errors

    def _failed(self, session: Session, error: Broken) -> Error:
        """Log a store failure met on ``session``'s behalf; the error to send it. A store
        that cannot take writes is one line each (the store logged why once), not a trace."""
        if isinstance(error, Unwritable):
            log.warning("store not writable for peer=%s: %s", session.peer, error)
            return NOT_WRITABLE
        log.exception("store failure for peer=%s", session.peer)
        return UNAVAILABLE

    def _illegal(self, session: Session, command: Command) -> ClientError:
        got = type(command).__name__
        if session.state is State.NEW:
            return ClientError("no_name", f"expected a name first, got {got}: choose a name")
        if session.state is State.ACTIVE and isinstance(command, SetName | Login | Authenticated):
            return ClientError("has_name", f"you already have a name, got {got}: log out first")
        return ClientError("closed", f"the session is closed, got {got}")

    async def _dispatch(self, session: Session, command: Command) -> list[Event]:
        match command:
            case SetName(name=name):
                return await self._set_name(session, name)
            case Login(name=name, password=password):
                account = await self.verify_login(name, password, session.address)
                return await self._log_in(session, account)
            case Authenticated(account=account_id, generation=generation):
                account = await self.authenticate(account_id, generation)
                return await self._log_in(session, account)
            case Join(room=room, since=since):
                return await self._join(session, room, since)
            case Leave(room=room):
                return await self._leave(session, self._room_of(session, room))
            case Say(text=text, room=room):
                await self._say(session, self._room_of(session, room), Kind.MESSAGE, text)
                return []
            case Action(text=text, room=room):
                await self._say(session, self._room_of(session, room), Kind.ACTION, text)
                return []
            case PrivateMessage(to=to, text=text):
                return await self._private(session, to, text)
            case Nick(name=name):
                return await self._nick(session, name)
            case Who(room=room):
                return await self._who_of(session, room)
            case Rooms():
                return [await self.rooms(session)]
            case Register(password=password):
                return await self._register(session, password)
            case FetchHistory():
                return await self._history(session, command)
            case Search(room=room, words=words, limit=limit):
                return await self._search(session, room, words, limit)
            case Logout(everywhere=False):
                await self._detach(session, "logged out")
                # after what was ready for the account: nothing of it comes after this line
                session.tell(Info(text="logged out: choose a name, or /login name password"))
                return []
            case Logout(everywhere=True):
                return await self._log_out_everywhere(session)
            case Quit(reason=reason):
                await self.disconnect(session, reason, Info(text="goodbye"))
                return []
        raise AssertionError(f"unhandled command {command!r}")  # pragma: no cover

    async def disconnect(
        self, session: Session, reason: str, farewell: Event | None = None
    ) -> None:
        """End ``session``; a user's last session leaving tells its rooms it quit.

        The session still delivers what was ready for it, then ``farewell`` once the quits
        are stored and the user's read markers written (a client that logs in again as soon
        as it has its farewell is not replayed what it read). What the hub holds changes
        before the first await: once this is called the session accepts nothing (CLOSING),
        and a user it was the last session of is offline and in no room, whatever becomes of
        the caller or of the store meanwhile. Calling it again does nothing.
        """
        if session.state is State.CLOSING or session.state is State.CLOSED:
            return
        user = session.user
        session.closing(reason)
        self._sessions.discard(session)
        self._buckets.pop(session, None)
        try:
            await self._quit_if_last(user, session.peer, reason)
        finally:
            session.close(reason, farewell)

    async def _detach(self, session: Session, reason: str) -> None:
        """Take the session away from its user; the user's last session going quits it."""
        user = session.user
        session.detach()
        await self._quit_if_last(user, session.peer, reason)

    async def _quit_if_last(self, user: User | None, peer: str, reason: str) -> None:
        """If ``user`` has no session left, take it offline and out of every room at once,
        then store the quits (one write) that its rooms are told."""
        if user is None or user.sessions:
            return
        self._users.pop(fold(user.name), None)
        self._looks.discard(user.name)
        if user.inbox is not None:
            user.inbox.close()
        rooms = [r for r in user.rooms.values() if len(r.members) <= self.limits.quiet_above]
        now = self._clock()
        drafts = [self._draft(r, user.name, Kind.QUIT, reason, now, user.registered) for r in rooms]
        stored = self._queue(rooms, drafts) if drafts else None  # keeps those rooms open
        for room in list(user.rooms.values()):
            self._remove_member(user, room, forget_marks=False)
        log.info("quit name=%s peer=%s reason=%s", user.name, peer, reason)
        # The user is gone from the hub now: what follows only stores and tells.
        if stored is not None:
            try:
                quits = await stored
            except Broken as e:
                _log_failure(e, "could not store the quits of %s", user.name)
            else:
                for quit_message in quits:
                    if user.marks.get(quit_message.room) == quit_message.seq - 1:
                        user.mark(quit_message.room, quit_message.seq)  # all read: so is this
        await self._flush(user)

    def _unname(self, session: Session, user: User) -> None:
        """Undo a name or a login that the store failed half-way: ``session`` is NEW again
        as if it had never been named, and ``user``, unless another of its sessions is
        online, goes without a word (its joins were not stored: nobody was told of them)."""
        session.detach(keep=False)
        if user.sessions or self._users.get(fold(user.name)) is not user:
            return
        del self._users[fold(user.name)]
        self._looks.discard(user.name)
        if user.inbox is not None:
            user.inbox.close()
        for room in list(user.rooms.values()):
            self._remove_member(user, room, forget_marks=True, keep=False)
        log.info("name undone name=%s peer=%s", user.name, session.peer)

    async def close(self, reason: str = "server shutting down") -> None:
        """Close every session (telling their rooms) and every room channel, and stop the
        password workers."""
        for session in list(self._sessions):
            await self.disconnect(session, reason)
        for room in self._rooms.values():
            room.tx.close()
        self._rooms.clear()
        self.passwords.close()

    # -- queries --

    def room_list(self) -> RoomList:
        """The rooms open now (with members online, or watched), sorted, with their member
        counts. No store read: ``rooms`` lists every room."""
        return RoomList(
            rooms=tuple(
                RoomEntry(name=name, members=len(room.members))
                for name, room in sorted(self._rooms.items())
            )
        )

    async def rooms(self, session: Session) -> RoomList:
        """Every room, sorted: those open now and those only the store knows (nobody online,
        history kept), with their member counts; for ``session``'s own rooms, how many
        messages its user has not been sent yet; and its current room.

        One store read (the names), then O(rooms) in memory: the unread counts come from the
        read markers and the receivers, not from the store."""
        stored = await self.store.rooms()
        user = session.user  # read after the store answered: what is true now
        # The store's names come sorted: sorting them with the open rooms appended is one
        # linear pass of merging (Timsort finds the runs), then duplicates are adjacent.
        names = sorted([*stored, *self._rooms])
        entries = []
        previous = None
        for name in names:
            if name == previous:
                continue
            previous = name
            room = self._rooms.get(name)
            if room is None:
                entries.append(RoomEntry(name=name, members=0))
                continue
            unread = None
            if user is not None and user.rooms.get(name) is room:
                unread = self._unread(user, room)
            entries.append(RoomEntry(name=name, members=len(room.members), unread=unread))
        return RoomList(rooms=tuple(entries), current=session.current)

    async def all_rooms(self) -> RoomList:
        """Every room, sorted: those open now and those only the store knows, with how many
        members each has online. The list a client that is not a session reads (HTTP)."""
        entries = []
        for name in sorted({*await self.store.rooms(), *self._rooms}):
            room = self._rooms.get(name)
            entries.append(RoomEntry(name=name, members=0 if room is None else len(room.members)))
        return RoomList(rooms=tuple(entries))

    async def check_store(self) -> None:
        """Raise ``Broken`` (``Unwritable`` when it cannot take writes) if the store is not
        fit to serve now; return if it is (a health check: ``Storage.check``)."""
        await self.store.check()

    @staticmethod
    def _unread(user: User, room: Room) -> int:
        """How many of ``room``'s messages none of ``user``'s sessions has been sent yet."""
        read = user.marks.get(room.name, 0)  # a registered user's marker (guests have none)
        for s in user.sessions:
            read = max(read, s.delivered(room.name) or 0)
        return max(0, room.tx.next_seq - 1 - read)

    @property
    def online(self) -> int:
        """How many users are online."""
        return len(self._users)

    # -- names and accounts --

    async def _set_name(self, session: Session, name: str) -> list[Event]:
        await self._check_free(name)
        if session.state is not State.NEW:  # closed while the store answered
            return []
        user = User(name, registered=False)
        self._users[fold(name)] = user
        self._looks.add(name)
        session.attach(user)
        log.info("named name=%s peer=%s", name, session.peer)
        replies: list[Event] = [Welcome(name=name)]
        replies += await self._join(session, GENERAL, None)
        return replies

    def _check_unclaimed(self, name: str, current: str | None = None) -> None:
        """Raise unless ``name`` is neither online nor being registered, and looks like no
        name that is: none online besides ``current`` (the asker's own name, for /nick), none
        being registered (not even the asker's own, while its /register hashes)."""
        if fold(name) in self._users:
            raise ClientError("name_taken", f"the name {name!r} is taken: choose another")
        if fold(name) in self._reserved:
            raise ClientError(
                "name_taken", f"the name {name!r} is being registered: choose another"
            )
        other = self._looks.like(name, besides=current)
        if other is not None:
            raise lookalike_online(name, other)
        other = self._reserved_looks.like(name)  # even the asker's own name: /nick a1ice
        if other is not None:
            raise lookalike_reserved(name, other)

    async def _check_free(self, name: str, current: str | None = None) -> None:
        """Raise unless a guest (named ``current``, for /nick) may take ``name``: nobody
        online or registering has it or a name like it, and it neither is nor looks like a
        registered name (``roomcast.names``). Online first, then the store (one indexed
        lookup)."""
        self._check_unclaimed(name, current)
        account = await self.store.account_like(name)
        if account is not None and fold(account.name) == fold(name):
            raise ClientError(
                "registered",
                f"{account.name!r} is registered: /login {account.name} <password>,"
                " or pick another name",
            )
        if account is not None:
            raise lookalike_registered(name, account.name)
        self._check_unclaimed(name, current)  # taken while the store answered

    def _send_private(self, user: User, private: Private) -> None:
        """Into ``user``'s private channel, made on its first private message; a user that
        has gone gets it from the store."""
        if not user.sessions:
            return
        inbox = user.inbox
        if inbox is None:
            first: Receiver[Private]
            inbox, first = channel(self.limits.inbox_capacity)
            first.close()
            user.inbox = inbox
            for session in user.sessions:
                session.open_inbox(inbox)
        inbox.send(private)

    async def _register(self, session: Session, password: str) -> list[Event]:
        user = self._user(session)
        if user.registered:
            raise ClientError("registered", f"{user.name} is registered already")
        check_password(password)
        other = self._looks.like(user.name)  # the store checks the registered names
        if other is not None:
            raise lookalike_online(user.name, other)
        account = await self._new_account(user.name, password, session.address)
        # The user becomes registered once its rooms are stored too; if they cannot be, the
        # account goes again and the user stays the guest it was.
        rooms = {name: room.tx.next_seq - 1 for name, room in user.rooms.items()}
        try:
            for name, read in rooms.items():
                await self.store.set_membership(user.name, name, read_seq=read)
        except Broken:
            await self._unregister(user.name)
            raise
        user.registered = True
        user.account_id, user.generation = account.id, account.generation
        user.private_mark = account.private_read_seq
        for s in user.sessions:
            s.note_private_read(account.private_read_seq)
        for name, read in rooms.items():
            user.mark(name, read)
        log.info("registered name=%s peer=%s", user.name, session.peer)
        return [
            Info(
                text=f"registered {user.name}: next time, /login {user.name} <password> brings"
                " you back to your rooms and what you missed"
            )
        ]

    async def _unregister(self, name: str) -> None:
        """Delete the account a registration that failed half-way has just made."""
        try:
            await self.store.delete_account(name)
        except Broken as e:
            _log_failure(e, "could not delete the account %s whose rooms could not be stored", name)

    async def create_account(self, name: str, password: str, address: str) -> Account:
        """Register ``name`` (not online as a guest, not registered) with ``password``, for
        a client at ``address`` (throttled per address)."""
        user_name(name)
        check_password(password)
        self._check_unclaimed(name)
        # before hashing: a name registered, or like one registered, costs no argon2 (the
        # store checks both again as it creates the account)
        taken = await self.store.account_like(name)
        if taken is not None and fold(taken.name) == fold(name):
            raise ClientError("name_taken", f"the name {name!r} is registered: choose another")
        if taken is not None:
            raise lookalike_registered(name, taken.name)
        self._check_unclaimed(name)  # taken while the store answered
        account = await self._new_account(name, password, address)
        log.info("registered name=%s address=%s", account.name, address)
        return account

    async def _new_account(self, name: str, password: str, address: str) -> Account:
        """Hash ``password`` and store the account ``name``: throttled per address, with the
        name reserved while it hashes (no guest can take it meanwhile). The caller checked
        that the name is free."""
        key = address_key(address)
        wait = self._register_throttle.wait(key)
        if wait > 0:
            log.info("registration throttled address=%s wait=%.0f", key, wait)
            retry = math.ceil(wait)
            raise ClientError(
                "throttled",
                f"too many registrations from your address: try again in {retry} s",
                retry_after=retry,
            )
        folded = fold(name)
        self._register_throttle.begin(key)
        self._reserved.add(folded)
        self._reserved_looks.add(name)
        hashed = False
        try:
            password_hash = await self.passwords.hash(password)
            hashed = True
            return await self.store.create_account(name, password_hash, now=self._clock())
        finally:
            self._reserved.discard(folded)
            self._reserved_looks.discard(name)
            if self._register_throttle.end(key, count=hashed):
                log.warning(
                    "registrations paused address=%s: %d in %.0f s",
                    key,
                    self.limits.registrations,
                    self.limits.register_window,
                )

    async def verify_login(self, name: str, password: str, address: str) -> Account:
        """The account if ``password`` is right.

        Throttled per (name, address), per address, and per name from every address but
        those the name logged in from before: a guesser elsewhere slows the name down but
        cannot lock its owner out. Each key's slot is taken before the password is checked
        and counts while the check runs, so requests sent together are held to the limit.
        """
        folded, key = fold(name), address_key(address)
        gates = [(self._pair_throttle, f"{folded} {key}"), (self._address_throttle, key)]
        if key not in self._known.get(folded, ()):
            gates.append((self._name_throttle, folded))
        wait = max(throttle.wait(k) for throttle, k in gates)
        if wait > 0:
            log.info("login throttled name=%s address=%s wait=%.0f", name, key, wait)
            retry = math.ceil(wait)
            raise ClientError(
                "throttled",
                f"too many failed logins: try again in {retry} s",
                retry_after=retry,
            )
        for throttle, k in gates:
            throttle.begin(k)
        right: bool | None = None  # None: no verdict (the store or the hashing failed)
        account: Account | None = None
        try:
            account = await self.store.account(name)
            right = account is not None and await self.passwords.verify(
                account.password_hash, password
            )
        finally:
            for throttle, k in gates:
                if throttle.end(k, count=right is False):
                    log.warning(
                        "login locked key=%s: %d failures in %.0f s",
                        k,
                        throttle.limit,
                        throttle.window,
                    )
        if not right or account is None:
            log.warning("failed login name=%s address=%s", name, key)
            raise ClientError("bad_login", "wrong name or password")
        self._pair_throttle.clear(gates[0][1])
        known = self._known.setdefault(folded, deque(maxlen=KNOWN_ADDRESSES))
        if key not in known:
            known.append(key)
        return account

    async def authenticate(self, account_id: str, generation: int) -> Account:
        """The account a token names, if it still exists and the token's ``generation`` is
        still the account's; else ``ClientError("bad_token")``. Called on every use of a
        token (a post, a WebSocket hello, a logout)."""
        account = await self.store.account_by_id(account_id)
        if account is None:
            log.info("token refused account=%s reason=deleted", account_id)
            raise ClientError(
                "bad_token", "the account of this token no longer exists: log in again"
            )
        if account.generation != generation:
            log.info("token refused name=%s reason=revoked", account.name)
            raise ClientError(
                "bad_token",
                "this token was revoked (a password change, or a logout everywhere): log in again",
            )
        return account

    async def revoke(self, account_id: str, *, keep: Session | None = None) -> Account:
        """Log the account out everywhere: revoke every token issued to it and end all its
        open sessions but ``keep``; the account as it is now."""
        account = await self.store.revoke(account_id)
        if account is None:
            raise ClientError("bad_token", "the account no longer exists: log in again")
        log.info("logged out everywhere name=%s", account.name)
        user = self._users.get(fold(account.name))
        if user is not None and user.account_id == account.id:
            await self._end_user(user, EVERYWHERE, keep=keep)
        return account

    async def _log_out_everywhere(self, session: Session) -> list[Event]:
        user = self._user(session)
        if user.account_id is None:
            raise ClientError(
                "guest", "you are a guest: /logout drops your name, there is nothing else"
            )
        account = await self.revoke(user.account_id, keep=session)
        if session.user is not user:  # closed while the store answered
            return []
        await self._detach(session, EVERYWHERE)
        return [
            Info(
                text=f"logged out everywhere: every session and token of {account.name} ended;"
                " choose a name, or /login name password"
            )
        ]

    async def _end_user(self, user: User, reason: str, *, keep: Session | None = None) -> None:
        """Close every session of ``user`` but ``keep``, telling each ``reason``."""
        farewell = Error(code="closed", message=f"closing: {reason}")
        for session in list(user.sessions):
            if session is not keep:
                await self.disconnect(session, reason, farewell)

    async def check_accounts(self) -> int:
        """End the sessions of every online account that was deleted, or whose tokens were
        revoked, since it logged in (by ``roomcast user`` beside the running server);
        return how many accounts that was."""
        ended = 0
        for user in list(self._users.values()):
            if user.account_id is None:
                continue
            account = await self.store.account_by_id(user.account_id)
            if account is not None and account.generation == user.generation:
                continue
            if self._users.get(fold(user.name)) is not user:  # gone meanwhile
                continue
            reason = DELETED if account is None else EVERYWHERE
            log.info("ending the sessions of name=%s reason=%s", user.name, reason)
            await self._end_user(user, reason)
            ended += 1
        return ended

    async def _log_in(self, session: Session, account: Account) -> list[Event]:
        if session.state is not State.NEW:  # logged in elsewhere while verifying
            raise ClientError("has_name", "you already have a name: log out first")
        user = self._users.get(fold(account.name))
        if user is not None and not user.registered:
            raise ClientError("name_taken", f"a guest is using {account.name!r} now: try later")
        if user is not None and user.account_id == account.id:
            if account.generation < user.generation:  # revoked while the password was checked
                raise ClientError("bad_login", "the account changed meanwhile: log in again")
        if user is not None and (user.account_id, user.generation) != (
            account.id,
            account.generation,
        ):  # sessions of a deleted account, or of revoked tokens, not yet checked: end them
            await self._end_user(user, DELETED if user.account_id != account.id else EVERYWHERE)
            if session.state is not State.NEW:
                raise ClientError("has_name", "you already have a name: log out first")
            user = self._users.get(fold(account.name))
            if user is not None:  # someone came in meanwhile
                raise ClientError("name_taken", f"{account.name!r} is in use now: try again")
        returning = user is None
        if user is None:
            user = User(account.name, registered=True)
            user.account_id, user.generation = account.id, account.generation
            user.private_mark = account.private_read_seq
            self._users[fold(account.name)] = user
            self._looks.add(account.name)
        session.attach(user)
        log.info("login name=%s peer=%s", account.name, session.peer)
        replies: list[Event] = [Welcome(name=account.name)]
        memberships = dict(await self.store.memberships(account.name))
        if not memberships:
            replies += await self._join(session, GENERAL, None)
        unread = []
        entered = []
        for room_name, read_seq in memberships.items():
            room, missed = await self._enter(session, user, room_name, read_seq)
            if room is not None and returning:
                entered.append(room)
            if missed:
                unread.append((room_name, missed))
        if session.user is user:  # every join in one write: all told, or (failed) none
            await self._announce_all(entered, user, Kind.JOIN, "")
        if unread:
            replies.append(Unread(rooms=tuple(unread)))
        session.replay_privates(user.private_mark)
        return replies

    async def _enter(
        self, session: Session, user: User, name: str, read_seq: int
    ) -> tuple[Room | None, int]:
        """Put a logged-in session in one of its user's rooms and replay what it missed;
        return the room (``None`` if the session went meanwhile) and how many messages people
        wrote meanwhile (joins and quits are replayed but are not news: they are not counted)."""
        room = await self._open_room(name)
        if session.state is not State.ACTIVE:
            return None, 0
        if name not in user.rooms:  # a member (the room stays open) while the store counts
            user.rooms[name] = room
            room.members[fold(user.name)] = user
        read = max(read_seq, user.marks.get(name, 0))
        user.marks.setdefault(name, read)
        live = room.tx.next_seq  # the session reads the room from here; before, a replay
        missed = live - 1 - read
        said = await self.store.said(name, after=read, before=live) if missed > 0 else None
        if session.user is not user or user.rooms.get(name) is not room or name in session.rooms:
            return None, 0  # gone meanwhile, or left and joined again by another session
        # Subscribed only now, from `live`, and the replay set at once: nothing said while
        # the store counted can reach the session before its catch-up.
        session.subscribe(name, room.tx, from_seq=live)
        session.current = session.current or name
        unread = 0
        if missed > 0:
            assert said is not None
            replayed = min(missed, self.limits.replay_cap)
            first = live - replayed
            summary = None
            if said.first_seq is not None:
                unread = said.count
                summary = Summary(
                    room=name,
                    missed=unread,
                    replayed=replayed,
                    first_seq=first,
                    first_unread=said.first_seq,
                )
            session.replay(name, first, summary)
        return room, unread

    # -- rooms --

    async def _join(self, session: Session, name: str, since: int | None) -> list[Event]:
        user = self._user(session)
        room = user.rooms.get(name)
        if room is not None:
            session.current = name
            if since is not None:
                session.replay(name, since + 1)
            return [Info(text=f"you are in {name}")]
        if len(user.rooms) >= self.limits.max_rooms:
            raise ClientError(
                "too_many_rooms", f"you are in {len(user.rooms)} rooms, the most allowed: leave one"
            )
        room = await self._open_room(name)
        if session.user is not user:  # logged out or closed while the store answered
            self._drop_if_unused(room)
            return []
        if name in user.rooms:  # another session of the user joined it meanwhile
            return await self._join(session, name, since)
        previous = session.current
        user.rooms[name] = room
        room.members[fold(user.name)] = user
        for s in user.sessions:
            s.subscribe(name, room.tx)
        session.current = name
        if since is not None:
            session.replay(name, since + 1)
        # The store steps come last (so that the joiner gets its own join), the membership
        # before the announcement: when one fails, the join is undone and nobody was told.
        read = room.tx.next_seq - 1  # its sessions get every message after this one
        stored = False
        try:
            if user.registered:
                user.mark(name, read)
                await self.store.set_membership(user.name, name, read_seq=read)
                stored = True
            await self._announce(room, user, Kind.JOIN, "")
        except Broken:
            self._unjoin(session, user, room, previous)
            if stored:
                await self._set_membership(user.name, name, None)
            raise
        return self._who(room, JOIN_WHO_LIMIT)

    def _unjoin(self, session: Session, user: User, room: Room, previous: str | None) -> None:
        """Undo a join whose store step failed: the user is out of ``room`` as if it had
        never joined, and ``session`` talks to the room it talked to before."""
        if user.rooms.get(room.name) is room:
            self._remove_member(user, room, forget_marks=True, keep=False)
        if session.user is user and (previous is None or previous in session.rooms):
            session.current = previous

    async def _set_membership(self, name: str, room: str, read_seq: int | None) -> None:
        """Put back what a command that failed half-way changed in the store's memberships;
        when that fails too, say in the log what stays wrong."""
        try:
            await self.store.set_membership(name, room, read_seq=read_seq)
        except Broken as e:
            _log_failure(
                e,
                "could not undo the membership of %s in %s: it stays %s in the store",
                name,
                room,
                "out" if read_seq is not None else "in",
            )

    async def _open_room(self, name: str) -> Room:
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
                room = self._rooms[name] = Room(name, tx)
            return room

    async def _leave(self, session: Session, room: Room) -> list[Event]:
        user = self._user(session)
        # The store steps first, the membership before the announcement; the room is left
        # once both are done: a failure leaves the user in the room, as it was.
        if user.registered:
            await self.store.set_membership(user.name, room.name, read_seq=None)
        try:
            await self._announce(room, user, Kind.LEAVE, "left")
        except Broken:
            if user.registered and user.rooms.get(room.name) is room:
                await self._set_membership(user.name, room.name, user.marks.get(room.name, 0))
            raise
        if user.rooms.get(room.name) is not room:  # left by another session meanwhile
            return [Info(text=f"you left {room.name}")]
        # Each session whose current room this was moves on to another: say which, so that
        # nobody's plain text goes to another room unannounced.
        moved = [s for s in user.sessions if s.current == room.name]
        self._remove_member(user, room, forget_marks=True)
        for other in moved:
            if other is not session:
                other.tell(Info(text=_where_now(room.name, other, "from another connection")))
        if session in moved:
            return [Info(text=_where_now(room.name, session))]
        return [Info(text=f"you left {room.name}")]

    def _remove_member(
        self, user: User, room: Room, *, forget_marks: bool, keep: bool = True
    ) -> None:
        """Take ``user`` out of ``room``; its sessions still deliver what the room said up to
        now, unless ``keep`` is false (a join undone)."""
        user.rooms.pop(room.name, None)
        if forget_marks:
            user.marks.pop(room.name, None)
        room.members.pop(fold(user.name), None)
        for s in user.sessions:
            s.unsubscribe(room.name, keep=keep)
        self._drop_if_unused(room)

    def _drop_if_unused(self, room: Room) -> None:
        """Forget an empty room (its history stays in the store); #general always stays."""
        if room.members or room.appending or room.watchers or room.name == GENERAL:
            return
        if self._rooms.get(room.name) is room:
            del self._rooms[room.name]
        room.tx.close()

    # -- messages --

    async def _say(self, session: Session, room: Room, kind: Kind, text: str) -> None:
        user = self._user(session)
        await self._publish(room, user.name, kind, text, signed=user.registered)

    def _draft(
        self, room: Room, sender: str, kind: Kind, text: str, now: float, signed: bool
    ) -> Draft:
        return Draft(
            id=self._new_id(),
            room=room.name,
            sender=sender,
            kind=kind,
            text=text,
            ts=now,
            signed=signed,
        )

    async def _announce(self, room: Room, user: User, kind: Kind, text: str) -> Message | None:
        """Tell ``room`` that ``user`` came or went, unless the room is too big for that to be
        news (above ``quiet_above`` members; who is there is a /who away)."""
        if len(room.members) > self.limits.quiet_above:
            return None
        return await self._publish(room, user.name, kind, text, signed=user.registered)

    async def _announce_all(self, rooms: list[Room], user: User, kind: Kind, text: str) -> None:
        """``_announce`` in each of ``rooms`` in one store write: every room is told, or
        (the store failed) none is."""
        loud = [room for room in rooms if len(room.members) <= self.limits.quiet_above]
        if loud:
            now, signed = self._clock(), user.registered
            drafts = [self._draft(r, user.name, kind, text, now, signed) for r in loud]
            await self._queue(loud, drafts)

    async def _publish(
        self, room: Room, sender: str, kind: Kind, text: str, *, signed: bool
    ) -> Message:
        """Store and broadcast a message of ``sender``, who is signed in if ``signed``."""
        draft = self._draft(room, sender, kind, text, self._clock(), signed)
        (message,) = await self._queue([room], [draft])
        return message

    def _queue(self, rooms: list[Room], drafts: list[Draft]) -> asyncio.Future[list[Message]]:
        """Queue ``drafts`` (``drafts[i]`` in ``rooms[i]``) for the store in one write; each is
        broadcast as soon as it is durable: the store calls back on the loop, so no task
        switch comes between the commit and the broadcast, and a cancelled caller cannot leave
        a stored message unsent. The rooms stay open until then."""
        settled = False

        def settle(messages: list[Message] | None) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            for room in rooms:
                room.appending -= 1
            for room, message in zip(rooms, messages or (), strict=False):
                if not room.tx.closed:
                    room.send(message)
            for room in dict.fromkeys(rooms):
                self._drop_if_unused(room)

        def failed(stored: asyncio.Future[list[Message]]) -> None:
            if not stored.cancelled() and stored.exception() is not None:
                settle(None)  # nothing was stored

        for room in rooms:
            room.appending += 1
        stored = self.store.append_many(drafts, then=settle)
        stored.add_done_callback(failed)
        return stored

    async def _private(self, session: Session, to: str, text: str) -> list[Event]:
        user = self._user(session)
        target = self._users.get(fold(to))
        if target is not None:
            to_name, to_signed = target.name, target.registered
        else:
            account = await self.store.account(to)
            if account is None:
                raise ClientError(
                    "no_such_user", f"nobody named {to!r} is online or registered: check /who"
                )
            if session.user is not user:  # logged out or closed while the store answered
                raise ClientError(
                    "no_name", "you no longer have a name: the private message was not sent"
                )
            to_name, to_signed = account.name, True
        draft = PrivateDraft(
            id=self._new_id(),
            sender=user.name,
            recipient=to_name,
            kind=Kind.MESSAGE,
            text=text,
            ts=self._clock(),
            signed=user.registered,
            recipient_signed=to_signed,
        )
        # The guests in it, under the names they have as it is queued: nothing is awaited
        # from here to the queue, and the store numbers private messages in queue order.
        guests = [
            (g, g.private_epoch) for g in (user, target) if g is not None and not g.registered
        ]
        private = await self.store.append_private(draft)
        for guest, epoch in guests:
            guest.took_part(private.seq, epoch)
        recipient = self._users.get(fold(to_name))  # may have come or gone meanwhile
        if recipient is not None:
            self._send_private(recipient, private)
        if recipient is not user:
            self._send_private(user, private)
        if recipient is None:
            return [Info(text=f"{to_name} is away: they will get it when they log in")]
        return []

    async def _nick(self, session: Session, name: str) -> list[Event]:
        user = self._user(session)
        old = user.name
        if user.registered:
            raise ClientError("registered", "a registered name cannot change: register another")
        if fold(name) != fold(old):
            await self._check_free(name, old)
        if session.user is not user or user.name != old:  # changed while the store answered
            raise ClientError("name_taken", f"the name {name!r} is taken: choose another")
        # Renamed first, so that nobody takes the name while the store writes; the rooms are
        # told in one write, and when it fails the old name (and its private history) is back.
        private = user.private_epoch, user.private_floor
        self._rename(user, name)
        rooms = list(user.rooms.values())
        try:
            if rooms:
                now, signed = self._clock(), user.registered
                drafts = [self._draft(r, old, Kind.NICK, name, now, signed) for r in rooms]
                await self._queue(rooms, drafts)
        except Broken:
            if user.name == name and self._users.get(fold(name)) is user:  # still online
                self._rename(user, old)
                user.private_epoch, user.private_floor = private
            raise
        log.info("nick old=%s new=%s", old, name)
        return [Info(text=f"you are now known as {name}")]

    def _rename(self, user: User, name: str) -> None:
        """Give the online ``user`` the free ``name``, everywhere the hub looks names up."""
        old = user.name
        del self._users[fold(old)]
        self._users[fold(name)] = user
        self._looks.discard(old)
        self._looks.add(name)
        user.name = name
        if fold(name) != fold(old):
            user.renamed()  # what it said privately as `old` is not the new name's history
        for room in user.rooms.values():
            room.members[fold(name)] = room.members.pop(fold(old))

    async def _who_of(self, session: Session, name: str | None) -> list[Event]:
        """Who is in a room, member or not; a room nobody is in but that has history has
        nobody (and is not opened for the question)."""
        name = self._room_name(session, name)
        room = self._rooms.get(name)
        if room is not None:
            return self._who(room, WHO_LIMIT)
        await self._check_exists(name)
        room = self._rooms.get(name)  # opened while the store answered
        if room is not None:
            return self._who(room, WHO_LIMIT)
        return [WhoList(room=name, names=(), total=0)]

    async def _check_exists(self, name: str, latest_seq: int | None = None) -> None:
        """Raise ``no_such_room`` unless ``name`` is #general (always there), is open or has
        stored messages (its ``latest_seq``, when the caller read it already, saves a store
        read)."""
        if name == GENERAL or name in self._rooms:
            return
        if latest_seq is None:
            latest_seq = (await self.store.room(name)).latest_seq
        if latest_seq == 0 and name not in self._rooms:
            raise _no_such_room(name)

    def _who(self, room: Room, limit: int) -> list[Event]:
        """The first ``limit`` member names, sorted: O(members), not O(members log members),
        so that thousands joining a big room do not cost the square of their number."""
        members = room.members
        if len(members) <= limit:
            names = sorted((u.name for u in members.values()), key=fold)
        else:
            names = heapq.nsmallest(limit, (u.name for u in members.values()), key=fold)
        return [WhoList(room=room.name, names=tuple(names), total=len(members))]

    # -- history --

    def _capped(self, limit: int) -> tuple[int, int | None]:
        cap = self.limits.history_cap
        return (cap, cap) if limit > cap else (limit, None)

    async def _history(self, session: Session, command: FetchHistory) -> list[Event]:
        if command.user is not None:
            return [await self._private_history(self._user(session), command.user, command)]
        room = self._room_name(session, command.room)
        return [await self.history(room, command)]

    async def _private_history(
        self, user: User, other: str, request: FetchHistory
    ) -> PrivateHistory:
        """A page of the private conversation between ``user`` and ``other``, as ``request``
        asks: only what ``user`` sent and received as the identity it has now.

        An account reads what it said and was sent signed in, under its name, whoever the
        other side was then (it was part of all of it). A guest reads what it said and was
        sent under its present name since its first such private message (``took_part``):
        never what an account of that name, or an earlier guest of it, said or was sent.
        A guest name proves nothing once its holder is gone, so that is all it can claim.
        """
        limit, capped = self._capped(request.limit)
        if user.registered:
            signed, first = True, 1
        elif user.private_floor is None:  # a guest that has no private message yet
            return PrivateHistory(
                user=other, messages=(), oldest_seq=1, latest_seq=0, capped=capped
            )
        else:
            signed, first = False, user.private_floor
        page = functools.partial(
            self.store.conversation, user.name, other, signed=signed, first=first
        )
        if request.around is not None:
            older = await page(before=request.around, limit=limit // 2)
            newer = await page(after=request.around - 1, limit=limit - len(older.messages))
            messages, last = older.messages + newer.messages, newer
        else:
            last = await page(before=request.before, after=request.after, limit=limit)
            messages = last.messages
        return PrivateHistory(
            user=other,
            messages=messages,
            oldest_seq=last.oldest_seq,
            latest_seq=last.latest_seq,
            capped=capped,
        )

    async def history(self, room: str, request: FetchHistory) -> History:
        """A page of ``room``'s history as ``request`` asks (its room is ignored): the one
        history API every transport uses."""
        limit, capped = self._capped(request.limit)
        if request.around is not None:
            older = await self.store.history(room, before=request.around, limit=limit // 2)
            newer = await self.store.history(
                room, after=request.around - 1, limit=limit - len(older.messages)
            )
            messages = older.messages + newer.messages
            page = newer
        else:
            page = await self.store.history(
                room, before=request.before, after=request.after, limit=limit
            )
            messages = page.messages
        await self._check_exists(room, page.latest_seq)
        return History(
            room=room,
            messages=messages,
            oldest_seq=page.oldest_seq,
            latest_seq=page.latest_seq,
            capped=capped,
        )

    async def post(self, name: str, room: str, text: str) -> Message:
        """Say ``text`` in ``room`` as the registered user ``name``, without a session
        (bots, scripts): the room need not be joined. Returns the stored message."""
        say = Say(text=text, room=room)
        assert say.room is not None
        bucket = self._post_buckets.get(fold(name))
        if bucket is None:
            bucket = self._post_buckets[fold(name)] = _Bucket(
                self.limits.rate, self.limits.burst, self._clock()
            )
        if not bucket.take(self._clock()):
            raise ClientError("flood", "you are posting too fast: wait a moment, then retry")
        room_obj = await self._open_room(say.room)
        return await self._publish(room_obj, name, Kind.MESSAGE, say.text, signed=True)

    async def watch(self, peer: str, room: str, since: int | None) -> Session:
        """A session that only reads ``room`` (Server-Sent Events): it replays the messages
        after ``since`` (none when ``None``), then follows live. Close it with ``unwatch``."""
        room_obj = await self._open_room(room)
        session = Session(peer, self.store, refill_page=self.limits.refill_page)
        room_obj.watchers += 1
        session.subscribe(room, room_obj.tx)
        if since is not None:
            session.replay(room, since + 1)
        return session

    def unwatch(self, session: Session) -> None:
        """Close a session made by ``watch``."""
        rooms = session.rooms
        session.close("closed")
        for name in rooms:
            room = self._rooms.get(name)
            if room is not None:
                room.watchers -= 1
                self._drop_if_unused(room)
                self._drop_if_unused(room)
        session.close("closed")

    async def _search(
        self, session: Session, room: str | None, words: str, limit: int
    ) -> list[Event]:
        name = self._room_name(session, room)
        limit, capped = self._capped(limit)
        found = await self.store.search(name, words, limit=limit)
        if not found:
            await self._check_exists(name)
        return [SearchResults(room=name, words=words, messages=tuple(found), capped=capped)]

    # -- upkeep --

    async def flush_markers(self) -> None:
        """Write every registered user's moved read markers to the store, in one batch."""
        for user in list(self._users.values()):
            await self._flush(user)

    async def _flush(self, user: User) -> None:
        if not (user.registered and user.dirty):
            return
        user.dirty = False
        try:
            await self.store.advance_read({(user.name, r): s for r, s in user.marks.items()})
            await self.store.advance_private_read(user.name, user.private_mark)
        except Broken as e:
            user.dirty = True
            _log_failure(e, "could not write the read markers of %s", user.name)

    async def apply_retention(self) -> int:
        """Cut every room's history to the retention limits; return how many were removed."""
        age, count = self.limits.retain_age, self.limits.retain_count
        if age is None and count is None:
            return 0
        removed = 0
        for room in await self.store.rooms():
            removed += await self.store.retain(
                room, max_age=age, max_count=count, now=self._clock()
            )
        if removed:
            log.info("retention removed %d messages", removed)
        return removed

    async def maintain(
        self,
        *,
        flush_every: float = 1.0,
        retain_every: float = 3600.0,
        check_every: float = 30.0,
    ) -> None:
        """Run forever: flush read markers every ``flush_every`` s, retention every
        ``retain_every`` s, ``check_accounts`` every ``check_every`` s. Cancel it to stop."""
        loop = asyncio.get_running_loop()
        next_retention = loop.time()
        next_check = loop.time() + check_every
        while True:
            await self.flush_markers()
            if loop.time() >= next_retention:
                next_retention = loop.time() + retain_every
                try:
                    await self.apply_retention()
                except Broken:
                    log.exception("retention failed")
            if loop.time() >= next_check:
                next_check = loop.time() + check_every
                try:
                    await self.check_accounts()
                except Broken:
                    log.exception("the account check failed")
            await asyncio.sleep(flush_every)

    # -- lookups --

    def _user(self, session: Session) -> User:
        if session.user is None:  # pragma: no cover - the state table prevents it
            raise ClientError("no_name", "expected a name first: choose a name")
        return session.user

    def _room_name(self, session: Session, name: str | None) -> str:
        if name is not None:
            return name
        if session.current is None:
            raise ClientError("no_room", "you are in no room: join one first")
        return session.current

    def _room_of(self, session: Session, name: str | None) -> Room:
        """The room named (or the session's current room), which its user must be in."""
        name = self._room_name(session, name)
        room = self._user(session).rooms.get(name)
        if room is None:
            raise ClientError("not_member", f"you are not in {name}: join it first")
        return room


def _log_failure(error: Broken, what: str, *args: object) -> None:
    """Log a store failure met in the background: one line when the store cannot take
    writes (it logged why, once), the traceback otherwise."""
    if isinstance(error, Unwritable):
        log.warning(what + ": %s", *args, error)
    else:
        log.error(what, *args, exc_info=error)


def _no_such_room(name: str) -> ClientError:
    return ClientError("no_such_room", f"there is no room {name}: /rooms lists them")


def _where_now(left: str, session: Session, how: str = "") -> str:
    """What a session that left ``left``, its current room, is told: where its text goes."""
    done = f"you left {left} {how}" if how else f"you left {left}"
    if session.current is None:
        return f"{done}; you are in no room now: /join #room to talk"
    return f"{done}; text now goes to {session.current}"
