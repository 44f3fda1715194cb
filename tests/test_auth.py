"""Passwords are hashed with argon2id on a bounded pool off the loop; attempts are throttled
before the hash, counting those in flight."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable

import pytest

from roomcast.auth import Cost, Passwords, Throttle, address_key, check_password
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


def fail(throttle: Throttle, key: str) -> bool:
    """One failed attempt of ``key``, begun and ended; whether it reached the limit."""
    assert throttle.wait(key) == 0.0
    throttle.begin(key)
    return throttle.end(key, count=True)


def test_throttle_counts_failures_in_a_window() -> None:
    """After `limit` failures a key waits until the oldest leaves the window; the failure
    that reaches the limit says so (once)."""
    now = [0.0]
    throttle = Throttle(limit=3, window=60.0, clock=lambda: now[0])
    reached = []
    for t in (0.0, 10.0, 20.0):
        now[0] = t
        reached.append(fail(throttle, "alice"))
    assert reached == [False, False, True]
    assert throttle.wait("alice") == pytest.approx(40.0)
    assert throttle.wait("bob") == 0.0
    now[0] = 60.0
    assert throttle.wait("alice") == 0.0


def test_throttle_clear_forgets_a_key() -> None:
    """A success clears the key's failures."""
    throttle = Throttle(limit=1, window=60.0, clock=lambda: 0.0)
    fail(throttle, "alice")
    assert throttle.wait("alice") > 0
    throttle.clear("alice")
    assert throttle.wait("alice") == 0.0


def test_attempts_in_flight_take_slots_before_they_fail() -> None:
    """Attempts begun and not ended count: with a limit of 3, three in flight make the
    fourth wait (a second, as they end soon), before any of them has failed."""
    throttle = Throttle(limit=3, window=60.0, clock=lambda: 0.0, retry=1.0)
    for _ in range(3):
        assert throttle.wait("alice") == 0.0
        throttle.begin("alice")
    assert throttle.wait("alice") == 1.0
    assert throttle.wait("bob") == 0.0
    throttle.end("alice", count=False)  # a success, or no verdict: the slot is free again
    assert throttle.wait("alice") == 0.0
    throttle.end("alice", count=True)
    throttle.end("alice", count=True)
    assert throttle.wait("alice") == 0.0  # 2 recorded, none in flight
    assert fail(throttle, "alice")
    assert throttle.wait("alice") == pytest.approx(60.0)


def test_clear_keeps_the_attempts_in_flight() -> None:
    """A success clears what was recorded, not the slots other attempts hold."""
    throttle = Throttle(limit=2, window=60.0, clock=lambda: 0.0)
    throttle.begin("alice")
    throttle.begin("alice")
    throttle.clear("alice")
    assert throttle.wait("alice") > 0
    throttle.end("alice", count=False)
    assert throttle.wait("alice") == 0.0


def test_throttle_sweeps_keys_whose_window_has_passed() -> None:
    """Keys recorded once and never seen again are dropped as the table grows, so a flood
    of distinct keys leaves the table no bigger than one window's worth."""
    now = [0.0]
    throttle = Throttle(limit=5, window=10.0, clock=lambda: now[0])
    for i in range(5000):
        now[0] = i / 100  # 100 keys a second, each seen once
        fail(throttle, f"key{i}")
    assert len(throttle._recorded) <= 2 * 1024 + 1000 + 1


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("::1", "::/64"),
        ("?", "?"),
        ("not an address", "not an address"),
    ],
)
def test_addresses_are_counted_by_ipv4_address_or_ipv6_64(host: str, key: str) -> None:
    """An IPv6 client is counted by its /64, so that one subscriber's 2**64 addresses are one
    key; IPv4 (also mapped into IPv6) by its address; anything else as it is."""
    assert address_key(host) == key


class Held:
    """Jobs that hold workers of a ``Passwords`` until released: a worker is taken for as
    long as a test needs it, not for as long as a hash happens to take."""

    def __init__(self, passwords: Passwords) -> None:
        self.passwords = passwords  # whose workers are held
        self.release = threading.Event()  # set: the held jobs end
        self.jobs: list[asyncio.Task[bool]] = []  # the holding jobs

    async def hold(self, count: int = 1) -> None:
        """Take ``count`` places (workers first, then the queue) with held jobs."""
        for _ in range(count):
            held = self.passwords._run(1, self.release.wait)
            self.jobs.append(asyncio.create_task(held))
        await asyncio.sleep(0)  # one loop turn: each asked for its place

    async def end(self) -> None:
        """Let the held jobs end, and wait until they have."""
        self.release.set()
        await asyncio.gather(*self.jobs, return_exceptions=True)


