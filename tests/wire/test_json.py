"""The JSON codec, without sockets: parsing client frames, replies and encoding events."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    RoomEntry,
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
from roomcast.wire.json import (
    PROTOCOL_VERSION,
    JsonCodec,
    Reply,
    api_body,
    api_error,
    api_health,
    api_history,
    api_rooms,
    encoded_messages,
    event_stream,
)

TS = 1_700_000_000.5  # 2023-11-14 22:13:20.5 UTC


def verify(token: str) -> Claims:
    """A stand-in for ``Tokens.verify``: ``good:ID`` claims account ID at generation 2;
    ``old`` has expired."""
    if token.startswith("good:"):
        return Claims(account=token.removeprefix("good:"), generation=2)
    if token == "old":
        raise ClientError("expired_token", "the token has expired: log in again")
    raise ClientError("bad_token", "the token is not valid: log in again")


def codec() -> JsonCodec:
    return JsonCodec(messages=encoded_messages(), verify_token=verify)


def message(seq: int = 1, kind: Kind = Kind.MESSAGE, text: str = "hello") -> Message:
    return Message(
        id=f"m{seq}", room="#general", seq=seq, sender="alice", kind=kind, text=text, ts=TS
    )


def parsed(frame: dict[str, Any] | str) -> tuple[str | int | None, Command]:
    """Parse ``frame`` (a dict is encoded first) and require a command, not a reply."""
    text = frame if isinstance(frame, str) else orjson.dumps(frame).decode()
    result = codec().parse(text)
    assert not isinstance(result, Reply), orjson.loads(result.frame)
    return result


def reply(frame: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """Parse ``frame`` (a dict is encoded first) and require a ready reply; return it decoded."""
    text = orjson.dumps(frame) if isinstance(frame, dict) else frame
    result = codec().parse(text)
    assert isinstance(result, Reply), result
    obj: dict[str, Any] = orjson.loads(result.frame)
    return obj


def decoded(data: bytes) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(data)
    return obj


# --- parsing: every request -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "command"),
    [
        ({"type": "hello", "name": "alice"}, SetName(name="alice")),
        ({"type": "hello", "token": "good:a1"}, Authenticated(account="a1", generation=2)),
        (
            {"type": "hello", "token": "good:b2", "name": "alice"},
            Authenticated(account="b2", generation=2),
        ),
        (
            {"type": "login", "name": "alice", "password": "secret12"},
            Login(name="alice", password="secret12"),
        ),
        ({"type": "register", "password": "secret12"}, Register(password="secret12")),
        ({"type": "logout"}, Logout()),
        ({"type": "logout", "all": False}, Logout()),
        ({"type": "logout", "all": None}, Logout()),
        ({"type": "logout", "all": True}, Logout(everywhere=True)),
        ({"type": "join", "room": "#rust"}, Join(room="#rust")),
        ({"type": "join", "room": "Rust", "since": 41}, Join(room="#rust", since=41)),
        ({"type": "join", "room": "#rust", "since": None}, Join(room="#rust")),
        ({"type": "leave"}, Leave()),
        ({"type": "leave", "room": "#rust"}, Leave(room="#rust")),
        ({"type": "send", "text": "hi"}, Say(text="hi")),
        ({"type": "send", "room": "#rust", "text": "hi"}, Say(room="#rust", text="hi")),
        ({"type": "action", "text": "waves"}, Action(text="waves")),
        ({"type": "action", "room": "#rust", "text": "waves"}, Action(room="#rust", text="waves")),
        ({"type": "dm", "to": "bob", "text": "psst"}, PrivateMessage(to="bob", text="psst")),
        ({"type": "nick", "name": "alicia"}, Nick(name="alicia")),
        ({"type": "who"}, Who()),
        ({"type": "who", "room": "#rust"}, Who(room="#rust")),
        ({"type": "rooms"}, Rooms()),
        ({"type": "history"}, FetchHistory(limit=50)),
        (
            {"type": "history", "room": "#rust", "before": 10, "limit": 5},
            FetchHistory(room="#rust", before=10, limit=5),
        ),
        ({"type": "history", "after": 3}, FetchHistory(after=3)),
        ({"type": "history", "around": 7, "limit": 500}, FetchHistory(around=7, limit=500)),
        ({"type": "history", "with": "Bob"}, FetchHistory(user="Bob")),
        (
            {"type": "history", "with": "bob", "before": 9, "limit": 20},
            FetchHistory(user="bob", before=9, limit=20),
        ),
        ({"type": "search", "words": "borrow checker"}, Search(room=None, words="borrow checker")),
        (
            {"type": "search", "room": "#rust", "words": "x", "limit": 3},
            Search(room="#rust", words="x", limit=3),
        ),
        ({"type": "quit"}, Quit(reason="quit")),
        ({"type": "quit", "reason": "bye now"}, Quit(reason="bye now")),
    ],
)
def test_every_request_type_parses_to_its_command(frame: dict[str, Any], command: Command) -> None:
    """Each client frame type becomes the hub command it asks for, with no request id."""
    assert parsed(frame) == (None, command)


@pytest.mark.parametrize("request_id", ["abc", 0, 42, -7, ""])
def test_a_request_id_string_or_number_is_returned_with_the_command(
    request_id: str | int,
) -> None:
    """A string or whole-number id comes back beside the command, as sent."""
    assert parsed({"type": "rooms", "id": request_id}) == (request_id, Rooms())


def test_hello_with_a_bad_or_expired_token_is_answered_with_that_error() -> None:
    """The verifier's ClientError becomes an error frame with its code, echoing the id."""
    assert reply({"type": "hello", "token": "forged", "id": 1}) == {
        "type": "error",
        "code": "bad_token",
        "message": "the token is not valid: log in again",
        "id": 1,
    }
    assert reply({"type": "hello", "token": "old"})["code"] == "expired_token"


