"""Durable history behind a small interface; see ``roomcast.store.base``.

``await open_store(url)`` picks the implementation by URL scheme.
"""

from __future__ import annotations

import urllib.parse

from roomcast.errors import Broken
from roomcast.store.base import Account, Accounts, Page, RoomInfo, Said, Storage, Store
from roomcast.store.memory import MemoryStore

__all__ = [
    "Account",
    "Accounts",
    "MemoryStore",
    "Page",
    "RoomInfo",
    "Said",
    "Storage",
    "Store",
    "open_store",
    "public_url",
]

_SCHEMES = (
    "'memory:', 'sqlite:PATH', 'sqlite:///ABSOLUTE/PATH' or 'postgresql://USER@HOST/DATABASE'"
)


async def open_store(url: str) -> Storage:
    """Open the store that ``url`` names, ready to use; ``ValueError`` for an unknown URL.

    ``memory:`` keeps history in this process only. ``sqlite:path/to/file.db`` (relative to
    the working directory) and ``sqlite:///absolute/path/file.db`` open a SQLite file,
    creating it and its directories when missing; ``~`` is expanded.
    ``postgresql://user:password@host:port/database?search_path=schema`` (or ``postgres://``)
    opens a PostgreSQL database (``pip install 'roomcast[postgres]'``); its query may also
    set the store's limits (``roomcast.store.postgres.PostgresStore.open``). The store may
    raise ``Broken`` when the file or database cannot be used.
    """
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if colon and scheme == "memory" and not rest:
        return MemoryStore()
    if colon and scheme == "sqlite":
        if rest.startswith("//"):
            if not rest.startswith("///"):
                raise ValueError(f"a SQLite URL names no host: {url!r}; use {_SCHEMES}")
            rest = rest[2:]
        if not rest or rest == ":memory:":
            raise ValueError(f"{url!r} names no SQLite file; use {_SCHEMES}")
        from roomcast.store.sqlite import SqliteStore  # only the SQLite mode needs it

        return await SqliteStore.open(rest)
    if colon and scheme in ("postgresql", "postgres") and rest.startswith("//"):
        try:  # asyncpg is an optional dependency: only the PostgreSQL mode needs it
            from roomcast.store.postgres import PostgresStore
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("asyncpg"):
                raise
            raise Broken(
                f"the PostgreSQL store needs asyncpg ({e}): pip install 'roomcast[postgres]'"
            ) from e
        return await PostgresStore.open(url)
    raise ValueError(f"unknown store URL {url!r}: use {_SCHEMES}")


def public_url(url: str) -> str:
    """``url`` with its password masked, fit for logs and error messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))
