"""``roomcast user add|passwd|del``: run in-process through ``main``, on a SQLite file in
``tmp_path``, the password given on standard input (or, for the prompt, to ``getpass``).

The command hashes with argon2's default cost (about 0.2 s a hash, more on a busy machine):
the first test keeps it, the others make the command hash at a cheap cost (``CHEAP``).
Verifying reads the cost from the hash, so checks of cheap hashes are cheap too.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from roomcast.auth import Cost, Passwords
from roomcast.cli import main
from roomcast.config import Config
from roomcast.model import Draft, Kind, PrivateDraft
from roomcast.server import Server
from roomcast.store import open_store
from roomcast.store.base import Account

PASSWORD = "correct-horse-9"
CHEAP = Cost(time_cost=1, memory_cost=8, parallelism=1)  # argon2id at almost no cost


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The store the commands use; the data directory points into ``tmp_path`` as well, so
    that nothing can reach the user's files."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("ROOMCAST_STORE", raising=False)
    return f"sqlite:{tmp_path / 'rc.db'}"


def user(
    monkeypatch: pytest.MonkeyPatch,
    store_url: str,
    *args: str,
    stdin: str | None = None,
    cheap: bool = True,
) -> int:
    """Run ``roomcast user ARGS --store STORE_URL``, with ``--password-stdin`` and ``stdin``
    as standard input when ``stdin`` is given; return the exit status. ``cheap``: hash at
    the ``CHEAP`` cost instead of the default one."""
    if cheap:
        monkeypatch.setattr("roomcast.cli.Passwords", lambda: Passwords(CHEAP))
    argv = ["user", *args, "--store", store_url]
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        argv.append("--password-stdin")
    return main(argv)


async def _with_store(url: str, name: str) -> tuple[Account | None, dict[str, int], int]:
    store = await open_store(url)
    try:
        account = await store.account(name)
        memberships = dict(await store.memberships(name))
        privates = len(await store.privates(name, after=0, limit=100))
        return account, memberships, privates
    finally:
        await store.close()


def account_of(url: str, name: str) -> Account | None:
    """The account ``name`` as the store at ``url`` holds it."""
    return asyncio.run(_with_store(url, name))[0]


def verifies(account: Account | None, password: str) -> bool:
    """Whether ``password`` is the account's password."""
    assert account is not None
    return asyncio.run(Passwords().verify(account.password_hash, password))


def test_user_add_creates_an_account_with_the_password_read_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """'user add alice --password-stdin' prints 'added alice' and the account verifies with
    the line it read (without its newline) and with nothing else (at the default cost)."""
    assert user(monkeypatch, store_url, "add", "alice", stdin=PASSWORD + "\n", cheap=False) == 0
    assert capsys.readouterr().out == "added alice\n"
    account = account_of(store_url, "ALICE")
    assert account is not None and account.name == "alice"
    assert verifies(account, PASSWORD)
    assert not verifies(account, PASSWORD + "\n")


