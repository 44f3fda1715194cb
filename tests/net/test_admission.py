"""Counting open connections per address and in total (``roomcast.net.admission``), without
sockets."""

from __future__ import annotations

import logging
import resource

import pytest

from roomcast.net.admission import (
    LIMITS,
    Admission,
    AdmissionLimits,
    connection_cap,
    raise_descriptor_limit,
)


def test_an_address_past_its_cap_is_refused_and_told_why_others_are_not() -> None:
    """With a cap of 3, the fourth connection of an address is refused with
    ``too_many_connections``; another address is admitted; a release frees a place."""
    admission = Admission(AdmissionLimits(per_address=3, total=100))
    tickets = [admission.admit("10.0.0.1", "10.0.0.1:1", "line") for _ in range(3)]
    assert all(t.refusal is None for t in tickets)
    fourth = admission.admit("10.0.0.1", "10.0.0.1:2", "http")
    assert fourth.refusal is not None and fourth.told
    assert fourth.refusal.code == "too_many_connections"
    assert "at most 3" in fourth.refusal.message
    assert admission.admit("10.0.0.2", "10.0.0.2:1", "line").refusal is None
    fourth.release()
    tickets[0].release()
    tickets[0].release()  # a second release does nothing
    assert admission.open_from("10.0.0.1") == 2
    assert admission.admit("10.0.0.1", "10.0.0.1:3", "line").refusal is None
    assert admission.refused["max_per_address"] == 1


def test_far_over_its_cap_an_address_is_closed_without_an_answer() -> None:
    """Refusals being told hold descriptors too: past twice the cap, the next connections
    of the address are refused without a word."""
    admission = Admission(AdmissionLimits(per_address=2, total=100))
    told = [admission.admit("10.0.0.1", "p", "http") for _ in range(4)]
    assert [t.refusal is None for t in told] == [True, True, False, False]
    assert all(t.told for t in told)
    silent = admission.admit("10.0.0.1", "p", "http")
    assert silent.refusal is not None and not silent.told
    assert admission.refused["max_per_address"] == 3


def test_ipv6_addresses_are_counted_by_their_64() -> None:
    """Two addresses of one /64 share a count; another /64 does not; IPv4-mapped is IPv4."""
    admission = Admission(AdmissionLimits(per_address=1, total=100))
    assert admission.admit("2001:db8:1:2::1", "p", "line").refusal is None
    assert admission.admit("2001:db8:1:2::ffff", "p", "line").refusal is not None
    assert admission.admit("2001:db8:1:3::1", "p", "line").refusal is None
    assert admission.admit("10.1.1.1", "p", "line").refusal is None
    assert admission.admit("::ffff:10.1.1.1", "p", "line").refusal is not None


def test_past_the_total_cap_everyone_is_refused_then_closed_past_the_spare() -> None:
    """At the total cap every address is refused with ``server_full`` (checked before the
    address's own cap), told why up to ``spare`` more, then closed without a word."""
    admission = Admission(AdmissionLimits(per_address=0, total=3, spare=1))
    for i in range(3):
        assert admission.admit(f"10.0.0.{i}", "p", "line").refusal is None
    full = admission.admit("10.0.0.9", "p", "line")
    assert full.refusal is not None and full.refusal.code == "server_full" and full.told
    assert not admission.admit("10.0.0.9", "p", "line").told
    assert admission.refused["max_connections"] == 2
    assert admission.open == 5


def test_a_per_address_cap_of_zero_is_no_cap() -> None:
    """per_address=0 counts but refuses nobody below the total."""
    admission = Admission(AdmissionLimits(per_address=0, total=50))
    assert all(admission.admit("10.0.0.1", "p", "line").refusal is None for _ in range(50))


def test_refusals_are_logged_with_the_peer_and_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each refusal is one warning naming the peer, the transport and the limit."""
    caplog.set_level(logging.INFO, logger="roomcast")
    admission = Admission(AdmissionLimits(per_address=1, total=10))
    admission.admit("10.0.0.1", "10.0.0.1:5", "line")
    admission.admit("10.0.0.1", "10.0.0.1:6", "http")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        "connection refused peer=10.0.0.1:6 transport=http limit=max_per_address open=1"
    )


def test_every_limit_has_a_counter_from_the_start() -> None:
    """The counters name every limit at 0, and ``note`` counts cuts by a deadline."""
    admission = Admission()
    assert admission.refused == dict.fromkeys(LIMITS, 0)
    admission.note("name_timeout")
    assert admission.refused["name_timeout"] == 1


def test_the_default_cap_keeps_headroom_below_the_descriptor_limit() -> None:
    """1,024 descriptors: 922 connections and 51 spare refusals; a cap asked above what the
    descriptors allow is lowered; one asked below is kept; tiny limits still admit one."""
    assert connection_cap(0, 1024) == (922, 51)
    assert connection_cap(5000, 1024) == (922, 51)
    assert connection_cap(100, 1024) == (100, 51)
    assert connection_cap(0, 100_000) == (90_000, 5000)
    assert connection_cap(0, 10)[0] == 1


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one() -> None:
    """After the call the soft limit equals the hard one (unless the hard one is unlimited);
    the limit before is reported."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lower = min(soft, 256) if hard == resource.RLIM_INFINITY else min(hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lower, hard))
    try:
        raised = raise_descriptor_limit()
        assert raised is not None and raised[0] == lower
        if hard != resource.RLIM_INFINITY:
            assert raised[1] == hard == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
