"""Names and accounts: who may take which name, registration, logins, tokens. No sockets, no SQL.

Names
-----
Names are unique case-insensitively among online users, and a guest cannot take a registered
name, nor a name that looks like one online or registered (``roomcast.names``: ``aIice``,
``a1ice`` and ``alice_`` look like ``alice``). Every new guest joins ``#general``. A guest may
change its name (``/nick``); a registered name cannot change. A name being registered is
reserved while its password hashes: no guest can take it, or a name that looks like it,
meanwhile. ``Names`` keeps these rules.

Accounts and tokens
-------------------
An account has a stable id and a token generation (``store.base.Account``). A token names
both; ``authenticate`` refuses it once the account is gone or its generation has moved on (a
password change, ``/logout all``, ``POST /api/logout``), on every use. Revoking through the
hub also ends the account's open sessions at once; a change made beside the server
(``roomcast user``) ends them at the next account check (``upkeep.Upkeep``).

A registered user's memberships and read markers persist: on login it is put back in its
rooms and gets, for each, a summary and the messages it missed (the newest ``replay_cap``),
then its private messages sent while it was away. A login's joins are one write: all rooms
are told, or none. A registration whose rooms cannot be stored deletes its account again.

Password checks and registrations are throttled before the hash is computed: each takes a
slot per key (name and address, address, name) that counts while it is in flight, so
requests sent together cannot all be checked (``auth.Throttle``). ``Accounts`` keeps these.
"""

from __future__ import annotations

import logging
import math
from collections import deque

from roomcast.auth import Throttle, address_key, check_password
from roomcast.core import GENERAL, Core, EndUser, log_failure, user_of
from roomcast.errors import Broken, ClientError
from roomcast.messages import Messages
from roomcast.model import Event, Info, Kind, Unread, Welcome, fold, user_name
from roomcast.names import (
    Lookalikes,
    lookalike_online,
    lookalike_registered,
    lookalike_reserved,
)
from roomcast.rooms import Membership
from roomcast.session import Session, State, User
from roomcast.store.base import Account

__all__ = ["DELETED", "EVERYWHERE", "KNOWN_ADDRESSES", "Accounts", "Names"]

log = logging.getLogger("roomcast.hub")  # the chat core logs as one (see roomcast.core)

KNOWN_ADDRESSES = 8  # addresses remembered per name that logged in as it (see verify_login)
EVERYWHERE = "logged out everywhere"  # why the sessions of revoked tokens are ended
DELETED = "logged out: the account was deleted"  # why a deleted account's sessions are ended


