"""Names and accounts (``roomcast.accounts``): free names, nick, registration, logins and
their throttles, tokens and logging out everywhere. Driven through the hub, real argon2id at
a test-sized cost."""

from __future__ import annotations

import asyncio

import pytest

from roomcast.auth import Passwords
from roomcast.errors import ClientError
from roomcast.model import (
    Authenticated,
    Error,
    Info,
    Kind,
    Login,
    Logout,
    Message,
    Nick,
    Quit,
    Register,
    SetName,
    Welcome,
)
from roomcast.session import State
from roomcast.store.base import Account
from tests.helpers import (
    CHEAP,
    account_of,
    login,
    make_hub,
    named,
    ready,
    registered,
)

# --- names --------------------------------------------------------------------------------


async def test_names_are_unique_case_insensitively() -> None:
    """A name taken in any case is refused with name_taken; another name then works."""
    hub, _ = make_hub()
    await named(hub, "alice")
    session = hub.connect("peer")
    [error] = await hub.handle(session, SetName(name="ALICE"))
    assert isinstance(error, Error) and error.code == "name_taken"
    assert session.state is State.NEW
    replies = await hub.handle(session, SetName(name="alice2"))
    assert isinstance(replies[0], Welcome)


async def test_nick_renames_everywhere_and_frees_the_old_name() -> None:
    """A nick change is announced in every room and the old name becomes free."""
    hub, _ = make_hub()
    alice, bob = await named(hub, "alice"), await named(hub, "bob")
    await ready(bob)
    assert await hub.handle(alice, Nick(name="alicia")) == [
        Info(text="you are now known as alicia")
    ]
    [m] = await ready(bob)
    assert isinstance(m, Message) and (m.kind, m.sender, m.text) == (Kind.NICK, "alice", "alicia")
    assert alice.name == "alicia"
    await named(hub, "alice")  # free again
    [error] = await hub.handle(alice, Nick(name="BOB"))
    assert isinstance(error, Error) and error.code == "name_taken"


async def test_nick_may_change_case() -> None:
    """A user may change the case of its own name."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    assert await hub.handle(alice, Nick(name="Alice")) == [Info(text="you are now known as Alice")]


async def test_a_registered_name_cannot_be_taken_by_a_guest() -> None:
    """Once registered, the name is refused to guests even when its owner is away."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    guest = hub.connect("peer")
    [error] = await hub.handle(guest, SetName(name="ALICE"))
    assert isinstance(error, Error) and error.code == "registered"
    assert "/login alice" in error.message


