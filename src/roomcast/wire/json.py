"""The JSON protocol, sans I/O: what the browser, scripts and the WebSocket endpoint speak.

Every frame is one JSON object with a ``type``. A client request may carry an ``id``
(a string or a number) that every reply to it echoes; a request with an ``id`` that has no
other reply gets ``{"type": "ok", "id": ...}``. Errors are ``{"type": "error", "code",
"message"}``: ``code`` is stable, ``message`` is for a human.

Room events are encoded once per message (``EncodedMessages``) and the same bytes go to every
member. Several ready events go out as one ``{"type": "batch", "events": [...]}`` frame,
built by joining the already-encoded objects: nothing is encoded twice.

The HTTP API's bodies (``api_*``) and the Server-Sent Events stream (``event_stream``) are
built here too, from the same objects: no JSON is written anywhere else.

The full list of frames and bodies is in docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, assert_never

import orjson

from roomcast import __version__
from roomcast.errors import ClientError
from roomcast.model import (
    Action,
    Authenticated,
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
)
from roomcast.tokens import Claims
from roomcast.wire.cache import DEFAULT_CACHE_BYTES, EncodedMessages

__all__ = [
    "KEEPALIVE",
    "PROTOCOL_VERSION",
    "RETRY",
    "JsonCodec",
    "Reply",
    "api_account",
    "api_body",
    "api_error",
    "api_health",
    "api_history",
    "api_logged_out",
    "api_message",
    "api_rooms",
    "encoded_messages",
    "event_stream",
    "message_object",
    "private_object",
]

PROTOCOL_VERSION = 1

RequestId = str | int | None


class Reply:
    """A frame the codec answers by itself (ping, malformed frames), without the hub."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame  # the encoded frame to send back


def message_object(m: Message) -> dict[str, Any]:
    """A room message as a JSON object (``type`` from its kind)."""
    base: dict[str, Any] = {
        "room": m.room,
        "seq": m.seq,
        "id": m.id,
        "from": m.sender,
        "signed": m.signed,
    }
    match m.kind:
        case Kind.MESSAGE | Kind.ACTION:
            return {"type": "message", **base, "kind": m.kind.value, "text": m.text, "ts": m.ts}
        case Kind.JOIN:
            return {"type": "join", **base, "ts": m.ts}
        case Kind.LEAVE:
            return {"type": "leave", **base, "ts": m.ts}
        case Kind.QUIT:
            return {"type": "presence", **base, "status": "offline", "reason": m.text, "ts": m.ts}
        case Kind.NICK:
            return {"type": "nick", **base, "to": m.text, "ts": m.ts}
        case _:
            assert_never(m.kind)


def private_object(p: Private) -> dict[str, Any]:
    """A private message as a JSON object (``dm``)."""
    return {
        "type": "dm",
        "id": p.id,
        "seq": p.seq,
        "from": p.sender,
        "signed": p.signed,
        "to": p.recipient,
        "kind": p.kind.value,
        "text": p.text,
        "ts": p.ts,
    }


def _event_object(e: Event) -> dict[str, Any]:
    match e:
        case Message():
            return message_object(e)
        case Private():
            return private_object(e)
        case Welcome(name=name):
            return {
                "type": "welcome",
                "name": name,
                "version": PROTOCOL_VERSION,
                "server": __version__,
            }
        case Info(text=text):
            return {"type": "info", "text": text}
        case WhoList(room=room, names=names, total=total):
            return {"type": "who", "room": room, "names": list(names), "total": total}
        case RoomList(rooms=rooms, current=current):
            listed = [{"name": r.name, "members": r.members, "unread": r.unread} for r in rooms]
            return {"type": "rooms", "rooms": listed, "current": current}
        case Unread(rooms=rooms):
            return {"type": "unread", "rooms": dict(rooms)}
        case Summary():
            return {
                "type": "summary",
                "room": e.room,
                "missed": e.missed,
                "replayed": e.replayed,
                "first_seq": e.first_seq,
                "first_unread": e.first_unread,
            }
        case History():
            return {
                "type": "history",
                "room": e.room,
                "messages": [message_object(m) for m in e.messages],
                "oldest_seq": e.oldest_seq,
                "latest_seq": e.latest_seq,
                "capped": e.capped,
            }
        case PrivateHistory():
            return {
                "type": "history",
                "with": e.user,
                "messages": [private_object(p) for p in e.messages],
                "oldest_seq": e.oldest_seq,
                "latest_seq": e.latest_seq,
                "capped": e.capped,
            }
        case SearchResults():
            return {
                "type": "search",
                "room": e.room,
                "words": e.words,
                "messages": [message_object(m) for m in e.messages],
                "capped": e.capped,
            }
        case Missed(room=room, first_seq=first, count=count):
            return {"type": "gap", "room": room, "from_seq": first, "to_seq": first + count - 1}
        case Error(code=code, message=message):
            return {"type": "error", "code": code, "message": message}
        case _:
            assert_never(e)


