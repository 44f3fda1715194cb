"""Fixtures for the end-to-end tests: real servers on 127.0.0.1, port 0, stopped after each test.

Every async test here runs twice: on asyncio's own event loop and on uvloop, which
``roomcast serve`` uses when it is installed (their transports differ in the details that
flow control and closing depend on).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from roomcast.config import Config
from roomcast.server import Server

StartServer = Callable[..., Awaitable[Server]]  # start_server(**config_overrides) -> Server


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run each async test on asyncio's loop and, when it is installed, on uvloop's."""
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop
    }
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for Windows
        pass
    else:
        factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start in-process servers with ``Config`` overrides; every one is stopped after the test.

    The store is ``memory:`` unless overridden: a test never touches the user's data directory.
    """
    started: list[Server] = []

    async def start(**overrides: Any) -> Server:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": 0,
            "http_port": 0,
            "store": "memory:",
        }
        server = Server(Config(**(settings | overrides)))
        await server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        await server.stop()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A server with the default limits."""
    return await start_server()