async def test_registered_names_cannot_nick() -> None:
    """A registered user keeps its name."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    [error] = await hub.handle(alice, Nick(name="alicia"))
    assert isinstance(error, Error) and error.code == "registered"


# --- registration and login ---------------------------------------------------------------


async def test_registering_twice_or_with_a_short_password_is_refused() -> None:
    """A second register and a password under 8 characters get clear errors."""
    hub, _ = make_hub()
    alice = await named(hub, "alice")
    [error] = await hub.handle(alice, Register(password="short"))
    assert isinstance(error, Error) and error.code == "bad_password"
    await hub.handle(alice, Register(password="long enough"))
    [error] = await hub.handle(alice, Register(password="long enough"))
    assert isinstance(error, Error) and error.code == "registered"


async def test_login_with_the_wrong_password_is_refused_and_throttled() -> None:
    """Wrong passwords get bad_login; after five a name must wait; time lifts it."""
    hub, clock = make_hub(rate=1000, burst=1000)
    alice = await registered(hub, "alice")
    await hub.handle(alice, Quit())
    for _ in range(5):
        _, [error] = await login(hub, "alice", "wrong password")
        assert isinstance(error, Error) and error.code == "bad_login"
    _, [error] = await login(hub, "alice")
    assert isinstance(error, Error) and error.code == "throttled"
    clock.advance(301)
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_failed_logins_are_throttled_per_address_too() -> None:
    """One address guessing many names is stopped after twenty failures."""
    hub, _ = make_hub(rate=1000, burst=1000)
    for i in range(20):
        _, [error] = await login(hub, f"user{i}", "wrong password")
        assert isinstance(error, Error) and error.code == "bad_login"
    _, [error] = await login(hub, "user99", "wrong password")
    assert isinstance(error, Error) and error.code == "throttled"


async def test_an_unknown_name_fails_like_a_wrong_password() -> None:
    """Login does not tell whether the name exists."""
    hub, _ = make_hub()
    _, [error] = await login(hub, "nobody")
    assert error == Error(code="bad_login", message="wrong name or password")


# --- tokens and logging out everywhere ----------------------------------------------------


async def test_authenticate_takes_a_current_token_and_refuses_a_revoked_or_deleted_one() -> None:
    """A token's claims pass while the account has that id and generation; after a password
    change, or once the account is deleted (even if the name is registered again), they are
    bad_token with 'log in again'."""
    hub, _ = make_hub()
    await registered(hub, "alice")
    account = await account_of(hub, "alice")
    assert await hub.authenticate(account.id, account.generation) == account
    await hub.store.set_password("alice", "another hash")
    for claims in ((account.id, account.generation), ("nobody's id", 0)):
        with pytest.raises(ClientError) as caught:
            await hub.authenticate(*claims)
        assert caught.value.code == "bad_token" and "log in again" in caught.value.message
    assert (await hub.authenticate(account.id, account.generation + 1)).name == "alice"
    await hub.store.delete_account("alice")
    await hub.store.create_account("alice", "h", now=1.0)
    with pytest.raises(ClientError) as caught:
        await hub.authenticate(account.id, account.generation + 1)
    assert caught.value.code == "bad_token"


async def test_hello_with_the_claims_of_a_deleted_account_is_refused() -> None:
    """Authenticated with the id of a deleted account is bad_token; the session stays NEW."""
    hub, _ = make_hub()
    alice = await registered(hub, "alice")
    account = await account_of(hub, "alice")
    await hub.handle(alice, Quit())
    await hub.store.delete_account("alice")
    session = hub.connect("10.0.0.2:1")
    [error] = await hub.handle(session, Authenticated(account=account.id, generation=0))
    assert isinstance(error, Error) and error.code == "bad_token"
    assert session.state is State.NEW


async def test_logout_everywhere_ends_every_session_and_revokes_the_tokens() -> None:
    """Logout(everywhere) bumps the account's generation, closes its other sessions with
    'closing: logged out everywhere', and leaves this one NEW; a guest is told there is
    nothing to log out of everywhere."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    before = await account_of(hub, "alice")
    laptop, _ = await login(hub, "alice")
    phone, _ = await login(hub, "alice")
    await ready(phone)
    [info] = await hub.handle(laptop, Logout(everywhere=True))
    assert isinstance(info, Info) and info.text.startswith(
        "logged out everywhere: every session and token of alice ended"
    )
    assert laptop.state is State.NEW
    assert phone.state is State.CLOSED and phone.close_reason == "logged out everywhere"
    assert (await ready(phone))[-1] == Error(
        code="closed", message="closing: logged out everywhere"
    )
    assert (await account_of(hub, "alice")).generation == before.generation + 1
    assert hub.online == 0  # the session that registered alice was closed as well
    guest = await named(hub, "guest")
    [error] = await hub.handle(guest, Logout(everywhere=True))
    assert isinstance(error, Error) and error.code == "guest"


async def test_a_login_after_a_password_change_ends_the_sessions_of_the_old_one() -> None:
    """The first login with a new password closes the sessions still open from before the
    change, without waiting for the account check: the new session is the account's."""
    hub, _ = make_hub(rate=1000, burst=1000)
    stolen = await registered(hub, "alice")
    await hub.store.set_password("alice", await hub.passwords.hash("new password"))
    session, replies = await login(hub, "alice", "new password")
    assert replies[0] == Welcome(name="alice")
    assert stolen.state is State.CLOSED and stolen.close_reason == "logged out everywhere"
    assert session.state is State.ACTIVE and hub.online == 1


# --- throttles ----------------------------------------------------------------------------


async def test_logins_sent_together_are_checked_five_at_most() -> None:
    """Twenty logins for alice from one address at once: five are checked (bad_login), the
    other fifteen are throttled before any password check."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    sessions = [hub.connect(f"10.0.0.1:{i}") for i in range(20)]
    answers = await asyncio.gather(
        *(hub.handle(s, Login(name="alice", password=f"guess {i}")) for i, s in enumerate(sessions))
    )
    codes = [a[0].code for a in answers if isinstance(a[0], Error)]
    assert codes.count("bad_login") == 5 and codes.count("throttled") == 15, codes


async def test_wrong_passwords_from_one_address_do_not_lock_out_another() -> None:
    """Five failures for alice from one address throttle that address; alice logs in from
    another address at once."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    attacker = [hub.connect(f"10.6.6.6:{i}") for i in range(6)]
    for s in attacker[:5]:
        [error] = await hub.handle(s, Login(name="alice", password="wrong password"))
        assert isinstance(error, Error) and error.code == "bad_login"
    [error] = await hub.handle(attacker[5], Login(name="alice", password="correct horse"))
    assert isinstance(error, Error) and error.code == "throttled"
    owner = hub.connect("10.1.1.1:1")
    replies = await hub.handle(owner, Login(name="alice", password="correct horse"))
    assert replies[0] == Welcome(name="alice")