def test_hello_with_a_token_on_a_codec_without_a_verifier_is_bad_token() -> None:
    """A codec built without ``verify_token`` refuses every token as bad_token."""
    bare = JsonCodec(messages=encoded_messages())
    result = bare.parse(b'{"type": "hello", "token": "good:alice"}')
    assert isinstance(result, Reply)
    assert decoded(result.frame)["code"] == "bad_token"


def test_hello_without_a_name_or_a_token_is_a_bad_frame() -> None:
    """hello needs a name or a token; the error says so."""
    error = reply({"type": "hello"})
    assert error["code"] == "bad_frame" and "'name'" in error["message"]


def test_ping_is_answered_by_the_codec_with_pong_echoing_the_id() -> None:
    """ping never reaches the hub: the codec answers pong, with the id when there is one."""
    assert reply({"type": "ping", "id": "p1"}) == {"type": "pong", "id": "p1"}
    assert reply({"type": "ping", "id": 9}) == {"type": "pong", "id": 9}
    assert reply({"type": "ping"}) == {"type": "pong"}


def test_frames_arrive_as_text_or_bytes() -> None:
    """``parse`` takes the frame as str or as UTF-8 bytes alike."""
    c = codec()
    assert c.parse('{"type":"send","text":"h\u00e9"}') == (None, Say(text="h\u00e9"))
    assert c.parse('{"type":"send","text":"h\u00e9"}'.encode()) == (None, Say(text="h\u00e9"))


# --- parsing: malformed frames --------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{", "{type: 'send'}", "[1,", "nul", b"\xff\xfe", "{}{}"])
def test_text_that_is_not_json_is_bad_json(text: str | bytes) -> None:
    """Anything orjson cannot read is answered bad_json, without an id."""
    assert reply(text) == {
        "type": "error",
        "code": "bad_json",
        "message": "the frame is not valid JSON",
    }


