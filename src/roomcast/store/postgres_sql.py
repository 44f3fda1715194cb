"""The PostgreSQL store's statements for reads and account changes, and their rows as values.

Every statement takes its values as bound parameters (``$1`` ...); what is formatted into
them is text of ours (column lists, a sort order), never user text. The appends' statements
are the writer's (``roomcast.store.postgres_writer``); the schema is
``roomcast.store.postgres_schema``; ``roomcast.store.postgres`` runs them all.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from roomcast.model import Kind, Message, Private
from roomcast.store.base import Account

__all__ = [
    "ACCOUNT_COLUMNS",
    "ACCOUNT_LIKE",
    "CONVERSATION_NEWEST",
    "CONVERSATION_OLDEST",
    "CREATE_ACCOUNT",
    "MESSAGE_COLUMNS",
    "NO_SEQ",
    "PAGE_NEWEST",
    "PAGE_OLDEST",
    "PRIVATE_COLUMNS",
    "PROBE_READ_ONLY",
    "REGISTRATION_LOCK",
    "RETAIN",
    "ROOM_INFO",
    "account_row",
    "message_row",
    "private_row",
    "skeleton_lock",
]

MESSAGE_COLUMNS = "id, seq, sender, kind, text, ts, signed"

# Where a room's history stands: (latest, oldest or NULL), one row even for no room.
ROOM_INFO = """
SELECT COALESCE((SELECT last_seq FROM rooms WHERE name = $1), 0) AS latest,
       (SELECT seq FROM messages WHERE room = $1 ORDER BY seq LIMIT 1) AS oldest
"""
# A page and where the room stands, in one snapshot: the info row, joined to the page's
# messages (none: one row of NULLs). $2..$4: below, above, limit.
_PAGE = f"""
SELECT i.latest, i.oldest, m.* FROM ({ROOM_INFO}) AS i LEFT JOIN LATERAL (
    SELECT {MESSAGE_COLUMNS} FROM messages WHERE room = $1 AND seq < $2 AND seq > $3
    ORDER BY seq {{order}} LIMIT $4
) AS m ON true ORDER BY m.seq
"""
PAGE_NEWEST = _PAGE.format(order="DESC")
PAGE_OLDEST = _PAGE.format(order="ASC")
# Retention: the cut is the highest of the count's and the age's (GREATEST skips a NULL,
# which is what a missing limit gives); only seq < cut goes.
# What unread counts are made of: messages people wrote, not joins, leaves or renames.
SAID = (
    "SELECT count(*) AS count, min(seq) AS first FROM messages"
    " WHERE room = $1 AND seq > $2 AND seq < $3 AND kind IN ('message', 'action')"
)
RETAIN = """
WITH cut AS (
    SELECT GREATEST(
        1,
        r.last_seq - $2::bigint + 1,
        CASE WHEN $3::float8 IS NOT NULL THEN COALESCE(
            (SELECT seq FROM messages WHERE room = $1 AND ts >= $3 ORDER BY seq LIMIT 1),
            r.last_seq + 1
        ) END
    ) AS below
    FROM rooms AS r WHERE r.name = $1
), gone AS (
    DELETE FROM messages AS m USING cut WHERE m.room = $1 AND m.seq < cut.below RETURNING 1
)
SELECT count(*) FROM gone
"""
PRIVATE_COLUMNS = "seq, id, sender, recipient, kind, text, ts, signed, recipient_signed"
# The messages of one conversation (index private_messages_pair) that its reader took part
# in as the identity it has now: $1 the pair, $2 first, $3 the reader folded, $4 signed.
_READABLE = (
    "pair = $1 AND seq >= $2"
    " AND ((sender_key = $3 AND signed = $4) OR (recipient_key = $3 AND recipient_signed = $4))"
)
# A page of it and the ends of what the reader may read, in one snapshot: the ends' row,
# joined to the page's messages (none: one row of NULLs). $5..$7: below, above, limit.
_CONVERSATION = f"""
SELECT e.oldest, e.latest, m.* FROM (SELECT
    (SELECT seq FROM private_messages WHERE {_READABLE} ORDER BY seq LIMIT 1) AS oldest,
    (SELECT seq FROM private_messages WHERE {_READABLE} ORDER BY seq DESC LIMIT 1) AS latest
) AS e LEFT JOIN LATERAL (
    SELECT {PRIVATE_COLUMNS} FROM private_messages
    WHERE {_READABLE} AND seq < $5 AND seq > $6 ORDER BY seq {{order}} LIMIT $7
) AS m ON true ORDER BY m.seq
"""
CONVERSATION_NEWEST = _CONVERSATION.format(order="DESC")
CONVERSATION_OLDEST = _CONVERSATION.format(order="ASC")

ACCOUNT_COLUMNS = "id, generation, name, password_hash, created, private_read_seq"
# The account of the name itself, else the first (by folded name, as Python sorts) of
# those whose skeleton is the name's: two index lookups, at most a handful of rows sorted.
ACCOUNT_LIKE = (
    f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE key = $1 OR skeleton = $2"
    ' ORDER BY key <> $1, key COLLATE "C" LIMIT 1'
)
# Registering: the lock's class (the first key of the two-key form, a space of its own,
# apart from the migrations' one-key lock): 'rcsk' in ASCII. The second key is the
# skeleton's hash (skeleton_lock): two skeletons of one hash only take turns.
REGISTRATION_LOCK: Final = int.from_bytes(b"rcsk", "big")
# FOR SHARE waits for a private message being stored now: the new account has read it.
CREATE_ACCOUNT = (
    "INSERT INTO accounts"
    " (key, id, generation, name, skeleton, password_hash, created, private_read_seq)"
    " SELECT $1, $2, 0, $3, $4, $5, $6, value FROM counters WHERE name = 'private_seq'"
    " FOR SHARE RETURNING private_read_seq"
)
# Whether writes would be refused as read-only now: the probe of open() and check().
PROBE_READ_ONLY = "SELECT current_setting('transaction_read_only') = 'on'"
NO_SEQ: Final = 2**62  # an upper bound above any sequence number


def message_row(room: str, row: Any) -> Message:
    """The room message in ``row`` (``MESSAGE_COLUMNS``)."""
    return Message(
        id=row["id"],
        room=room,
        seq=row["seq"],
        sender=row["sender"],
        kind=Kind(row["kind"]),
        text=row["text"],
        ts=row["ts"],
        signed=row["signed"],
    )


def private_row(row: Any) -> Private:
    """The private message in ``row`` (``PRIVATE_COLUMNS``)."""
    return Private(
        id=row["id"],
        seq=row["seq"],
        sender=row["sender"],
        recipient=row["recipient"],
        kind=Kind(row["kind"]),
        text=row["text"],
        ts=row["ts"],
        signed=row["signed"],
        recipient_signed=row["recipient_signed"],
    )


def account_row(rows: list[Any]) -> Account | None:
    """The account in ``rows`` (none or one, with ``ACCOUNT_COLUMNS``), or ``None``."""
    if not rows:
        return None
    (row,) = rows
    return Account(
        id=row["id"],
        generation=row["generation"],
        name=row["name"],
        password_hash=row["password_hash"],
        created=row["created"],
        private_read_seq=row["private_read_seq"],
    )


def skeleton_lock(like: str) -> int:
    """The second key of the advisory lock that registrations of skeleton ``like`` take: a
    signed 32-bit hash of it."""
    digest = hashlib.blake2b(like.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)
