"""Rooms: who is in which, joining and leaving, and the lists of rooms. No sockets, no SQL.

Room membership belongs to the user (all its sessions are in the same rooms); the current
room, where plain text goes, to the session. When a session's current room is left, the room
it joined before becomes current and the session is told so. A room exists while it is open
or has stored history (#general always); an open room nobody is in, watches or is storing a
message of is forgotten (``Core.drop_if_unused``), and its numbering continues when it comes
back.

Joins, leaves and quits are announced (and stored) in rooms of up to ``Limits.quiet_above``
members; in bigger rooms they would drown the conversation, and each would cost a delivery
to every member. A registered user's memberships persist: at login it is put back in its
rooms (``enter``) with what it missed replayed. A join or leave the store fails is undone:
the user's rooms are as they were and nobody was told.

A watcher (``watch``: Server-Sent Events) is a session that only reads one room: it is no
member, keeps the room open, and is counted apart.
"""

from __future__ import annotations

import heapq

from roomcast.core import GENERAL, Core, log_failure, room_name, user_of
from roomcast.errors import Broken, ClientError
from roomcast.messages import Messages
from roomcast.model import Event, Info, Kind, RoomEntry, RoomList, Summary, WhoList, fold
from roomcast.session import Room, Session, State, User

__all__ = ["JOIN_WHO_LIMIT", "WHO_LIMIT", "Membership"]

WHO_LIMIT = 1000  # names in a who answer
JOIN_WHO_LIMIT = 100  # names in the member list that answers a join


