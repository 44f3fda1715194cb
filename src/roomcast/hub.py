"""The chat core's front: the state table, command dispatch, the session lifecycle.

Commands in, events out. No sockets, no SQL. Transports and the server call ``Hub`` only;
it carries each command out with the part whose job it is (``roomcast.core`` draws the map:
rooms, messages, history, accounts, upkeep) over one shared ``Core``.

Rules
-----
A session is one connection. It starts NEW, becomes ACTIVE once it has a name (a guest name,
or a registered one after login), and ends CLOSED. What each state accepts is the table
``_ACCEPTS`` below; any other command gets one precise error ("expected a name first, got
Join").

    NEW     SetName Login Authenticated -> ACTIVE; Quit -> CLOSED
    ACTIVE  Join Leave Say Action PrivateMessage Nick Who Rooms Register FetchHistory Search;
            Logout -> NEW; Quit -> CLOSED
    CLOSING nothing (its user has left the hub; its quits are being stored) -> CLOSED
    CLOSED  nothing

Every command is counted against the session's flood limit (``roomcast.flood``); a
transport that asks ``pace`` first waits instead of being refused.

A command the store fails (``unavailable``) leaves nothing half done, so the client may
simply retry: each command writes before it changes the online state, or undoes what it
changed when the write fails. A name or login that fails leaves the session NEW and tells no
room; a join, leave or nick that fails leaves the user's rooms and name as they were.

A session ends with ``disconnect`` (or ``Quit``): it accepts nothing from then on
(CLOSING), its user, if this was its last session, goes offline and out of every room at
once, the quits are stored and told, and then the session is CLOSED. ``Logout`` ends this
session's login only; ``Logout(everywhere=True)`` revokes the account's tokens and ends its
other sessions.

``Hub.handle`` returns the replies meant for the calling session (errors, lists, history);
what the session receives from rooms and other users comes out of ``Session.receive``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import assert_never

from roomcast.accounts import EVERYWHERE, Accounts, Names
from roomcast.auth import Passwords
from roomcast.core import GENERAL, Core, Limits, log_failure, member_room, new_id, user_of
from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.flood import FLOOD, Flood
from roomcast.history import Archive
from roomcast.messages import Messages
from roomcast.model import (
    Action,
    Authenticated,
    Command,
    Draft,
    Error,
    Event,
    FetchHistory,
    Info,
    Join,
    Kind,
    Leave,
    Login,
    Logout,
    Nick,
    PrivateMessage,
    Quit,
    Register,
    Rooms,
    Say,
    Search,
    SetName,
    Who,
    fold,
)
from roomcast.rooms import Membership
from roomcast.session import Listener, Room, Session, State, User
from roomcast.store.base import Storage
from roomcast.upkeep import Upkeep

__all__ = ["GENERAL", "NOT_WRITABLE", "UNAVAILABLE", "Hub", "Limits"]

log = logging.getLogger("roomcast.hub")

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

UNAVAILABLE = Error(code="unavailable", message="the server could not do that now; try again")
NOT_WRITABLE = Error(
    code="unavailable",
    message="the server cannot store anything now: its storage is not writable; try again later",
)


class Hub:
    """All rooms and online users of one server process."""

    def __init__(
        self,
        store: Storage,
        *,
        passwords: Passwords | None = None,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = new_id,
    ) -> None:
        self.core = core = Core(
            store,
            passwords=passwords or Passwords(),
            limits=limits or Limits(),
            clock=clock,
            new_id=new_id,
        )
        self.store = store  # durable history and accounts; assigns sequence numbers
        self.limits = core.limits
        self._clock = clock  # wall-clock seconds (UTC epoch); injected for tests
        self._flood = flood = Flood(core)  # how fast each session may send
        self._buckets = flood.buckets  # read on every command
        # the parts, each over the one core (see roomcast.core for the map)
        self._messages = messages = Messages(core)
        self._draft, self._queue = messages.draft, messages.queue  # the hot path's two calls
        self._membership = membership = Membership(core, messages)
        self._archive = Archive(core, membership)
        self._names = names = Names(core, membership, messages)
        self._accounts = accounts = Accounts(core, names, membership, messages, self._end_user)
        self._upkeep = upkeep = Upkeep(core, self._end_user)
        # What transports and the server call that a part carries out, bound here under the
        # hub's name: a call goes straight to the part (see each method's docstring there).
        self.pace, self.allowance = flood.pace, flood.allowance  # flood control that waits
        self.spend = flood.spend  # counts what a transport answers by itself
        self.room_list = membership.room_list  # the rooms open now; no store read
        self.rooms = membership.rooms  # every room, with member and unread counts
        self.all_rooms = membership.all_rooms  # every room, with members: not for a session
        self.watch = membership.watch  # a session that only reads a room (event streams)
        self.unwatch = membership.unwatch  # closes it
        self.history = self._archive.history  # a page of a room's history
        self.post = messages.post  # a message without a session (bots, scripts)
        self.create_account = accounts.create_account  # registers a name, throttled
        self.verify_login = accounts.verify_login  # the account if the password is right
        self.authenticate = accounts.authenticate  # the account a token names, if it holds
        self.revoke = accounts.revoke  # logs an account out everywhere
        self.flush_markers = upkeep.flush_markers  # writes the moved read markers
        self.apply_retention = upkeep.apply_retention  # cuts history to the limits
        self.check_accounts = upkeep.check_accounts  # ends revoked or deleted accounts
        self.maintain = upkeep.maintain  # runs the three above on a timer, forever

    @property
    def online(self) -> int:
        """How many users are online."""
        return len(self.core.users)

    @property
    def passwords(self) -> Passwords:
        """Hashes and checks passwords (replaceable, e.g. by a cheaper one in tests)."""
        return self.core.passwords

    @passwords.setter
    def passwords(self, passwords: Passwords) -> None:
        self.core.passwords = passwords

    # -- sessions --

    def connect(self, peer: str, listener: Listener | None = None) -> Session:
        """Open a session for a new connection from ``peer`` ("host:port"); ``listener`` (the
        connection) hears when something is ready for it, when it is named and when it ends
        (``roomcast.session.Listener``)."""
        session = Session(peer, self.store, refill_page=self.limits.refill_page, listener=listener)
        self.core.sessions.add(session)
        self._flood.open(session)
        return session

    async def check_store(self) -> None:
        """Raise ``Broken`` (``Unwritable`` when it cannot take writes) if the store is not
        fit to serve now; return if it is (a health check: ``Storage.check``)."""
        await self.store.check()

    # -- commands --

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
                raise _illegal(session, command)
            if not self._buckets[session].take(self._clock()):
                raise ClientError("flood", FLOOD)
            return await self._dispatch(session, command)
        except ClientError as e:
            log.info("client error peer=%s name=%s code=%s", session.peer, session.name, e.code)
            return [Error(code=e.code, message=e.message)]
        except Broken as e:
            if unnamed and session.user is not None:  # named or logged in, then the store failed
                self._unname(session, session.user)
            return [_failed(session, e)]
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
        draft = self._draft
        for command in commands:
            try:
                if session.state is not State.ACTIVE:
                    raise _illegal(session, command)
                assert bucket is not None  # every active session has one
                if not bucket.take(now):
                    raise ClientError("flood", FLOOD)
                room = member_room(session, command.room)
            except ClientError as e:
                log.info("client error peer=%s name=%s code=%s", session.peer, session.name, e.code)
                errors.append(Error(code=e.code, message=e.message))
                continue
            kind = Kind.MESSAGE if isinstance(command, Say) else Kind.ACTION
            user = user_of(session)
            drafts.append(draft(room, user.name, kind, command.text, now, user.registered))
            rooms.append(room)
        if drafts:
            try:
                await self._queue(rooms, drafts)
            except Broken as e:
                errors.append(_failed(session, e))
        return errors

    async def _dispatch(self, session: Session, command: Command) -> list[Event]:
        accounts, membership = self._accounts, self._membership
        match command:
            case SetName(name=name):
                return await self._names.set_name(session, name)
            case Login(name=name, password=password):
                account = await accounts.verify_login(name, password, session.address)
                return await accounts.log_in(session, account)
            case Authenticated(account=account_id, generation=generation):
                account = await accounts.authenticate(account_id, generation)
                return await accounts.log_in(session, account)
            case Join(room=room, since=since):
                return await membership.join(session, room, since)
            case Leave(room=room):
                return await membership.leave(session, member_room(session, room))
            case Say(text=text, room=room):
                await self._messages.say(session, member_room(session, room), Kind.MESSAGE, text)
                return []
            case Action(text=text, room=room):
                await self._messages.say(session, member_room(session, room), Kind.ACTION, text)
                return []
            case PrivateMessage(to=to, text=text):
                return await self._messages.private(session, to, text)
            case Nick(name=name):
                return await self._names.nick(session, name)
            case Who(room=room):
                return await membership.who_of(session, room)
            case Rooms():
                return [await membership.rooms(session)]
            case Register(password=password):
                return await accounts.register(session, password)
            case FetchHistory():
                return await self._archive.fetch(session, command)
            case Search(room=room, words=words, limit=limit):
                return await self._archive.search(session, room, words, limit)
            case Logout(everywhere=everywhere):
                if everywhere:
                    return await self._log_out_everywhere(session)
                await self._detach(session, "logged out")
                # after what was ready for the account: nothing of it comes after this line
                session.tell(Info(text="logged out: choose a name, or /login name password"))
                return []
            case Quit(reason=reason):
                await self.disconnect(session, reason, Info(text="goodbye"))
                return []
            case _:
                assert_never(command)

    # -- how sessions end --

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
        self.core.sessions.discard(session)
        self._flood.close(session)
        try:
            await self._quit_if_last(user, session.peer, reason)
        finally:
            session.close(reason, farewell)

    async def _detach(self, session: Session, reason: str) -> None:
        """Take the session away from its user; the user's last session going quits it."""
        user = session.user
        session.detach()
        await self._quit_if_last(user, session.peer, reason)

    async def _end_user(self, user: User, reason: str, keep: Session | None) -> None:
        """Close every session of ``user`` but ``keep``, telling each ``reason``."""
        farewell = Error(code="closed", message=f"closing: {reason}")
        for session in list(user.sessions):
            if session is not keep:
                await self.disconnect(session, reason, farewell)

    async def _log_out_everywhere(self, session: Session) -> list[Event]:
        user = user_of(session)
        if user.account_id is None:
            raise ClientError(
                "guest", "you are a guest: /logout drops your name, there is nothing else"
            )
        account = await self._accounts.revoke(user.account_id, keep=session)
        if session.user is not user:  # closed while the store answered
            return []
        await self._detach(session, EVERYWHERE)
        return [
            Info(
                text=f"logged out everywhere: every session and token of {account.name} ended;"
                " choose a name, or /login name password"
            )
        ]

    async def _quit_if_last(self, user: User | None, peer: str, reason: str) -> None:
        """If ``user`` has no session left, take it offline and out of every room at once,
        then store the quits (one write) that its rooms are told."""
        if user is None or user.sessions:
            return
        self.core.remove_user(user)
        if user.inbox is not None:
            user.inbox.close()
        quiet_above, draft = self.limits.quiet_above, self._draft
        rooms = [r for r in user.rooms.values() if len(r.members) <= quiet_above]
        now, signed = self._clock(), user.registered
        drafts = [draft(r, user.name, Kind.QUIT, reason, now, signed) for r in rooms]
        stored = self._queue(rooms, drafts) if drafts else None  # keeps those rooms open
        for room in list(user.rooms.values()):
            self._membership.remove_member(user, room, forget_marks=False)
        log.info("quit name=%s peer=%s reason=%s", user.name, peer, reason)
        # The user is gone from the hub now: what follows only stores and tells.
        if stored is not None:
            try:
                quits = await stored
            except Broken as e:
                log_failure(e, "could not store the quits of %s", user.name)
            else:
                for quit_message in quits:
                    if user.marks.get(quit_message.room) == quit_message.seq - 1:
                        user.mark(quit_message.room, quit_message.seq)  # all read: so is this
        await self._upkeep.flush(user)

    def _unname(self, session: Session, user: User) -> None:
        """Undo a name or a login that the store failed half-way: ``session`` is NEW again
        as if it had never been named, and ``user``, unless another of its sessions is
        online, goes without a word (its joins were not stored: nobody was told of them)."""
        session.detach(keep=False)
        if user.sessions or self.core.users.get(fold(user.name)) is not user:
            return
        self.core.remove_user(user)
        if user.inbox is not None:
            user.inbox.close()
        for room in list(user.rooms.values()):
            self._membership.remove_member(user, room, forget_marks=True, keep=False)
        log.info("name undone name=%s peer=%s", user.name, session.peer)

    async def close(self, reason: str = "server shutting down") -> None:
        """Close every session (telling their rooms) and every room channel, and stop the
        password workers."""
        for session in list(self.core.sessions):
            await self.disconnect(session, reason)
        rooms = self.core.rooms
        for room in rooms.values():
            room.tx.close()
        rooms.clear()
        self.core.passwords.close()


def _failed(session: Session, error: Broken) -> Error:
    """Log a store failure met on ``session``'s behalf; the error to send it. A store
    that cannot take writes is one line each (the store logged why once), not a trace."""
    if isinstance(error, Unwritable):
        log.warning("store not writable for peer=%s: %s", session.peer, error)
        return NOT_WRITABLE
    log.exception("store failure for peer=%s", session.peer)
    return UNAVAILABLE


def _illegal(session: Session, command: Command) -> ClientError:
    """The precise refusal of a command that ``session``'s state does not accept."""
    got = type(command).__name__
    if session.state is State.NEW:
        return ClientError("no_name", f"expected a name first, got {got}: choose a name")
    if session.state is State.ACTIVE and isinstance(command, SetName | Login | Authenticated):
        return ClientError("has_name", f"you already have a name, got {got}: log out first")
    return ClientError("closed", f"the session is closed, got {got}")