async def test_the_name_limit_spares_addresses_the_name_logged_in_from() -> None:
    """Failures for alice from many addresses reach the name's own limit: a new address is
    then throttled, but an address alice logged in from before still gets in."""
    hub, clock = make_hub(rate=1000, burst=1000, name_failures=10)
    await registered(hub, "alice")
    home = hub.connect("10.1.1.1:1")
    assert (await hub.handle(home, Login(name="alice", password="correct horse")))[0] == Welcome(
        name="alice"
    )
    for i in range(10):  # two failures from each of five addresses
        s = hub.connect(f"10.6.6.{i // 2}:{i}")
        [error] = await hub.handle(s, Login(name="alice", password="wrong password"))
        assert isinstance(error, Error) and error.code == "bad_login"
    cafe = hub.connect("10.2.2.2:1")
    [error] = await hub.handle(cafe, Login(name="alice", password="correct horse"))
    assert isinstance(error, Error) and error.code == "throttled"
    again = hub.connect("10.1.1.1:2")
    assert (await hub.handle(again, Login(name="alice", password="correct horse")))[0] == Welcome(
        name="alice"
    )
    clock.advance(301)
    later = hub.connect("10.2.2.2:2")
    assert (await hub.handle(later, Login(name="alice", password="correct horse")))[0] == Welcome(
        name="alice"
    )


async def test_a_busy_refusal_is_not_counted_as_a_failed_login() -> None:
    """Logins refused busy (no worker free) do not count against the name: after many,
    the right password still logs in."""
    hub, _ = make_hub(rate=1000, burst=1000)
    await registered(hub, "alice")
    hub.passwords = Passwords(CHEAP, workers=1, queue=0)
    sessions = [hub.connect(f"10.0.0.{i}:1") for i in range(12)]
    answers = await asyncio.gather(
        *(hub.handle(s, Login(name="alice", password="wrong password")) for s in sessions)
    )
    codes = sorted(a[0].code for a in answers if isinstance(a[0], Error))
    assert codes == ["bad_login"] + ["busy"] * 11
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_registrations_are_throttled_per_address() -> None:
    """An address registers at most ``registrations`` names in the window, counting those
    still hashing; another address may; the window passing lifts it."""
    hub, clock = make_hub(rate=1000, burst=1000, registrations=3)
    made = await asyncio.gather(
        *(hub.create_account(f"bot{i}", "correct horse", "10.6.6.6") for i in range(5)),
        return_exceptions=True,
    )
    refused = [e for e in made if isinstance(e, ClientError)]
    assert len(refused) == 2 and all(e.code == "throttled" for e in refused)
    assert refused[0].retry_after == 1  # three were hashing: they would end soon
    with pytest.raises(ClientError) as caught:
        await hub.create_account("bot5", "correct horse", "10.6.6.6")
    assert caught.value.retry_after == 3600  # three are recorded: the window must pass
    assert (await hub.create_account("human", "correct horse", "10.1.1.1")).name == "human"
    clock.advance(3601)
    assert (await hub.create_account("bot9", "correct horse", "10.6.6.6")).name == "bot9"


async def test_a_name_cannot_be_taken_while_its_registration_hashes() -> None:
    """While create_account hashes alice's password, a guest naming itself alice, another
    registration of alice and a guest's /nick alice are refused name_taken; alice then logs
    in."""
    hub, _ = make_hub(rate=1000, burst=1000)
    bob = await named(hub, "bob")
    guest = hub.connect("10.0.0.9:1")
    account, set_name, again, nick = await asyncio.gather(
        hub.create_account("alice", "correct horse", "10.0.0.1"),
        hub.handle(guest, SetName(name="ALICE")),
        hub.create_account("alice", "correct horse", "10.0.0.2"),
        hub.handle(bob, Nick(name="alice")),
        return_exceptions=True,
    )
    assert isinstance(account, Account) and account.name == "alice"
    assert isinstance(set_name, list) and isinstance(set_name[0], Error)
    assert set_name[0].code == "name_taken" and "being registered" in set_name[0].message
    assert isinstance(again, ClientError) and again.code == "name_taken"
    assert isinstance(nick, list) and isinstance(nick[0], Error) and nick[0].code == "name_taken"
    _, replies = await login(hub, "alice")
    assert replies[0] == Welcome(name="alice")


async def test_a_guest_that_leaves_while_registering_keeps_its_name_reserved() -> None:
    """A guest's /register whose connection ends while the password hashes still reserves
    the name: no other guest gets it before the account exists."""
    hub, _ = make_hub(rate=1000, burst=1000)
    alice = await named(hub, "alice")
    registering = asyncio.create_task(hub.handle(alice, Register(password="correct horse")))
    await asyncio.sleep(0)  # one loop turn: the hash has started
    await hub.disconnect(alice, "connection lost")
    other = hub.connect("10.0.0.9:1")
    [error] = await hub.handle(other, SetName(name="alice"))
    assert isinstance(error, Error) and error.code == "name_taken"
    await registering
    [error] = await hub.handle(other, SetName(name="alice"))
    assert isinstance(error, Error) and error.code == "registered"
