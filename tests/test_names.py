"""Names that look alike: the skeleton, the index of names online, and the hub's checks."""

from __future__ import annotations

import asyncio
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.errors import ClientError
from roomcast.hub import Hub
from roomcast.model import Error, Info, Nick, Quit, Register, SetName, Welcome
from roomcast.names import CONFUSABLES, DECORATIONS, Lookalikes, skeleton
from roomcast.store.base import Account
from tests.helpers import login, make_hub, named, registered

ALPHABET = string.ascii_letters + string.digits + DECORATIONS
NAMES = st.text(ALPHABET, min_size=1, max_size=32)


# --- the skeleton -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["alice", "Alice", "ALICE", "aIice", "a1ice", "AL1CE", "alice_", "_alice", "a.l-i_ce"]
)
def test_every_spelling_of_alice_has_the_same_skeleton(name: str) -> None:
    """Case, I/l/1/i and decorations anywhere do not change the skeleton."""
    assert skeleton(name) == skeleton("alice") == "allce"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("b0b", "bob"),
        ("BOB", "b0b"),
        ("rnarco", "Marco"),
        ("jim", "jirn"),
        ("john.doe", "john_doe"),
    ],
)
def test_the_confusables_of_uts_39_look_alike(one: str, other: str) -> None:
    """0 and O, m and rn (in any case): the rows of confusables.txt for name characters."""
    assert skeleton(one) == skeleton(other)


@pytest.mark.parametrize(("one", "other"), [("alice", "alise"), ("bob", "bobby"), ("a2", "az")])
def test_different_names_stay_different(one: str, other: str) -> None:
    """Names that do not look alike keep different skeletons."""
    assert skeleton(one) != skeleton(other)


def test_the_table_is_the_uts_39_rows_for_name_characters() -> None:
    """The table holds exactly the confusables.txt rows whose source is a name character."""
    assert CONFUSABLES == {"0": "O", "1": "l", "I": "l", "m": "rn"}
    assert all(source in ALPHABET for source in CONFUSABLES)


@given(NAMES)
def test_a_skeleton_is_its_own_skeleton_and_ignores_case(name: str) -> None:
    """Applying the rule twice changes nothing, and a name in any case has one skeleton."""
    assert skeleton(skeleton(name)) == skeleton(name)
    assert skeleton(name.upper()) == skeleton(name.lower()) == skeleton(name)


@given(NAMES, st.sampled_from(sorted(CONFUSABLES)), st.integers(0, 32))
def test_a_confusable_swapped_in_keeps_the_skeleton(name: str, source: str, at: int) -> None:
    """Replacing a character by its confusables.txt target (or back) keeps the skeleton."""
    with_source = name[:at] + source + name[at:]
    with_target = name[:at] + CONFUSABLES[source] + name[at:]
    assert skeleton(with_source) == skeleton(with_target)


# --- the index of names online ------------------------------------------------------------


def test_lookalikes_finds_a_name_online_like_another_but_not_the_asker() -> None:
    """like() answers the name online that looks like the one asked, besides the asker's."""
    online = Lookalikes()
    online.add("alice")
    online.add("bob")
    assert online.like("aIice") == "alice"
    assert online.like("ALICE") is None  # the same name: the caller checks that itself
    assert online.like("alice_", besides="Alice") is None
    assert online.like("carol") is None
    online.discard("alice")
    assert online.like("aIice") is None and len(online) == 1
    online.discard("nobody")
    assert len(online) == 1


def test_lookalikes_keeps_names_that_share_a_skeleton_apart() -> None:
    """Two names online with one skeleton (accounts older than the rule) are both kept."""
    online = Lookalikes()
    online.add("john.doe")
    online.add("john_doe")
    assert online.like("johndoe") in {"john.doe", "john_doe"}
    assert online.like("john.doe") == "john_doe"
    online.discard("john_doe")
    assert online.like("johndoe") == "john.doe"


# --- in the hub ---------------------------------------------------------------------------


async def refusal(hub: Hub, name: str) -> Error:
    """The error a new guest asking for ``name`` gets."""
    [error, *_] = await hub.handle(hub.connect(f"test:{name}"), SetName(name=name))
    assert isinstance(error, Error), error
    return error


