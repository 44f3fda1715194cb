"""Assembles a server from its parts: store, hub and listeners; starts and stops them in order."""

from __future__ import annotations

import logging

from roomcast.config import Config
from roomcast.hub import Hub, Limits
from roomcast.net.tcp import LineServer, TcpLimits
from roomcast.store import MemoryStore, Store

__all__ = ["Server", "open_store"]

log = logging.getLogger("roomcast.server")


def open_store(url: str) -> Store:
    """The store a URL names: ``memory:`` keeps history in this process only."""
    if url == "memory:":
        return MemoryStore()
    raise ValueError(f"unknown store {url!r}: use memory:")


class Server:
    """One roomcast process: a store, a hub, and the line listener."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = open_store(config.store)
        self.hub = Hub(
            self.store,
            limits=Limits(ring_capacity=config.ring_capacity, rate=config.rate, burst=config.burst),
        )
        self.line = LineServer(
            self.hub,
            limits=TcpLimits(
                max_line=config.max_line,
                high_water=config.high_water,
                stall_timeout=config.stall_timeout,
            ),
        )

    async def start(self) -> None:
        """Start listening."""
        await self.line.start(self.config.host, self.config.port)
        log.info(
            "listening line=%s:%d store=%s", self.config.host, self.line.port, self.config.store
        )

    async def stop(self, reason: str = "server shutting down") -> None:
        """Stop accepting, tell every client, close them, then close the hub and the store."""
        await self.line.stop(reason)
        await self.hub.close(reason)
        await self.store.close()
        log.info("stopped")
