"""The line codec, without sockets: framing, parsing and rendering."""

from __future__ import annotations

import pytest

from roomcast.model import (
    Action,
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
    Welcome,
    Who,
    WhoList,
)
from roomcast.wire.line import CONTINUATION, GREETING, MAX_INDENT, LineCodec, Renderer

TS = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def codec(max_line: int = 4096, named: bool = True) -> LineCodec:
    c = LineCodec(plain=Renderer(), stamped=Renderer(timestamps=True), max_line=max_line)
    c.named = named
    return c


def message(kind: Kind = Kind.MESSAGE, text: str = "hello", seq: int = 1) -> Message:
    return Message(
        id=f"id{seq}", room="#general", seq=seq, sender="alice", kind=kind, text=text, ts=TS
    )


# --- framing ------------------------------------------------------------------------------


def test_lines_end_with_lf_or_crlf() -> None:
    """LF and CRLF both end a line, and the CR is not part of it."""
    assert codec().receive_data(b"one\ntwo\r\n") == ["one", "two"]


def test_a_line_may_arrive_in_pieces() -> None:
    """Bytes are buffered until the line is complete."""
    c = codec()
    assert c.receive_data(b"hel") == []
    assert c.receive_data(b"lo\nwor") == ["hello"]
    assert c.receive_data(b"ld\n") == ["world"]


def test_blank_lines_are_ignored() -> None:
    """Empty and whitespace-only lines produce nothing."""
    assert codec().receive_data(b"\n  \r\n\n") == []


def test_a_long_line_is_refused_and_the_next_one_works() -> None:
    """A line over the limit gets one error, is dropped to its end, and framing recovers."""
    c = codec(max_line=10)
    out = c.receive_data(b"x" * 30)
    assert len(out) == 1 and isinstance(out[0], Error) and out[0].code == "line_too_long"
    assert c.receive_data(b"y" * 30) == []  # still the same line: no second error
    assert c.receive_data(b"zz\nok\n") == ["ok"]


def test_a_long_line_in_one_chunk_is_refused() -> None:
    """A complete line over the limit is refused; its neighbours are not."""
    out = codec(max_line=10).receive_data(b"short\n" + b"x" * 11 + b"\nafter\n")
    assert out[0] == "short" and out[2] == "after"
    assert isinstance(out[1], Error) and "over 10 bytes" in out[1].message


def test_a_line_exactly_at_the_limit_is_accepted_with_crlf() -> None:
    """The limit counts the line without its ending."""
    assert codec(max_line=5).receive_data(b"12345\r\n12345\n") == ["12345", "12345"]


def test_invalid_utf8_is_refused() -> None:
    """Bytes that are not UTF-8 get bad_utf8; the next line is fine."""
    out = codec().receive_data(b"\xff\xfe\nfine\n")
    assert isinstance(out[0], Error) and out[0].code == "bad_utf8" and out[1] == "fine"


def test_half_a_line_at_eof_is_dropped() -> None:
    """What is buffered when the peer closes is discarded."""
    c = codec()
    c.receive_data(b"half a li")
    c.eof()
    assert c.receive_data(b"new\n") == ["new"]


# --- parsing ------------------------------------------------------------------------------


def test_before_a_name_a_plain_line_is_the_name() -> None:
    """The first plain line names the session; /nick does too."""
    c = codec(named=False)
    assert c.parse("alice") == [SetName(name="alice")]
    assert c.parse("/nick bob") == [SetName(name="bob")]


def test_a_bad_name_is_refused_with_the_rule() -> None:
    """A name with spaces or symbols gets bad_name explaining the rule."""
    [error] = codec(named=False).parse("hello world")
    assert isinstance(error, Error) and error.code == "bad_name" and "1-32 letters" in error.message


