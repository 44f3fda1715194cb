"""The store contract: every implementation of ``Store`` and ``Accounts`` passes this suite."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.errors import ClientError
from roomcast.model import Draft, Kind, PrivateDraft
from roomcast.store import MemoryStore, Storage
from roomcast.store.sqlite import SqliteStore
from tests.conftest import postgres_schema

_ids = itertools.count()


def draft(room: str, text: str = "hello", *, ts: float = 1000.0, sender: str = "ann") -> Draft:
    return Draft(id=f"m{next(_ids)}", room=room, sender=sender, kind=Kind.MESSAGE, text=text, ts=ts)


def private(
    recipient: str,
    text: str = "psst",
    *,
    sender: str = "ann",
    signed: bool = False,
    recipient_signed: bool = False,
) -> PrivateDraft:
    return PrivateDraft(
        id=f"p{next(_ids)}",
        sender=sender,
        recipient=recipient,
        kind=Kind.MESSAGE,
        text=text,
        ts=1000.0,
        signed=signed,
        recipient_signed=recipient_signed,
    )


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    s: Storage
    if request.param == "postgresql":  # in a schema of its own, dropped afterwards
        async with postgres_schema() as schema:
            s = await schema.open_store()
            yield s
            await s.close()
        return
    if request.param == "memory":
        s = MemoryStore()
    else:
        s = await SqliteStore.open(tmp_path / "contract.db")
    yield s
    await s.close()


async def fill(store: Storage, room: str, count: int, *, ts: float = 1000.0) -> None:
    for i in range(count):
        await store.append(draft(room, f"message {i + 1}", ts=ts + i))


# --- appending ----------------------------------------------------------------------------


async def test_append_numbers_each_room_from_one(store: Storage) -> None:
    """Each room's messages get their own gap-free sequence numbers, starting at 1."""
    seqs = [(await store.append(draft(room))).seq for room in ["#a", "#b", "#a", "#a", "#b"]]
    assert seqs == [1, 1, 2, 3, 2]


async def test_append_returns_the_draft_as_stored(store: Storage) -> None:
    """The returned message carries every field of the draft, and history returns the same."""
    d = Draft(id="x1", room="#a", sender="Bob", kind=Kind.ACTION, text="waves", ts=12.5)
    message = await store.append(d)
    assert message == d.with_seq(1)
    assert (await store.history("#a", limit=10)).messages == (message,)


async def test_whether_the_sender_was_signed_in_is_kept(store: Storage) -> None:
    """A message says whether its sender was signed in, through append, a run, history and
    search; a private one also whether it went to an account, through ``privates``."""
    guest = Draft(id="g", room="#a", sender="bob", kind=Kind.MESSAGE, text="one", ts=1.0)
    account = dataclasses.replace(guest, id="s", text="two", signed=True)
    again = dataclasses.replace(guest, id="g2", text="three")
    stored = [await store.append(guest), *await store.append_many([account, again])]
    assert [m.signed for m in stored] == [False, True, False]
    assert (await store.history("#a", limit=10)).messages == tuple(stored)
    assert [m.signed for m in await store.search("#a", "two", limit=5)] == [True]
    sent = [
        await store.append_private(private("bob", signed=s, recipient_signed=r))
        for s, r in [(True, False), (False, True), (True, True)]
    ]
    assert [(p.signed, p.recipient_signed) for p in sent] == [
        (True, False),
        (False, True),
        (True, True),
    ]
    assert list(await store.privates("bob", after=0, limit=10)) == sent


async def test_append_many_stores_a_run_in_order(store: Storage) -> None:
    """A run across rooms gets the same numbers as appends one by one would, in order."""
    await store.append(draft("#a"))
    stored = await store.append_many([draft("#a", "1"), draft("#b", "2"), draft("#a", "3")])
    assert [(m.room, m.seq, m.text) for m in stored] == [
        ("#a", 2, "1"),
        ("#b", 1, "2"),
        ("#a", 3, "3"),
    ]
    assert await store.append_many([]) == []
    assert (await store.append(draft("#b"))).seq == 2