@pytest.mark.parametrize("text", ["[]", '[{"type":"ping"}]', "1", '"ping"', "null", "true"])
def test_json_that_is_not_an_object_is_a_bad_frame(text: str) -> None:
    """A frame must be a JSON object."""
    error = reply(text)
    assert error == {
        "type": "error",
        "code": "bad_frame",
        "message": "a frame must be a JSON object",
    }


@pytest.mark.parametrize(
    "frame",
    [{}, {"id": 1}, {"type": None}, {"type": 3}, {"type": ["send"]}, {"type": {"a": 1}}],
)
def test_a_frame_without_a_type_string_is_a_bad_frame(frame: dict[str, Any]) -> None:
    """No type, or a type that is not a string, is bad_frame."""
    error = reply(frame)
    assert error["code"] == "bad_frame" and "'type'" in error["message"]


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "join", "room": "#a", "since": "x"}, "since"),
        ({"type": "join", "room": "#a", "since": 1.5}, "since"),
        ({"type": "join", "room": "#a", "since": True}, "since"),
        ({"type": "history", "limit": True}, "limit"),
        ({"type": "history", "limit": "10"}, "limit"),
        ({"type": "history", "before": [1]}, "before"),
        ({"type": "history", "after": {"seq": 1}}, "after"),
        ({"type": "history", "around": 2.0}, "around"),
        ({"type": "history", "with": 7}, "with"),
        ({"type": "search", "words": "x", "limit": False}, "limit"),
        ({"type": "search", "words": 5}, "words"),
        ({"type": "send", "text": 5}, "text"),
        ({"type": "send", "text": "hi", "room": 1}, "room"),
        ({"type": "dm", "to": ["bob"], "text": "hi"}, "to"),
        ({"type": "login", "name": "alice", "password": 12345678}, "password"),
        ({"type": "hello", "name": 7}, "name"),
        ({"type": "hello", "token": 7}, "token"),
        ({"type": "quit", "reason": 1}, "reason"),
        ({"type": "logout", "all": 1}, "all"),
        ({"type": "logout", "all": "yes"}, "all"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_bad_frame_naming_it(
    frame: dict[str, Any], field: str
) -> None:
    """A field of the wrong JSON type (bools are not numbers) is bad_frame naming the field."""
    error = reply({**frame, "id": "r"})
    assert error["code"] == "bad_frame"
    assert error["message"].startswith(f"{field!r} must be"), error
    assert error["id"] == "r"


@pytest.mark.parametrize("key", ["since", "before", "after", "around", "limit"])
def test_a_number_of_thousands_of_digits_is_refused_as_a_frame(key: str) -> None:
    """orjson reads no integer past 64 bits: 5,000 digits are not JSON it takes (bad_json),
    and 30 digits are a float, not a whole number (bad_frame); nothing raises."""
    kind = "join" if key == "since" else "history"
    for digits, code in (("9" * 5000, "bad_json"), ("9" * 30, "bad_frame")):
        text = f'{{"type": "{kind}", "room": "#a", "{key}": {digits}, "id": 1}}'
        parsed = JsonCodec(messages=encoded_messages()).parse(text)
        assert isinstance(parsed, Reply)
        assert orjson.loads(parsed.frame)["code"] == code


def test_search_words_lose_their_control_characters() -> None:
    """A NUL inside search words separates words; the words are sent back cleaned."""
    parsed = JsonCodec(messages=encoded_messages()).parse(
        orjson.dumps({"type": "search", "words": "a\u0000b", "id": 1})
    )
    assert parsed == (1, Search(room=None, words="a b"))


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "send"},
        {"type": "send", "text": None},
        {"type": "join"},
        {"type": "dm", "text": "hi"},
        {"type": "login", "name": "alice"},
        {"type": "register"},
        {"type": "nick"},
        {"type": "search"},
    ],
)
def test_a_missing_required_field_is_a_bad_frame_naming_it(frame: dict[str, Any]) -> None:
    """A required field that is absent or null is bad_frame: "'send' needs 'text'"."""
    error = reply(frame)
    assert error["code"] == "bad_frame"
    assert error["message"].startswith(f"{frame['type']!r} needs '"), error


