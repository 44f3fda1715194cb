"""Assembles a server from its parts: store, hub and listeners; starts and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from roomcast.auth import Passwords
from roomcast.config import Config
from roomcast.hub import Hub, Limits
from roomcast.net.admission import (
    Admission,
    AdmissionLimits,
    connection_cap,
    raise_descriptor_limit,
)
from roomcast.net.origin import parse_origins
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
    admission: Admission
    line: LineServer
    web: WebServer | None

    def __init__(self, config: Config) -> None:
        self.config = config
        self._upkeep: asyncio.Task[None] | None = None  # read markers and retention

    async def start(self) -> None:
        """Open the store and start listening."""
        cfg = self.config
        parse_origins(cfg.public_origin)  # a bad one stops the start before anything opens
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
        self.admission = Admission(self._admission_limits())
        self.line = LineServer(
            self.hub,
            limits=TcpLimits(
                max_line=cfg.max_line,
                high_water=cfg.high_water,
                stall_timeout=cfg.stall_timeout,
                cache_bytes=cfg.cache_bytes,
                name_timeout=cfg.name_timeout,
            ),
            admission=self.admission,
        )
        await self.line.start(cfg.host, cfg.port)
        self.web = None
        if cfg.http_port >= 0:
            data_dir = None if url.startswith("memory:") else cfg.data_path()
            tokens = Tokens(load_key(data_dir), ttl=cfg.token_days * 86400)
            self.web = WebServer(
                self.hub,
                tokens,
                limits=WebLimits(
                    origins=cfg.public_origin,
                    high_water=cfg.high_water,
                    stall_timeout=cfg.stall_timeout,
                    cache_bytes=cfg.cache_bytes,
                    heartbeat=cfg.ws_heartbeat,
                    header_timeout=cfg.header_timeout,
                    body_timeout=cfg.body_timeout,
                ),
                admission=self.admission,
            )
            await self.web.start(cfg.host, cfg.http_port)
            log.info("listening http=%s:%d", cfg.host, self.web.port)
        log.info("listening line=%s:%d store=%s", cfg.host, self.line.port, public_url(url))

    def _admission_limits(self) -> AdmissionLimits:
        """The connection caps: the soft open-files limit is raised to the hard one first,
        and the total cap kept below it (``net/admission.py``); both are logged."""
        cfg = self.config
        limits = raise_descriptor_limit()
        if limits is None:  # pragma: no cover - no open-files limit (Windows)
            total, spare = cfg.max_connections or 1000, 64
            log.info("at most %d connections, %d per address", total, cfg.max_per_address)
        else:
            before, now = limits
            total, spare = connection_cap(cfg.max_connections, now)
            raised = f"raised from {before} to {now} (the hard limit)" if now != before else now
            log.info(
                "open files: soft limit %s; at most %d connections, %d per address",
                raised,
                total,
                cfg.max_per_address,
            )
            if cfg.max_connections > total:
                log.warning(
                    "--max-connections %d is more than the %d open files allow: capped at %d",
                    cfg.max_connections,
                    now,
                    total,
                )
        return AdmissionLimits(per_address=cfg.max_per_address, total=total, spare=spare)

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