async def test_hashing_beyond_the_workers_and_the_queue_is_refused_busy() -> None:
    """With one worker and a queue of two, a password check asked while three are pending
    is refused at once as busy, with a retry hint; once they are done there is room."""
    passwords = Passwords(CHEAP, workers=1, queue=2)
    held = Held(passwords)
    try:
        hashed = await passwords.hash("password one")
        await held.hold()
        checks = [asyncio.create_task(passwords.verify(hashed, f"pw {n}")) for n in (1, 2)]
        await asyncio.sleep(0)
        assert passwords.pending == 3
        with pytest.raises(ClientError) as caught:
            await passwords.verify(hashed, "password one")
        busy = caught.value
        assert busy.code == "busy" and busy.retry_after is not None and busy.retry_after >= 1
        assert f"try again in {busy.retry_after} s" in busy.message
        await held.end()
        assert await asyncio.gather(*checks) == [False, False]
        assert passwords.pending == 0
        assert await passwords.verify(hashed, "password one")  # room again
    finally:
        await held.end()
        passwords.close()


async def test_new_passwords_take_half_the_queue_and_leave_the_rest_to_logins() -> None:
    """With one worker and a queue of four, new passwords are hashed three at most (one
    running, two waiting); then a registration is busy, but a login still gets in."""
    passwords = Passwords(CHEAP, workers=1, queue=4)
    held = Held(passwords)
    try:
        hashed = await passwords.hash("an earlier password")
        await held.hold(3)
        assert passwords.pending == 3
        with pytest.raises(ClientError) as caught:
            await passwords.hash("one too many")
        assert caught.value.code == "busy"
        login = asyncio.create_task(passwords.verify(hashed, "an earlier password"))
        await asyncio.sleep(0)
        assert passwords.pending == 4
        await held.end()
        assert await login
    finally:
        await held.end()
        passwords.close()


async def test_a_cancelled_hash_counts_until_its_worker_is_done_with_it() -> None:
    """A caller that gives up does not free its place: the work goes on and still counts
    against the bound until its worker is done with it."""
    passwords = Passwords(CHEAP, workers=1, queue=2)
    held = Held(passwords)
    try:
        await held.hold()
        held.jobs[0].cancel()  # its caller gives up; its job runs on
        with pytest.raises(asyncio.CancelledError):
            await held.jobs[0]
        assert passwords.pending == 1  # still on its worker
        behind = asyncio.create_task(passwords.hash("waits behind it"))
        await asyncio.sleep(0)
        with pytest.raises(ClientError) as caught:  # the worker and the half queue are taken
            await passwords.hash("refused meanwhile")
        assert caught.value.code == "busy"
        await held.end()
        assert (await behind).startswith("$argon2id$")  # one worker: the first ended before
        assert passwords.pending == 0
    finally:
        await held.end()
        passwords.close()


async def test_a_waiting_login_goes_before_waiting_registrations() -> None:
    """With the worker busy and two registrations waiting, a password check asked after
    them runs first: a registration flood delays a login by the running hash only."""
    passwords = Passwords(CHEAP, workers=1, queue=4)
    held = Held(passwords)
    finished: list[str] = []

    async def job(name: str, work: Awaitable[object]) -> None:
        await work
        finished.append(name)

    try:
        hashed = await passwords.hash("an earlier password")
        await held.hold()
        jobs = [
            asyncio.create_task(job("registration 1", passwords.hash("registration 1"))),
            asyncio.create_task(job("registration 2", passwords.hash("registration 2"))),
            asyncio.create_task(job("login", passwords.verify(hashed, "an earlier password"))),
        ]
        await asyncio.sleep(0)
        assert passwords.pending == 4
        await held.end()
        await asyncio.gather(*jobs)
        assert finished == ["login", "registration 1", "registration 2"]
        assert passwords.pending == 0
    finally:
        await held.end()
        passwords.close()


async def test_a_job_cancelled_while_it_waits_leaves_the_queue() -> None:
    """A caller that gives up before its job found a worker takes nothing: its place is
    free at once and the jobs behind it run in order."""
    passwords = Passwords(CHEAP, workers=1, queue=2)
    held = Held(passwords)
    try:
        await held.hold()
        waiting = asyncio.create_task(passwords.hash("given up on"))
        await asyncio.sleep(0)
        assert passwords.pending == 2
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert passwords.pending == 1
        behind = asyncio.create_task(passwords.hash("behind it"))
        await asyncio.sleep(0)
        assert passwords.pending == 2
        await held.end()
        assert (await behind).startswith("$argon2id$")
        assert passwords.pending == 0
    finally:
        await held.end()
        passwords.close()
