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
from roomcast.config import Config, add_arguments, from_arguments
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
    """Add, change the password of, or delete the account ``name``; return what was done."""
    user_name(name)
    store = await open_store(config.store_url())
    try:
        if action == "del":
            if not await store.delete_account(name):
                raise ClientError("no_account", f"there is no account {name!r}")
            return f"deleted {name}"
        assert password is not None
        password_hash = await Passwords().hash(password)
        if action == "add":
            account = await store.create_account(name, password_hash, now=time.time())
            return f"added {account.name}"
        await store.set_password(name, password_hash)
        return f"changed the password of {name}"
    finally:
        await store.close()


def read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or asked twice on the terminal."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ClientError("bad_password", "the two passwords differ")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script."""
    parser = argparse.ArgumentParser(prog="roomcast", description="a broadcast-channel chat server")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the server")
    user_parser = commands.add_parser("user", help="add, change or delete an account")
    try:
        add_arguments(serve_parser)
        add_arguments(user_parser)
    except ValueError as e:  # a ROOMCAST_* variable that does not parse
        parser.error(str(e))
    user_parser.add_argument("action", choices=["add", "passwd", "del"])
    user_parser.add_argument("name")
    user_parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
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
            password = None if args.action == "del" else read_password(args.password_stdin)
            print(asyncio.run(manage_user(config, args.action, args.name, password)))
        except (ClientError, Broken, ValueError) as e:
            print(f"roomcast: {e}", file=sys.stderr)
            return 1
        return 0
    try:
        run(serve(config), config.loop)
    except (OSError, Broken, ValueError) as e:  # a port taken, a store unreachable or misnamed
        log.error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
