"""Immutable values shared by every layer: names, commands, messages and events.

Everything a client can see is one of these frozen values. The broadcast channel hands the same
object to every member of a room, so immutability is what keeps receivers isolated from each
other: one object, many readers, no copies.

Values cannot be built invalid: names are checked on construction, and so are texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from roomcast.errors import ClientError

__all__ = [
    "MAX_NAME",
    "MAX_SEQ",
    "MAX_TEXT",
    "Action",
    "Authenticated",
    "Command",
    "Draft",
    "Error",
    "Event",
    "FetchHistory",
    "History",
    "Info",
    "Join",
    "Kind",
    "Leave",
    "Login",
    "Logout",
    "Message",
    "Missed",
    "Nick",
    "Private",
    "PrivateDraft",
    "PrivateHistory",
    "PrivateMessage",
    "Quit",
    "Register",
    "RoomEntry",
    "RoomList",
    "Rooms",
    "Say",
    "Search",
    "SearchResults",
    "SetName",
    "Summary",
    "Unread",
    "Welcome",
    "Who",
    "WhoList",
    "clean_text",
    "fold",
    "room_name",
    "seq_number",
    "seq_text",
    "user_name",
]

MAX_NAME = 32  # characters in a user or room name (without the '#')
MAX_TEXT = 4000  # characters in one message's text
MAX_SEQ = 2**63 - 1  # the largest sequence number (a signed 64-bit integer in every store)
MAX_SEQ_DIGITS = len(str(MAX_SEQ))  # 19: a longer number is refused before it is converted

_NAME = re.compile(rf"[A-Za-z0-9_.\-]{{1,{MAX_NAME}}}")
# Characters that change what a text looks like without being seen (docs/security.md):
# - Bidi_Control (U+061C, U+200E-F, U+202A-E, U+2066-9): an override (U+202E) shows
#   what follows backwards, so "gnp.exe" reads "exe.png";
# - the invisible ones among the format characters: soft hyphen, Mongolian vowel
#   separator, zero-width space, word joiner, invisible operators, deprecated format
#   characters (U+206A-F), zero-width no-break space (BOM), interlinear annotations and
#   the language tag. Zero-width joiner and non-joiner (emoji sequences, Persian and Indic
#   scripts) and the emoji tag characters (subdivision flags) stay: they are needed.
_INVISIBLE = (
    "\u00ad\u061c\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb\U000e0001"
)
# Those, C0 and C1 control characters and DEL: stripped so nobody can drive another's
# terminal or disguise a text. Message text keeps line feeds (multi-line messages; the line
# and paragraph separators U+2028 and U+2029 become line feeds); one-line values lose them.
_CONTROL = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_INVISIBLE}]")
_CONTROL_LINE = re.compile(f"[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f\\u2028\\u2029{_INVISIBLE}]")
_CONTROL_ASCII = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # _CONTROL for ASCII text
_HIDDEN = re.compile(f"[{_INVISIBLE}]")


def seq_number(n: int) -> int:
    """Return ``n`` if it can be a sequence number (0 to ``MAX_SEQ``), else raise ``bad_seq``."""
    if not 0 <= n <= MAX_SEQ:
        raise ClientError("bad_seq", f"a sequence number is between 0 and {MAX_SEQ}")
    return n


def seq_text(text: str) -> int | None:
    """The sequence number (or count) ``text`` spells in ASCII digits; ``None`` if it is not
    digits; ``bad_seq`` above ``MAX_SEQ``.

    The length is checked before the conversion: ``int()`` of thousands of digits costs time
    quadratic in their number and, past 4,300 digits, raises ``ValueError``.
    """
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0")
    if len(digits) > MAX_SEQ_DIGITS:
        raise ClientError("bad_seq", f"a sequence number is between 0 and {MAX_SEQ}")
    return seq_number(int(digits or "0"))


def fold(name: str) -> str:
    """The key under which a name is unique: names compare case-insensitively. A name in
    lower case is its own key, so the maps keyed by it share one string."""
    key = name.lower()
    return name if key == name else key


def user_name(text: str) -> str:
    """Return ``text`` if it is a valid user name, else raise ``ClientError('bad_name')``."""
    if not _NAME.fullmatch(text):
        raise ClientError(
            "bad_name",
            f"{text[:40]!r} is not a valid name: use 1-{MAX_NAME} letters, digits, '_', '-' or '.'",
        )
    return text


def room_name(text: str) -> str:
    """Return ``text`` as a room name ``#name``, or raise ``bad_room``.

    The '#' is added if missing. Rooms are case-insensitive and always spelled in lower case.
    """
    bare = text[1:] if text.startswith("#") else text
    if not _NAME.fullmatch(bare):
        raise ClientError(
            "bad_room",
            f"{text[:40]!r} is not a valid room: use '#' and 1-{MAX_NAME} letters, digits, "
            "'_', '-' or '.'",
        )
    return "#" + bare.lower()


def _strip_controls(text: str) -> str:
    return _CONTROL_LINE.sub("", text.replace("\t", " ")).strip()


def clean_text(text: str) -> str:
    """Strip control characters but line feeds, bidi controls and invisible characters
    (CRLF, U+2028 and U+2029 become LF, tabs become spaces) and check the length;
    ``bad_text`` if nothing is left or it is too long."""
    text = text.replace("\r\n", "\n").replace("\t", " ")
    if text.isascii():  # the usual case: a shorter character class is faster
        cleaned = _CONTROL_ASCII.sub("", text).strip()
    else:
        text = text.replace("\u2028", "\n").replace("\u2029", "\n")
        cleaned = _CONTROL.sub("", text).strip()
    if not cleaned:
        raise ClientError("bad_text", "the message is empty: type some text")
    if len(cleaned) > MAX_TEXT:
        raise ClientError(
            "bad_text", f"the message is {len(cleaned)} characters long; at most {MAX_TEXT}"
        )
    return cleaned


# --- commands: what a client asks for -----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SetName:
    """Choose a name for a new session."""

    name: str

    def __post_init__(self) -> None:
        user_name(self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Join:
    """Join a room (created if new) and make it the current room.

    With ``since``, first replay the room's messages after sequence number ``since`` (the last
    one the client saw), then go live: no duplicate, no hole.
    """

    room: str
    since: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "room", room_name(self.room))
        if self.since is not None:
            seq_number(self.since)


@dataclass(frozen=True, slots=True, kw_only=True)
class Leave:
    """Leave a room; ``None`` means the current room."""

    room: str | None = None

    def __post_init__(self) -> None:
        if self.room is not None:
            object.__setattr__(self, "room", room_name(self.room))


@dataclass(frozen=True, slots=True, kw_only=True)
class Say:
    """Say ``text`` in a room; ``None`` means the current room."""

    text: str
    room: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", clean_text(self.text))
        if self.room is not None:
            object.__setattr__(self, "room", room_name(self.room))


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """An action (``/me waves``) in a room; ``None`` means the current room."""

    text: str
    room: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", clean_text(self.text))
        if self.room is not None:
            object.__setattr__(self, "room", room_name(self.room))


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateMessage:
    """Send ``text`` to the user ``to`` only."""

    to: str
    text: str

    def __post_init__(self) -> None:
        user_name(self.to)
        object.__setattr__(self, "text", clean_text(self.text))


@dataclass(frozen=True, slots=True, kw_only=True)
class Nick:
    """Change this user's name."""

    name: str

    def __post_init__(self) -> None:
        user_name(self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Who:
    """List the members of a room; ``None`` means the current room."""

    room: str | None = None

    def __post_init__(self) -> None:
        if self.room is not None:
            object.__setattr__(self, "room", room_name(self.room))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rooms:
    """List the rooms with their member counts, the unread counts of one's own rooms and
    the current room."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Register:
    """Register the session's current (guest) name with a password."""

    password: str = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Login:
    """Become the registered user ``name``."""

    name: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        user_name(self.name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Authenticated:
    """Become the account with id ``account``, as a signed token says (the transport checked
    the signature); the hub checks that the account still exists and that its token
    ``generation`` has not moved on. Never parsed from client text."""

    account: str
    generation: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Logout:
    """End this session's login; the connection stays, without a name. ``everywhere``: end
    every session of the account and revoke every token issued to it."""

    everywhere: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchHistory:
    """A page of a room's history (any room; ``None`` means the current one), or, with
    ``user``, of the private conversation between the session's user and ``user``.

    At most one of ``before``, ``after``, ``around`` (sequence numbers); none means the newest.
    """

    room: str | None = None
    before: int | None = None
    after: int | None = None
    around: int | None = None
    limit: int = 50
    user: str | None = None  # the other person of a private conversation

    def __post_init__(self) -> None:
        if self.room is not None:
            object.__setattr__(self, "room", room_name(self.room))
        if self.user is not None:
            user_name(self.user)
            if self.room is not None:
                raise ClientError("bad_history", "give a room or a user, not both")
        bounds = [b for b in (self.before, self.after, self.around) if b is not None]
        if len(bounds) > 1:
            raise ClientError("bad_history", "give at most one of before, after or around")
        for b in bounds:
            seq_number(b)
        if self.limit < 1:
            raise ClientError("bad_history", f"the limit must be 1 or more, got {self.limit}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Search:
    """Messages of a room containing every word of ``words``, newest first."""

    room: str | None
    words: str
    limit: int = 50

    def __post_init__(self) -> None:
        if self.room is not None:
            object.__setattr__(self, "room", room_name(self.room))
        # Control characters (NUL among them) separate words, as punctuation does; invisible
        # ones go, as they do from message text.
        words = " ".join(_CONTROL.sub(" ", _HIDDEN.sub("", self.words)).split())
        if not words:
            raise ClientError("bad_search", "give some words to search for")
        object.__setattr__(self, "words", words)
        if self.limit < 1:
            raise ClientError("bad_search", f"the limit must be 1 or more, got {self.limit}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Quit:
    """End the session; the reason is shown to the rooms (cleaned, at most 200 characters)."""

    reason: str = "quit"

    def __post_init__(self) -> None:
        reason = _strip_controls(self.reason)[:200]
        object.__setattr__(self, "reason", reason or "quit")


Command = (
    SetName
    | Join
    | Leave
    | Say
    | Action
    | PrivateMessage
    | Nick
    | Who
    | Rooms
    | Register
    | Login
    | Authenticated
    | Logout
    | FetchHistory
    | Search
    | Quit
)


# --- events: what a client sees -----------------------------------------------------------


class Kind(StrEnum):
    """What a room message records."""

    MESSAGE = "message"  # someone said text
    ACTION = "action"  # /me
    JOIN = "join"  # sender joined
    LEAVE = "leave"  # sender left; text is the reason
    NICK = "nick"  # sender is now known as text
    QUIT = "quit"  # sender disconnected; text is the reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Draft:
    """A room message before the store has given it its sequence number."""

    id: str  # unique across the server
    room: str  # '#name'
    sender: str  # user name at the time
    kind: Kind
    text: str  # the text (MESSAGE, ACTION), reason (LEAVE, QUIT) or new name (NICK)
    ts: float  # UTC server time, seconds since the epoch
    signed: bool = False  # the sender was signed in to an account (else a guest, or unknown)

    def with_seq(self, seq: int) -> Message:
        """The stored message: this draft under the room's sequence number ``seq``."""
        return Message(
            id=self.id,
            room=self.room,
            seq=seq,
            sender=self.sender,
            kind=self.kind,
            text=self.text,
            ts=self.ts,
            signed=self.signed,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """One entry of a room's history: every member receives this same object."""

    id: str  # unique across the server
    room: str  # '#name'
    seq: int  # the room's gap-free sequence number, from 1
    sender: str  # user name at the time
    kind: Kind
    text: str  # the text (MESSAGE, ACTION), reason (LEAVE, QUIT) or new name (NICK)
    ts: float  # UTC server time, seconds since the epoch
    # The sender was signed in to an account: a guest's words (or a message stored before
    # this was recorded) are never the later account's of the same name.
    signed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateDraft:
    """A private message before the store has given it its sequence number."""

    id: str  # unique across the server
    sender: str
    recipient: str
    kind: Kind  # MESSAGE or ACTION
    text: str
    ts: float  # UTC server time, seconds since the epoch
    signed: bool = False  # the sender was signed in to an account
    recipient_signed: bool = False  # it was sent to an account (not to a guest of that name)

    def with_seq(self, seq: int) -> Private:
        """The stored private message under the store-wide sequence number ``seq``."""
        return Private(
            id=self.id,
            seq=seq,
            sender=self.sender,
            recipient=self.recipient,
            kind=self.kind,
            text=self.text,
            ts=self.ts,
            signed=self.signed,
            recipient_signed=self.recipient_signed,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Private:
    """A private message; both the sender's and the recipient's sessions receive it."""

    id: str  # unique across the server
    seq: int  # store-wide gap-free sequence number of private messages, from 1
    sender: str
    recipient: str
    kind: Kind  # MESSAGE or ACTION
    text: str
    ts: float  # UTC server time, seconds since the epoch
    signed: bool = False  # the sender was signed in to an account
    recipient_signed: bool = False  # it was sent to an account (not to a guest of that name)


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """The session has a name now."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Info:
    """A line of information for one session (help, confirmations)."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WhoList:
    """The members of a room: ``total`` of them, the first ``names`` by name (all of them in
    a room of ordinary size)."""

    room: str
    names: tuple[str, ...]
    total: int = -1  # how many members; -1: as many as names

    def __post_init__(self) -> None:
        if self.total < 0:
            object.__setattr__(self, "total", len(self.names))


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomEntry:
    """One line of a room list."""

    name: str
    members: int  # online members
    # for the asker's own rooms: messages it has not been sent yet (after its read marker);
    # None for the other rooms
    unread: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RoomList:
    """Every room (with members online or history kept), sorted by name, and the asker's
    current room: where its plain text goes (``None``: it is in no room)."""

    rooms: tuple[RoomEntry, ...]
    current: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Unread:
    """On login: how many messages came in each of the user's rooms since it last read."""

    rooms: tuple[tuple[str, int], ...]  # (room, count), rooms with none left out


@dataclass(frozen=True, slots=True, kw_only=True)
class Summary:
    """On login: ``missed`` messages of ``room`` came while the user was away.

    ``replayed`` of them (the newest) follow; when fewer than ``missed``, older ones are in
    the history from ``first_seq`` back.
    """

    room: str
    missed: int
    replayed: int
    first_seq: int  # sequence number of the first replayed message


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    """A page of a room's history, oldest first."""

    room: str
    messages: tuple[Message, ...]
    oldest_seq: int  # oldest message still kept: older ones were cut by retention
    latest_seq: int  # newest message of the room
    capped: int | None = None  # the limit asked for was over the cap and cut to this


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivateHistory:
    """A page of the private conversation between the asking user and ``user``, oldest
    first: only what the asker said and received as the identity it has now."""

    user: str  # the other person, as asked
    messages: tuple[Private, ...]
    oldest_seq: int  # the oldest message of the conversation it may read (latest_seq + 1: none)
    latest_seq: int  # the newest one (0: none)
    capped: int | None = None  # the limit asked for was over the cap and cut to this


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchResults:
    """Messages of ``room`` containing ``words``, newest first."""

    room: str
    words: str
    messages: tuple[Message, ...]
    capped: int | None = None  # the limit asked for was over the cap and cut to this


@dataclass(frozen=True, slots=True, kw_only=True)
class Missed:
    """``count`` messages from ``first_seq`` on could not be delivered and are not kept.

    ``room`` is ``None`` for the user's private messages.
    """

    room: str | None
    first_seq: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Error:
    """A request failed: ``code`` is stable, ``message`` says what was wrong and what to do."""

    code: str
    message: str


Event = (
    Message
    | Private
    | Welcome
    | Info
    | WhoList
    | RoomList
    | Unread
    | Summary
    | History
    | PrivateHistory
    | SearchResults
    | Missed
    | Error
)
