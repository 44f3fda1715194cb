"""Durable history behind a small interface; see ``roomcast.store.base``.

``await open_store(url)`` picks the implementation by URL scheme.
"""

from __future__ import annotations

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
]

_SCHEMES = "'memory:', 'sqlite:PATH' or 'sqlite:///ABSOLUTE/PATH'"


async def open_store(url: str) -> Storage:
    """Open the store that ``url`` names, ready to use; ``ValueError`` for an unknown URL.

    ``memory:`` keeps history in this process only. ``sqlite:path/to/file.db`` (relative to
    the working directory) and ``sqlite:///absolute/path/file.db`` open a SQLite file,
    creating it and its directories when missing; ``~`` is expanded. The store may raise
    ``Broken`` when the file cannot be used.
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
    raise ValueError(f"unknown store URL {url!r}: use {_SCHEMES}")
