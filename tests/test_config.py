"""Settings come from defaults, then ROOMCAST_* variables, then flags."""

from __future__ import annotations

import argparse

import pytest

from roomcast.config import Config, add_arguments, from_arguments


def parse(argv: list[str], env: dict[str, str]) -> Config:
    parser = argparse.ArgumentParser()
    add_arguments(parser, env)
    return from_arguments(parser.parse_args(argv))


def test_defaults() -> None:
    """With nothing set, the line listener is on 127.0.0.1:7777."""
    config = parse([], {})
    assert (config.host, config.port) == ("127.0.0.1", 7777)


def test_environment_overrides_defaults_and_flags_override_both() -> None:
    """ROOMCAST_PORT changes the default; --port wins over it."""
    assert parse([], {"ROOMCAST_PORT": "7000"}).port == 7000
    assert parse(["--port", "7001"], {"ROOMCAST_PORT": "7000"}).port == 7001
    assert parse([], {"ROOMCAST_STALL_TIMEOUT": "2.5"}).stall_timeout == 2.5


def test_a_bad_variable_is_named() -> None:
    """A variable that does not parse says which one and what it expected."""
    with pytest.raises(ValueError, match="ROOMCAST_PORT='x' is not a valid int"):
        Config.from_env({"ROOMCAST_PORT": "x"})
