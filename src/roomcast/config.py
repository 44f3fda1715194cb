"""Server settings: defaults, overridden by ``ROOMCAST_*`` environment variables, then flags."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["Config", "add_arguments", "from_arguments"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Everything ``roomcast serve`` can be told. Each field has a flag and a variable:
    ``stall_timeout`` is ``--stall-timeout`` and ``ROOMCAST_STALL_TIMEOUT``."""

    host: str = "127.0.0.1"  # address the listeners bind
    port: int = 7777  # line-protocol (nc, telnet) port
    http_port: int = 8080  # web page, HTTP API and WebSocket port; -1 = no HTTP listener
    web_origins: str = ""  # comma-separated WebSocket origins allowed; "" = same origin only
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
    retain_days: float = 0.0  # days room messages are kept; 0 = forever
    retain_count: int = 0  # messages kept per room; 0 = all
    quiet_above: int = 1000  # rooms with more members do not announce joins, leaves, quits

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


def add_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str] = os.environ) -> None:
    """Add one flag per ``Config`` field, defaulting to the environment or the built-in value."""
    base = Config.from_env(environ)
    for f in fields(Config):
        default = getattr(base, f.name)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=type(default),
            default=default,
            help=f"(default {default!r}; env ROOMCAST_{f.name.upper()})",
        )


def from_arguments(args: argparse.Namespace) -> Config:
    """The ``Config`` that parsed flags describe."""
    return Config(**{f.name: getattr(args, f.name) for f in fields(Config)})