def test_plain_text_is_said_and_double_slash_escapes() -> None:
    """Once named, plain lines are said; //text says /text."""
    c = codec()
    assert c.parse("hello there") == [Say(text="hello there")]
    assert c.parse("//shrug") == [Say(text="/shrug")]


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("/join #rust", Join(room="#rust")),
        ("/JOIN rust", Join(room="#rust")),
        ("/leave", Leave()),
        ("/leave #rust", Leave(room="#rust")),
        ("/part", Leave()),
        ("/msg bob hi there", PrivateMessage(to="bob", text="hi there")),
        ("/me waves", Action(text="waves")),
        ("/nick bob", Nick(name="bob")),
        ("/who", Who()),
        ("/who #rust", Who(room="#rust")),
        ("/rooms", Rooms()),
        ("/list", Rooms()),
        ("/quit", Quit()),
        ("/quit gone fishing", Quit(reason="gone fishing")),
        ("/join #rust since 42", Join(room="#rust", since=42)),
        ("/register s3cret-pass", Register(password="s3cret-pass")),
        ("/login alice s3cret pass", Login(name="alice", password="s3cret pass")),
        ("/logout", Logout()),
        ("/logout all", Logout(everywhere=True)),
        ("/logout ALL ", Logout(everywhere=True)),
        ("/history", FetchHistory()),
        ("/history #rust 20", FetchHistory(room="#rust", limit=20)),
        ("/history #rust before 100", FetchHistory(room="#rust", before=100)),
        ("/history after 7 5", FetchHistory(after=7, limit=5)),
        ("/history #rust around 9", FetchHistory(room="#rust", around=9)),
        ("/history @Bob", FetchHistory(user="Bob")),
        ("/history @bob before 9 20", FetchHistory(user="bob", before=9, limit=20)),
        ("/search #rust borrow checker", Search(room="#rust", words="borrow checker")),
        ("/search lifetimes", Search(room=None, words="lifetimes")),
    ],
)
def test_commands(line: str, command: object) -> None:
    """Each slash command parses to its hub command."""
    assert codec().parse(line) == [command]


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("/join", "/join #room [since seq]"),
        ("/join a b", "/join #room [since seq]"),
        ("/join #a since x", "/join #room [since seq]"),
        ("/login alice", "/login name password"),
        ("/history #a before", "/history [#room|@name] [before|after|around seq] [count]"),
        ("/history 1 2", "/history [#room|@name] [before|after|around seq] [count]"),
        ("/history @", "/history [#room|@name] [before|after|around seq] [count]"),
        ("/history @bob after", "/history [#room|@name] [before|after|around seq] [count]"),
        ("/search #a", "/search [#room] words"),
        ("/msg bob", "/msg name text"),
        ("/me", "/me text"),
        ("/nick", "/nick name"),
        ("/timestamps maybe", "/timestamps on|off"),
        ("/logout everything", "/logout [all]"),
    ],
)
def test_missing_arguments_get_the_usage(line: str, usage: str) -> None:
    """A command with wrong arguments is answered with its usage."""
    [error] = codec().parse(line)
    assert error == Error(code="usage", message=f"usage: {usage}")


@pytest.mark.parametrize(
    "line",
    [
        "/history before " + "9" * 5000,
        "/history #a around " + "9" * 5000,
        "/history " + "9" * 5000,
        "/join #a since " + "9" * 5000,
        "/join #a since 9223372036854775808",
    ],
)
def test_a_number_too_big_is_bad_seq_not_an_exception(line: str) -> None:
    """A sequence number or count past MAX_SEQ (even past int()'s 4,300 digits) is bad_seq."""
    [error] = codec(max_line=16384).parse(line)
    assert isinstance(error, Error) and error.code == "bad_seq", error


def test_search_words_lose_their_control_characters() -> None:
    """A NUL or an escape inside search words separates words, as punctuation does."""
    assert codec().parse("/search a\x00b \x1b[2J") == [Search(room=None, words="a b [2J")]


def test_unknown_command() -> None:
    """An unknown command says so and points to /help."""
    [error] = codec().parse("/frobnicate now")
    assert error == Error(code="unknown_command", message="unknown command /frobnicate: type /help")
    [error] = codec().parse("/\x1b[2Jx")
    assert error == Error(code="unknown_command", message="unknown command: type /help")


