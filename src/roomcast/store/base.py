"""The store interface: the hub's only view of durable storage.

The hub never sees SQL. It talks to a ``Store`` (room history and private messages) and to
``Accounts`` (registered names, memberships, read markers); each implementation (``memory``,
``sqlite``, ``postgresql``) provides both, lives in its own module, is chosen by URL
scheme (``roomcast.store.open_store``), and translates its driver's exceptions into
``roomcast.errors.Broken`` at this seam (``Unwritable``, a kind of ``Broken``, when what
failed is that the storage cannot take writes: a full disk, a read-only file).

Sequence numbers: the store gives each room message the room's next gap-free sequence number
(from 1) when it appends it, and ``append`` returns only once the message is durable, so a
sender's echo (its acknowledgement) always names a stored message. Private messages share one
store-wide gap-free sequence.

Private conversations: the messages between two names, either way round, make one
conversation (``conversation_key``). Each private message records whether its sender was
signed in to an account and whether it was sent to one; ``conversation`` returns only the
messages its reader took part in as the identity it has now (signed in, or a guest), so an
account never reads what a guest of its name said or received, nor the other way round.

Retention cuts only the oldest end of a room's history: the
messages kept are always ``oldest_seq .. latest_seq`` without holes, and ``latest_seq`` never
moves back.

Search: a message matches when it contains every word of the query, ignoring case and
accents. A query word is a whitespace-separated run; only its letters and digits count (its
other characters separate tokens, so ``a+b`` looks for ``a`` followed by ``b``); a word with
no letter or digit is ignored, and a query with no word left matches nothing.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from roomcast.model import Draft, Message, Private, PrivateDraft, fold

__all__ = [
    "Account",
    "Accounts",
    "Page",
    "PrivatePage",
    "RoomInfo",
    "Said",
    "Storage",
    "Store",
    "conversation_key",
    "new_account_id",
    "search_tokens",
]

_TOKEN = re.compile(r"[^\W_]+")  # a run of letters and digits: what search can match


def search_tokens(text: str) -> tuple[str, ...]:
    """The words search compares in ``text``: runs of letters and digits, lower case, with
    accents removed (``"Café au-lait!"`` -> ``("cafe", "au", "lait")``)."""
    if text.isascii():  # nothing to decompose: the same tokens, ten times faster
        return tuple(_TOKEN.findall(text.lower()))
    decomposed = unicodedata.normalize("NFD", text)
    bare = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return tuple(t.lower() for t in _TOKEN.findall(bare))


def conversation_key(a: str, b: str) -> str:
    """The key of the private conversation between the names ``a`` and ``b``, the same
    either way round and in any case: both names folded, sorted, joined by a space (which
    no name holds)."""
    x, y = fold(a), fold(b)
    return f"{x} {y}" if x <= y else f"{y} {x}"


def new_account_id() -> str:
    """A fresh account id: 96 random bits in hex. Random, not counted, so that no two
    accounts ever share one, even in a store that was emptied and begun again."""
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomInfo:
    """Where a room's stored history stands."""

    room: str  # '#name'
    latest_seq: int  # sequence number of the newest message; 0 when there is none
    oldest_seq: int  # sequence number of the oldest message still kept; latest_seq + 1 if none


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """A slice of a room's history, oldest first."""

    room: str
    messages: tuple[Message, ...]  # in sequence order
    oldest_seq: int  # oldest message still kept: anything below was cut by retention
    latest_seq: int  # newest message in the room


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivatePage:
    """A slice of a private conversation as one of its two people may read it, oldest first."""

    messages: tuple[Private, ...]  # in sequence order
    oldest_seq: int  # its oldest message that reader may read; latest_seq + 1 if none
    latest_seq: int  # its newest one; 0 if none


@dataclass(frozen=True, slots=True, kw_only=True)
class Said:
    """The messages people wrote in a range of a room's history (``Store.said``)."""

    count: int  # how many: kinds message and action, not joins, leaves, quits or renames
    first_seq: int | None  # the sequence number of the oldest of them; None when none


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    """A registered name.

    ``id`` names the account for good: it is never given to another account, so a token
    naming it cannot pass to a later account of the same name. ``generation`` counts the
    revocations of the account's tokens (a password change, "log out everywhere"): a token
    carries the generation it was issued in and is refused once the account's has moved on.
    """

    id: str  # opaque, random, never reused (not even after the account is deleted)
    generation: int  # from 0; bumped by set_password and revoke
    name: str  # spelled as registered; unique ignoring case
    password_hash: str  # opaque to the store
    created: float  # UTC, seconds since the epoch
    private_read_seq: int  # newest private message this account has read