def test_user_add_refuses_a_name_registered_in_another_case(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """A second 'user add' of the same name in any case exits 1 with one line on stderr and
    leaves the first account as it was."""
    assert user(monkeypatch, store_url, "add", "alice", stdin=PASSWORD + "\n") == 0
    capsys.readouterr()
    assert user(monkeypatch, store_url, "add", "Alice", stdin="other-password\n") == 1
    assert capsys.readouterr().err == ("roomcast: the name 'Alice' is registered: choose another\n")
    assert verifies(account_of(store_url, "alice"), PASSWORD)


def test_user_passwd_replaces_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """'user passwd alice' prints 'changed the password of alice': the new password verifies,
    the old one no longer does."""
    assert user(monkeypatch, store_url, "add", "alice", stdin=PASSWORD + "\n") == 0
    assert user(monkeypatch, store_url, "passwd", "alice", stdin="a-new-password\n") == 0
    assert capsys.readouterr().out == "added alice\nchanged the password of alice\n"
    account = account_of(store_url, "alice")
    assert verifies(account, "a-new-password")
    assert not verifies(account, PASSWORD)


def test_user_passwd_of_a_missing_account_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """'user passwd bob' without such an account exits 1: 'there is no account named...'."""
    assert user(monkeypatch, store_url, "passwd", "bob", stdin=PASSWORD + "\n") == 1
    captured = capsys.readouterr()
    assert captured.err == "roomcast: there is no account named 'bob'\n"
    assert captured.out == ""


def test_user_del_deletes_the_account_its_memberships_and_its_private_messages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """'user del alice' prints 'deleted alice' and removes the account with its rooms and the
    private messages sent to it; deleting it again exits 1."""
    assert user(monkeypatch, store_url, "add", "alice", stdin=PASSWORD + "\n") == 0

    async def use_the_account() -> None:
        store = await open_store(store_url)
        try:
            now = time.time()
            message = Draft(id="m1", room="#a", sender="bob", kind=Kind.MESSAGE, text="hi", ts=now)
            await store.append(message)
            await store.set_membership("alice", "#a", read_seq=1)
            private = PrivateDraft(
                id="p1", sender="bob", recipient="alice", kind=Kind.MESSAGE, text="psst", ts=now
            )
            await store.append_private(private)
        finally:
            await store.close()

    asyncio.run(use_the_account())
    assert asyncio.run(_with_store(store_url, "alice"))[1:] == ({"#a": 1}, 1)

    assert user(monkeypatch, store_url, "del", "alice") == 0
    assert capsys.readouterr().out == "added alice\ndeleted alice\n"
    assert asyncio.run(_with_store(store_url, "alice")) == (None, {}, 0)
    assert user(monkeypatch, store_url, "del", "alice") == 1
    assert capsys.readouterr().err == "roomcast: there is no account 'alice'\n"


def test_user_logout_and_passwd_bump_the_generation_that_tokens_carry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """'user logout alice' prints that every token is revoked and moves the account's token
    generation on, as 'user passwd' does; the id stays; a missing account exits 1."""
    assert user(monkeypatch, store_url, "add", "alice", stdin=PASSWORD + "\n") == 0
    added = account_of(store_url, "alice")
    assert added is not None and added.generation == 0
    assert user(monkeypatch, store_url, "logout", "ALICE") == 0
    assert capsys.readouterr().out == (
        "added alice\nlogged alice out everywhere: every token of it is revoked\n"
    )
    assert user(monkeypatch, store_url, "passwd", "alice", stdin="new-password-1\n") == 0
    changed = account_of(store_url, "alice")
    assert changed is not None and (changed.id, changed.generation) == (added.id, 2)
    assert user(monkeypatch, store_url, "logout", "bob") == 1
    assert capsys.readouterr().err == "roomcast: there is no account 'bob'\n"


@pytest.mark.parametrize("name", ["a'b", "x; DROP TABLE accounts", "%", "ünïcode", ""])
def test_an_invalid_name_is_refused_before_the_store_is_opened(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store_url: str,
    tmp_path: Path,
    name: str,
) -> None:
    """'user add' with a name outside the name rule exits 1 with '... is not a valid name...'
    and does not even create the store file."""
    assert user(monkeypatch, store_url, "add", name, stdin=PASSWORD + "\n") == 1
    assert capsys.readouterr().err == (
        f"roomcast: {name!r} is not a valid name: use 1-32 letters, digits, '_', '-' or '.'\n"
    )
    assert not (tmp_path / "rc.db").exists()


@pytest.mark.parametrize(("given", "length"), [("short\n", 5), ("", 0), ("x" * 257 + "\n", 257)])
def test_a_password_of_the_wrong_length_is_refused_and_nothing_is_added(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store_url: str,
    given: str,
    length: int,
) -> None:
    """A password under 8 or over 256 characters (or an empty stdin) exits 1 with 'a password
    needs 8-256 characters; this one has N'; no account is created."""
    assert user(monkeypatch, store_url, "add", "alice", stdin=given) == 1
    assert capsys.readouterr().err == (
        f"roomcast: a password needs 8-256 characters; this one has {length}\n"
    )
    assert account_of(store_url, "alice") is None


class Terminal(io.StringIO):
    """Standard input that says it is a terminal (the prompts are answered by a fake
    getpass)."""

    def isatty(self) -> bool:
        return True


def test_the_end_of_input_at_a_prompt_is_no_password_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """^D at the password prompt exits 1 with 'no password given' and adds nothing."""

    def getpass(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("getpass.getpass", getpass)
    monkeypatch.setattr("sys.stdin", Terminal())
    assert user(monkeypatch, store_url, "add", "alice") == 1
    assert capsys.readouterr().err == "roomcast: no password given\n"
    assert account_of(store_url, "alice") is None


def test_without_password_stdin_the_password_is_asked_twice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], store_url: str
) -> None:
    """Without --password-stdin the password is asked twice on the terminal: two different
    answers exit 1 ('the two passwords differ'), two equal ones add the account."""
    answers = iter([PASSWORD, "something-else", PASSWORD, PASSWORD])
    prompts: list[str] = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr("getpass.getpass", getpass)
    monkeypatch.setattr("sys.stdin", Terminal())
    assert user(monkeypatch, store_url, "add", "alice") == 1
    assert capsys.readouterr().err == "roomcast: the two passwords differ\n"
    assert user(monkeypatch, store_url, "add", "alice") == 0
    assert prompts == ["password: ", "again: "] * 2
    assert verifies(account_of(store_url, "alice"), PASSWORD)


