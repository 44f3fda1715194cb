"""Settings come from defaults, then ROOMCAST_* variables, then flags."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from roomcast.config import FLAG_HELP, STORE_FIELDS, Config, add_arguments, from_arguments


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


def test_every_setting_has_one_line_of_help() -> None:
    """Each Config field has a help line (what --help shows), and no help names a field that
    does not exist."""
    names = {f.name for f in fields(Config)}
    assert set(FLAG_HELP) == names
    for name, text in FLAG_HELP.items():
        assert text and "\n" not in text and len(text) <= 100, name


def test_only_some_flags_can_be_added_and_the_others_keep_their_defaults() -> None:
    """With only=STORE_FIELDS the parser knows --store, --data-dir and --log-level; the other
    settings keep their built-in values, and their variables are not read (a bad one is no
    error)."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, {"ROOMCAST_PORT": "abc", "ROOMCAST_STORE": "memory:"}, only=STORE_FIELDS)
    flags = {o for action in parser._actions for o in action.option_strings}
    assert flags == {"-h", "--help", "--store", "--data-dir", "--log-level"}
    config = from_arguments(parser.parse_args(["--data-dir", "/tmp/x"]))
    assert config == Config(store="memory:", data_dir="/tmp/x")
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "1"])


def test_the_account_limits_have_defaults_flags_and_variables() -> None:
    """Login throttles, registrations and password hashing each have a default, a flag and
    a ROOMCAST_* variable (docs/security.md lists them)."""
    defaults = parse([], {})
    assert (defaults.login_failures, defaults.name_failures, defaults.address_failures) == (
        5,
        50,
        20,
    )
    assert (defaults.login_window, defaults.registrations, defaults.register_window) == (
        300.0,
        10,
        3600.0,
    )
    assert (defaults.hash_workers, defaults.hash_queue) == (2, 16)
    env = {"ROOMCAST_REGISTRATIONS": "3", "ROOMCAST_HASH_QUEUE": "4"}
    config = parse(["--hash-workers", "1", "--login-failures", "7"], env)
    assert (config.registrations, config.hash_queue) == (3, 4)
    assert (config.hash_workers, config.login_failures) == (1, 7)


def test_the_flood_hold_has_a_default_a_variable_and_a_flag() -> None:
    """--flood-hold (ROOMCAST_FLOOD_HOLD) defaults to 10 s."""
    assert parse([], {}).flood_hold == 10.0
    assert parse([], {"ROOMCAST_FLOOD_HOLD": "2.5"}).flood_hold == 2.5
    assert parse(["--flood-hold", "3"], {"ROOMCAST_FLOOD_HOLD": "2.5"}).flood_hold == 3.0


def test_the_connection_limits_have_defaults_flags_and_variables() -> None:
    """Connections per address and in total, and the deadlines for a name, an HTTP head and
    body and a WebSocket's pong, each have a default, a flag and a ROOMCAST_* variable."""
    defaults = parse([], {})
    assert (defaults.max_per_address, defaults.max_connections) == (20, 0)
    assert (defaults.name_timeout, defaults.header_timeout, defaults.body_timeout) == (
        30.0,
        10.0,
        30.0,
    )
    assert (defaults.ws_heartbeat, defaults.public_origin) == (30.0, "")
    env = {"ROOMCAST_MAX_PER_ADDRESS": "5", "ROOMCAST_HEADER_TIMEOUT": "2.5"}
    config = parse(["--max-connections", "100", "--name-timeout", "0", "--public-origin", "x"], env)
    assert (config.max_per_address, config.header_timeout) == (5, 2.5)
    assert (config.max_connections, config.name_timeout, config.public_origin) == (100, 0.0, "x")