async def test_concurrent_appends_are_gap_free(store: Storage) -> None:
    """1,000 appends from many tasks across 3 rooms are all stored, each room gap-free, and
    every caller gets its own message back."""
    rooms = ["#a", "#b", "#c"]
    drafts = [draft(rooms[i % 3], f"text {i}") for i in range(1000)]

    async def sender(mine: list[Draft]) -> list[tuple[Draft, int, str, str]]:
        out = []
        for d in mine:
            m = await store.append(d)
            out.append((d, m.seq, m.id, m.text))
        return out

    results = await asyncio.gather(*(sender(drafts[i::50]) for i in range(50)))
    flat = [r for chunk in results for r in chunk]
    assert all(d.id == id_ and d.text == text for d, _, id_, text in flat)
    for room in rooms:
        seqs = sorted(seq for d, seq, _, _ in flat if d.room == room)
        assert seqs == list(range(1, len(seqs) + 1))
        page = await store.history(room, limit=1000)
        assert [m.seq for m in page.messages] == seqs
        assert {m.id for m in page.messages} == {d.id for d, _, _, _ in flat if d.room == room}


# --- health -------------------------------------------------------------------------------


async def test_a_store_that_can_take_writes_passes_its_check(store: Storage) -> None:
    """``check`` returns (raises nothing) for a working store, before and after writes."""
    await store.check()
    await store.append(draft("#a"))
    await store.check()


# --- history ------------------------------------------------------------------------------


async def test_history_newest_page(store: Storage) -> None:
    """Without bounds, history is the newest ``limit`` messages, oldest first."""
    await fill(store, "#a", 10)
    page = await store.history("#a", limit=3)
    assert [m.seq for m in page.messages] == [8, 9, 10]
    assert [m.text for m in page.messages] == ["message 8", "message 9", "message 10"]
    assert (page.room, page.oldest_seq, page.latest_seq) == ("#a", 1, 10)


async def test_history_before_after_and_range(store: Storage) -> None:
    """``before`` gives the newest below it, ``after`` the oldest above it, both a range."""
    await fill(store, "#a", 10)

    async def seqs(
        before: int | None = None, after: int | None = None, limit: int = 3
    ) -> list[int]:
        page = await store.history("#a", before=before, after=after, limit=limit)
        return [m.seq for m in page.messages]

    assert await seqs(before=5) == [2, 3, 4]
    assert await seqs(after=5) == [6, 7, 8]
    assert await seqs(after=2, before=9, limit=100) == [3, 4, 5, 6, 7, 8]
    assert await seqs(after=2, before=9) == [3, 4, 5]
    assert await seqs(before=1) == []
    assert await seqs(before=2) == [1]
    assert await seqs(after=10) == []
    assert await seqs(after=9) == [10]
    assert await seqs(after=0, limit=100) == list(range(1, 11))
    assert await seqs(before=100) == [8, 9, 10]
    assert await seqs(after=-5, limit=2) == [1, 2]
    assert await seqs(after=5, before=6) == []
    assert await seqs(limit=0) == []
    assert await seqs(after=3, limit=-1) == []


async def test_history_matches_a_reference_at_every_edge(store: Storage) -> None:
    """After a retention cut, every combination of bounds and limits gives what the
    contract says: the kept messages in the bounds, the first ``limit`` of them with
    ``after``, else the last ``limit``."""
    await fill(store, "#a", 12)
    await store.retain("#a", max_age=None, max_count=8, now=0.0)
    kept = list(range(5, 13))
    bounds: list[int | None] = [None, *range(-1, 15)]
    for before, after, limit in itertools.product(bounds, bounds, [0, 1, 2, 5, 20]):
        pool = [s for s in kept if (before is None or s < before) and (after is None or s > after)]
        want = pool[:limit] if after is not None else pool[max(0, len(pool) - limit) :]
        page = await store.history("#a", before=before, after=after, limit=limit)
        assert [m.seq for m in page.messages] == (want if limit else []), (before, after, limit)
        assert (page.oldest_seq, page.latest_seq) == (5, 12)


