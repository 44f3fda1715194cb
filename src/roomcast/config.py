"""Server settings: defaults, overridden by ``ROOMCAST_*`` environment variables, then flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

__all__ = ["FLAG_HELP", "STORE_FIELDS", "Config", "add_arguments", "from_arguments"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything ``roomcast serve`` can be told. Each field has a flag and a variable:
    ``stall_timeout`` is ``--stall-timeout`` and ``ROOMCAST_STALL_TIMEOUT``."""

    host: str = "127.0.0.1"  # address the listeners bind
    port: int = 7777  # line-protocol (nc, telnet) port
    http_port: int = 8080  # web page, HTTP API and WebSocket port; -1 = no HTTP listener
    public_origin: str = ""  # comma-separated origins the web client is served at; "" = own
    token_days: float = 7.0  # days a login token is valid
    data_dir: str = ""  # where the default SQLite file lives; "" = the user's data directory
    store: str = ""  # "" = sqlite in data_dir; or memory:, sqlite:PATH, postgresql://...
    loop: str = "auto"  # event loop: auto (uvloop when installed), uvloop or asyncio
    log_level: str = "INFO"  # DEBUG, INFO, WARNING or ERROR
    max_line: int = 4096  # bytes in one line of the line protocol
    high_water: int = 262144  # write-buffer bytes above which a slow client stops pulling
    stall_timeout: float = 30.0  # seconds a client may stay above high_water before it is cut
    ring_capacity: int = 1024  # messages each room's broadcast ring holds
    rate: float = 10.0  # commands per second per connection, sustained
    burst: int = 30  # commands per connection at once before the rate applies
    flood_hold: float = 10.0  # seconds a client ahead of the rate may be held back, unbroken
    retain_days: float = 0.0  # days room messages are kept; 0 = forever
    retain_count: int = 0  # messages kept per room; 0 = all
    quiet_above: int = 1000  # rooms with more members do not announce joins, leaves, quits
    login_failures: int = 5  # failed logins per name from one address in login_window
    name_failures: int = 50  # failed logins per name from all addresses in login_window
    address_failures: int = 20  # failed logins per address, any names, in login_window
    login_window: float = 300.0  # seconds a failed login counts
    registrations: int = 10  # registrations per address in register_window
    register_window: float = 3600.0  # seconds a registration counts
    hash_workers: int = 2  # argon2 hashes computed at once (each takes 64 MiB)
    hash_queue: int = 16  # hashes that may wait for a worker; beyond, clients are told busy
    cache_bytes: int = 4194304  # bytes each cache of encoded messages keeps (wire/cache.py)
    max_per_address: int = 20  # connections at once from one address (IPv6: a /64); 0 = no cap
    max_connections: int = 0  # connections at once, both listeners; 0 = from the files limit
    name_timeout: float = 30.0  # seconds a line connection may take to give a name; 0 = none
    header_timeout: float = 10.0  # seconds an HTTP client has to send a request's headers
    body_timeout: float = 30.0  # seconds an HTTP client has to send a request's body
    ws_heartbeat: float = 30.0  # seconds of WebSocket silence before a ping (pong: half that)

    def store_url(self, environ: Mapping[str, str] = os.environ) -> str:
        """The store to open: ``store`` if set, else ``roomcast.db`` in the data directory."""
        if self.store:
            return self.store
        return f"sqlite:{os.path.join(self.data_path(environ), 'roomcast.db')}"

    def data_path(self, environ: Mapping[str, str] = os.environ) -> str:
        """``data_dir`` if set, else ``$XDG_DATA_HOME/roomcast`` (``~/.local/share/roomcast``)."""
        if self.data_dir:
            return os.path.expanduser(self.data_dir)
        base = environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        return os.path.join(base, "roomcast")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """Defaults overridden by ``ROOMCAST_<FIELD>`` variables."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"ROOMCAST_{f.name.upper()}")
            if raw is not None:
                kind = type(getattr(cls(), f.name))
                try:
                    values[f.name] = kind(raw)
                except ValueError:
                    raise ValueError(
                        f"ROOMCAST_{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                    ) from None
        return cls(**values)  # type: ignore[arg-type]


# What ``--help`` says of each flag: one line per ``Config`` field (tests/test_config.py
# checks that none is missing). argparse adds the default and the variable.
FLAG_HELP: Mapping[str, str] = {
    "host": "address the listeners bind to",
    "port": "port of the line protocol (nc, telnet); 0 picks a free one",
    "http_port": "port of the web page, HTTP API and WebSocket; -1: no HTTP listener",
    "public_origin": "origins the web page is served at, comma-separated, e.g."
    " https://chat.example.org; '': its own",
    "token_days": "days a login token stays valid",
    "data_dir": "directory of the SQLite file and the token key; '': the user's data directory",
    "store": "where history and accounts live: sqlite:PATH or memory:; '': SQLite in data-dir",
    "loop": "event loop: auto (uvloop when installed), uvloop or asyncio",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "max_line": "longest line of the line protocol, in bytes",
    "high_water": "buffered bytes above which a client that does not read stops being sent to",
    "stall_timeout": "seconds a client may stay above --high-water before it is disconnected",
    "ring_capacity": "messages each room keeps in memory for members that fall behind",
    "rate": "commands per second one connection may send, sustained",
    "burst": "commands one connection may send at once before --rate applies",
    "flood_hold": "seconds a client faster than --rate may be held back, unbroken, then cut",
    "retain_days": "days room messages are kept; 0: forever",
    "retain_count": "messages kept per room; 0: all",
    "quiet_above": "rooms with more members do not announce joins, leaves and quits",
    "login_failures": "failed logins for one name from one address in --login-window",
    "name_failures": "failed logins for one name from new addresses in --login-window",
    "address_failures": "failed logins from one address, any names, in --login-window",
    "login_window": "seconds a failed login counts against its limits",
    "registrations": "registrations from one address in --register-window",
    "register_window": "seconds a registration counts against --registrations",
    "hash_workers": "password hashes computed at once (argon2id: 64 MiB each)",
    "hash_queue": "password hashes that may wait for a worker; beyond: 'busy, try again'",
    "cache_bytes": "bytes each cache of encoded messages keeps (memory under floods)",
    "max_per_address": "connections at once from one address (IPv6: a /64), both ports; 0: no cap",
    "max_connections": "connections at once, both ports; 0: what the open-files limit allows",
    "name_timeout": "seconds a line connection may take to give a name, then closed; 0: no limit",
    "header_timeout": "seconds an HTTP client has to send a request's headers; idle keep-alive too",
    "body_timeout": "seconds an HTTP client has to send a request's body, then 408",
    "ws_heartbeat": "seconds of WebSocket silence before a ping; no answer in half that: closed",
}

# The settings ``roomcast user`` needs: where the store is (and how much to log).
STORE_FIELDS = ("data_dir", "store", "log_level")


def add_arguments(
    parser: argparse.ArgumentParser,
    environ: Mapping[str, str] = os.environ,
    *,
    only: Sequence[str] | None = None,
) -> None:
    """Add one flag per ``Config`` field (or per field named in ``only``), defaulting to the
    environment or the built-in value. Fields left out keep their built-in value, whatever
    the environment says, so that ``from_arguments`` still finds them all."""
    base = Config.from_env(environ if only is None else _only(environ, only))
    for f in fields(Config):
        default = getattr(base, f.name)
        if only is not None and f.name not in only:
            parser.set_defaults(**{f.name: default})
            continue
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(default),
            default=default,
            # argparse %-formats help texts: a '%' of ours must not be taken for a format
            help=f"{FLAG_HELP.get(f.name, '')} (default {default!r};"
            f" env ROOMCAST_{f.name.upper()})".replace("%", "%%"),
        )


def _only(environ: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
    """The ``ROOMCAST_*`` variables of the fields ``names``."""
    keys = {f"ROOMCAST_{name.upper()}" for name in names}
    return {k: v for k, v in environ.items() if k in keys}


def from_arguments(args: argparse.Namespace) -> Config:
    """The ``Config`` that parsed flags describe."""
    return Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
