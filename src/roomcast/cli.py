"""The ``roomcast`` command: ``roomcast serve`` runs a server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from roomcast import __version__
from roomcast.config import Config, add_arguments, from_arguments
from roomcast.server import Server

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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``roomcast`` console script."""
    parser = argparse.ArgumentParser(prog="roomcast", description="a broadcast-channel chat server")
    parser.add_argument("--version", action="version", version=f"roomcast {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the server")
    add_arguments(serve_parser)
    args = parser.parse_args(argv)
    config = from_arguments(args)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        run(serve(config), config.loop)
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
