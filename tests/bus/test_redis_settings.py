"""The Redis bus's settings from its URL, and its reconnection waits: no Redis needed."""

from __future__ import annotations

import random

import pytest

from roomcast.bus.redis_settings import DEFAULT_PREFIX, Settings, backoff


def test_the_defaults() -> None:
    """A URL without settings gets the documented defaults; redis-py gets the URL as is."""
    settings = Settings.parse("redis://127.0.0.1:6379/0")
    assert settings == Settings(
        redis_url="redis://127.0.0.1:6379/0",
        where="redis://127.0.0.1:6379/0",
        prefix=DEFAULT_PREFIX,
        max_pending=8 * 1024 * 1024,
        timeout=5.0,
        health_check=5.0,
        backoff_min=0.05,
        backoff_max=5.0,
    )


def test_the_bus_settings_are_taken_out_and_the_rest_left_to_redis_py() -> None:
    """The bus's own settings are read from the query; other parameters stay for
    redis-py; the password never shows in ``where``."""
    settings = Settings.parse(
        "rediss://:secret@h:6380/2?prefix=chat:&max_pending=1000&timeout=0.5"
        "&health_check=2&backoff_min=0.1&backoff_max=0.1&ssl_cert_reqs=none"
    )
    assert settings.redis_url == "rediss://:secret@h:6380/2?ssl_cert_reqs=none"
    assert settings.where.startswith("rediss://:***@h:6380/2?prefix=chat:")
    assert (settings.prefix, settings.max_pending, settings.timeout) == ("chat:", 1000, 0.5)
    assert (settings.health_check, settings.backoff_min, settings.backoff_max) == (2, 0.1, 0.1)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("timeout=0", "must be above 0"),
        ("timeout=-1", "must be above 0"),
        ("timeout=nan", "must be above 0"),
        ("health_check=inf", "must be above 0"),
        ("max_pending=lots", "is not a number"),
        ("max_pending=1.5", "is not a number"),
        ("backoff_min=2&backoff_max=1", "at least backoff_min"),
        ("prefix=", "printable ASCII"),
        ("prefix=a%20b", "printable ASCII"),
        ("prefix=caf%C3%A9", "printable ASCII"),
        (f"prefix={'x' * 101}", "printable ASCII"),
    ],
)
def test_a_bad_setting_is_refused(query: str, why: str) -> None:
    """Each setting is checked, saying which is wrong."""
    with pytest.raises(ValueError, match=why):
        Settings.parse(f"redis://127.0.0.1:6379/0?{query}")


def test_the_waits_double_up_to_the_cap_with_jitter() -> None:
    """Each wait is between half and all of the exponential wait, which doubles up to the
    cap."""
    rng = random.Random(7)
    waits = backoff(0.05, 1.0, rng.random)
    limits = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    drawn = [next(waits) for _ in limits]
    for wait, limit in zip(drawn, limits, strict=True):
        assert limit / 2 <= wait <= limit
    assert len(set(drawn)) == len(drawn)  # jittered, not fixed
    assert next(backoff(1.0, 1.0, lambda: 0.0)) == 0.5
    assert next(backoff(1.0, 1.0, lambda: 1.0)) == 1.0
