"""The line protocol, sans I/O: what ``nc`` and ``telnet`` speak.

Bytes in (``receive_data``), commands out; events in (``encode``), bytes out. No sockets here:
the TCP adapter feeds this codec and writes what it returns.

Input is UTF-8 text, one line per command, ended by LF or CRLF. A line that does not start with
``/`` is said in the current room (before the session has a name, it is the name). ``//text``
says ``/text``. A line longer than ``max_line`` bytes is refused and dropped up to its end; the
connection stays usable. A line that is not UTF-8 is refused. A half line at the end of the
connection is dropped.

Output is one line per event, for humans: ``[#general] alice: hello``. Errors start with
``! ``, information with ``-- ``. Room messages are rendered once per format by a shared
``Renderer`` and the same bytes go to every member. No text can show a line of its own:
its further lines start with ``CONTINUATION`` and its runs of blanks show as one space.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import assert_never

from roomcast.errors import ClientError
from roomcast.model import (
    Action,
    Command,
    Error,
    Event,
    FetchHistory,
    History,
    Info,
    Join,
    Kind,
    Leave,
    Login,
    Logout,
    Message,
    Missed,
    Nick,
    Private,
    PrivateHistory,
    PrivateMessage,
    Quit,
    Register,
    RoomList,
    Rooms,
    Say,
    Search,
    SearchResults,
    SetName,
    Summary,
    Unread,
    Welcome,
    Who,
    WhoList,
    seq_text,
)
from roomcast.wire.cache import DEFAULT_CACHE_BYTES, EncodedMessages

__all__ = ["CONTINUATION", "GREETING", "HELP", "MAX_INDENT", "LineCodec", "LineTooLong", "Renderer"]

GREETING = "-- welcome to roomcast. what is your name?"

HELP = """\
-- commands:
--   text              say text in the current room
--   /join #room       join a room (it is created if new) and make it current
--   /join #room since seq   join, first replaying what came after message seq
--   /leave [#room]    leave a room (the current one by default)
--   /msg name text    send a private message
--   /me text          an action: * name text
--   /nick name        change your name
--   /who [#room]      who is in a room
--   /rooms            every room: who is online, your unread counts, your current room
--   /history [#room] [before|after|around N] [count]   a page of history
--   /history @name ...   the same, of your private messages with name
--   /search [#room] words   find messages containing every word
--   /register password   keep your name, rooms and missed messages
--   /login name password   come back as a registered name
--   /logout           end the login; the connection stays
--   /logout all       log out everywhere: every session and token of the account ends
--   /timestamps on|off  show the time of each message (UTC)
--   /quit [reason]    leave the server
--   /help             this list
--   //text            say text that starts with /"""


class LineTooLong(ClientError):
    """A line was longer than the limit; it was dropped."""

    def __init__(self, limit: int) -> None:
        super().__init__("line_too_long", f"line too long (over {limit} bytes): it was dropped")


def _usage(text: str) -> ClientError:
    return ClientError("usage", f"usage: {text}")


def _one_arg(arg: str, usage: str) -> str:
    if not arg or " " in arg:
        raise _usage(usage)
    return arg


def _two_args(arg: str, usage: str) -> tuple[str, str]:
    first, _, rest = arg.partition(" ")
    if not first or not rest.strip():
        raise _usage(usage)
    return first, rest


def _seq(text: str, usage: str) -> int:
    n = seq_text(text)
    if n is None:
        raise _usage(usage)
    return n


def _join(arg: str) -> Join:
    usage = "/join #room [since seq]"
    words = arg.split()
    if len(words) == 1:
        return Join(room=words[0])
    if len(words) == 3 and words[1] == "since":
        return Join(room=words[0], since=_seq(words[2], usage))
    raise _usage(usage)


def _room_and_rest(arg: str) -> tuple[str | None, str]:
    if arg.startswith("#"):
        room, _, rest = arg.partition(" ")
        return room, rest.strip()
    return None, arg


def _history(arg: str) -> FetchHistory:
    usage = "/history [#room|@name] [before|after|around seq] [count]"
    user = None
    if arg.startswith("@"):  # a private conversation
        target, _, arg = arg.partition(" ")
        user = target[1:]
        if not user:
            raise _usage(usage)
    room, rest = _room_and_rest(arg.strip())
    words = rest.split()
    bounds: dict[str, int] = {}
    if words and words[0] in ("before", "after", "around"):
        if len(words) < 2:
            raise _usage(usage)
        bounds[words[0]] = _seq(words[1], usage)
        words = words[2:]
    if len(words) > 1:
        raise _usage(usage)
    limit = _seq(words[0], usage) if words else 50
    return FetchHistory(room=room, user=user, limit=limit, **bounds)


def _command(verb: str, arg: str) -> Command:
    """The hub command for ``/verb arg`` once the session is named."""
    match verb:
        case "join":
            return _join(arg)
        case "leave" | "part":
            return Leave(room=_one_arg(arg, "/leave [#room]") if arg else None)
        case "msg":
            to, text = _two_args(arg, "/msg name text")
            return PrivateMessage(to=to, text=text)
        case "me":
            if not arg:
                raise _usage("/me text")
            return Action(text=arg)
        case "nick":
            return Nick(name=_one_arg(arg, "/nick name"))
        case "who":
            return Who(room=_one_arg(arg, "/who [#room]") if arg else None)
        case "rooms" | "list":
            return Rooms()
        case "register":
            return Register(password=_one_arg(arg, "/register password"))
        case "login":
            name, password = _two_args(arg, "/login name password")
            return Login(name=name, password=password.strip())
        case "logout":
            if arg.lower() not in ("", "all"):
                raise _usage("/logout [all]")
            return Logout(everywhere=arg.lower() == "all")
        case "history":
            return _history(arg)
        case "search":
            room, words = _room_and_rest(arg)
            if not words:
                raise _usage("/search [#room] words")
            return Search(room=room, words=words)
        case "quit":
            return Quit(reason=arg or "quit")
    shown = f" /{verb}" if verb.isascii() and verb.isalnum() and len(verb) <= 20 else ""
    raise ClientError("unknown_command", f"unknown command{shown}: type /help")


# --- rendering ----------------------------------------------------------------------------


# A run of blanks: spaces, the other Unicode spaces, and the letters that show as a blank
# (Hangul fillers, the blank Braille pattern). Two or more, or a single one that is not
# an ASCII space.
_BLANK = "[^\\S\\n]|[\u115f\u1160\u2800\u3164\uffa0]"
_BLANKS = re.compile(f"(?:{_BLANK}){{2,}}|(?! )(?:{_BLANK})")
_INDENT = re.compile(f"(?:{_BLANK})+")
CONTINUATION = "  | "  # starts each further line of a multi-line text: no event line does
MAX_INDENT = 8  # columns of indentation kept at the start of a further line


def _body(text: str) -> str:
    """A text as the terminal shows it: no line of it can pass for a line of its own.

    A line break (the text keeps them) starts the next line with ``CONTINUATION``, which no
    event line starts with. A run of blanks shows as one space: padding a message to the
    terminal's width would otherwise make what follows appear at the start of a row, as
    if it were another line. Only the client knows the width: with visible padding the
    trick still works, but the row above then shows the padding, under the sender's name
    (docs/security.md). The indentation of a further line (code) is kept, up to
    ``MAX_INDENT`` columns.
    """
    if "\n" not in text:
        return _BLANKS.sub(" ", text)
    first, *rest = text.split("\n")
    lines = [_BLANKS.sub(" ", first)]
    for line in rest:
        indent = _INDENT.match(line)
        depth = 0 if indent is None else min(indent.end(), MAX_INDENT)
        start = 0 if indent is None else indent.end()
        lines.append(" " * depth + _BLANKS.sub(" ", line[start:]))
    return ("\n" + CONTINUATION).join(lines)


def _clock(ts: float) -> str:
    return time.strftime("%H:%M ", time.gmtime(ts))


class Renderer:
    """Renders events as lines. Room messages are cached: one render per message per format.

    One renderer per format (with or without timestamps) is shared by every connection.
    """

    def __init__(
        self,
        *,
        timestamps: bool = False,
        cache_size: int = 4096,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.timestamps = timestamps  # prefix each message with its UTC time
        # the line of each room message, rendered once
        self.message = EncodedMessages(
            lambda m: self._render_message(m).encode(), size=cache_size, max_bytes=cache_bytes
        )

    def _render_message(self, m: Message, *, clock: bool = True) -> str:
        head = f"{_clock(m.ts) if self.timestamps and clock else ''}[{m.room}]"
        match m.kind:
            case Kind.MESSAGE:
                return f"{head} {m.sender}: {_body(m.text)}\n"
            case Kind.ACTION:
                return f"{head} * {m.sender} {_body(m.text)}\n"
            case Kind.JOIN:
                return f"{head} --> {m.sender} joined\n"
            case Kind.LEAVE:
                return f"{head} <-- {m.sender} left\n"
            case Kind.QUIT:
                return f"{head} <-- {m.sender} quit ({_body(m.text)})\n"
            case Kind.NICK:
                return f"{head} -- {m.sender} is now known as {m.text}\n"
            case _:
                assert_never(m.kind)

    def _listing(self, header: str, messages: Sequence[Message], capped: int | None) -> list[str]:
        """A header, then one line per message with its seq and UTC date and time."""
        lines = [header]
        for m in messages:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(m.ts))
            lines.append(f"{m.seq} {stamp} {self._render_message(m, clock=False)}".rstrip("\n"))
        if capped is not None:
            lines.append(f"-- limited to {capped} messages")
        return lines

    def _history(self, page: History) -> str:
        """A page of history, then where to read on: the older and the newer page next to
        it, where there are such messages, or that older ones are no longer kept; an empty
        page says which messages the room keeps."""
        room, messages, oldest, latest = page.room, page.messages, page.oldest_seq, page.latest_seq
        if messages:
            header = f"-- history of {room}: seq {messages[0].seq}-{messages[-1].seq}"
        else:
            header = f"-- history of {room}: no messages"
        lines = self._listing(header, messages, page.capped)
        gone = f"-- messages of {room} before seq {oldest} are no longer kept"
        if messages:
            first, last = messages[0].seq, messages[-1].seq
            if first > oldest:
                lines.append(f"-- older: /history {room} before {first}")
            elif oldest > 1:
                lines.append(gone)
            if last < latest:
                lines.append(f"-- newer: /history {room} after {last}")
        elif latest > 0:
            if oldest > 1:
                lines.append(gone)
            if oldest <= latest:
                lines.append(f"-- kept: {room} seq {oldest}-{latest}")
        return "\n".join(lines) + "\n"

    def _room_list(self, rooms: RoomList) -> str:
        """A header with the count and where text goes, then one aligned line per room."""
        if rooms.current is None:
            where = "you are in no room: /join #room to talk"
        else:
            where = f"text goes to {rooms.current}"
        lines = [f"-- rooms: {len(rooms.rooms)}; {where}"]
        width = max((len(r.name) for r in rooms.rooms), default=0)
        for r in rooms.rooms:
            line = f"--   {r.name:<{width}}  {r.members} online"
            if r.unread is not None:  # one of the asker's rooms
                line += f", joined, {r.unread} unread"
            if r.name == rooms.current:
                line += ", current"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def _private_history(self, page: PrivateHistory) -> str:
        """A page of a private conversation, as a room's: each message with its seq, date and
        time as it was shown live, then where to read on."""
        who, messages = page.user, page.messages
        if messages:
            lines = [f"-- history with @{who}: seq {messages[0].seq}-{messages[-1].seq}"]
        else:
            lines = [f"-- history with @{who}: no messages"]
        for p in messages:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(p.ts))
            lines.append(f"{p.seq} {stamp} [pm {p.sender} -> {p.recipient}] {_body(p.text)}")
        if page.capped is not None:
            lines.append(f"-- limited to {page.capped} messages")
        if messages and messages[0].seq > page.oldest_seq:
            lines.append(f"-- older: /history @{who} before {messages[0].seq}")
        if messages and messages[-1].seq < page.latest_seq:
            lines.append(f"-- newer: /history @{who} after {messages[-1].seq}")
        return "\n".join(lines) + "\n"

    def event(self, e: Event) -> bytes:
        """The line(s) for any event."""
        if isinstance(e, Message):
            return self.message(e)
        return self._render_other(e).encode()

    def _render_other(self, e: Event) -> str:
        match e:
            case Message():  # pragma: no cover - ``render`` takes them from the cache
                return self._render_message(e)
            case Private(sender=sender, recipient=recipient, text=text, ts=ts):
                stamp = _clock(ts) if self.timestamps else ""
                return f"{stamp}[pm {sender} -> {recipient}] {_body(text)}\n"
            case Welcome(name=name):
                return f"-- hello {name}. type text to talk, /help for commands.\n"
            case Info(text=text):
                return f"-- {text}\n"
            case WhoList(room=room, names=names, total=total):
                if total == 0:
                    return f"-- {room}: nobody is online (0)\n"
                more = f" and {total - len(names)} more" if total > len(names) else ""
                return f"-- {room}: {' '.join(names)}{more} ({total})\n"
            case RoomList():
                return self._room_list(e)
            case Unread(rooms=rooms):
                return "-- unread: " + ", ".join(f"{r} {n}" for r, n in rooms) + "\n"
            case Summary(
                room=room, missed=missed, replayed=replayed, first_seq=first, first_unread=unread
            ):
                line = f"-- {room}: {missed} new since you left"
                if unread < first:  # the replay starts after the first new message
                    line += (
                        f"; the latest {replayed} follow (older: /history {room} before {first})"
                    )
                return line + "\n"
            case History():
                return self._history(e)
            case PrivateHistory():
                return self._private_history(e)
            case SearchResults(room=room, words=words, messages=messages, capped=capped):
                # newest first: a range "seq 11-3" would read backwards, and there are holes
                found = f"{len(messages)} found" + (", newest first" if len(messages) > 1 else "")
                header = f"-- search of {room} for {words!r}: {found}"
                return "\n".join(self._listing(header, messages, capped)) + "\n"
            case Missed(room=room, first_seq=first, count=count):
                where = room or "your private messages"
                return (
                    f"! missed {count} messages of {where} (seq {first}-{first + count - 1}):"
                    " they are no longer kept\n"
                )
            case Error(message=message):
                return f"! {message}\n"
            case _:
                assert_never(e)


# --- the codec ----------------------------------------------------------------------------


class LineCodec:
    """Server side of one line-protocol connection.

    ``receive_data`` frames bytes into lines (or framing errors); ``parse`` turns one line into
    what to hand to the hub (a command) or what to answer at once (an error, help). Lines are
    parsed one at a time, as they are handled, because the meaning of a plain line depends on
    whether the name was accepted. ``encode`` renders events to send.
    """

    __slots__ = ("_buffer", "_discarding", "_plain", "_renderer", "_stamped", "max_line", "named")

    def __init__(
        self,
        *,
        plain: Renderer,
        stamped: Renderer,
        max_line: int = 4096,
    ) -> None:
        self.max_line = max_line  # longest accepted line in bytes, without its end
        self.named = False  # the session has a name: plain lines are said, not names
        self._plain = plain  # shared renderer without timestamps
        self._stamped = stamped  # shared renderer with timestamps
        self._renderer = plain  # the one this connection uses
        self._buffer = bytearray()  # bytes of an unfinished line
        self._discarding = False  # dropping the rest of a line that was too long

    # -- input --

    def receive_data(self, data: bytes) -> list[str | Error]:
        """Feed bytes from the peer; return the complete lines, and errors for refused ones."""
        out: list[str | Error] = []
        buf = self._buffer
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if self._discarding:  # the end of a line already refused as too long
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > self.max_line:
                out.append(self._error(LineTooLong(self.max_line)))
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                out.append(Error(code="bad_utf8", message="invalid UTF-8: send UTF-8 text"))
                continue
            if text.strip():
                out.append(text)
        del buf[:start]
        if len(buf) > self.max_line + 1:
            if not self._discarding:
                out.append(self._error(LineTooLong(self.max_line)))
            self._discarding = True
            buf.clear()
        return out

    def eof(self) -> None:
        """The peer closed: a half-sent line is dropped."""
        self._buffer.clear()

    def parse(self, text: str) -> list[Command | Error | Info]:
        """One line of text -> a command for the hub, or the replies to send at once."""
        try:
            return self._parse(text)
        except ClientError as e:
            return [self._error(e)]

    def _parse(self, text: str) -> list[Command | Error | Info]:
        if not text.startswith("/") or text.startswith("//"):
            said = text[1:] if text.startswith("//") else text
            if not self.named:
                return [SetName(name=said.strip())]
            return [Say(text=said)]
        verb, _, arg = text[1:].partition(" ")
        verb, arg = verb.lower(), arg.strip()
        if verb == "help":
            return [Info(text=line.removeprefix("-- ")) for line in HELP.splitlines()]
        if verb == "timestamps":
            return [self._timestamps(arg)]
        if not self.named and verb in ("nick", "name"):
            return [SetName(name=_one_arg(arg, "/nick name"))]
        return [_command(verb, arg)]

    def _timestamps(self, arg: str) -> Info:
        if arg not in ("on", "off"):
            raise _usage("/timestamps on|off")
        self._renderer = self._stamped if arg == "on" else self._plain
        return Info(text=f"timestamps {arg}")

    @staticmethod
    def _error(e: ClientError) -> Error:
        return Error(code=e.code, message=e.message)

    # -- output --

    def encode(self, events: Sequence[Event]) -> bytes:
        """Render events into the bytes to send, one line each."""
        render = self._renderer
        if events:
            shared = render.message.run(events)
            if shared is not None:
                return shared
        parts = []
        for e in events:
            if isinstance(e, Message):
                parts.append(render.message(e))
            else:
                parts.append(render.event(e))
        return b"".join(parts)

    def greeting(self) -> bytes:
        """What a new connection is told first."""
        return (GREETING + "\n").encode()