async def test_a_guest_cannot_take_a_name_like_one_online() -> None:
    """a1ice while alice is online: lookalike, naming alice; another name works."""
    hub, _ = make_hub()
    await named(hub, "alice")
    assert await refusal(hub, "a1ice") == Error(
        code="lookalike", message="'a1ice' looks like 'alice', who is online: choose another name"
    )
    await named(hub, "bob")


async def test_a_guest_cannot_take_a_name_like_a_registered_one_whose_owner_is_away() -> None:
    """aIice once alice is registered and gone: lookalike, naming the registered name."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    assert await refusal(hub, "aIice") == Error(
        code="lookalike",
        message="'aIice' looks like the registered name 'alice': choose another name",
    )
    assert (await refusal(hub, "Alice")).code == "registered"


async def test_a_name_is_free_again_once_its_look_alike_left() -> None:
    """The index follows a nick and forgets a guest that quits."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    await hub.handle(alice, Nick(name="alicia"))
    bob = await named(hub, "a1ice")  # alice is gone: free
    assert (await refusal(hub, "aIicia")).code == "lookalike"
    await hub.handle(alice, Quit())
    await hub.handle(bob, Quit())
    await named(hub, "aIicia")
    await named(hub, "alice")


async def test_nick_checks_look_alikes_but_not_the_users_own_name() -> None:
    """/nick to a look-alike of someone else is refused; alice_ may become Alice."""
    hub, _ = make_hub()
    await named(hub, "bob")
    alice = await named(hub, "alice_")
    [error] = await hub.handle(alice, Nick(name="B0B"))
    assert isinstance(error, Error) and error.code == "lookalike"
    [info] = await hub.handle(alice, Nick(name="Alice"))
    assert info == Info(text="you are now known as Alice")


async def test_registering_checks_online_and_registered_look_alikes() -> None:
    """A name like one online cannot be registered (over HTTP either), nor one like a
    registered name, even when that account was made meanwhile (by ``roomcast user``)."""
    hub, _ = make_hub()
    await named(hub, "bob")
    with pytest.raises(ClientError) as caught:
        await hub.create_account("B0B", "correct horse", "10.0.0.1")
    assert caught.value.code == "lookalike"
    await hub.create_account("carol", "correct horse", "10.0.0.1")
    with pytest.raises(ClientError) as caught:
        await hub.create_account("caro1", "correct horse", "10.0.0.1")
    assert caught.value.code == "lookalike"
    guest = await named(hub, "erin_")
    await hub.store.create_account("erin", "hash", now=0.0)
    [error] = await hub.handle(guest, Register(password="correct horse"))
    assert error == Error(
        code="lookalike",
        message="'erin_' looks like the registered name 'erin': choose another name",
    )


async def test_a_lookalike_cannot_be_taken_while_a_registration_hashes() -> None:
    """While create_account hashes alice's password, a guest naming itself a1ice, a guest's
    /nick ALICE_ and a registration of aIice are refused lookalike; alice then logs in."""
    hub, _ = make_hub(rate=1000, burst=1000)
    bob = await named(hub, "bob")
    guest = hub.connect("10.0.0.9:1")
    account, set_name, nick, again = await asyncio.gather(
        hub.create_account("alice", "correct horse", "10.0.0.1"),
        hub.handle(guest, SetName(name="a1ice")),
        hub.handle(bob, Nick(name="ALICE_")),
        hub.create_account("aIice", "correct horse", "10.0.0.2"),
        return_exceptions=True,
    )
    assert isinstance(account, Account) and account.name == "alice"
    assert set_name == [
        Error(
            code="lookalike",
            message="'a1ice' looks like 'alice', which is being registered: choose another name",
        )
    ]
    assert isinstance(nick, list) and isinstance(nick[0], Error) and nick[0].code == "lookalike"
    assert isinstance(again, ClientError) and again.code == "lookalike"
    [error] = await hub.handle(guest, SetName(name="a1ice"))
    assert isinstance(error, Error) and error.code == "lookalike"
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_the_owner_of_a_name_logs_in_whatever_look_alike_is_online() -> None:
    """Login is by the exact name and its password: a look-alike guest online (there
    before the account was made) does not keep the owner out."""
    hub, _ = make_hub()
    await named(hub, "a1ice")
    alice = await registered(hub, "bob")
    await hub.handle(alice, Quit())
    bob = await hub.store.account("bob")
    assert bob is not None
    await hub.store.create_account("alice", bob.password_hash, now=0.0)
    session, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice") and session.name == "alice"