async def test_history_of_an_unknown_room_is_empty(store: Storage) -> None:
    """A room never written to has an empty history with latest 0 and oldest 1."""
    page = await store.history("#nobody", limit=10)
    assert (page.messages, page.oldest_seq, page.latest_seq) == ((), 1, 0)


# --- room info and retention --------------------------------------------------------------


async def test_rooms_lists_every_room_written_to(store: Storage) -> None:
    """rooms() names each room that has had a message, sorted; reading creates none."""
    await store.room("#read-only")
    await fill(store, "#b", 1)
    await fill(store, "#a", 2)
    assert list(await store.rooms()) == ["#a", "#b"]


async def test_room_info(store: Storage) -> None:
    """``room`` tells the newest and oldest sequence numbers, also for an unknown room."""
    unknown = await store.room("#empty")
    assert (unknown.room, unknown.latest_seq, unknown.oldest_seq) == ("#empty", 0, 1)
    await fill(store, "#a", 4)
    info = await store.room("#a")
    assert (info.room, info.latest_seq, info.oldest_seq) == ("#a", 4, 1)


async def test_retention_by_count_moves_oldest_seq(store: Storage) -> None:
    """Keeping the newest 3 of 10 deletes 7; oldest_seq moves to 8 and numbering goes on."""
    await fill(store, "#a", 10)
    await fill(store, "#b", 2)
    assert await store.retain("#a", max_age=None, max_count=3, now=0.0) == 7
    info = await store.room("#a")
    assert (info.oldest_seq, info.latest_seq) == (8, 10)
    page = await store.history("#a", limit=100)
    assert [m.seq for m in page.messages] == [8, 9, 10]
    assert (page.oldest_seq, page.latest_seq) == (8, 10)
    assert (await store.history("#a", before=8, limit=10)).messages == ()
    assert await store.retain("#a", max_age=None, max_count=3, now=0.0) == 0
    assert (await store.append(draft("#a"))).seq == 11
    assert len((await store.history("#b", limit=10)).messages) == 2


async def test_retention_to_nothing_keeps_the_numbering(store: Storage) -> None:
    """Keeping 0 messages empties the room: oldest is latest + 1, and the next seq follows."""
    await fill(store, "#a", 5)
    assert await store.retain("#a", max_age=None, max_count=0, now=0.0) == 5
    info = await store.room("#a")
    assert (info.oldest_seq, info.latest_seq) == (6, 5)
    page = await store.history("#a", limit=10)
    assert (page.messages, page.oldest_seq, page.latest_seq) == ((), 6, 5)
    assert (await store.append(draft("#a"))).seq == 6
    assert (await store.room("#a")).oldest_seq == 6


async def test_retention_by_age_cuts_only_the_oldest_end(store: Storage) -> None:
    """Messages older than ``max_age`` go, but the cut stops at the first young message, so
    an old message after it stays and the history has no hole."""
    for ts in [100.0, 101.0, 102.0, 150.0, 103.0, 160.0]:
        await store.append(draft("#a", ts=ts))
    assert await store.retain("#a", max_age=60.0, max_count=None, now=200.0) == 3
    page = await store.history("#a", limit=10)
    assert [m.seq for m in page.messages] == [4, 5, 6]
    assert page.oldest_seq == 4
    assert await store.retain("#a", max_age=0.0, max_count=None, now=1000.0) == 3
    assert (await store.room("#a")).oldest_seq == 7


