"""Upkeep: what the chat core does on a timer, not on a command. No sockets, no SQL.

``Hub.maintain`` runs it for the server: every second the registered users' moved read
markers are written in one batch; every hour the history is cut to the retention limits
(``Limits.retain_age``, ``Limits.retain_count``); every 30 s the online accounts are checked
against the store, and the sessions of an account deleted or revoked beside the server
(``roomcast user``) are ended. A failure of the store is logged and tried again next time:
upkeep never stops the server.
"""

from __future__ import annotations

import asyncio
import logging

from roomcast.accounts import DELETED, EVERYWHERE
from roomcast.core import Core, EndUser, log_failure
from roomcast.errors import Broken
from roomcast.model import fold
from roomcast.session import User

__all__ = ["Upkeep"]

log = logging.getLogger("roomcast.hub")  # the chat core logs as one (see roomcast.core)


class Upkeep:
    """Read markers, retention and account checks, on demand or on a timer (``maintain``)."""

    def __init__(self, core: Core, end_user: EndUser) -> None:
        self._core = core  # the shared state: users, the store, limits, clock
        self._end_user = end_user  # ends the sessions of a revoked or deleted account

    async def flush_markers(self) -> None:
        """Write every registered user's moved read markers to the store, in one batch."""
        for user in list(self._core.users.values()):
            await self.flush(user)

    async def flush(self, user: User) -> None:
        """Write ``user``'s read markers if they moved (and it is registered); on a store
        failure, log it and keep them to write next time."""
        if not (user.registered and user.dirty):
            return
        user.dirty = False
        store = self._core.store
        try:
            await store.advance_read({(user.name, r): s for r, s in user.marks.items()})
            await store.advance_private_read(user.name, user.private_mark)
        except Broken as e:
            user.dirty = True
            log_failure(e, "could not write the read markers of %s", user.name)

    async def apply_retention(self) -> int:
        """Cut every room's history to the retention limits; return how many were removed."""
        core = self._core
        age, count = core.limits.retain_age, core.limits.retain_count
        if age is None and count is None:
            return 0
        removed = 0
        for room in await core.store.rooms():
            removed += await core.store.retain(room, max_age=age, max_count=count, now=core.clock())
        if removed:
            log.info("retention removed %d messages", removed)
        return removed

    async def check_accounts(self) -> int:
        """End the sessions of every online account that was deleted, or whose tokens were
        revoked, since it logged in (by ``roomcast user`` beside the running server);
        return how many accounts that was."""
        users = self._core.users
        ended = 0
        for user in list(users.values()):
            if user.account_id is None:
                continue
            account = await self._core.store.account_by_id(user.account_id)
            if account is not None and account.generation == user.generation:
                continue
            if users.get(fold(user.name)) is not user:  # gone meanwhile
                continue
            reason = DELETED if account is None else EVERYWHERE
            log.info("ending the sessions of name=%s reason=%s", user.name, reason)
            await self._end_user(user, reason, None)
            ended += 1
        return ended

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
