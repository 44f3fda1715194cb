"""A store that keeps history in memory only: the ephemeral mode, and the hub's tests.

Each room keeps its newest ``keep`` messages, and the store its newest ``keep`` private
messages; everything is gone when the process ends. It honours the same contract as the
durable stores (``tests/store/test_contract.py`` runs against both).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from roomcast.errors import ClientError
from roomcast.model import Draft, Message, Private, PrivateDraft, fold
from roomcast.names import lookalike_registered, skeleton
from roomcast.store.base import Account, Page, PrivatePage, RoomInfo, new_account_id, search_tokens

__all__ = ["MemoryStore"]


class _Room:
    __slots__ = ("latest", "messages")

    def __init__(self, keep: int) -> None:
        self.messages: deque[Message] = deque(maxlen=keep)  # newest `keep`, oldest first
        self.latest = 0  # seq of the newest message ever appended

    @property
    def oldest(self) -> int:
        return self.messages[0].seq if self.messages else self.latest + 1


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    """Whether ``needle`` occurs in ``haystack`` as a contiguous run (a phrase)."""
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


class MemoryStore:
    """An in-process ``Storage``: same contract, no durability."""

    def __init__(self, *, keep: int = 10_000) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._keep = keep  # messages kept per room, and private messages kept
        self._rooms: dict[str, _Room] = {}  # room name -> its history
        self._privates: deque[Private] = deque(maxlen=keep)  # newest private messages
        self._private_seq = 0  # seq of the newest private message
        self._accounts: dict[str, Account] = {}  # folded name -> account
        self._ids: dict[str, str] = {}  # account id -> folded name
        self._skeletons: dict[str, set[str]] = {}  # skeleton(name) -> folded names
        self._memberships: dict[str, dict[str, int]] = {}  # folded name -> room -> read_seq

    def _room(self, room: str) -> _Room:
        r = self._rooms.get(room)
        if r is None:
            r = self._rooms[room] = _Room(self._keep)
        return r

    def _read(self, room: str) -> _Room:
        """``room`` for reading: one never written to is not kept (any name can be asked)."""
        return self._rooms.get(room) or _Room(1)

    # --- Store ------------------------------------------------------------------------------

    async def room(self, room: str) -> RoomInfo:
        r = self._read(room)
        return RoomInfo(room=room, latest_seq=r.latest, oldest_seq=r.oldest)

    async def rooms(self) -> Sequence[str]:
        return sorted(name for name, r in self._rooms.items() if r.latest)

    async def append(self, draft: Draft) -> Message:
        return self._append(draft)

    def _append(self, draft: Draft) -> Message:
        r = self._room(draft.room)
        r.latest += 1
        message = draft.with_seq(r.latest)
        r.messages.append(message)
        return message

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        messages = [self._append(draft) for draft in drafts]
        if then is not None:
            then(messages)
        stored: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()
        stored.set_result(messages)
        return stored

    async def append_private(self, draft: PrivateDraft) -> Private:
        self._private_seq += 1
        private = draft.with_seq(self._private_seq)
        self._privates.append(private)
        return private

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        r = self._read(room)
        oldest = r.oldest
        lo = oldest if after is None else max(oldest, after + 1)
        hi = r.latest + 1 if before is None else min(r.latest + 1, before)
        if after is None:
            lo = max(lo, hi - limit)
        else:
            hi = min(hi, lo + limit)
        held = r.messages
        picked = tuple(held[i - oldest] for i in range(lo, hi)) if lo < hi else ()
        return Page(room=room, messages=picked, oldest_seq=oldest, latest_seq=r.latest)

    async def privates(self, name: str, *, after: int, limit: int) -> Sequence[Private]:
        key = fold(name)
        found = (p for p in self._privates if p.seq > after and fold(p.recipient) == key)
        return [p for _, p in zip(range(max(limit, 0)), found, strict=False)]

    async def conversation(
        self,
        name: str,
        other: str,
        *,
        signed: bool,
        first: int = 1,
        before: int | None = None,
        after: int | None = None,
        limit: int,
    ) -> PrivatePage:
        # A scan of the kept private messages: this store holds at most ``keep`` of them.
        me, them = fold(name), fold(other)

        def readable(p: Private) -> bool:
            ends = (fold(p.sender), fold(p.recipient))
            if p.seq < first or ends not in ((me, them), (them, me)):
                return False
            return (ends[0] == me and p.signed is signed) or (
                ends[1] == me and p.recipient_signed is signed
            )

        held = [p for p in self._privates if readable(p)]
        latest = held[-1].seq if held else 0
        oldest = held[0].seq if held else latest + 1
        inside = [
            p
            for p in held
            if (before is None or p.seq < before) and (after is None or p.seq > after)
        ]
        if limit < 1:
            inside = []
        elif after is None:
            inside = inside[-limit:]
        else:
            inside = inside[:limit]
        return PrivatePage(messages=tuple(inside), oldest_seq=oldest, latest_seq=latest)

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        phrases = [t for t in map(search_tokens, words.split()) if t]
        if not phrases or limit < 1:
            return []
        found: list[Message] = []
        for m in reversed(self._read(room).messages):
            tokens = search_tokens(m.text)
            if all(_contains(tokens, p) for p in phrases):
                found.append(m)
                if len(found) == limit:
                    break
        return found

    async def retain(
        self, room: str, *, max_age: float | None, max_count: int | None, now: float
    ) -> int:
        _check_retention(max_age, max_count)
        r = self._rooms.get(room)
        if r is None:
            return 0
        removed = 0
        while r.messages and (
            (max_count is not None and len(r.messages) > max_count)
            or (max_age is not None and r.messages[0].ts < now - max_age)
        ):
            r.messages.popleft()
            removed += 1
        return removed

    async def check(self) -> None:
        return None  # memory is always writable

    async def close(self) -> None:
        return None

    # --- Accounts ---------------------------------------------------------------------------

    async def account(self, name: str) -> Account | None:
        return self._accounts.get(fold(name))

    async def account_by_id(self, account_id: str) -> Account | None:
        key = self._ids.get(account_id)
        return None if key is None else self._accounts[key]

    async def account_like(self, name: str) -> Account | None:
        found = self._accounts.get(fold(name))
        if found is not None:
            return found
        keys = self._skeletons.get(skeleton(name))
        return self._accounts[min(keys)] if keys else None

    async def create_account(self, name: str, password_hash: str, *, now: float) -> Account:
        key = fold(name)
        if key in self._accounts:
            raise ClientError("name_taken", f"the name {name!r} is registered: choose another")
        like = await self.account_like(name)
        if like is not None:
            raise lookalike_registered(name, like.name)
        account = Account(
            id=new_account_id(),
            generation=0,
            name=name,
            password_hash=password_hash,
            created=now,
            private_read_seq=self._private_seq,
        )
        self._accounts[key] = account
        self._ids[account.id] = key
        self._skeletons.setdefault(skeleton(name), set()).add(key)
        self._memberships[key] = {}
        return account

    async def set_password(self, name: str, password_hash: str) -> None:
        key = fold(name)
        account = self._accounts.get(key)
        if account is None:
            raise ClientError("no_account", f"there is no account named {name!r}")
        self._accounts[key] = dataclasses.replace(
            account, password_hash=password_hash, generation=account.generation + 1
        )

    async def revoke(self, account_id: str) -> Account | None:
        key = self._ids.get(account_id)
        if key is None:
            return None
        account = self._accounts[key]
        account = self._accounts[key] = dataclasses.replace(
            account, generation=account.generation + 1
        )
        return account

    async def delete_account(self, name: str) -> bool:
        key = fold(name)
        account = self._accounts.pop(key, None)
        if account is None:
            return False
        del self._ids[account.id]
        like = skeleton(account.name)
        self._skeletons[like].discard(key)
        if not self._skeletons[like]:
            del self._skeletons[like]
        del self._memberships[key]
        kept = [
            p
            for p in self._privates
            if fold(p.recipient) != key and not (p.signed and fold(p.sender) == key)
        ]
        self._privates = deque(kept, maxlen=self._keep)
        return True

    async def memberships(self, name: str) -> Mapping[str, int]:
        return dict(self._memberships.get(fold(name), {}))

    async def set_membership(self, name: str, room: str, *, read_seq: int | None) -> None:
        rooms = self._memberships.get(fold(name))
        if rooms is None:
            return
        if read_seq is None:
            rooms.pop(room, None)
        else:
            rooms[room] = max(rooms.get(room, read_seq), read_seq)

    async def advance_read(self, markers: Mapping[tuple[str, str], int]) -> None:
        for (name, room), seq in markers.items():
            rooms = self._memberships.get(fold(name))
            if rooms is not None and room in rooms:
                rooms[room] = max(rooms[room], seq)

    async def advance_private_read(self, name: str, seq: int) -> None:
        key = fold(name)
        account = self._accounts.get(key)
        if account is not None and seq > account.private_read_seq:
            self._accounts[key] = dataclasses.replace(account, private_read_seq=seq)


def _check_retention(max_age: float | None, max_count: int | None) -> None:
    """Raise ``ValueError`` for a negative retention limit."""
    if max_age is not None and max_age < 0:
        raise ValueError(f"max_age must be at least 0, got {max_age}")
    if max_count is not None and max_count < 0:
        raise ValueError(f"max_count must be at least 0, got {max_count}")
