"""The PostgreSQL store's schema and its migrations.

Versions
--------
The table ``schema_version`` holds one row: how many of ``MIGRATIONS`` have been applied.
Each migration runs in a transaction of its own, which first takes a transaction-scoped
advisory lock (``MIGRATION_LOCK``) and only then reads the version: two nodes that start at
once take turns, and the second finds the work done. DDL is transactional in PostgreSQL, so
a migration that fails leaves nothing half done. Later migrations are appended to
``MIGRATIONS``, never edited. A database whose version is newer than this code knows is
refused rather than misread.

The store uses the tables of the first schema on the connection's ``search_path`` (by
default ``public``): several roomcast installations, or test runs, can share one database,
each in its own schema.

Search
------
``messages.words`` is a ``tsvector`` of the ``simple`` configuration (no stemming, no stop
words) built at insert from the words ``roomcast.store.base.search_tokens`` finds in the
text (lower case, accents removed, computed in Python), joined by spaces. So no extension
(``unaccent``) is needed, and search matches exactly what the other stores match. A GIN
index serves ``words @@ query``.
"""

from __future__ import annotations

from typing import Final

import asyncpg

from roomcast.errors import Broken

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SCHEMA_VERSION", "migrate", "schema_version"]

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: everything
    (
        """CREATE TABLE rooms (
            name text PRIMARY KEY,  -- '#name', already lower case
            topic text NOT NULL DEFAULT '',
            created double precision NOT NULL,
            last_seq bigint NOT NULL DEFAULT 0  -- newest seq ever given; survives retention
        )""",
        """CREATE TABLE messages (
            room text NOT NULL,
            seq bigint NOT NULL,
            id text NOT NULL UNIQUE,
            sender text NOT NULL,
            kind text NOT NULL,
            text text NOT NULL,
            ts double precision NOT NULL,
            words tsvector NOT NULL,  -- to_tsvector('simple', the search tokens of text)
            PRIMARY KEY (room, seq)
        )""",
        "CREATE INDEX messages_words ON messages USING gin (words)",
        """CREATE TABLE private_messages (
            seq bigint PRIMARY KEY,  -- store-wide, gap-free
            id text NOT NULL UNIQUE,
            sender text NOT NULL,
            recipient text NOT NULL,  -- as addressed
            recipient_key text NOT NULL,  -- fold(recipient): names compare ignoring case
            kind text NOT NULL,
            text text NOT NULL,
            ts double precision NOT NULL
        )""",
        "CREATE INDEX private_messages_to ON private_messages (recipient_key, seq)",
        """CREATE TABLE accounts (
            key text PRIMARY KEY,  -- fold(name): names are unique ignoring case
            name text NOT NULL,  -- as registered
            password_hash text NOT NULL,
            created double precision NOT NULL,
            private_read_seq bigint NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE memberships (
            account text NOT NULL REFERENCES accounts (key) ON DELETE CASCADE,
            room text NOT NULL,
            read_seq bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (account, room)
        )""",
        """CREATE TABLE counters (
            name text PRIMARY KEY,
            value bigint NOT NULL
        )""",
        "INSERT INTO counters (name, value) VALUES ('private_seq', 0)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)  # what schema_version holds once migrated

# The key of the advisory lock migrations take ('roomcast' in ASCII). Advisory locks are
# per database, not per schema: installations in other schemas of the same database wait
# for each other's migrations, which is harmless.
MIGRATION_LOCK: Final = int.from_bytes(b"roomcast", "big")


async def schema_version(conn: asyncpg.Connection) -> int:
    """The number of migrations applied (0 for an empty schema), creating the version table
    if missing. Call it inside a transaction holding ``MIGRATION_LOCK``."""
    await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    version = await conn.fetchval("SELECT version FROM schema_version")
    if version is None:
        await conn.execute("INSERT INTO schema_version (version) VALUES (0)")
        return 0
    return int(version)


async def migrate(conn: asyncpg.Connection) -> None:
    """Apply the missing ``MIGRATIONS`` on the asyncpg connection ``conn``, each in its own
    transaction under ``MIGRATION_LOCK``; ``Broken`` if the schema is newer than this code.
    Driver errors pass through: the caller translates them."""
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            version = await schema_version(conn)
            if version > SCHEMA_VERSION:
                raise Broken(
                    f"the database has schema version {version}, newer than this roomcast "
                    f"knows ({SCHEMA_VERSION}): upgrade roomcast"
                )
            if version == SCHEMA_VERSION:
                return
            for statement in MIGRATIONS[version]:
                await conn.execute(statement)
            await conn.execute("UPDATE schema_version SET version = $1", version + 1)