async def test_an_account_added_with_the_cli_logs_in_to_a_server_on_that_store(
    monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    """After 'user add alice', a server on the same file accepts '/login alice <password>'
    and refuses the guest name 'alice'."""
    added = await asyncio.to_thread(
        user, monkeypatch, store_url, "add", "alice", stdin=PASSWORD + "\n"
    )
    assert added == 0
    server = Server(Config(host="127.0.0.1", port=0, http_port=-1, store=store_url))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.line.port)
        writer.write(f"alice\n/login alice {PASSWORD}\n".encode())
        welcome = "-- hello alice. type text to talk, /help for commands."
        lines: list[str] = []
        async with asyncio.timeout(10):
            while welcome not in lines and len(lines) < 10:
                lines.append((await reader.readline()).decode().rstrip("\n"))
        assert lines[:2] == [
            "-- welcome to roomcast. what is your name?",
            "! 'alice' is registered: /login alice <password>, or pick another name",
        ]
        assert welcome in lines
        writer.close()
        await writer.wait_closed()
    finally:
        await server.stop()


# --- what the commands tell a user who gets them wrong ----------------------------------------


def roomcast(*args: str, stdin: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m roomcast.cli ARGS`` in a child process with ``stdin`` piped in and no
    controlling terminal (a new session), as in a script or a container."""
    return subprocess.run(
        [sys.executable, "-m", "roomcast.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
        env={**os.environ, **env},
    )


def test_a_piped_password_without_password_stdin_is_refused_without_a_traceback(
    store_url: str, tmp_path: Path
) -> None:
    """'echo PASSWORD | roomcast user add alice' exits 1 with one line naming
    --password-stdin, not a traceback, and adds nothing; with the flag it adds the account."""
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    done = roomcast("user", "add", "alice", "--store", store_url, stdin=PASSWORD + "\n", env=env)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 1
    assert done.stderr == (
        "roomcast: standard input is not a terminal: to read the password from it,"
        " add --password-stdin\n"
    )
    assert account_of(store_url, "alice") is None


def test_user_help_lists_only_the_flags_that_find_the_store(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """'roomcast user --help' shows --store, --data-dir, --log-level and --password-stdin,
    none of the server's listener and limit flags."""
    with pytest.raises(SystemExit) as exited:
        main(["user", "--help"])
    assert exited.value.code == 0
    shown = set(re.findall(r"(--[a-z-]+)", capsys.readouterr().out))
    assert shown == {"--help", "--store", "--data-dir", "--log-level", "--password-stdin"}


def test_serve_help_describes_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """'roomcast serve --help' gives every flag a description besides its default and its
    variable."""
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    options = out[out.index("options:") :]
    blocks = re.split(r"\n  (?=--)", options)[1:]  # one per flag, from its name on
    flags = {f"--{f.name.replace('_', '-')}" for f in fields(Config)}
    assert {block.split()[0] for block in blocks} == flags
    for block in blocks:
        words = " ".join(block.split()[2:])  # after the flag and its metavar
        described = re.sub(r"\(default .*; env ROOMCAST_\w+\)", "", words).strip()
        assert len(described.split()) >= 3, block
