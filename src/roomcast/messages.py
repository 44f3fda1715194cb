"""Messages: from a draft to every member. No sockets, no SQL.

Every room is a broadcast channel of ``Message`` values. A room message is built as a
``Draft``, stored (the store gives it the room's next sequence number and returns once it is
durable), then sent into the room's channel: every member's session holds a receiver on it,
so the sender gets its own message back like everyone else, and that echo is its
acknowledgement. ``Messages.queue`` is that step, for a run of drafts in one store write:
the hot path of the chat, with ``Hub.say`` in front of it.

Private messages go through a per-user channel the same way (made on the user's first one);
to a registered user who is away, they are only stored. A post (``Hub.post``: a bot or a
script over HTTP) is a room message of a registered user without a session, under a flood
limit of its own.
"""

from __future__ import annotations

import asyncio

from roomcast.broadcast import Receiver, channel
from roomcast.core import Core, user_of
from roomcast.errors import ClientError
from roomcast.flood import Bucket
from roomcast.model import (
    Draft,
    Event,
    Info,
    Kind,
    Message,
    Private,
    PrivateDraft,
    Say,
    fold,
)
from roomcast.session import Room, Session, User

__all__ = ["Messages"]


class Messages:
    """Stores and sends what is said: room messages, announcements, private messages,
    posts."""

    def __init__(self, core: Core) -> None:
        self._core = core  # the shared state: rooms, users, store, limits
        # read once, as the hot path uses them for every message
        self._new_id = core.new_id
        self._clock = core.clock
        self._store = core.store
        self._drop_if_unused = core.drop_if_unused
        self._post_buckets: dict[str, Bucket] = {}  # flood control of posts, per account

    # -- room messages --

    def draft(
        self, room: Room, sender: str, kind: Kind, text: str, now: float, signed: bool
    ) -> Draft:
        """A message of ``sender`` (signed in if ``signed``) for ``room``, not stored yet."""
        return Draft(
            id=self._new_id(),
            room=room.name,
            sender=sender,
            kind=kind,
            text=text,
            ts=now,
            signed=signed,
        )

    def queue(self, rooms: list[Room], drafts: list[Draft]) -> asyncio.Future[list[Message]]:
        """Queue ``drafts`` (``drafts[i]`` in ``rooms[i]``) for the store in one write; each is
        broadcast as soon as it is durable: the store calls back on the loop, so no task
        switch comes between the commit and the broadcast, and a cancelled caller cannot leave
        a stored message unsent. The rooms stay open until then."""
        settled = False
        drop_if_unused = self._drop_if_unused

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
                drop_if_unused(room)

        def failed(stored: asyncio.Future[list[Message]]) -> None:
            if not stored.cancelled() and stored.exception() is not None:
                settle(None)  # nothing was stored

        for room in rooms:
            room.appending += 1
        stored = self._store.append_many(drafts, then=settle)
        stored.add_done_callback(failed)
        return stored

    async def publish(
        self, room: Room, sender: str, kind: Kind, text: str, *, signed: bool
    ) -> Message:
        """Store and broadcast a message of ``sender``, who is signed in if ``signed``."""
        draft = self.draft(room, sender, kind, text, self._clock(), signed)
        (message,) = await self.queue([room], [draft])
        return message

    async def say(self, session: Session, room: Room, kind: Kind, text: str) -> None:
        """``session``'s user says ``text`` (a message or an action) in ``room``."""
        user = user_of(session)
        await self.publish(room, user.name, kind, text, signed=user.registered)

    async def announce(self, room: Room, user: User, kind: Kind, text: str) -> Message | None:
        """Tell ``room`` that ``user`` came or went, unless the room is too big for that to be
        news (above ``quiet_above`` members; who is there is a /who away)."""
        if len(room.members) > self._core.limits.quiet_above:
            return None
        return await self.publish(room, user.name, kind, text, signed=user.registered)

    async def announce_all(self, rooms: list[Room], user: User, kind: Kind, text: str) -> None:
        """``announce`` in each of ``rooms`` in one store write: every room is told, or
        (the store failed) none is."""
        loud = [room for room in rooms if len(room.members) <= self._core.limits.quiet_above]
        if loud:
            now, signed = self._clock(), user.registered
            drafts = [self.draft(r, user.name, kind, text, now, signed) for r in loud]
            await self.queue(loud, drafts)

    async def post(self, name: str, room: str, text: str) -> Message:
        """Say ``text`` in ``room`` as the registered user ``name``, without a session
        (bots, scripts): the room need not be joined. Returns the stored message."""
        say = Say(text=text, room=room)
        assert say.room is not None
        limits = self._core.limits
        bucket = self._post_buckets.get(fold(name))
        if bucket is None:
            bucket = self._post_buckets[fold(name)] = Bucket(
                limits.rate, limits.burst, self._clock()
            )
        if not bucket.take(self._clock()):
            raise ClientError("flood", "you are posting too fast: wait a moment, then retry")
        room_obj = await self._core.open_room(say.room)
        return await self.publish(room_obj, name, Kind.MESSAGE, say.text, signed=True)

    # -- private messages --

    async def private(self, session: Session, to: str, text: str) -> list[Event]:
        """``session``'s user sends ``text`` to the user ``to``, online or registered."""
        core = self._core
        user = user_of(session)
        target = core.users.get(fold(to))
        if target is not None:
            to_name, to_signed = target.name, target.registered
        else:
            account = await core.store.account(to)
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
        private = await core.store.append_private(draft)
        for guest, epoch in guests:
            guest.took_part(private.seq, epoch)
        recipient = core.users.get(fold(to_name))  # may have come or gone meanwhile
        if recipient is not None:
            self._send_private(recipient, private)
        if recipient is not user:
            self._send_private(user, private)
        if recipient is None:
            return [Info(text=f"{to_name} is away: they will get it when they log in")]
        return []

    def _send_private(self, user: User, private: Private) -> None:
        """Into ``user``'s private channel, made on its first private message; a user that
        has gone gets it from the store."""
        if not user.sessions:
            return
        inbox = user.inbox
        if inbox is None:
            first: Receiver[Private]
            inbox, first = channel(self._core.limits.inbox_capacity)
            first.close()
            user.inbox = inbox
            for session in user.sessions:
                session.open_inbox(inbox)
        inbox.send(private)