@pytest.mark.parametrize("bad_id", [[1], {"n": 1}, True, False, 1.5])
def test_an_id_that_is_not_a_string_or_whole_number_is_a_bad_frame_without_id(
    bad_id: object,
) -> None:
    """An id of the wrong type is refused, and (being unusable) is not echoed."""
    error = reply({"type": "ping", "id": bad_id})
    assert error == {
        "type": "error",
        "code": "bad_frame",
        "message": "'id' must be a string or a number",
    }


def test_an_unknown_type_is_unknown_type_echoing_the_id() -> None:
    """A type the server does not know is unknown_type; the name is cut to 40 characters."""
    error = reply({"type": "teleport", "id": 5})
    assert error == {
        "type": "error",
        "code": "unknown_type",
        "message": "unknown frame type 'teleport'",
        "id": 5,
    }
    long = reply({"type": "x" * 1000})
    assert long["code"] == "unknown_type" and len(long["message"]) < 80


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "join", "room": "no spaces"}, "bad_room"),
        ({"type": "join", "room": "#a", "since": -1}, "bad_seq"),
        ({"type": "send", "text": "   "}, "bad_text"),
        ({"type": "send", "text": "x" * 4001}, "bad_text"),
        ({"type": "hello", "name": "bad name"}, "bad_name"),
        ({"type": "dm", "to": "b b", "text": "hi"}, "bad_name"),
        ({"type": "history", "before": 1, "after": 2}, "bad_history"),
        ({"type": "history", "limit": 0}, "bad_history"),
        ({"type": "history", "with": "b b"}, "bad_name"),
        ({"type": "history", "with": "bob", "room": "#a"}, "bad_history"),
        ({"type": "search", "words": " "}, "bad_search"),
    ],
)
def test_a_value_the_model_refuses_is_answered_with_the_model_error(
    frame: dict[str, Any], code: str
) -> None:
    """Well-typed but invalid values get the model's own code, with the id echoed."""
    error = reply({**frame, "id": 3})
    assert (error["type"], error["code"], error["id"]) == ("error", code, 3)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
TYPES = st.sampled_from(
    ["hello", "login", "register", "logout", "join", "leave", "send", "action", "dm", "nick"]
    + ["who", "rooms", "history", "search", "ping", "quit", "nope"]
)
FIELDS = st.sampled_from(
    ["id", "name", "token", "password", "room", "since", "text", "to", "before", "after"]
    + ["around", "limit", "words", "reason"]
)


@settings(max_examples=300, deadline=None)
@given(kind=TYPES, fields=st.dictionaries(FIELDS, JSON_VALUES, max_size=5))
def test_any_frame_is_a_command_or_a_reply_and_never_raises(
    kind: str, fields: dict[str, Any]
) -> None:
    """Whatever the fields hold, parse returns a command or a reply frame; it never raises."""
    result = codec().parse(orjson.dumps({"type": kind, **fields}))
    if isinstance(result, Reply):
        assert decoded(result.frame)["type"] in ("error", "pong")
    else:
        request_id, _ = result
        assert request_id is None or isinstance(request_id, str | int)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_arbitrary_text_never_makes_parse_raise(text: str | bytes) -> None:
    """Any text or bytes at all gives a command or a reply, never an exception."""
    result = codec().parse(text)
    assert isinstance(result, Reply | tuple)


# --- replies --------------------------------------------------------------------------------


def test_a_request_without_id_and_without_reply_gets_nothing() -> None:
    """No id and no reply: no frame at all."""
    assert codec().replies([], None) == []


