"""The ``roomcast`` command: ``roomcast serve`` runs a server; ``roomcast user`` manages
accounts in the server's store."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from roomcast import __version__
from roomcast.auth import Passwords
from roomcast.config import STORE_FIELDS, Config, add_arguments, from_arguments
from roomcast.errors import Broken, ClientError
from roomcast.model import user_name
from roomcast.server import Server
from roomcast.store import open_store

__all__ = ["main"]

log = logging.getLogger("roomcast")


async def serve(config: Config) -> None:
    """Run a server until SIGINT or SIGTERM, then shut it down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = Server(config)
    await server.start()
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def run(coro: Coroutine[Any, Any, None], loop: str) -> None:
    """Run ``coro`` on the chosen event loop (``auto``: uvloop when it is installed)."""
    if loop in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise SystemExit("uvloop is not installed: pip install uvloop") from None
        else:
            log.info("event loop: uvloop")
            uvloop.run(coro)
            return
    log.info("event loop: asyncio")
    asyncio.run(coro)


async def manage_user(config: Config, action: str, name: str, password: str | None) -> str:
    """Add, change the password of, log out everywhere, or delete the account ``name``;
    return what was done. A password change, a logout and a deletion revoke every token of
    the account at once; a running server ends its open sessions within 30 s."""
    user_name(name)
    store = await open_store(config.store_url())
    try:
        if action == "del":
            if not await store.delete_account(name):
                raise ClientError("no_account", f"there is no account {name!r}")
            return f"deleted {name}"
        if action == "logout":
            account = await store.account(name)
            if account is None or await store.revoke(account.id) is None:
                raise ClientError("no_account", f"there is no account {name!r}")
            return f"logged {account.name} out everywhere: every token of it is revoked"
        assert password is not None
        passwords = Passwords()
        try:
            password_hash = await passwords.hash(password)
        finally:
            passwords.close()
        if action == "add":
            account = await store.create_account(name, password_hash, now=time.time())
            return f"added {account.name}"
        await store.set_password(name, password_hash)
        return f"changed the password of {name}"
    finally:
        await store.close()


def read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or asked twice on the terminal.

    Without ``from_stdin``, standard input must be a terminal: a password piped in would
    otherwise be ignored (getpass reads the terminal) or read by the first prompt only."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise ClientError(
            "usage",
            "standard input is not a terminal: to read the password from it, add --password-stdin",
        )
    try:
        first = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:  # end of input (^D) at a prompt
        raise ClientError("bad_password", "no password given") from None
    if again != first:
        raise ClientError("bad_password", "the two passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script."""
    parser = argparse.ArgumentParser(prog="roomcast", description="a broadcast-channel chat server")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="run the server",
        description="Run a roomcast server until SIGINT or SIGTERM. Every flag can also be"
        " set by its ROOMCAST_* environment variable; a flag wins over its variable.",
    )
    user_parser = commands.add_parser(
        "user",
        help="add, change, log out everywhere or delete an account",
        description="Add an account, change its password, log it out everywhere or delete"
        " it, in the store a server uses: give the same --store or --data-dir as the server."
        " passwd, logout and del revoke every token of the account.",
    )
    try:
        add_arguments(serve_parser)
        add_arguments(user_parser, only=STORE_FIELDS)
    except ValueError as e:  # a ROOMCAST_* variable that does not parse
        parser.error(str(e))
    user_parser.add_argument(
        "action",
        choices=["add", "passwd", "logout", "del"],
        help="add the account, change its password, log it out everywhere, or delete it",
    )
    user_parser.add_argument("name", help="the account's name")
    user_parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of asking"
        " for it on the terminal",
    )
    args = parser.parse_args(argv)
    config = from_arguments(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "user":
        try:
            asks = args.action in ("add", "passwd")
            password = read_password(args.password_stdin) if asks else None
            print(asyncio.run(manage_user(config, args.action, args.name, password)))
        except (ClientError, Broken, ValueError) as e:
            print(f"roomcast: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # ^C at a prompt: no traceback
            print(file=sys.stderr)
            return 130
        return 0
    try:
        run(serve(config), config.loop)
    # a port in use, a store that cannot be opened or written, a setting that makes no sense
    except (OSError, Broken, ValueError) as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