class Names:
    """Which names are free: online users, names being registered, look-alikes of either
    or of an account; naming a guest and renaming it."""

    def __init__(self, core: Core, membership: Membership, messages: Messages) -> None:
        self._core = core  # the shared state: users and their look-alike index, the store
        self._membership = membership  # a new guest joins #general
        self._messages = messages  # a rename is told in the user's rooms
        self._reserved: set[str] = set()  # folded names whose registration is hashing
        self._reserved_looks = Lookalikes()  # the same names, by skeleton

    async def set_name(self, session: Session, name: str) -> list[Event]:
        """Make ``session`` a guest named ``name`` (if free), in #general."""
        await self.check_free(name)
        if session.state is not State.NEW:  # closed while the store answered
            return []
        user = User(name, registered=False)
        self._core.add_user(user)
        session.attach(user)
        log.info("named name=%s peer=%s", name, session.peer)
        replies: list[Event] = [Welcome(name=name)]
        replies += await self._membership.join(session, GENERAL, None)
        return replies

    def check_unclaimed(self, name: str, current: str | None = None) -> None:
        """Raise unless ``name`` is neither online nor being registered, and looks like no
        name that is: none online besides ``current`` (the asker's own name, for /nick), none
        being registered (not even the asker's own, while its /register hashes)."""
        if fold(name) in self._core.users:
            raise ClientError("name_taken", f"the name {name!r} is taken: choose another")
        if fold(name) in self._reserved:
            raise ClientError(
                "name_taken", f"the name {name!r} is being registered: choose another"
            )
        other = self._core.looks.like(name, besides=current)
        if other is not None:
            raise lookalike_online(name, other)
        other = self._reserved_looks.like(name)  # even the asker's own name: /nick a1ice
        if other is not None:
            raise lookalike_reserved(name, other)

    async def check_free(self, name: str, current: str | None = None) -> None:
        """Raise unless a guest (named ``current``, for /nick) may take ``name``: nobody
        online or registering has it or a name like it, and it neither is nor looks like a
        registered name (``roomcast.names``). Online first, then the store (one indexed
        lookup)."""
        self.check_unclaimed(name, current)
        account = await self._core.store.account_like(name)
        if account is not None and fold(account.name) == fold(name):
            raise ClientError(
                "registered",
                f"{account.name!r} is registered: /login {account.name} <password>,"
                " or pick another name",
            )
        if account is not None:
            raise lookalike_registered(name, account.name)
        self.check_unclaimed(name, current)  # taken while the store answered

    def reserve(self, name: str) -> None:
        """Hold ``name`` while its registration hashes: nobody can take it, or one like it."""
        self._reserved.add(fold(name))
        self._reserved_looks.add(name)

    def release(self, name: str) -> None:
        """``name``'s registration is over (done or failed)."""
        self._reserved.discard(fold(name))
        self._reserved_looks.discard(name)

    async def nick(self, session: Session, name: str) -> list[Event]:
        """Rename ``session``'s guest to ``name`` (if free) and tell its rooms."""
        user = user_of(session)
        old = user.name
        if user.registered:
            raise ClientError("registered", "a registered name cannot change: register another")
        if fold(name) != fold(old):
            await self.check_free(name, old)
        if session.user is not user or user.name != old:  # changed while the store answered
            raise ClientError("name_taken", f"the name {name!r} is taken: choose another")
        # Renamed first, so that nobody takes the name while the store writes; the rooms are
        # told in one write, and when it fails the old name (and its private history) is back.
        private = user.private_epoch, user.private_floor
        self._rename(user, name)
        rooms = list(user.rooms.values())
        try:
            if rooms:
                now, signed = self._core.clock(), user.registered
                draft = self._messages.draft
                drafts = [draft(r, old, Kind.NICK, name, now, signed) for r in rooms]
                await self._messages.queue(rooms, drafts)
        except Broken:
            if user.name == name and self._core.users.get(fold(name)) is user:  # still online
                self._rename(user, old)
                user.private_epoch, user.private_floor = private
            raise
        log.info("nick old=%s new=%s", old, name)
        return [Info(text=f"you are now known as {name}")]

    def _rename(self, user: User, name: str) -> None:
        """Give the online ``user`` the free ``name``, everywhere the hub looks names up."""
        old = user.name
        self._core.remove_user(user)
        user.name = name
        self._core.add_user(user)
        if fold(name) != fold(old):
            user.renamed()  # what it said privately as `old` is not the new name's history
        for room in user.rooms.values():
            room.members[fold(name)] = room.members.pop(fold(old))


