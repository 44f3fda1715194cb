"""The SQLite store's schema, its migrations, and how its writing connection is opened.

Search: external-content FTS5
-----------------------------
``messages_fts`` indexes ``messages.text`` with ``content='messages'``: the text is stored
once (in ``messages``) and the index can be rebuilt from it (``INSERT INTO messages_fts
(messages_fts) VALUES ('rebuild')``). New messages are indexed in batches by the writer
(``Writer.index``, counter ``fts_serial``): once 4,096 messages wait, one second after the
last pass when no write comes, at close, and before a search or a retention cut, so search
always sees every stored message. Indexing in the same transaction as each append halved
append throughput, and small passes cost up to ten times as much per message as big ones.
A trigger removes deleted messages from the index; messages are never updated. Its rowid
is ``messages.serial``, an ``INTEGER PRIMARY KEY`` (a plain rowid could be renumbered by
VACUUM), which grows with insertion and so with each room's sequence: newest-first search
walks the index by rowid.

Schema and errors
-----------------
``PRAGMA user_version`` is the number of ``MIGRATIONS`` applied; each later migration is
appended to that tuple, never edited. Every statement takes its values as parameters.
``open_writer`` raises ``roomcast.errors.Broken``, never ``sqlite3.Error``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

from roomcast.errors import Broken
from roomcast.files import narrow, private_dir, private_file
from roomcast.names import skeleton

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "configure", "migrate", "open_writer"]

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    # 1: everything
    (
        """CREATE TABLE rooms (
            name TEXT PRIMARY KEY,  -- '#name', already lower case
            topic TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0  -- newest seq ever given; survives retention
        )""",
        """CREATE TABLE messages (
            serial INTEGER PRIMARY KEY,  -- insertion order; the rowid of messages_fts
            id TEXT NOT NULL UNIQUE,
            room TEXT NOT NULL,
            seq INTEGER NOT NULL,
            sender TEXT NOT NULL,
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            ts REAL NOT NULL,
            UNIQUE (room, seq)
        )""",
        """CREATE VIRTUAL TABLE messages_fts USING fts5(
            text, content='messages', content_rowid='serial',
            tokenize='unicode61 remove_diacritics 2'
        )""",
        """CREATE TRIGGER messages_indexed AFTER INSERT ON messages BEGIN
            INSERT INTO messages_fts (rowid, text) VALUES (new.serial, new.text);
        END""",
        """CREATE TRIGGER messages_unindexed AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, text)
            VALUES ('delete', old.serial, old.text);
        END""",
        """CREATE TABLE private_messages (
            seq INTEGER PRIMARY KEY,  -- store-wide, gap-free
            id TEXT NOT NULL UNIQUE,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL COLLATE NOCASE,  -- names are ASCII: NOCASE is fold()
            kind TEXT NOT NULL,
            text TEXT NOT NULL,
            ts REAL NOT NULL
        )""",
        "CREATE INDEX private_messages_to ON private_messages (recipient, seq)",
        """CREATE TABLE accounts (
            key TEXT PRIMARY KEY,  -- fold(name): names are unique ignoring case
            name TEXT NOT NULL,  -- as registered
            password_hash TEXT NOT NULL,
            created REAL NOT NULL,
            private_read_seq INTEGER NOT NULL DEFAULT 0
        )""",
        """CREATE TABLE memberships (
            account TEXT NOT NULL REFERENCES accounts (key) ON DELETE CASCADE,
            room TEXT NOT NULL,
            read_seq INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (account, room)
        ) WITHOUT ROWID""",
        """CREATE TABLE counters (
            name TEXT PRIMARY KEY,
            value INTEGER NOT NULL
        ) WITHOUT ROWID""",
        "INSERT INTO counters (name, value) VALUES ('private_seq', 0)",
    ),
    # 2: the search index is filled in batches by the writer, not by a trigger per insert
    (
        "DROP TRIGGER messages_indexed",
        """INSERT INTO counters (name, value)
            VALUES ('fts_serial', (SELECT COALESCE(MAX(serial), 0) FROM messages))""",
    ),
    # whether the sender was signed in to an account (and, for a private message, whether it
    # went to one); rows from before are a guest's: nobody can tell whose they were
    (
        "ALTER TABLE messages ADD COLUMN signed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE private_messages ADD COLUMN signed INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE private_messages ADD COLUMN recipient_signed INTEGER NOT NULL DEFAULT 0",
    ),
    # private conversations: the pair of folded names (store.base.conversation_key) and an
    # index that pages a conversation by seq. Names are ASCII: lower() is fold().
    (
        "ALTER TABLE private_messages ADD COLUMN pair TEXT NOT NULL DEFAULT ''",
        """UPDATE private_messages SET pair = CASE
            WHEN lower(sender) <= lower(recipient) THEN lower(sender) || ' ' || lower(recipient)
            ELSE lower(recipient) || ' ' || lower(sender) END""",
        "CREATE INDEX private_messages_pair ON private_messages (pair, seq)",
    ),
    # accounts get a stable random id and a token generation: a token names the account by
    # id (never reused, so it cannot pass to a later account of the same name) and carries
    # the generation, which a password change or "log out everywhere" bumps
    (
        "ALTER TABLE accounts ADD COLUMN id TEXT NOT NULL DEFAULT ''",
        "UPDATE accounts SET id = lower(hex(randomblob(12)))",
        "CREATE UNIQUE INDEX accounts_id ON accounts (id)",
        "ALTER TABLE accounts ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
    ),
    # accounts by skeleton (roomcast.names): a name that looks like a registered one is
    # found with one indexed lookup. Not unique: accounts registered before may collide.
    # roomcast_skeleton is roomcast.names.skeleton, registered on the connection (configure).
    (
        "ALTER TABLE accounts ADD COLUMN skeleton TEXT NOT NULL DEFAULT ''",
        "UPDATE accounts SET skeleton = roomcast_skeleton(name)",
        "CREATE INDEX accounts_by_skeleton ON accounts (skeleton, key)",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)  # what user_version reads once migrated


def configure(conn: sqlite3.Connection) -> None:
    """The pragmas of the writing connection (the module docstring says why FULL), and the
    functions its migrations call."""
    conn.create_function("roomcast_skeleton", 1, skeleton, deterministic=True)
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode != "wal":
        raise sqlite3.OperationalError(f"cannot use WAL mode (journal_mode is {mode!r})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the missing ``MIGRATIONS``, each in its own transaction with its version."""
    while True:
        conn.execute("BEGIN IMMEDIATE")  # version read and migration under one write lock
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version >= SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                if version > SCHEMA_VERSION:
                    raise Broken(
                        f"the database has schema version {version}, newer than this "
                        f"roomcast knows ({SCHEMA_VERSION}): upgrade roomcast"
                    )
                return
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            # PRAGMA takes no parameters; this is an int of ours, not user text.
            conn.execute(f"PRAGMA user_version = {version + 1:d}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def open_writer(given: Path, busy_timeout: float) -> tuple[Path, sqlite3.Connection]:
    """Create the file (0600; a missing directory 0700) if needed, configure and migrate it;
    return its absolute path (``~`` expanded) and the connection. ``busy_timeout``: seconds
    to wait for a write lock held by another connection before failing."""
    path = given
    try:
        path = given.expanduser().resolve()
        # Password hashes and private messages: for the owner only (roomcast.files); SQLite
        # gives the -wal and -shm files the database file's permissions.
        private_dir(path.parent)
        private_file(path)
        for suffix in ("-wal", "-shm"):
            narrow(path.with_name(path.name + suffix))
        conn = sqlite3.connect(
            path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as e:
        raise Broken(f"cannot open the SQLite store {str(path)!r}: {e}") from e
    try:
        configure(conn)
        migrate(conn)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise Broken(f"cannot use {str(path)!r} as a SQLite store: {e}") from e
    except BaseException:
        conn.close()
        raise
    return path, conn