def test_help_is_answered_by_the_codec() -> None:
    """/help lists every command as information lines."""
    lines = codec().parse("/help")
    assert all(isinstance(i, Info) for i in lines)
    joined = "\n".join(i.text for i in lines if isinstance(i, Info))
    for verb in ("/join", "/leave", "/msg", "/me", "/nick", "/who", "/rooms", "/quit", "/help"):
        assert verb in joined


def test_bad_room_name() -> None:
    """A room name with forbidden characters gets bad_room."""
    [error] = codec().parse("/join #no*way")
    assert isinstance(error, Error) and error.code == "bad_room"


# --- rendering ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "line"),
    [
        (Kind.MESSAGE, "hello", "[#general] alice: hello\n"),
        (Kind.ACTION, "waves", "[#general] * alice waves\n"),
        (Kind.JOIN, "", "[#general] --> alice joined\n"),
        (Kind.LEAVE, "left", "[#general] <-- alice left\n"),
        (Kind.QUIT, "bye", "[#general] <-- alice quit (bye)\n"),
        (Kind.NICK, "alicia", "[#general] -- alice is now known as alicia\n"),
    ],
)
def test_room_messages_render_one_line_each(kind: Kind, text: str, line: str) -> None:
    """Each kind of room message has its own human-readable line."""
    assert codec().encode([message(kind, text)]) == line.encode()


def test_other_events_render() -> None:
    """Private messages, lists, gaps and errors render as documented."""
    events: list[Event] = [
        Private(
            id="p", seq=1, sender="alice", recipient="bob", kind=Kind.MESSAGE, text="hi", ts=TS
        ),
        WhoList(room="#general", names=("alice", "bob")),
        WhoList(room="#old", names=()),
        Missed(room="#general", first_seq=10, count=5),
        Missed(room=None, first_seq=0, count=2),
        Error(code="x", message="that was wrong"),
        Info(text="fyi"),
    ]
    assert codec().encode(events).decode().splitlines() == [
        "[pm alice -> bob] hi",
        "-- #general: alice bob (2)",
        "-- #old: nobody is online (0)",
        "! missed 5 messages of #general (seq 10-14): they are no longer kept",
        "! missed 2 messages of your private messages (seq 0-1): they are no longer kept",
        "! that was wrong",
        "-- fyi",
    ]


def test_a_room_list_has_a_line_per_room_with_counts_and_the_current_room() -> None:
    """The room list says how many rooms and where text goes, then one aligned line per
    room: members, and for one's own rooms 'joined', the unread count and 'current'."""
    rooms = RoomList(
        rooms=(
            RoomEntry(name="#general", members=2, unread=0),
            RoomEntry(name="#old", members=0),
            RoomEntry(name="#rust", members=1, unread=5),
        ),
        current="#rust",
    )
    assert codec().encode([rooms]).decode().splitlines() == [
        "-- rooms: 3; text goes to #rust",
        "--   #general  2 online, joined, 0 unread",
        "--   #old      0 online",
        "--   #rust     1 online, joined, 5 unread, current",
    ]
    nowhere = RoomList(rooms=(RoomEntry(name="#old", members=0),))
    assert codec().encode([nowhere, RoomList(rooms=())]).decode().splitlines() == [
        "-- rooms: 1; you are in no room: /join #room to talk",
        "--   #old  0 online",
        "-- rooms: 0; you are in no room: /join #room to talk",
    ]


def test_welcome_greets_by_name() -> None:
    """The Welcome line greets the user and points to /help."""
    assert codec().encode([Welcome(name="alice")]).startswith(b"-- hello alice")


def test_timestamps_can_be_switched_on_and_off() -> None:
    """/timestamps on prefixes messages with their UTC time; off removes it."""
    c = codec()
    assert c.parse("/timestamps on") == [Info(text="timestamps on")]
    assert c.encode([message()]) == b"22:13 [#general] alice: hello\n"
    c.parse("/timestamps off")
    assert c.encode([message()]) == b"[#general] alice: hello\n"