def test_a_request_with_an_id_and_no_reply_gets_ok() -> None:
    """An id and no reply: one ok frame echoing the id."""
    assert [decoded(f) for f in codec().replies([], "s1")] == [{"type": "ok", "id": "s1"}]
    assert [decoded(f) for f in codec().replies([], 0)] == [{"type": "ok", "id": 0}]


def test_each_reply_to_a_request_with_an_id_is_its_own_frame_echoing_the_id() -> None:
    """With an id, every reply is one frame carrying that id; no batch."""
    events: list[Event] = [Welcome(name="alice"), WhoList(room="#general", names=("alice",))]
    frames = [decoded(f) for f in codec().replies(events, 12)]
    assert [(f["type"], f["id"]) for f in frames] == [("welcome", 12), ("who", 12)]


def test_replies_to_a_request_without_id_are_encoded_together() -> None:
    """Without an id, replies go out as ``encode`` does: one frame, a batch when several."""
    c = codec()
    events: list[Event] = [Info(text="one"), Info(text="two")]
    assert c.replies(events, None) == [c.encode(events)]
    assert c.replies(events[:1], None) == [c.encode(events[:1])]
    assert "id" not in decoded(c.replies([Error(code="x", message="y")], None)[0])


def test_the_error_helper_echoes_the_id_only_when_given() -> None:
    """``error`` builds the documented error frame, with the id when there is one."""
    c = codec()
    assert decoded(c.error("flood", "slow down")) == {
        "type": "error",
        "code": "flood",
        "message": "slow down",
    }
    assert decoded(c.error("flood", "slow down", "q"))["id"] == "q"


# --- encoding -------------------------------------------------------------------------------


def test_one_event_is_its_own_frame_and_several_are_a_batch_of_the_same_objects() -> None:
    """encode([e]) is e's object; encode([a, b, c]) is a valid batch whose events are theirs."""
    c = codec()
    events: list[Event] = [
        message(1),
        Info(text="hi"),
        Private(id="p1", seq=1, sender="a", recipient="b", kind=Kind.MESSAGE, text="x", ts=TS),
        message(2, Kind.JOIN, ""),
    ]
    singles = [c.encode([e]) for e in events]
    batch = decoded(c.encode(events))
    assert batch == {"type": "batch", "events": [decoded(s) for s in singles]}
    assert decoded(singles[1]) == {"type": "info", "text": "hi"}


def test_a_room_message_is_encoded_once_and_its_bytes_are_shared() -> None:
    """Two connections sharing one EncodedMessages send the very same bytes object."""
    shared = encoded_messages()
    first = JsonCodec(messages=shared)
    second = JsonCodec(messages=shared, verify_token=verify)
    m = message(7)
    data = first.encode([m])
    assert second.encode([m]) is data
    assert shared(m) is data
    assert first.encode([message(7)]) is data  # same message id: not encoded again
    assert data in second.encode([m, message(8)])  # the batch is built from those bytes


def test_the_shared_cache_forgets_the_oldest_message_when_full() -> None:
    """A bounded cache re-encodes (equal bytes, new object) a message it had to drop."""
    shared = encoded_messages(size=2)
    c = JsonCodec(messages=shared)
    old = c.encode([message(1)])
    c.encode([message(2)])
    c.encode([message(3)])
    again = c.encode([message(1)])
    assert again == old and again is not old
    assert c.encode([message(3)]) is c.encode([message(3)])


def message_frame(kind: Kind, text: str) -> dict[str, Any]:
    return decoded(codec().encode([message(5, kind, text)]))