async def test_retention_by_age_and_count_applies_both(store: Storage) -> None:
    """With both limits the stricter one wins; with neither, or for an unknown room, nothing
    is deleted; negative limits are refused."""
    await fill(store, "#a", 10, ts=100.0)  # ts 100..109
    assert await store.retain("#a", max_age=None, max_count=None, now=1e9) == 0
    assert await store.retain("#nowhere", max_age=1.0, max_count=1, now=1e9) == 0
    assert await store.retain("#a", max_age=7.5, max_count=5, now=110.0) == 5
    assert await store.retain("#a", max_age=4.5, max_count=5, now=110.0) == 1
    assert (await store.room("#a")).oldest_seq == 7
    with pytest.raises(ValueError, match="max_count"):
        await store.retain("#a", max_age=None, max_count=-1, now=0.0)
    with pytest.raises(ValueError, match="max_age"):
        await store.retain("#a", max_age=-1.0, max_count=None, now=0.0)


# --- private messages ---------------------------------------------------------------------


async def test_private_messages_share_one_sequence(store: Storage) -> None:
    """Private messages get store-wide gap-free numbers; ``privates`` returns those to one
    recipient (any case) above ``after``, oldest first, up to ``limit``."""
    sent = [await store.append_private(private(to)) for to in ["bob", "Cy", "BOB", "bob", "cy"]]
    assert [p.seq for p in sent] == [1, 2, 3, 4, 5]
    assert sent[2].recipient == "BOB"
    assert [p.seq for p in await store.privates("Bob", after=0, limit=10)] == [1, 3, 4]
    assert [p.seq for p in await store.privates("bob", after=1, limit=10)] == [3, 4]
    assert [p.seq for p in await store.privates("bob", after=0, limit=2)] == [1, 3]
    assert await store.privates("bob", after=4, limit=10) == []
    assert await store.privates("bob", after=0, limit=0) == []
    assert await store.privates("nobody", after=0, limit=10) == []
    assert list(await store.privates("cy", after=0, limit=10)) == [sent[1], sent[4]]


async def test_a_conversation_is_both_directions_of_one_pair_paged_by_seq(
    store: Storage,
) -> None:
    """A conversation holds the messages between two names either way and in any case,
    and no one else's; it pages like history: newest by default, ``before``, ``after``,
    both, and ``limit``, always in seq order, with the ends of what the reader may read."""
    said = []
    for i in range(10):
        sender, to = ("ann", "Bob") if i % 2 else ("BOB", "Ann")
        said.append(
            await store.append_private(
                private(to, f"t{i}", sender=sender, signed=True, recipient_signed=True)
            )
        )
        await store.append_private(private("bob", sender="cy", signed=True, recipient_signed=True))
        await store.append_private(private("cy", sender="ann", signed=True, recipient_signed=True))
    seqs = [p.seq for p in said]

    async def page(
        name: str = "ann",
        other: str = "bob",
        before: int | None = None,
        after: int | None = None,
        limit: int = 4,
    ) -> list[int]:
        got = await store.conversation(
            name, other, signed=True, before=before, after=after, limit=limit
        )
        assert (got.oldest_seq, got.latest_seq) == (seqs[0], seqs[-1])
        return [p.seq for p in got.messages]

    newest = await store.conversation("Ann", "BOB", signed=True, limit=4)
    assert newest.messages == tuple(said[-4:])
    assert await page("bob", "ann") == seqs[-4:]
    assert await page(before=seqs[5]) == seqs[1:5]
    assert await page(after=seqs[5]) == seqs[6:10]
    assert await page(after=seqs[1], before=seqs[8], limit=100) == seqs[2:8]
    assert await page(after=seqs[1], before=seqs[8]) == seqs[2:6]
    assert await page(after=0, limit=100) == seqs
    assert await page(before=seqs[0]) == []
    assert await page(after=seqs[-1]) == []
    assert await page(limit=0) == []
    empty = await store.conversation("ann", "dora", signed=True, limit=10)
    assert (empty.messages, empty.oldest_seq, empty.latest_seq) == ((), 1, 0)