class Accounts:
    """Registration, logins and their throttles, tokens: who a session may be."""

    def __init__(
        self,
        core: Core,
        names: Names,
        membership: Membership,
        messages: Messages,
        end_user: EndUser,
    ) -> None:
        self._core = core  # the shared state: users, the store, passwords, limits, clock
        self._names = names  # which names are free; reserves one while it registers
        self._membership = membership  # a login puts the user back in its rooms
        self._messages = messages  # and tells them, in one write
        self._end_user = end_user  # ends the sessions of a revoked or deleted account
        limits, clock, window = core.limits, core.clock, core.limits.login_window
        self._pair_throttle = Throttle(limits.login_failures, window, clock)  # name + address
        self._name_throttle = Throttle(limits.name_failures, window, clock)  # all addresses
        self._address_throttle = Throttle(limits.address_failures, window, clock)
        self._register_throttle = Throttle(limits.registrations, limits.register_window, clock)
        # folded name -> addresses (newest last) it logged in from: the name's global limit
        # does not apply to them, so a guesser elsewhere cannot lock the owner out
        self._known: dict[str, deque[str]] = {}

    # -- registration --

    async def register(self, session: Session, password: str) -> list[Event]:
        """Make ``session``'s guest a registered user with ``password``; its rooms are kept."""
        user = user_of(session)
        store = self._core.store
        if user.registered:
            raise ClientError("registered", f"{user.name} is registered already")
        check_password(password)
        other = self._core.looks.like(user.name)  # the store checks the registered names
        if other is not None:
            raise lookalike_online(user.name, other)
        account = await self._new_account(user.name, password, session.address)
        # The user becomes registered once its rooms are stored too; if they cannot be, the
        # account goes again and the user stays the guest it was.
        rooms = {name: room.tx.next_seq - 1 for name, room in user.rooms.items()}
        try:
            for name, read in rooms.items():
                await store.set_membership(user.name, name, read_seq=read)
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
            await self._core.store.delete_account(name)
        except Broken as e:
            log_failure(e, "could not delete the account %s whose rooms could not be stored", name)

    async def create_account(self, name: str, password: str, address: str) -> Account:
        """Register ``name`` (not online as a guest, not registered) with ``password``, for
        a client at ``address`` (throttled per address)."""
        user_name(name)
        check_password(password)
        self._names.check_unclaimed(name)
        # before hashing: a name registered, or like one registered, costs no argon2 (the
        # store checks both again as it creates the account)
        taken = await self._core.store.account_like(name)
        if taken is not None and fold(taken.name) == fold(name):
            raise ClientError("name_taken", f"the name {name!r} is registered: choose another")
        if taken is not None:
            raise lookalike_registered(name, taken.name)
        self._names.check_unclaimed(name)  # taken while the store answered
        account = await self._new_account(name, password, address)
        log.info("registered name=%s address=%s", account.name, address)
        return account

    async def _new_account(self, name: str, password: str, address: str) -> Account:
        """Hash ``password`` and store the account ``name``: throttled per address, with the
        name reserved while it hashes (no guest can take it meanwhile). The caller checked
        that the name is free."""
        core = self._core
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
        self._register_throttle.begin(key)
        self._names.reserve(name)
        hashed = False
        try:
            password_hash = await core.passwords.hash(password)
            hashed = True
            return await core.store.create_account(name, password_hash, now=core.clock())
        finally:
            self._names.release(name)
            if self._register_throttle.end(key, count=hashed):
                log.warning(
                    "registrations paused address=%s: %d in %.0f s",
                    key,
                    core.limits.registrations,
                    core.limits.register_window,
                )

    # -- logins and tokens --

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
            account = await self._core.store.account(name)
            right = account is not None and await self._core.passwords.verify(
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
        account = await self._core.store.account_by_id(account_id)
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
        account = await self._core.store.revoke(account_id)
        if account is None:
            raise ClientError("bad_token", "the account no longer exists: log in again")
        log.info("logged out everywhere name=%s", account.name)
        user = self._core.users.get(fold(account.name))
        if user is not None and user.account_id == account.id:
            await self._end_user(user, EVERYWHERE, keep)
        return account

    async def log_in(self, session: Session, account: Account) -> list[Event]:
        """Make ``session`` one of ``account``'s (its password or token was checked): back in
        its rooms, with what it missed in each, then its private messages."""
        core = self._core
        if session.state is not State.NEW:  # logged in elsewhere while verifying
            raise ClientError("has_name", "you already have a name: log out first")
        user = core.users.get(fold(account.name))
        if user is not None and not user.registered:
            raise ClientError("name_taken", f"a guest is using {account.name!r} now: try later")
        if user is not None and user.account_id == account.id:
            if account.generation < user.generation:  # revoked while the password was checked
                raise ClientError("bad_login", "the account changed meanwhile: log in again")
        if user is not None and (user.account_id, user.generation) != (
            account.id,
            account.generation,
        ):  # sessions of a deleted account, or of revoked tokens, not yet checked: end them
            reason = DELETED if user.account_id != account.id else EVERYWHERE
            await self._end_user(user, reason, None)
            if session.state is not State.NEW:
                raise ClientError("has_name", "you already have a name: log out first")
            user = core.users.get(fold(account.name))
            if user is not None:  # someone came in meanwhile
                raise ClientError("name_taken", f"{account.name!r} is in use now: try again")
        returning = user is None
        if user is None:
            user = User(account.name, registered=True)
            user.account_id, user.generation = account.id, account.generation
            user.private_mark = account.private_read_seq
            core.add_user(user)
        session.attach(user)
        log.info("login name=%s peer=%s", account.name, session.peer)
        replies: list[Event] = [Welcome(name=account.name)]
        memberships = dict(await core.store.memberships(account.name))
        if not memberships:
            replies += await self._membership.join(session, GENERAL, None)
        unread = []
        entered = []
        for room_name, read_seq in memberships.items():
            room, missed = await self._membership.enter(session, user, room_name, read_seq)
            if room is not None and returning:
                entered.append(room)
            if missed:
                unread.append((room_name, missed))
        if session.user is user:  # every join in one write: all told, or (failed) none
            await self._messages.announce_all(entered, user, Kind.JOIN, "")
        if unread:
            replies.append(Unread(rooms=tuple(unread)))
        session.replay_privates(user.private_mark)
        return replies