class Store(Protocol):
    """Durable room history. Every method may raise ``Broken`` when the storage fails."""

    async def room(self, room: str) -> RoomInfo:
        """Where ``room``'s history stands (a room never written to has ``latest_seq`` 0)."""
        ...

    async def rooms(self) -> Sequence[str]:
        """The names of every room the store has a record of, sorted."""
        ...

    async def append(self, draft: Draft) -> Message:
        """Store ``draft`` under its room's next sequence number; return once it is durable."""
        ...

    def append_many(
        self, drafts: Sequence[Draft], *, then: Callable[[list[Message]], None] | None = None
    ) -> asyncio.Future[list[Message]]:
        """Store ``drafts`` in order, each under its room's next sequence number, all or none.
        One write for a run of messages.

        The write is queued by the call itself, so writes are made in the order of the calls;
        the future is done once they are durable. ``then``, if given, is called with the
        stored messages as soon as they are, on the event loop, before the future is done,
        and even if the future was cancelled meanwhile: the hub broadcasts there, so no stored
        message goes unsent and each room gets its messages in sequence order without a task
        switch."""
        ...

    async def append_private(self, draft: PrivateDraft) -> Private:
        """Store a private message under the next store-wide private sequence number."""
        ...

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        """Up to ``limit`` messages with ``seq < before``, or ``seq > after``, oldest first.

        With neither bound, the newest ``limit`` messages. ``before`` and ``after`` together
        are a range. The page is always returned in sequence order. A ``limit`` below 1
        gives an empty page.
        """
        ...

    async def said(self, room: str, *, after: int, before: int) -> Said:
        """The messages people wrote (kinds ``message`` and ``action``) that ``room`` keeps
        with ``after < seq < before``: how many, and the first one's sequence number.

        What unread counts are made of: joins, leaves, quits and renames are not news one
        has missed. Messages cut by retention are not counted.
        """
        ...

    async def privates(self, name: str, *, after: int, limit: int) -> Sequence[Private]:
        """Up to ``limit`` private messages to ``name`` (any case) with ``seq > after``,
        oldest first."""
        ...

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
        """Up to ``limit`` private messages between ``name`` and ``other`` (either way, any
        case) that ``name`` sent or received signed in (``signed``) or as a guest (not
        ``signed``), from seq ``first`` on; paged like ``history``: with ``seq < before``,
        or ``seq > after``, or the newest, always in sequence order.

        ``name`` is the reader: the page holds nothing it was not part of as that identity
        (see the module docstring); ``oldest_seq`` and ``latest_seq`` are those of what it
        may read. Served by an index on the conversation, not a scan of the store.
        """
        ...

    async def search(self, room: str, words: str, *, limit: int) -> Sequence[Message]:
        """Up to ``limit`` messages of ``room`` containing ``words``, newest first.

        See the module docstring for what matches; user text is always safe to pass.
        """
        ...

    async def retain(
        self, room: str, *, max_age: float | None, max_count: int | None, now: float
    ) -> int:
        """Delete ``room``'s messages older than ``max_age`` seconds at time ``now`` or
        beyond the newest ``max_count``; return how many were deleted.

        ``None`` means no limit of that kind. Only the oldest end is cut: the cut by age
        stops at the first message younger than ``max_age``, so a message is never deleted
        while an older-numbered one is kept. ``oldest_seq`` moves up; ``latest_seq`` stays.
        """
        ...

    async def check(self) -> None:
        """Return if the store can take writes now; else raise ``Unwritable`` saying why
        (its file deleted, replaced or read-only, its disk full), or ``Broken`` when it
        cannot be reached. Cheap enough to run on every ``/health`` request: no write."""
        ...

    async def close(self) -> None:
        """Flush what is pending and release the storage. Idempotent."""
        ...


class Accounts(Protocol):
    """Registered names and what the server remembers for them between sessions.

    Names are compared ignoring case. Read markers only move forward. Writes about an
    account that does not exist (any more) are ignored, except ``set_password``: a marker
    flush may race the account's deletion. Every method may raise ``Broken``.
    """

    async def account(self, name: str) -> Account | None:
        """The account registered as ``name`` in any case, or ``None``."""
        ...

    async def account_by_id(self, account_id: str) -> Account | None:
        """The account whose ``id`` is ``account_id``, or ``None`` (deleted, or never was)."""
        ...

    async def account_like(self, name: str) -> Account | None:
        """The account registered as ``name`` in any case if there is one, else an account
        whose name looks like ``name`` (the same ``roomcast.names.skeleton``), else
        ``None``. One indexed lookup."""
        ...

    async def create_account(self, name: str, password_hash: str, *, now: float) -> Account:
        """Register ``name``; ``ClientError('name_taken')`` if it is registered in any case,
        ``ClientError('lookalike')`` if a registered name looks like it (checked in the same
        step, so two look-alikes registered at once cannot both succeed).

        The new account has a fresh random ``id`` and generation 0, and has read every
        private message already stored: its ``private_read_seq`` starts at the newest private
        sequence number.
        """
        ...

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replace the account's password hash and bump its generation (the tokens issued
        before are revoked); ``ClientError('no_account')`` if none."""
        ...

    async def revoke(self, account_id: str) -> Account | None:
        """Bump the generation of the account ``account_id`` (every token issued so far is
        revoked); the account as it is now, or ``None`` if there is none."""
        ...

    async def delete_account(self, name: str) -> bool:
        """Delete the account, its memberships, the private messages sent to it and those
        it sent signed in (a later account of the name starts with no conversation); return
        whether it existed."""
        ...

    async def memberships(self, name: str) -> Mapping[str, int]:
        """The rooms the account is a member of, each with its read marker."""
        ...

    async def set_membership(self, name: str, room: str, *, read_seq: int | None) -> None:
        """Join ``room`` with read marker ``read_seq`` (kept if already higher), or leave it
        when ``read_seq`` is ``None``."""
        ...

    async def advance_read(self, markers: Mapping[tuple[str, str], int]) -> None:
        """Move each ``(account, room)`` read marker forward to the given sequence number;
        markers never move back, and pairs that are not memberships are ignored."""
        ...

    async def advance_private_read(self, name: str, seq: int) -> None:
        """Move the account's private read marker forward to ``seq`` (never back)."""
        ...


class Storage(Store, Accounts, Protocol):
    """Room history and accounts together: what ``open_store`` returns."""