async def test_a_conversation_holds_only_what_its_reader_took_part_in_as_itself(
    store: Storage,
) -> None:
    """The same pair of names read signed in gives what that name said and was sent signed
    in; read as a guest, what it said and was sent as a guest, from seq ``first`` on."""
    rows = [  # sender, recipient, sender signed, recipient signed
        ("bob", "ann", False, True),  # 1: a guest bob to the account ann
        ("ann", "bob", True, False),  # 2: the account ann to a guest bob
        ("bob", "ann", True, True),  # 3: the account bob to the account ann
        ("ann", "bob", True, True),  # 4: and back
        ("ann", "bob", False, False),  # 5: a guest ann to a guest bob
    ]
    for sender, to, s, r in rows:
        await store.append_private(private(to, sender=sender, signed=s, recipient_signed=r))

    async def seqs(name: str, other: str, *, signed: bool, first: int = 1) -> list[int]:
        page = await store.conversation(name, other, signed=signed, first=first, limit=10)
        return [p.seq for p in page.messages]

    assert await seqs("ann", "bob", signed=True) == [1, 2, 3, 4]
    assert await seqs("bob", "ann", signed=True) == [3, 4]
    assert await seqs("bob", "ann", signed=False) == [1, 2, 5]
    assert await seqs("bob", "ann", signed=False, first=2) == [2, 5]
    assert await seqs("ann", "bob", signed=False) == [5]
    page = await store.conversation("bob", "ann", signed=False, first=2, limit=1)
    assert (page.oldest_seq, page.latest_seq) == (2, 5)
    await store.append_private(private("ann", sender="ann", signed=True, recipient_signed=True))
    assert await seqs("ann", "ANN", signed=True) == [6]  # a note to oneself


# --- accounts -----------------------------------------------------------------------------


async def test_accounts_create_get_and_delete(store: Storage) -> None:
    """An account is found by its name in any case, keeps its spelling, and is gone once
    deleted."""
    assert await store.account("Ann") is None
    created = await store.create_account("Ann", "hash-1", now=50.0)
    assert (created.name, created.password_hash, created.created) == ("Ann", "hash-1", 50.0)
    assert await store.account("aNN") == created
    assert await store.delete_account("ANN") is True
    assert await store.account("ann") is None
    assert await store.delete_account("ann") is False


async def test_account_names_are_taken_ignoring_case(store: Storage) -> None:
    """Registering a name taken in another case fails with ``name_taken``; the first stays."""
    await store.create_account("Ann", "hash-1", now=1.0)
    with pytest.raises(ClientError) as caught:
        await store.create_account("ANN", "hash-2", now=2.0)
    assert caught.value.code == "name_taken"
    assert "ANN" in str(caught.value)
    account = await store.account("ann")
    assert account is not None and (account.name, account.password_hash) == ("Ann", "hash-1")


async def test_an_account_is_found_by_a_name_that_looks_like_it(store: Storage) -> None:
    """account_like finds the account of the name itself first, else one whose name looks
    like it (``roomcast.names.skeleton``), else nothing; deleted accounts are not found."""
    ann = await store.create_account("Ann_1", "hash", now=1.0)
    assert await store.account_like("ANN_1") == ann
    assert await store.account_like("AnnI") == ann
    assert await store.account_like("a.n.n.l") == ann
    assert await store.account_like("anna") is None
    await store.delete_account("ann_1")
    assert await store.account_like("annl") is None


async def test_a_name_that_looks_like_a_registered_one_cannot_be_registered(
    store: Storage,
) -> None:
    """create_account refuses a look-alike with ``lookalike``, naming the registered name;
    once that account is deleted, the look-alike can be registered."""
    await store.create_account("bob", "hash", now=1.0)
    for name in ("b0b", "BOB_", "-b.o.b-"):
        with pytest.raises(ClientError) as caught:
            await store.create_account(name, "hash", now=2.0)
        assert caught.value.code == "lookalike"
        assert caught.value.message == (
            f"{name!r} looks like the registered name 'bob': choose another name"
        )
    await store.delete_account("bob")
    assert (await store.create_account("b0b", "hash", now=3.0)).name == "b0b"


