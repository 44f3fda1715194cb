"""Assembles a server from its parts: store, hub and listeners; starts and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from roomcast.auth import Passwords
from roomcast.config import Config
from roomcast.hub import Hub, Limits
from roomcast.net.tcp import LineServer, TcpLimits
from roomcast.net.web import WebLimits, WebServer
from roomcast.store import Storage, open_store, public_url
from roomcast.tokens import Tokens, load_key

__all__ = ["Server"]

log = logging.getLogger("roomcast.server")


class Server:
    """One roomcast process: a store, a hub, the line listener and the HTTP listener.

    Its parts exist once ``start`` has returned.
    """

    store: Storage
    hub: Hub
    line: LineServer
    web: WebServer | None

    def __init__(self, config: Config) -> None:
        self.config = config
        self._upkeep: asyncio.Task[None] | None = None  # read markers and retention

    async def start(self) -> None:
        """Open the store and start listening."""
        cfg = self.config
        url = cfg.store_url()
        self.store = await open_store(url)
        self.hub = Hub(
            self.store,
            passwords=Passwords(workers=cfg.hash_workers, queue=cfg.hash_queue),
            limits=Limits(
                ring_capacity=cfg.ring_capacity,
                rate=cfg.rate,
                burst=cfg.burst,
                flood_hold=cfg.flood_hold,
                retain_age=cfg.retain_days * 86400 if cfg.retain_days > 0 else None,
                retain_count=cfg.retain_count if cfg.retain_count > 0 else None,
                quiet_above=cfg.quiet_above,
                login_failures=cfg.login_failures,
                name_failures=cfg.name_failures,
                address_failures=cfg.address_failures,
                login_window=cfg.login_window,
                registrations=cfg.registrations,
                register_window=cfg.register_window,
            ),
        )
        self._upkeep = asyncio.create_task(self.hub.maintain())
        self.line = LineServer(
            self.hub,
            limits=TcpLimits(
                max_line=cfg.max_line,
                high_water=cfg.high_water,
                stall_timeout=cfg.stall_timeout,
                cache_bytes=cfg.cache_bytes,
            ),
        )
        await self.line.start(cfg.host, cfg.port)
        self.web = None
        if cfg.http_port >= 0:
            data_dir = None if url.startswith("memory:") else cfg.data_path()
            tokens = Tokens(load_key(data_dir), ttl=cfg.token_days * 86400)
            origins = tuple(o.strip() for o in cfg.web_origins.split(",") if o.strip())
            self.web = WebServer(
                self.hub,
                tokens,
                limits=WebLimits(
                    origins=origins,
                    high_water=cfg.high_water,
                    stall_timeout=cfg.stall_timeout,
                    cache_bytes=cfg.cache_bytes,
                ),
            )
            await self.web.start(cfg.host, cfg.http_port)
            log.info("listening http=%s:%d", cfg.host, self.web.port)
        log.info("listening line=%s:%d store=%s", cfg.host, self.line.port, public_url(url))

    async def stop(self, reason: str = "server shutting down") -> None:
        """Stop accepting, tell every client, close them, then close the hub and the store."""
        await self.line.stop(reason)
        if self.web is not None:
            await self.web.stop(reason)
        await self.hub.close(reason)
        if self._upkeep is not None:
            self._upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._upkeep
        await self.hub.flush_markers()
        await self.store.close()
        log.info("stopped")