def _encode_message(m: Message) -> bytes:
    return orjson.dumps(message_object(m))


# --- decoding requests --------------------------------------------------------------------


def _bad(message: str) -> ClientError:
    return ClientError("bad_frame", message)


def _str(frame: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = frame.get(key)
    if value is None:
        if required:
            raise _bad(f"{frame['type']!r} needs {key!r}")
        return None
    if not isinstance(value, str):
        raise _bad(f"{key!r} must be a string")
    return value


def _need(frame: dict[str, Any], key: str) -> str:
    value = _str(frame, key)
    assert value is not None
    return value


def _int(frame: dict[str, Any], key: str) -> int | None:
    value = frame.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{key!r} must be a whole number")
    return value


def _bool(frame: dict[str, Any], key: str) -> bool:
    value = frame.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{key!r} must be true or false")
    return value


def _limit(frame: dict[str, Any]) -> int:
    limit = _int(frame, "limit")
    return 50 if limit is None else limit


def _room(frame: dict[str, Any]) -> str | None:
    return _str(frame, "room", required=False)


_REQUESTS: dict[str, Callable[[dict[str, Any]], Command]] = {
    "login": lambda f: Login(name=_need(f, "name"), password=_need(f, "password")),
    "register": lambda f: Register(password=_need(f, "password")),
    "logout": lambda f: Logout(everywhere=_bool(f, "all")),
    "join": lambda f: Join(room=_need(f, "room"), since=_int(f, "since")),
    "leave": lambda f: Leave(room=_room(f)),
    "send": lambda f: Say(room=_room(f), text=_need(f, "text")),
    "action": lambda f: Action(room=_room(f), text=_need(f, "text")),
    "dm": lambda f: PrivateMessage(to=_need(f, "to"), text=_need(f, "text")),
    "nick": lambda f: Nick(name=_need(f, "name")),
    "who": lambda f: Who(room=_room(f)),
    "rooms": lambda f: Rooms(),
    "history": lambda f: FetchHistory(
        room=_room(f),
        before=_int(f, "before"),
        after=_int(f, "after"),
        around=_int(f, "around"),
        limit=_limit(f),
        user=_str(f, "with", required=False),
    ),
    "search": lambda f: Search(room=_room(f), words=_need(f, "words"), limit=_limit(f)),
    "quit": lambda f: Quit(reason=_str(f, "reason", required=False) or "quit"),
}


class JsonCodec:
    """Server side of one JSON-protocol connection.

    ``parse`` turns one text frame into ``(request id, command)`` or a ready ``Reply``;
    ``encode`` turns events into frames. ``verify_token`` maps a token to what it claims (or
    raises ``ClientError``); it comes from the transport, which holds the signing key.
    """

    def __init__(
        self, *, messages: EncodedMessages, verify_token: Callable[[str], Claims] | None = None
    ) -> None:
        self._messages = messages  # shared: each room message encoded once
        self._verify_token = verify_token  # token -> its claims, for hello {token}

    # -- input --

    def parse(self, text: str | bytes) -> tuple[RequestId, Command] | Reply:
        """One frame from the client -> the command it asks for, or the reply to send now."""
        request_id: RequestId = None
        try:
            try:
                frame = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ClientError("bad_json", "the frame is not valid JSON") from None
            if not isinstance(frame, dict):
                raise _bad("a frame must be a JSON object")
            raw_id = frame.get("id")
            if raw_id is not None and not (
                isinstance(raw_id, str | int) and not isinstance(raw_id, bool)
            ):
                raise _bad("'id' must be a string or a number")
            request_id = raw_id
            kind = frame.get("type")
            if not isinstance(kind, str):
                raise _bad("a frame needs a 'type' string")
            if kind == "ping":
                return Reply(self._frame({"type": "pong"}, request_id))
            if kind == "hello":
                return request_id, self._hello(frame)
            parse = _REQUESTS.get(kind)
            if parse is None:
                raise ClientError("unknown_type", f"unknown frame type {kind[:40]!r}")
            return request_id, parse(frame)
        except ClientError as e:
            return Reply(self.error(e.code, e.message, request_id))

    def _hello(self, frame: dict[str, Any]) -> Command:
        token = _str(frame, "token", required=False)
        if token is not None:
            if self._verify_token is None:
                raise ClientError("bad_token", "this server does not take tokens")
            claims = self._verify_token(token)
            return Authenticated(account=claims.account, generation=claims.generation)
        name = _str(frame, "name", required=False)
        if name is None:
            raise _bad("'hello' needs 'name' (a guest) or 'token' (an account)")
        return SetName(name=name)

    # -- output --

    def _frame(self, obj: dict[str, Any], request_id: RequestId) -> bytes:
        if request_id is not None:
            obj["id"] = request_id
        return orjson.dumps(obj)

    def error(self, code: str, message: str, request_id: RequestId = None) -> bytes:
        """An error frame."""
        return self._frame({"type": "error", "code": code, "message": message}, request_id)

    def replies(self, events: Sequence[Event], request_id: RequestId) -> list[bytes]:
        """The frames answering one request: each reply echoes its ``id``; a request with an
        id and no reply gets ``ok``."""
        if not events:
            return [] if request_id is None else [self._frame({"type": "ok"}, request_id)]
        if request_id is None:
            return [self.encode(events)]
        return [self._frame(_event_object(e), request_id) for e in events]

    def encode(self, events: Sequence[Event]) -> bytes:
        """One frame holding ``events``: the event itself, or a ``batch`` of several."""
        shared = self._messages.run(events) if events else None
        if shared is not None:
            return shared
        parts = [
            self._messages(e) if isinstance(e, Message) else orjson.dumps(_event_object(e))
            for e in events
        ]
        return _frame(parts)


def _frame(parts: list[bytes]) -> bytes:
    """One frame for several encoded events: the event itself, or a batch."""
    if len(parts) == 1:
        return parts[0]
    return b'{"type":"batch","events":[' + b",".join(parts) + b"]}"


def encoded_messages(size: int = 4096, max_bytes: int = DEFAULT_CACHE_BYTES) -> EncodedMessages:
    """A cache of JSON-encoded room messages, to share between connections (at most ``size``
    messages and ``max_bytes`` bytes of them, and as many bytes of runs)."""
    return EncodedMessages(_encode_message, size=size, max_bytes=max_bytes, join=_frame)


# --- the HTTP API and its event stream ----------------------------------------------------


def api_body(data: bytes) -> dict[str, Any]:
    """A request body: one JSON object (``ClientError`` "bad_json" otherwise)."""
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ClientError("bad_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ClientError("bad_json", "the body must be a JSON object")
    return body


def api_error(code: str, message: str) -> bytes:
    """An error's body: ``{"error": {"code", "message"}}``."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def api_health(status: str, counts: Mapping[str, object], problem: str | None = None) -> bytes:
    """``/health``: its status, what is wrong (if anything), and the server's counts."""
    head: dict[str, object] = {"status": status}
    if problem is not None:
        head["problem"] = problem
    return orjson.dumps(head | dict(counts))


def api_account(name: str, token: str) -> bytes:
    """A registration's or a login's body: the account's name and a token for it."""
    return orjson.dumps({"name": name, "token": token})


def api_logged_out(name: str) -> bytes:
    """A logout's body: every token of ``name`` is revoked."""
    return orjson.dumps({"name": name, "logged_out": "everywhere"})


def api_rooms(rooms: RoomList) -> bytes:
    """The rooms with their members online: ``{"rooms": [{"name", "members"}]}``."""
    return orjson.dumps({"rooms": [{"name": r.name, "members": r.members} for r in rooms.rooms]})


def api_history(page: History) -> bytes:
    """A page of a room's history."""
    return orjson.dumps(
        {
            "room": page.room,
            "messages": [message_object(m) for m in page.messages],
            "oldest_seq": page.oldest_seq,
            "latest_seq": page.latest_seq,
            "capped": page.capped,
        }
    )


def api_message(m: Message) -> bytes:
    """A posted message, as stored."""
    return orjson.dumps(message_object(m))


RETRY = b"retry: 2000\n\n"  # an event stream's first words: reconnect after 2 s
KEEPALIVE = b": keepalive\n\n"  # a comment that keeps an idle stream open through proxies


def event_stream(events: Sequence[Event], messages: EncodedMessages) -> bytes:
    """Server-Sent Events for ``events``: a room message is a ``message`` event whose id is
    its seq (a client resumes with ``Last-Event-ID``) and whose data is its shared encoding;
    what the store no longer holds is a ``gap`` event; anything else is not sent."""
    chunks = []
    for e in events:
        if isinstance(e, Message):
            chunks.append(b"id: %d\nevent: message\ndata: %s\n\n" % (e.seq, messages(e)))
        elif isinstance(e, Missed):
            last = e.first_seq + e.count - 1
            gap = orjson.dumps({"room": e.room, "from_seq": e.first_seq, "to_seq": last})
            chunks.append(b"event: gap\ndata: %s\n\n" % gap)
    return b"".join(chunks)
