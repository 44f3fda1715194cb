"""The token bucket of flood control (``roomcast.flood``): pure arithmetic on a given clock."""

from __future__ import annotations

import pytest

from roomcast.flood import Bucket


def test_a_bucket_spends_its_burst_then_refills_at_its_rate_up_to_the_burst() -> None:
    """take spends whole tokens while there are any; time brings them back at ``rate`` per
    second, never beyond ``burst``."""
    bucket = Bucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.available(0.0) == 0 and bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.wait(0.2) == pytest.approx(0.3)
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert bucket.available(100.0) == 3


def test_turn_says_how_long_to_wait_and_refuses_a_hold_longer_than_allowed() -> None:
    """turn is 0.0 while a token is there, else the wait for the next; a client that keeps
    coming early is held back without a break, and once that would pass ``hold`` turn says
    None."""
    bucket = Bucket(rate=2.0, burst=1, now=0.0)
    assert bucket.turn(0.0, hold=1.0) == 0.0 and bucket.take(0.0)
    now = 0.0
    for _ in range(2):  # 0.5 s held each time, 1 s in all
        assert bucket.turn(now, hold=1.0) == pytest.approx(0.5)
        now += 0.5
        assert bucket.turn(now, hold=1.0) == 0.0 and bucket.take(now)
    assert bucket.turn(now, hold=1.0) is None  # another 0.5 s would make 1.5


def test_a_client_that_pauses_ends_its_hold() -> None:
    """A command that need not wait (the client came no faster than the rate) ends the hold:
    the next wait starts a new one."""
    bucket = Bucket(rate=2.0, burst=1, now=0.0)
    assert bucket.take(0.0)
    assert bucket.turn(0.0, hold=0.6) == pytest.approx(0.5)
    assert bucket.turn(0.5, hold=0.6) == 0.0 and bucket.take(0.5)  # the one that waited
    assert bucket.turn(1.0, hold=0.6) == 0.0 and bucket.take(1.0)  # came at the rate: over
    assert bucket.turn(1.0, hold=0.6) == pytest.approx(0.5)  # a new hold, from 1.0