def test_a_message_is_rendered_once_and_shared() -> None:
    """Two connections get the very same bytes object for one message."""
    plain, stamped = Renderer(), Renderer(timestamps=True)
    a = LineCodec(plain=plain, stamped=stamped)
    b = LineCodec(plain=plain, stamped=stamped)
    m = message()
    assert a.encode([m]) == b.encode([m])
    assert plain.message(m) is plain.message(m)


def test_the_render_cache_is_bounded() -> None:
    """The renderer keeps at most cache_size lines."""
    r = Renderer(cache_size=3)
    first = r.message(message(seq=1))
    for seq in range(2, 10):
        r.message(message(seq=seq))
    assert r.message(message(seq=1)) is not first


def test_greeting_asks_for_a_name() -> None:
    """The greeting is one line asking for a name."""
    assert codec().greeting() == (GREETING + "\n").encode()


def test_login_summary_history_and_search_render() -> None:
    """Summaries, history pages and search results render with seq, date and time."""
    old = message(seq=3)
    events: list[Event] = [
        Summary(room="#general", missed=3, replayed=3, first_seq=1),
        Summary(room="#general", missed=300, replayed=200, first_seq=101),
        History(room="#general", messages=(old,), oldest_seq=1, latest_seq=3),
        History(room="#general", messages=(), oldest_seq=5, latest_seq=4),
        History(room="#general", messages=(old,), oldest_seq=3, latest_seq=3, capped=500),
        SearchResults(room="#general", words="hello", messages=(old,)),
    ]
    assert codec().encode(events).decode().splitlines() == [
        "-- #general: 3 new since you left",
        "-- #general: 300 new since you left; the latest 200 follow"
        " (older: /history #general before 101)",
        "-- history of #general: seq 3-3",
        "3 2023-11-14 22:13 [#general] alice: hello",
        "-- older: /history #general before 3",
        "-- history of #general: no messages",
        "-- messages of #general before seq 5 are no longer kept",
        "-- history of #general: seq 3-3",
        "3 2023-11-14 22:13 [#general] alice: hello",
        "-- limited to 500 messages",
        "-- messages of #general before seq 3 are no longer kept",
        "-- search of #general for 'hello': 1 found",
        "3 2023-11-14 22:13 [#general] alice: hello",
    ]


def test_a_history_page_offers_the_older_and_the_newer_page_it_borders() -> None:
    """A page in the middle of the history offers both directions; the newest page offers
    only older ones, the oldest only newer ones; an empty page says what is kept."""
    page = (message(seq=6), message(seq=7))
    events: list[Event] = [
        History(room="#general", messages=page, oldest_seq=1, latest_seq=21),
        History(room="#general", messages=page, oldest_seq=1, latest_seq=7),
        History(room="#general", messages=page, oldest_seq=6, latest_seq=21),
        History(room="#general", messages=(), oldest_seq=1, latest_seq=21),
        History(room="#general", messages=(), oldest_seq=1, latest_seq=0),
    ]
    footers = [
        line
        for line in codec().encode(events).decode().splitlines()
        if not line.startswith(("6 ", "7 "))
    ]
    assert footers == [
        "-- history of #general: seq 6-7",
        "-- older: /history #general before 6",
        "-- newer: /history #general after 7",
        "-- history of #general: seq 6-7",
        "-- older: /history #general before 6",
        "-- history of #general: seq 6-7",
        "-- messages of #general before seq 6 are no longer kept",
        "-- newer: /history #general after 7",
        "-- history of #general: no messages",
        "-- kept: #general seq 1-21",
        "-- history of #general: no messages",
    ]


def test_search_results_say_newest_first_and_never_a_backwards_range() -> None:
    """A search header counts what was found and says the order, never a range."""
    found = (message(seq=11), message(seq=7), message(seq=3))
    events: list[Event] = [
        SearchResults(room="#general", words="hello", messages=found, capped=3),
        SearchResults(room="#general", words="nothing", messages=()),
    ]
    lines = codec().encode(events).decode().splitlines()
    assert lines[0] == "-- search of #general for 'hello': 3 found, newest first"
    assert [line.split()[0] for line in lines[1:4]] == ["11", "7", "3"]
    assert lines[4:] == [
        "-- limited to 3 messages",
        "-- search of #general for 'nothing': 0 found",
    ]