BASE = {"room": "#general", "seq": 5, "id": "m5", "from": "alice", "signed": False, "ts": TS}


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (Kind.MESSAGE, "hello", {"type": "message", **BASE, "kind": "message", "text": "hello"}),
        (Kind.ACTION, "waves", {"type": "message", **BASE, "kind": "action", "text": "waves"}),
        (Kind.JOIN, "", {"type": "join", **BASE}),
        (Kind.LEAVE, "left", {"type": "leave", **BASE}),
        (Kind.QUIT, "bye", {"type": "presence", **BASE, "status": "offline", "reason": "bye"}),
        (Kind.NICK, "alicia", {"type": "nick", **BASE, "to": "alicia"}),
    ],
)
def test_room_events_encode_to_the_documented_fields(
    kind: Kind, text: str, expected: dict[str, Any]
) -> None:
    """message, join, leave, presence and nick carry exactly the fields docs/protocol.md lists."""
    assert message_frame(kind, text) == expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            Private(
                id="p9",
                seq=9,
                sender="alice",
                recipient="bob",
                kind=Kind.ACTION,
                text="nods",
                ts=TS,
                signed=True,
                recipient_signed=True,
            ),
            {
                "type": "dm",
                "id": "p9",
                "seq": 9,
                "from": "alice",
                "signed": True,
                "to": "bob",
                "kind": "action",
                "text": "nods",
                "ts": TS,
            },
        ),
        (
            Welcome(name="alice"),
            {"type": "welcome", "name": "alice", "version": 1, "server": __version__},
        ),
        (
            WhoList(room="#rust", names=("alice", "Bob")),
            {"type": "who", "room": "#rust", "names": ["alice", "Bob"], "total": 2},
        ),
        (
            RoomList(
                rooms=(
                    RoomEntry(name="#general", members=2, unread=3),
                    RoomEntry(name="#rust", members=1),
                ),
                current="#general",
            ),
            {
                "type": "rooms",
                "rooms": [
                    {"name": "#general", "members": 2, "unread": 3},
                    {"name": "#rust", "members": 1, "unread": None},
                ],
                "current": "#general",
            },
        ),
        (
            RoomList(rooms=()),
            {"type": "rooms", "rooms": [], "current": None},
        ),
        (
            Unread(rooms=(("#general", 4), ("#rust", 1))),
            {"type": "unread", "rooms": {"#general": 4, "#rust": 1}},
        ),
        (
            Summary(room="#general", missed=250, replayed=200, first_seq=51, first_unread=9),
            {
                "type": "summary",
                "room": "#general",
                "missed": 250,
                "replayed": 200,
                "first_seq": 51,
                "first_unread": 9,
            },
        ),
        (
            History(
                room="#general",
                messages=(message(4), message(5, Kind.JOIN, "")),
                oldest_seq=2,
                latest_seq=9,
                capped=500,
            ),
            {
                "type": "history",
                "room": "#general",
                "messages": [
                    {
                        "type": "message",
                        **BASE,
                        "seq": 4,
                        "id": "m4",
                        "kind": "message",
                        "text": "hello",
                    },
                    {"type": "join", **BASE},
                ],
                "oldest_seq": 2,
                "latest_seq": 9,
                "capped": 500,
            },
        ),
        (
            PrivateHistory(
                user="Bob",
                messages=(
                    Private(
                        id="p3",
                        seq=3,
                        sender="bob",
                        recipient="alice",
                        kind=Kind.MESSAGE,
                        text="hi",
                        ts=TS,
                    ),
                ),
                oldest_seq=3,
                latest_seq=8,
            ),
            {
                "type": "history",
                "with": "Bob",
                "messages": [
                    {
                        "type": "dm",
                        "id": "p3",
                        "seq": 3,
                        "from": "bob",
                        "signed": False,
                        "to": "alice",
                        "kind": "message",
                        "text": "hi",
                        "ts": TS,
                    }
                ],
                "oldest_seq": 3,
                "latest_seq": 8,
                "capped": None,
            },
        ),
        (
            Missed(room="#general", first_seq=10, count=5),
            {"type": "gap", "room": "#general", "from_seq": 10, "to_seq": 14},
        ),
        (
            Missed(room=None, first_seq=3, count=1),
            {"type": "gap", "room": None, "from_seq": 3, "to_seq": 3},
        ),
        (Info(text="you are in #rust"), {"type": "info", "text": "you are in #rust"}),
        (
            Error(code="flood", message="slow down"),
            {"type": "error", "code": "flood", "message": "slow down"},
        ),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, dict) else "",
)
def test_every_event_encodes_to_the_documented_fields(
    event: Event, expected: dict[str, Any]
) -> None:
    """Each server frame has the type and exactly the fields docs/protocol.md lists."""
    assert decoded(codec().encode([event])) == expected