class Membership:
    """Joins, leaves, who, the room lists, login catch-up and watchers, over the core's
    room table."""

    def __init__(self, core: Core, messages: Messages) -> None:
        self._core = core  # the shared state: rooms, users, store, limits
        self._messages = messages  # stores and sends the joins and leaves

    # -- joining and leaving --

    async def join(self, session: Session, name: str, since: int | None) -> list[Event]:
        """Put ``session``'s user in room ``name`` (all its sessions), announce it, make it
        current; replay from after ``since`` if given. Answers the member list."""
        core = self._core
        user = user_of(session)
        room = user.rooms.get(name)
        if room is not None:
            session.current = name
            if since is not None:
                session.replay(name, since + 1)
            return [Info(text=f"you are in {name}")]
        if len(user.rooms) >= core.limits.max_rooms:
            raise ClientError(
                "too_many_rooms", f"you are in {len(user.rooms)} rooms, the most allowed: leave one"
            )
        room = await core.open_room(name)
        if session.user is not user:  # logged out or closed while the store answered
            core.drop_if_unused(room)
            return []
        if name in user.rooms:  # another session of the user joined it meanwhile
            return await self.join(session, name, since)
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
                await core.store.set_membership(user.name, name, read_seq=read)
                stored = True
            await self._messages.announce(room, user, Kind.JOIN, "")
        except Broken:
            self._unjoin(session, user, room, previous)
            if stored:
                await self._set_membership(user.name, name, None)
            raise
        return self.who(room, JOIN_WHO_LIMIT)

    def _unjoin(self, session: Session, user: User, room: Room, previous: str | None) -> None:
        """Undo a join whose store step failed: the user is out of ``room`` as if it had
        never joined, and ``session`` talks to the room it talked to before."""
        if user.rooms.get(room.name) is room:
            self.remove_member(user, room, forget_marks=True, keep=False)
        if session.user is user and (previous is None or previous in session.rooms):
            session.current = previous

    async def _set_membership(self, name: str, room: str, read_seq: int | None) -> None:
        """Put back what a command that failed half-way changed in the store's memberships;
        when that fails too, say in the log what stays wrong."""
        try:
            await self._core.store.set_membership(name, room, read_seq=read_seq)
        except Broken as e:
            log_failure(
                e,
                "could not undo the membership of %s in %s: it stays %s in the store",
                name,
                room,
                "out" if read_seq is not None else "in",
            )

    async def leave(self, session: Session, room: Room) -> list[Event]:
        """Take ``session``'s user out of ``room`` and announce it; every session whose
        current room it was is told where its text goes now."""
        user = user_of(session)
        store = self._core.store
        # The store steps first, the membership before the announcement; the room is left
        # once both are done: a failure leaves the user in the room, as it was.
        if user.registered:
            await store.set_membership(user.name, room.name, read_seq=None)
        try:
            await self._messages.announce(room, user, Kind.LEAVE, "left")
        except Broken:
            if user.registered and user.rooms.get(room.name) is room:
                await self._set_membership(user.name, room.name, user.marks.get(room.name, 0))
            raise
        if user.rooms.get(room.name) is not room:  # left by another session meanwhile
            return [Info(text=f"you left {room.name}")]
        # Each session whose current room this was moves on to another: say which, so that
        # nobody's plain text goes to another room unannounced.
        moved = [s for s in user.sessions if s.current == room.name]
        self.remove_member(user, room, forget_marks=True)
        for other in moved:
            if other is not session:
                other.tell(Info(text=_where_now(room.name, other, "from another connection")))
        if session in moved:
            return [Info(text=_where_now(room.name, session))]
        return [Info(text=f"you left {room.name}")]

    def remove_member(
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
        self._core.drop_if_unused(room)

    async def enter(
        self, session: Session, user: User, name: str, read_seq: int
    ) -> tuple[Room | None, int]:
        """Put a logged-in session in one of its user's rooms and replay what it missed;
        return the room (``None`` if the session went meanwhile) and how many messages people
        wrote meanwhile (joins and quits are replayed but are not news: they are not counted)."""
        core = self._core
        room = await core.open_room(name)
        if session.state is not State.ACTIVE:
            return None, 0
        if name not in user.rooms:  # a member (the room stays open) while the store counts
            user.rooms[name] = room
            room.members[fold(user.name)] = user
        read = max(read_seq, user.marks.get(name, 0))
        user.marks.setdefault(name, read)
        live = room.tx.next_seq  # the session reads the room from here; before, a replay
        missed = live - 1 - read
        said = await core.store.said(name, after=read, before=live) if missed > 0 else None
        if session.user is not user or user.rooms.get(name) is not room or name in session.rooms:
            return None, 0  # gone meanwhile, or left and joined again by another session
        # Subscribed only now, from `live`, and the replay set at once: nothing said while
        # the store counted can reach the session before its catch-up.
        session.subscribe(name, room.tx, from_seq=live)
        session.current = session.current or name
        unread = 0
        if missed > 0:
            assert said is not None
            replayed = min(missed, core.limits.replay_cap)
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

    # -- who is there, and which rooms there are --

    async def who_of(self, session: Session, name: str | None) -> list[Event]:
        """Who is in a room, member or not; a room nobody is in but that has history has
        nobody (and is not opened for the question)."""
        name = room_name(session, name)
        room = self._core.rooms.get(name)
        if room is not None:
            return self.who(room, WHO_LIMIT)
        await self.check_exists(name)
        room = self._core.rooms.get(name)  # opened while the store answered
        if room is not None:
            return self.who(room, WHO_LIMIT)
        return [WhoList(room=name, names=(), total=0)]

    async def check_exists(self, name: str, latest_seq: int | None = None) -> None:
        """Raise ``no_such_room`` unless ``name`` is #general (always there), is open or has
        stored messages (its ``latest_seq``, when the caller read it already, saves a store
        read)."""
        rooms = self._core.rooms
        if name == GENERAL or name in rooms:
            return
        if latest_seq is None:
            latest_seq = (await self._core.store.room(name)).latest_seq
        if latest_seq == 0 and name not in rooms:
            raise ClientError("no_such_room", f"there is no room {name}: /rooms lists them")

    @staticmethod
    def who(room: Room, limit: int) -> list[Event]:
        """The first ``limit`` member names, sorted: O(members), not O(members log members),
        so that thousands joining a big room do not cost the square of their number."""
        members = room.members
        if len(members) <= limit:
            names = sorted((u.name for u in members.values()), key=fold)
        else:
            names = heapq.nsmallest(limit, (u.name for u in members.values()), key=fold)
        return [WhoList(room=room.name, names=tuple(names), total=len(members))]

    def room_list(self) -> RoomList:
        """The rooms open now (with members online, or watched), sorted, with their member
        counts. No store read: ``rooms`` lists every room."""
        return RoomList(
            rooms=tuple(
                RoomEntry(name=name, members=len(room.members))
                for name, room in sorted(self._core.rooms.items())
            )
        )

    async def rooms(self, session: Session) -> RoomList:
        """Every room, sorted: those open now and those only the store knows (nobody online,
        history kept), with their member counts; for ``session``'s own rooms, how many
        messages its user has not been sent yet; and its current room.

        One store read (the names), then O(rooms) in memory: the unread counts come from the
        read markers and the receivers, not from the store."""
        stored = await self._core.store.rooms()
        user = session.user  # read after the store answered: what is true now
        open_rooms = self._core.rooms
        # The store's names come sorted: sorting them with the open rooms appended is one
        # linear pass of merging (Timsort finds the runs), then duplicates are adjacent.
        names = sorted([*stored, *open_rooms])
        entries = []
        previous = None
        for name in names:
            if name == previous:
                continue
            previous = name
            room = open_rooms.get(name)
            if room is None:
                entries.append(RoomEntry(name=name, members=0))
                continue
            unread = None
            if user is not None and user.rooms.get(name) is room:
                unread = _unread(user, room)
            entries.append(RoomEntry(name=name, members=len(room.members), unread=unread))
        return RoomList(rooms=tuple(entries), current=session.current)

    async def all_rooms(self) -> RoomList:
        """Every room, sorted: those open now and those only the store knows, with how many
        members each has online. The list a client that is not a session reads (HTTP)."""
        open_rooms = self._core.rooms
        entries = []
        for name in sorted({*await self._core.store.rooms(), *open_rooms}):
            room = open_rooms.get(name)
            entries.append(RoomEntry(name=name, members=0 if room is None else len(room.members)))
        return RoomList(rooms=tuple(entries))

    # -- watchers --

    async def watch(self, peer: str, room: str, since: int | None) -> Session:
        """A session that only reads ``room`` (Server-Sent Events): it replays the messages
        after ``since`` (none when ``None``), then follows live. Close it with ``unwatch``."""
        core = self._core
        room_obj = await core.open_room(room)
        session = Session(peer, core.store, refill_page=core.limits.refill_page)
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
            room = self._core.rooms.get(name)
            if room is not None:
                room.watchers -= 1
                self._core.drop_if_unused(room)


def _unread(user: User, room: Room) -> int:
    """How many of ``room``'s messages none of ``user``'s sessions has been sent yet."""
    read = user.marks.get(room.name, 0)  # a registered user's marker (guests have none)
    for s in user.sessions:
        read = max(read, s.delivered(room.name) or 0)
    return max(0, room.tx.next_seq - 1 - read)


def _where_now(left: str, session: Session, how: str = "") -> str:
    """What a session that left ``left``, its current room, is told: where its text goes."""
    done = f"you left {left} {how}" if how else f"you left {left}"
    if session.current is None:
        return f"{done}; you are in no room now: /join #room to talk"
    return f"{done}; text now goes to {session.current}"
