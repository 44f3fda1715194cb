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

Private conversations and accounts
----------------------------------
``private_messages.pair`` is ``roomcast.store.base.conversation_key`` of its two names,
written by the store at insert; ``(pair, seq)`` pages a conversation. ``sender_key`` and
``recipient_key`` are the folded names a reader is matched against. ``accounts.skeleton`` is
``roomcast.names.skeleton(name)``, indexed for ``account_like``; it is not unique, since
accounts registered before look-alikes were refused may share one (``create_account``
serializes registrations of one skeleton with an advisory lock instead, see
``roomcast.store.postgres``).

A step of a migration is a SQL statement, or a coroutine function that is given the
connection: the values only Python computes (an account's random id, a name's skeleton)
come from the same functions the store uses for new rows, not from a copy of them in SQL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import asyncpg

from roomcast.errors import Broken
from roomcast.names import skeleton
from roomcast.store.base import new_account_id

__all__ = ["MIGRATIONS", "MIGRATION_LOCK", "SCHEMA_VERSION", "Step", "migrate", "schema_version"]

Step = str | Callable[[Any], Awaitable[None]]  # a statement, or a function of the connection


async def _give_accounts_ids(conn: Any) -> None:
    """A fresh random id (``store.base.new_account_id``) for every account there is."""
    keys = [key for (key,) in await conn.fetch("SELECT key FROM accounts")]
    await conn.execute(
        "UPDATE accounts AS a SET id = u.id FROM unnest($1::text[], $2::text[]) AS u (key, id)"
        " WHERE a.key = u.key",
        keys,
        [new_account_id() for _ in keys],
    )


async def _give_accounts_skeletons(conn: Any) -> None:
    """Every account's ``roomcast.names.skeleton``."""
    rows = await conn.fetch("SELECT key, name FROM accounts")
    await conn.execute(
        "UPDATE accounts AS a SET skeleton = u.skeleton"
        " FROM unnest($1::text[], $2::text[]) AS u (key, skeleton) WHERE a.key = u.key",
        [key for key, _ in rows],
        [skeleton(name) for _, name in rows],
    )


MIGRATIONS: Final[tuple[tuple[Step, ...], ...]] = (
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
    # 2: whether the sender was signed in to an account (and, for a private message, whether
    # it went to one); rows from before are a guest's: nobody can tell whose they were.
    # A constant default: no table rewrite.
    (
        "ALTER TABLE messages ADD COLUMN signed boolean NOT NULL DEFAULT false",
        """ALTER TABLE private_messages
            ADD COLUMN signed boolean NOT NULL DEFAULT false,
            ADD COLUMN recipient_signed boolean NOT NULL DEFAULT false""",
    ),
    # 3: private conversations: the pair of folded names (store.base.conversation_key), an
    # index that pages a conversation by seq, and the messages an account sent signed in,
    # which its deletion deletes. Names are ASCII: lower() is fold(), and "C" compares as
    # Python does.
    (
        "ALTER TABLE private_messages ADD COLUMN sender_key text, ADD COLUMN pair text",
        """UPDATE private_messages SET sender_key = lower(sender), pair = CASE
            WHEN lower(sender) COLLATE "C" <= recipient_key COLLATE "C"
            THEN lower(sender) || ' ' || recipient_key
            ELSE recipient_key || ' ' || lower(sender) END""",
        """ALTER TABLE private_messages
            ALTER COLUMN sender_key SET NOT NULL, ALTER COLUMN pair SET NOT NULL""",
        "CREATE INDEX private_messages_pair ON private_messages (pair, seq)",
        "CREATE INDEX private_messages_signed_from ON private_messages (sender_key) WHERE signed",
    ),
    # 4: accounts get a stable random id and a token generation: a token names the account
    # by id (never reused, so it cannot pass to a later account of the same name) and
    # carries the generation, which a password change or "log out everywhere" bumps
    (
        "ALTER TABLE accounts ADD COLUMN id text, ADD COLUMN generation bigint NOT NULL DEFAULT 0",
        _give_accounts_ids,
        "ALTER TABLE accounts ALTER COLUMN id SET NOT NULL",
        "CREATE UNIQUE INDEX accounts_id ON accounts (id)",
    ),
    # 5: accounts by skeleton (roomcast.names): a name that looks like a registered one is
    # found with one indexed lookup. Not unique: accounts registered before may collide.
    (
        "ALTER TABLE accounts ADD COLUMN skeleton text",
        _give_accounts_skeletons,
        "ALTER TABLE accounts ALTER COLUMN skeleton SET NOT NULL",
        "CREATE INDEX accounts_by_skeleton ON accounts (skeleton, key)",
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
            for step in MIGRATIONS[version]:
                if isinstance(step, str):
                    await conn.execute(step)
                else:
                    await step(conn)
            await conn.execute("UPDATE schema_version SET version = $1", version + 1)