def test_a_private_history_page_renders_like_a_rooms() -> None:
    """A page of a private conversation lists each message with its seq, date and time, as
    it was shown live, and offers the older and the newer page; an empty one says so."""

    def dm(seq: int, sender: str, recipient: str, text: str) -> Private:
        return Private(
            id=f"p{seq}",
            seq=seq,
            sender=sender,
            recipient=recipient,
            kind=Kind.MESSAGE,
            text=text,
            ts=TS,
        )

    page = (dm(4, "alice", "bob", "hi"), dm(9, "bob", "alice", "two\nlines"))
    events: list[Event] = [
        PrivateHistory(user="Bob", messages=page, oldest_seq=2, latest_seq=9, capped=500),
        PrivateHistory(user="bob", messages=page[:1], oldest_seq=4, latest_seq=9),
        PrivateHistory(user="carol", messages=(), oldest_seq=1, latest_seq=0),
    ]
    assert codec().encode(events).decode().splitlines() == [
        "-- history with @Bob: seq 4-9",
        "4 2023-11-14 22:13 [pm alice -> bob] hi",
        "9 2023-11-14 22:13 [pm bob -> alice] two",
        "  | lines",
        "-- limited to 500 messages",
        "-- older: /history @Bob before 4",
        "-- history with @bob: seq 4-4",
        "4 2023-11-14 22:13 [pm alice -> bob] hi",
        "-- newer: /history @bob after 4",
        "-- history with @carol: no messages",
    ]


def test_continuation_lines_are_marked() -> None:
    """A multi-line message cannot pass one of its lines off as a line of its own: each
    further line starts with '  | '."""
    fake = message(text="hi\n[#general] bob: I owe alice 100")
    assert codec().encode([fake]) == b"[#general] alice: hi\n  | [#general] bob: I owe alice 100\n"
    assert CONTINUATION == "  | "


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("hi" + " " * 70 + "[#general] bob: x", "hi [#general] bob: x"),
        ("a\u00a0\u00a0b\u2003c\u3000d", "a b c d"),
        ("a\u2800b\u3164\u3164c\uffa0d\u115f\u1160e", "a b c d e"),
        ("one space stays, a\u00a0lone\u00a0one too", "one space stays, a lone one too"),
    ],
)
def test_a_run_of_blanks_shows_as_one_space(text: str, shown: str) -> None:
    """Padding to a terminal's width (spaces, other Unicode spaces, blank-looking letters)
    collapses, so nothing after it can start a row of its own."""
    assert codec().encode([message(text=text)]) == f"[#general] alice: {shown}\n".encode()


def test_further_lines_keep_some_indentation_and_lose_padding() -> None:
    """Code keeps its indentation, up to MAX_INDENT columns; runs inside a line collapse."""
    text = "code:\n    if x:\n" + " " * 40 + "return  x\n\u3000y"
    expected = (
        "[#general] alice: code:\n  |     if x:\n  | " + " " * MAX_INDENT + "return x\n  |  y\n"
    )
    assert codec().encode([message(text=text)]) == expected.encode()


def test_private_messages_actions_and_quit_reasons_are_shown_the_same_way() -> None:
    """Every text from a user gets the same treatment, not only room messages."""
    padded = "hi" + " " * 80 + "[#general] bob: x\nmore"
    private = Private(
        id="p", seq=1, sender="eve", recipient="bob", kind=Kind.MESSAGE, text=padded, ts=TS
    )
    quit_ = message(kind=Kind.QUIT, text="bye" + " " * 80 + "[#general] bob: x")
    action = message(kind=Kind.ACTION, text=padded)
    assert codec().encode([private]) == b"[pm eve -> bob] hi [#general] bob: x\n  | more\n"
    assert codec().encode([quit_]) == b"[#general] <-- alice quit (bye [#general] bob: x)\n"
    assert codec().encode([action]) == b"[#general] * alice hi [#general] bob: x\n  | more\n"