def test_the_welcome_frame_names_protocol_version_1() -> None:
    """The protocol version in welcome is 1."""
    assert PROTOCOL_VERSION == 1
    assert decoded(codec().encode([Welcome(name="a")]))["version"] == 1


def test_search_results_carry_room_messages_and_capped() -> None:
    """A search frame has the room, the matching messages (as message objects) and capped."""
    event = SearchResults(room="#general", words="hello", messages=(message(3),), capped=None)
    obj = decoded(codec().encode([event]))
    assert obj["type"] == "search"
    assert obj["room"] == "#general" and obj["capped"] is None
    assert obj["messages"] == [decoded(codec().encode([message(3)]))]


def test_search_results_encode_to_the_documented_fields() -> None:
    """A search frame has exactly the fields the protocol document lists for it."""
    event = SearchResults(room="#general", words="hello", messages=(message(3),), capped=None)
    obj = decoded(codec().encode([event]))
    assert set(obj) == {"type", "room", "words", "messages", "capped"}


# --- the HTTP API's bodies and the event stream ------------------------------------------------


def test_an_api_body_must_be_a_json_object() -> None:
    """A request body that is not JSON, or not an object, is refused as bad_json."""
    assert api_body(b'{"name": "alice"}') == {"name": "alice"}
    for bad in (b"{nope", b"[1, 2]", b'"text"'):
        with pytest.raises(ClientError) as refused:
            api_body(bad)
        assert refused.value.code == "bad_json"


def test_api_bodies_have_the_documented_shapes() -> None:
    """Errors, health, rooms and history pages encode to the fields docs/protocol.md names."""
    assert orjson.loads(api_error("no_token", "log in")) == {
        "error": {"code": "no_token", "message": "log in"}
    }
    counts = {"version": __version__, "online": 2}
    assert orjson.loads(api_health("ok", counts)) == {"status": "ok", **counts}
    assert list(orjson.loads(api_health("unavailable", counts, "disk full"))) == [
        "status",
        "problem",
        "version",
        "online",
    ]
    rooms = RoomList(rooms=(RoomEntry(name="#a", members=0), RoomEntry(name="#b", members=3)))
    assert orjson.loads(api_rooms(rooms)) == {
        "rooms": [{"name": "#a", "members": 0}, {"name": "#b", "members": 3}]
    }
    page = History(room="#general", messages=(message(4),), oldest_seq=1, latest_seq=9)
    body = orjson.loads(api_history(page))
    assert body["room"] == "#general" and body["latest_seq"] == 9
    assert [m["seq"] for m in body["messages"]] == [4]


def test_the_event_stream_sends_messages_with_their_seq_and_gaps() -> None:
    """A room message is an SSE ``message`` event whose id is its seq and whose data is its
    shared encoding; a range the store lost is a ``gap``; other events are not sent."""
    messages = encoded_messages()
    events: list[Event] = [
        message(7),
        Missed(room="#general", first_seq=8, count=3),
        Info(text="not for streams"),
    ]
    stream = event_stream(events, messages).decode()
    first, second, rest = stream.split("\n\n", 2)
    assert first == f"id: 7\nevent: message\ndata: {messages(message(7)).decode()}"
    assert second.splitlines()[0] == "event: gap"
    gap = orjson.loads(second.splitlines()[1].removeprefix("data: "))
    assert gap == {"room": "#general", "from_seq": 8, "to_seq": 10}
    assert rest == ""
