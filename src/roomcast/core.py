"""The chat core's shared state, and the few words every part of it uses. No sockets, no SQL.

The chat core is a ``Hub`` (``roomcast.hub``) and the parts it carries commands out with,
one job per module, all sharing one ``Core``:

    hub.py       Hub: the state table, command dispatch, the session lifecycle; the API
                 that transports and the server call
    rooms.py     Membership: join, leave, who, the room lists, login catch-up, watchers
    messages.py  Messages: room messages from draft to broadcast (the hot path), private
                 messages, posts
    history.py   Archive: history pages, private conversations, search
    accounts.py  Names: free names, look-alikes, nick; Accounts: registration, logins and
                 their throttles, tokens
    upkeep.py    Upkeep: what runs on a timer: read markers, retention, account checks
    flood.py     Flood: how fast each session may send (pace, allowance); Bucket
    session.py   Session: one connection's delivery; the online values Room and User

``Core`` holds what they share: the store, the limits, the clock, and the online tables
(rooms, users, sessions). The tables are changed in place and never replaced, so every part
reads the same ones through ``core``. ``Core`` also keeps the two operations that keep the
room table true (``open_room``, ``drop_if_unused``) and the two that keep the user table and
its look-alike index together (``add_user``, ``remove_user``).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from roomcast.auth import Passwords
from roomcast.broadcast import Sender, channel
from roomcast.errors import Broken, ClientError, Unwritable
from roomcast.model import Message, fold
from roomcast.names import Lookalikes
from roomcast.session import Room, Session, User
from roomcast.store.base import Storage

__all__ = [
    "GENERAL",
    "Core",
    "EndUser",
    "Limits",
    "log_failure",
    "member_room",
    "new_id",
    "room_name",
    "user_of",
]

# The chat core logs as one component, whichever module a line comes from: operators
# filter on this name.
log = logging.getLogger("roomcast.hub")

GENERAL = "#general"  # the room every new guest joins; it always exists

# Ends the sessions of an online user but one (``Hub`` does it: the session lifecycle is
# the hub's); the parts that revoke or check accounts are given it.
EndUser = Callable[[User, str, Session | None], Awaitable[None]]


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


def new_id() -> str:
    """A message id unique across processes and restarts: 72 random bits chosen when the
    process starts, then a counter (a system call per message cost 7 % of the hot path)."""
    return f"{_ID_PREFIX}{next(_id_counter):x}"


class Core:
    """The state one hub's parts share: its store, limits and clock, and who and what is
    online. One per ``Hub``."""

    __slots__ = (
        "clock",
        "limits",
        "looks",
        "new_id",
        "passwords",
        "room_lock",
        "rooms",
        "sessions",
        "store",
        "users",
    )

    def __init__(
        self,
        store: Storage,
        *,
        passwords: Passwords,
        limits: Limits,
        clock: Callable[[], float],
        new_id: Callable[[], str],
    ) -> None:
        self.store = store  # durable history and accounts; assigns sequence numbers
        self.passwords = passwords  # hashes and checks passwords on worker threads
        self.limits = limits
        self.clock = clock  # wall-clock seconds (UTC epoch); injected for tests
        self.new_id = new_id  # message id generator
        self.rooms: dict[str, Room] = {}  # room name -> room open now (members, watchers)
        self.users: dict[str, User] = {}  # folded name -> online user
        self.looks = Lookalikes()  # the names of users, by skeleton
        self.sessions: set[Session] = set()  # every open session (not watchers)
        self.room_lock = asyncio.Lock()  # serializes room creation (it reads the store)

    # -- the user table --

    def add_user(self, user: User) -> None:
        """Put ``user`` online under its name (the caller checked that the name is free)."""
        self.users[fold(user.name)] = user
        self.looks.add(user.name)

    def remove_user(self, user: User) -> None:
        """Take ``user`` offline: its name is free again."""
        self.users.pop(fold(user.name), None)
        self.looks.discard(user.name)

    # -- the room table --

    async def open_room(self, name: str) -> Room:
        """The open room ``name``, opened now if it is not: its channel numbers on from the
        room's newest stored message."""
        room = self.rooms.get(name)
        if room is not None:
            return room
        async with self.room_lock:
            room = self.rooms.get(name)
            if room is None:
                info = await self.store.room(name)
                tx: Sender[Message]
                tx, rx = channel(self.limits.ring_capacity, first_seq=info.latest_seq + 1)
                rx.close()
                room = self.rooms[name] = Room(name, tx)
            return room

    def drop_if_unused(self, room: Room) -> None:
        """Forget a room nobody is in, watches or is storing a message of (its history stays
        in the store); #general always stays."""
        if room.members or room.appending or room.watchers or room.name == GENERAL:
            return
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        room.tx.close()


# -- lookups: what a command names, from its session --


def user_of(session: Session) -> User:
    """The user of a named session."""
    if session.user is None:  # pragma: no cover - the state table prevents it
        raise ClientError("no_name", "expected a name first: choose a name")
    return session.user


def room_name(session: Session, name: str | None) -> str:
    """The room named, or the session's current room."""
    if name is not None:
        return name
    if session.current is None:
        raise ClientError("no_room", "you are in no room: join one first")
    return session.current


def member_room(session: Session, name: str | None) -> Room:
    """The room named (or the session's current room), which its user must be in."""
    name = room_name(session, name)
    room = user_of(session).rooms.get(name)
    if room is None:
        raise ClientError("not_member", f"you are not in {name}: join it first")
    return room


def log_failure(error: Broken, what: str, *args: object) -> None:
    """Log a store failure met in the background: one line when the store cannot take
    writes (it logged why, once), the traceback otherwise."""
    if isinstance(error, Unwritable):
        log.warning(what + ": %s", *args, error)
    else:
        log.error(what, *args, exc_info=error)
