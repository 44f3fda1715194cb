"""Passwords are hashed with argon2id off the loop; failed logins are throttled."""

from __future__ import annotations

import pytest

from roomcast.auth import Cost, Passwords, Throttle, check_password
from roomcast.errors import ClientError

CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, test-sized


async def test_hash_and_verify() -> None:
    """A hash verifies its own password and no other."""
    passwords = Passwords(CHEAP)
    hashed = await passwords.hash("correct horse")
    assert hashed.startswith("$argon2id$")
    assert await passwords.verify(hashed, "correct horse")
    assert not await passwords.verify(hashed, "wrong horse")


async def test_a_malformed_hash_never_matches() -> None:
    """A stored hash that is not argon2 is a mismatch, not a crash."""
    assert not await Passwords(CHEAP).verify("not a hash", "anything at all")


async def test_overlong_passwords_are_refused() -> None:
    """Hashing refuses passwords outside 8-256 characters; verifying one fails fast."""
    passwords = Passwords(CHEAP)
    with pytest.raises(ClientError) as caught:
        await passwords.hash("short")
    assert caught.value.code == "bad_password"
    assert not await passwords.verify(await passwords.hash("long enough"), "x" * 300)
    assert check_password("12345678") == "12345678"


def test_throttle_counts_failures_in_a_window() -> None:
    """After `limit` failures a key waits until the oldest leaves the window."""
    now = [0.0]
    throttle = Throttle(limit=3, window=60.0, clock=lambda: now[0])
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        assert throttle.wait("alice") == 0.0
        throttle.fail("alice")
    assert throttle.wait("alice") == pytest.approx(40.0)
    assert throttle.wait("bob") == 0.0
    now[0] = 60.0
    assert throttle.wait("alice") == 0.0


def test_throttle_clear_forgets_a_key() -> None:
    """A success clears the key's failures."""
    throttle = Throttle(limit=1, window=60.0, clock=lambda: 0.0)
    throttle.fail("alice")
    assert throttle.wait("alice") > 0
    throttle.clear("alice")
    assert throttle.wait("alice") == 0.0