async def test_concurrent_look_alike_registrations_let_one_win(store: Storage) -> None:
    """Registering alice and aIice at once stores exactly one of them."""
    results = await asyncio.gather(
        store.create_account("alice", "h", now=1.0),
        store.create_account("aIice", "h", now=1.0),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Account", "ClientError"]


async def test_set_password(store: Storage) -> None:
    """The password hash can be replaced; for a missing account it fails with ``no_account``."""
    await store.create_account("ann", "old", now=1.0)
    await store.set_password("ANN", "new")
    account = await store.account("ann")
    assert account is not None and account.password_hash == "new"
    with pytest.raises(ClientError) as caught:
        await store.set_password("zed", "x")
    assert caught.value.code == "no_account"


async def test_an_account_has_an_id_that_no_later_account_gets(store: Storage) -> None:
    """A new account has generation 0 and an id it is found by; once deleted, its id finds
    nothing, and an account registered again under the same name has another id."""
    first = await store.create_account("Ann", "h", now=1.0)
    assert first.generation == 0 and first.id
    assert await store.account_by_id(first.id) == first
    assert await store.account_by_id("no such id") is None
    await store.delete_account("ann")
    assert await store.account_by_id(first.id) is None
    again = await store.create_account("ann", "h", now=2.0)
    assert again.id != first.id
    assert await store.account_by_id(first.id) is None
    assert await store.account_by_id(again.id) == again
    others = [await store.create_account(f"user{i}", "h", now=3.0) for i in range(20)]
    assert len({a.id for a in others} | {first.id, again.id}) == 22


async def test_a_password_change_and_a_revoke_bump_the_generation(store: Storage) -> None:
    """set_password and revoke each move the generation up by one, and only that account's;
    revoke answers the account as it is now, or None for an id that names no account."""
    ann = await store.create_account("ann", "h", now=1.0)
    bob = await store.create_account("bob", "h", now=1.0)
    await store.set_password("ANN", "h2")
    revoked = await store.revoke(ann.id)
    assert revoked is not None and (revoked.generation, revoked.password_hash) == (2, "h2")
    assert revoked == await store.account("ann") == await store.account_by_id(ann.id)
    assert (revoked.id, revoked.name, revoked.created) == (ann.id, "ann", 1.0)
    assert await store.account_by_id(bob.id) == bob
    assert await store.revoke("no such id") is None
    await store.delete_account("ann")
    assert await store.revoke(ann.id) is None


async def test_new_account_has_read_every_stored_private(store: Storage) -> None:
    """A new account's private marker starts at the newest private message, so it never
    sees messages sent to the name before it was registered."""
    await store.append_private(private("ann"))
    await store.append_private(private("bob"))
    account = await store.create_account("ann", "h", now=1.0)
    assert account.private_read_seq == 2


async def test_private_read_marker_moves_only_forward(store: Storage) -> None:
    """The private read marker advances, never goes back, and ignores unknown accounts."""
    await store.create_account("ann", "h", now=1.0)
    await store.advance_private_read("Ann", 5)
    await store.advance_private_read("ann", 3)
    account = await store.account("ann")
    assert account is not None and account.private_read_seq == 5
    await store.advance_private_read("nobody", 9)
    assert await store.account("nobody") is None


async def test_deleting_an_account_deletes_its_privates(store: Storage) -> None:
    """Deleting an account deletes the private messages sent to it, and the private
    numbering still goes on from where it was."""
    await store.create_account("ann", "h", now=1.0)
    await store.append_private(private("bob", sender="ann"))
    await store.append_private(private("ANN", sender="bob"))
    await store.delete_account("ann")
    assert await store.privates("ann", after=0, limit=10) == []
    assert [p.seq for p in await store.privates("bob", after=0, limit=10)] == [1]
    assert (await store.append_private(private("bob"))).seq == 3


async def test_deleting_an_account_deletes_what_it_sent_signed_in(store: Storage) -> None:
    """Deleting an account also deletes the private messages it sent signed in, so a later
    account of the name reads none of its conversations; a guest's of that name stay."""
    await store.create_account("ann", "h", now=1.0)
    await store.append_private(private("bob", "as ann", sender="Ann", signed=True))
    await store.append_private(private("bob", "as a guest ann", sender="ann"))
    await store.delete_account("ann")
    await store.create_account("ann", "h", now=2.0)
    assert (await store.conversation("ann", "bob", signed=True, limit=10)).messages == ()
    kept = await store.privates("bob", after=0, limit=10)
    assert [p.text for p in kept] == ["as a guest ann"]


async def test_memberships_and_read_markers(store: Storage) -> None:
    """Joining records a read marker, markers only move forward (also on a second join),
    leaving forgets the room, and pairs that are not memberships are ignored."""
    await store.create_account("Ann", "h", now=1.0)
    await store.create_account("bob", "h", now=1.0)
    await store.set_membership("ann", "#a", read_seq=3)
    await store.set_membership("ANN", "#b", read_seq=0)
    await store.set_membership("bob", "#a", read_seq=1)
    assert dict(await store.memberships("Ann")) == {"#a": 3, "#b": 0}
    await store.advance_read({("ann", "#a"): 2, ("Ann", "#b"): 7, ("bob", "#a"): 4})
    assert dict(await store.memberships("ann")) == {"#a": 3, "#b": 7}
    assert dict(await store.memberships("bob")) == {"#a": 4}
    await store.set_membership("ann", "#b", read_seq=1)
    assert dict(await store.memberships("ann")) == {"#a": 3, "#b": 7}
    await store.advance_read({("ann", "#c"): 9, ("nobody", "#a"): 9})
    await store.advance_read({})
    await store.set_membership("nobody", "#a", read_seq=1)
    await store.set_membership("ann", "#a", read_seq=None)
    assert dict(await store.memberships("ann")) == {"#b": 7}
    assert dict(await store.memberships("nobody")) == {}
    await store.delete_account("ann")
    assert dict(await store.memberships("ann")) == {}
    assert dict(await store.memberships("bob")) == {"#a": 4}


# --- search -------------------------------------------------------------------------------


async def test_search_finds_words_newest_first(store: Storage) -> None:
    """Search finds messages of the room holding every word (any case or accent), newest
    first, up to ``limit``."""
    texts = ["The quick brown fox", "a lazy dog", "QUICK thinking", "quick brown café", "other"]
    for text in texts:
        await store.append(draft("#a", text))
    await store.append(draft("#b", "quick brown fox elsewhere"))

    async def found(words: str, limit: int = 10) -> list[str]:
        return [m.text for m in await store.search("#a", words, limit=limit)]

    assert await found("quick") == ["quick brown café", "QUICK thinking", "The quick brown fox"]
    assert await found("Brown QUICK") == ["quick brown café", "The quick brown fox"]
    assert await found("quick", limit=1) == ["quick brown café"]
    assert await found("cafe") == ["quick brown café"]
    assert await found("quick brown", limit=0) == []
    assert await found("qui") == []
    assert await found("fox dog") == []
    assert await found("") == []
    hits = await store.search("#a", "dog", limit=5)
    assert [(m.room, m.seq) for m in hits] == [("#a", 2)]


HOSTILE = [
    "'; DROP TABLE messages; --",
    'she said "hi" and left',
    "wild* card",
    "NEAR(a b) OR c",
    "-minus AND NOT",
    "100% _under_ \\back\\slash",
]


async def test_metacharacters_are_stored_verbatim_and_break_nothing(store: Storage) -> None:
    """SQL and FTS5 metacharacters in text and in queries are stored as sent and cannot
    break a query: words among them are still found, and a query of symbols finds nothing."""
    sent = [await store.append(draft("#a", text)) for text in HOSTILE]
    page = await store.history("#a", limit=100)
    assert [m.text for m in page.messages] == HOSTILE
    assert [m.text for m in sent] == HOSTILE

    async def found(words: str) -> list[int]:
        return [m.seq for m in await store.search("#a", words, limit=10)]

    assert await found("'; DROP TABLE messages; --") == [1]
    assert await found("DROP") == [1]
    assert await found('"hi"') == [2]
    assert await found('"hi" "') == [2]
    assert await found("wild*") == [3]
    assert await found("NEAR(") == [4]
    assert await found("NEAR(a b) OR c") == [4]
    assert await found("-minus") == [5]
    assert await found("NOT") == [5]
    assert await found("100%") == [6]
    for nothing in ['"', "*", "-", "'", "--", "%", ")", "^", ":", "(", "\x00"]:
        assert await found(nothing) == [], nothing
    assert (await store.room("#a")).latest_seq == len(HOSTILE)


async def test_a_nul_inside_a_search_word_separates_tokens(store: Storage) -> None:
    """A NUL in a query word is a separator like any character that is not a letter or
    digit: ``hel<NUL>lo`` looks for the phrase "hel lo", and it never fails the store."""
    for text in ["hello world", "hel lo there"]:
        await store.append(draft("#a", text))

    async def found(words: str) -> list[int]:
        return [m.seq for m in await store.search("#a", words, limit=10)]

    assert await found("hel\x00lo") == [2]
    assert await found("world\x00") == [1]
    assert await found("\x00world\x00 hello") == [1]
    assert await found("a\x00\x00") == []


async def test_emoji_text_round_trips(store: Storage) -> None:
    """10 KB of emoji (skin tones, joiners, flags) come back exactly as sent."""
    rng = random.Random(7)
    pieces = ["😀", "👍🏽", "👩‍👩‍👧‍👦", "🇫🇷", "🏳️‍🌈", "🫠", "\u200d", "❤️"]
    text = ""
    while len(text.encode()) < 10_000:
        text += rng.choice(pieces)
    sent = await store.append(draft("#emoji", text))
    assert sent.text == text
    (stored,) = (await store.history("#emoji", limit=5)).messages
    assert stored.text == text and stored == sent
    dm = await store.append_private(private("bob", text))
    (got,) = await store.privates("bob", after=0, limit=5)
    assert got.text == text and got == dm
    assert await store.search("#emoji", "😀", limit=5) == []


# --- what people wrote ----------------------------------------------------------------------


async def test_said_counts_messages_and_actions_in_a_range(store: Storage) -> None:
    """``said`` counts only the messages people wrote (not joins, leaves, quits, renames),
    strictly inside its bounds, and names the first; none gives a count of 0."""
    kinds = [Kind.JOIN, Kind.MESSAGE, Kind.QUIT, Kind.ACTION, Kind.LEAVE, Kind.NICK]
    kinds += [Kind.MESSAGE, Kind.JOIN]
    for kind in kinds:  # seq 1-8
        await store.append(
            Draft(id=f"k{next(_ids)}", room="#a", sender="ann", kind=kind, text="x", ts=1.0)
        )
    said = await store.said("#a", after=0, before=9)
    assert (said.count, said.first_seq) == (3, 2)
    said = await store.said("#a", after=2, before=7)
    assert (said.count, said.first_seq) == (1, 4)
    said = await store.said("#a", after=4, before=7)
    assert (said.count, said.first_seq) == (0, None)
    said = await store.said("#nowhere", after=0, before=100)
    assert (said.count, said.first_seq) == (0, None)


async def test_said_skips_what_retention_cut(store: Storage) -> None:
    """Messages removed by retention are not counted."""
    await fill(store, "#a", 10)
    assert await store.retain("#a", max_age=None, max_count=4, now=2000.0) == 6
    said = await store.said("#a", after=0, before=11)
    assert (said.count, said.first_seq) == (4, 7)
