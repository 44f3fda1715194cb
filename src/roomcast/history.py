"""History: pages of a room's or a private conversation's past, and search. No sockets, no SQL.

The one history API of every transport: ``FetchHistory`` and ``Search`` from a client, and
``Hub.history`` from the HTTP API, all read the store through ``Archive``. Every answer is
capped at ``Limits.history_cap`` messages and says so when it was.

A private conversation's history is read by its two people only, each as the identity it has
now (``Archive.private_history``).
"""

from __future__ import annotations

import functools

from roomcast.core import Core, room_name, user_of
from roomcast.model import Event, FetchHistory, History, PrivateHistory, SearchResults
from roomcast.rooms import Membership
from roomcast.session import Session, User

__all__ = ["Archive"]


class Archive:
    """Reads the past from the store: history pages, private conversations, search."""

    def __init__(self, core: Core, membership: Membership) -> None:
        self._core = core  # the shared state: the store, the limits
        self._membership = membership  # knows which rooms exist

    def _capped(self, limit: int) -> tuple[int, int | None]:
        cap = self._core.limits.history_cap
        return (cap, cap) if limit > cap else (limit, None)

    async def fetch(self, session: Session, command: FetchHistory) -> list[Event]:
        """Answer ``session``'s ``FetchHistory``: a page of a room or of a conversation."""
        if command.user is not None:
            return [await self.private_history(user_of(session), command.user, command)]
        room = room_name(session, command.room)
        return [await self.history(room, command)]

    async def private_history(
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
            self._core.store.conversation, user.name, other, signed=signed, first=first
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
        store = self._core.store
        limit, capped = self._capped(request.limit)
        if request.around is not None:
            older = await store.history(room, before=request.around, limit=limit // 2)
            newer = await store.history(
                room, after=request.around - 1, limit=limit - len(older.messages)
            )
            messages = older.messages + newer.messages
            page = newer
        else:
            page = await store.history(
                room, before=request.before, after=request.after, limit=limit
            )
            messages = page.messages
        await self._membership.check_exists(room, page.latest_seq)
        return History(
            room=room,
            messages=messages,
            oldest_seq=page.oldest_seq,
            latest_seq=page.latest_seq,
            capped=capped,
        )

    async def search(
        self, session: Session, room: str | None, words: str, limit: int
    ) -> list[Event]:
        """The messages of a room (``session``'s current one if ``None``) that hold
        ``words``, newest first."""
        name = room_name(session, room)
        limit, capped = self._capped(limit)
        found = await self._core.store.search(name, words, limit=limit)
        if not found:
            await self._membership.check_exists(name)
        return [SearchResults(room=name, words=words, messages=tuple(found), capped=capped)]
