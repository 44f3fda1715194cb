"""End to end: the line protocol over real TCP sockets.

Most tests run an in-process ``Server`` on port 0 and talk to it with ``Client``, a small line
client that reads with timeouts and keeps every line it read (both in ``conftest.py``, which
also runs each test on asyncio's loop and on uvloop). The last tests run the ``roomcast
serve`` command in a child process.

No test sleeps to wait for something: each awaits the line, log record or process exit it
needs, under a timeout, and every read loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Sequence
from dataclasses import replace

import pytest

from roomcast.errors import Broken
from roomcast.model import Draft
from roomcast.net.tcp import TcpLimits
from roomcast.server import Server
from roomcast.wire.line import GREETING, HELP
from tests.e2e.conftest import (
    TIMEOUT,
    Client,
    Clients,
    LogWatch,
    Serve,
    StartServer,
    free_port,
    on_asyncio_only,
    throttle,
    transport_of,
)

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # C0, DEL and C1: what must never reach a peer


# --- rooms, echo, private messages --------------------------------------------------------


async def test_a_room_message_reaches_exactly_the_members_of_that_room(
    server: Server, clients: Clients
) -> None:
    """A line said in #rust reaches bob and carol but not alice; one in #general reaches all."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    carol = await clients.connect(server, "carol")
    await bob.join("#rust")
    await carol.join("#rust")
    await bob.expect("[#rust] --> carol joined", exact=True)

    await bob.send("borrow checker says no")
    for member in (bob, carol):
        await member.expect("[#rust] bob: borrow checker says no", exact=True)

    # alice's own line in #general is the marker: it exists only after bob and carol read the
    # #rust line, so had alice been sent that line too, she would have read it by then.
    await alice.send("hello")
    for member in (alice, bob, carol):
        assert await member.expect("[#general] alice: hello") == "[#general] alice: hello"
    assert not [line for line in alice.lines if "borrow checker" in line]


async def test_the_sender_gets_its_own_messages_back_in_order(
    server: Server, clients: Clients
) -> None:
    """Every line a client says comes back to it, in the order said: the echo is the ack."""
    alice = await clients.connect(server, "alice")
    texts = [f"line {i}" for i in range(10)]
    await alice.send(*texts)
    for text in texts:
        assert await alice.readline() == f"[#general] alice: {text}"


async def test_a_store_failure_is_told_to_the_sender_who_can_go_on(
    server: Server, clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines the store cannot keep are answered with an error, not echoed; the connection
    and the room go on once the store works again."""
    alice = await clients.connect(server, "alice")
    store = server.hub.store
    working = store.append_many

    def failing(drafts: Sequence[Draft], *, then: object = None) -> asyncio.Future[None]:
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stored.set_exception(Broken("disk on fire"))
        return stored

    monkeypatch.setattr(store, "append_many", failing)
    await alice.send("lost", "lost too")
    await alice.expect("! the server could not do that now; try again", exact=True)
    monkeypatch.setattr(store, "append_many", working)
    await alice.send("back")
    await alice.expect("[#general] alice: back", exact=True)
    assert not [line for line in alice.lines if "lost" in line]


async def test_a_private_message_reaches_the_recipient_and_the_sender_only(
    server: Server, clients: Clients
) -> None:
    """/msg bob hi is shown to bob and alice as [pm alice -> bob] hi, and never to carol."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    carol = await clients.connect(server, "carol")
    await alice.send("/msg BOB hi")  # names are matched case-insensitively
    for member in (alice, bob):
        await member.expect("[pm alice -> bob] hi", exact=True)

    # Later markers, on carol's private channel and in her room: she sees them, not the pm.
    await alice.send("/msg carol marker", "room marker")
    await carol.expect_all("[pm alice -> carol] marker", "[#general] alice: room marker")
    assert not [line for line in carol.lines if "hi" in line.split()]
    assert "[pm alice -> carol] marker" not in bob.lines

    await alice.send("/msg zed are you there")
    assert (await alice.expect("! ")).startswith("! nobody named 'zed' is online")


# --- names ---------------------------------------------------------------------------------


async def test_a_taken_name_is_refused_case_insensitively_then_another_works(
    server: Server, clients: Clients
) -> None:
    """Alice is refused while alice is online; the client can then pick a free name and chat."""
    alice = await clients.connect(server, "alice")
    other = await clients.connect(server)
    assert await other.readline() == GREETING
    await other.send("Alice")
    line = await other.readline()
    assert line == "! the name 'Alice' is taken: choose another"

    await other.send("alicia")
    await other.expect("[#general] --> alicia joined", exact=True)
    await other.send("/nick ALICE")
    assert await other.expect("! ") == "! the name 'ALICE' is taken: choose another"
    await other.send("hi alice")
    await alice.expect("[#general] alicia: hi alice", exact=True)


async def test_commands_before_a_name_are_refused_and_a_bad_name_is_explained(
    server: Server, clients: Clients
) -> None:
    """Before a name, commands get 'expected a name first'; an invalid name says what is valid."""
    client = await clients.connect(server)
    assert await client.readline() == GREETING
    await client.send("/join #rust")
    assert await client.readline() == "! expected a name first, got Join: choose a name"
    await client.send("no spaces allowed")
    assert await client.readline() == (
        "! 'no spaces allowed' is not a valid name: use 1-32 letters, digits, '_', '-' or '.'"
    )
    await client.send("/nick dave")  # /nick also names a new session
    await client.expect("[#general] --> dave joined", exact=True)


# --- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [1, 7], ids=["one-write", "seven-writes"])
async def test_an_oversized_line_is_refused_and_the_connection_stays_usable(
    server: Server, clients: Clients, pieces: int
) -> None:
    """A line over 4096 bytes gets '! line too long' and nobody sees it; the next line is said."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    data = b"x" * 10_000 + b"\nafter the long line\n"
    size = -(-len(data) // pieces)
    for start in range(0, len(data), size):
        await alice.send_raw(data[start : start + size])
    line = await alice.expect("! ")
    assert line.startswith("! line too long")
    assert line == "! line too long (over 4096 bytes): it was dropped"
    assert await alice.readline() == "[#general] alice: after the long line"
    await bob.expect("[#general] alice: after the long line", exact=True)
    assert not [line for line in bob.lines + alice.lines if "xxx" in line]


@pytest.mark.parametrize("end", ["\n", "\r\n"], ids=["LF", "CRLF"])
async def test_the_line_limit_counts_the_bytes_of_the_line_without_its_end(
    server: Server, clients: Clients, end: str
) -> None:
    """4096 bytes pass the framing (and the 4000-character text limit answers); 4097 do not."""
    alice = await clients.connect(server, "alice")
    await alice.send("y" * 4096, "z" * 4097, "y" * 4000, end=end)
    assert await alice.readline() == "! the message is 4096 characters long; at most 4000"
    assert await alice.readline() == "! line too long (over 4096 bytes): it was dropped"
    assert await alice.readline() == "[#general] alice: " + "y" * 4000


async def test_invalid_utf8_is_refused_and_the_connection_stays_usable(
    server: Server, clients: Clients
) -> None:
    """Bytes that are not UTF-8 get '! invalid UTF-8...', before and after naming."""
    client = await clients.connect(server)
    assert await client.readline() == GREETING
    await client.send_raw(b"\xff\xfe\n")
    assert (await client.readline()).startswith("! invalid UTF-8")
    await client.send("alice")
    await client.expect("[#general] --> alice joined", exact=True)
    await client.send_raw(b"caf\xc3\nal\xe9\nstill here\n")  # truncated, then Latin-1
    assert await client.readline() == "! invalid UTF-8: send UTF-8 text"
    assert await client.readline() == "! invalid UTF-8: send UTF-8 text"
    assert await client.readline() == "[#general] alice: still here"


async def test_crlf_line_ends_work_like_lf(server: Server, clients: Clients) -> None:
    """A client ending lines with CRLF names itself, joins and talks exactly like an LF one."""
    bob = await clients.connect(server, "bob")
    alice = await clients.connect(server)
    assert await alice.readline() == GREETING
    await alice.send("alice", end="\r\n")
    await alice.expect("[#general] --> alice joined", exact=True)
    await alice.send("/join #rust", "hello", end="\r\n")
    await alice.expect("[#rust] alice: hello", exact=True)
    await alice.send("/msg bob psst", "/join #general", "mixed ends", end="\r\n")
    await alice.send("lf end")
    await bob.expect_all(
        "[pm alice -> bob] psst", "[#general] alice: mixed ends", "[#general] alice: lf end"
    )
    assert not [line for line in alice.lines + bob.lines if "\r" in line]


async def test_control_characters_and_terminal_escapes_never_reach_others(
    server: Server, clients: Clients
) -> None:
    """ESC, BEL, CR, DEL and C1 controls are stripped from what others see; tabs become spaces."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.send(
        "red\x1b[31malert\x07!",
        "\x1b]0;pwned\x07title",
        "csi\u009b2Jclear",
        "a\rb\x7fc",
        "tab\there",
        "/me \x1b[5mblinks",
        "/msg bob \x07beep",
    )
    await bob.expect_all(
        "[#general] alice: red[31malert!",
        "[#general] alice: ]0;pwnedtitle",
        "[#general] alice: csi2Jclear",
        "[#general] alice: abc",
        "[#general] alice: tab here",
        "[#general] * alice [5mblinks",
        "[pm alice -> bob] beep",
    )
    await alice.send("\x1b\x07")
    assert await alice.expect("! ") == "! the message is empty: type some text"
    await alice.send("/quit \x1b[2Jbye")
    await bob.expect("[#general] <-- alice quit ([2Jbye)", exact=True)
    assert not [line for line in bob.lines if CONTROL.search(line)]


# --- disconnects ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "reason"),
    [("reset", "connection lost"), ("eof", "connection closed")],
    ids=["tcp-reset", "half-close"],
)
async def test_a_client_that_vanishes_mid_line_quits_and_its_half_line_is_dropped(
    server: Server, clients: Clients, how: str, reason: str
) -> None:
    """Others see '<-- alice quit (reason)' and never the half line; the server keeps serving."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.send_raw(b"half a li")
    if how == "reset":
        alice.reset_by_peer()
    else:
        alice.writer.write_eof()
    await bob.expect(f"[#general] <-- alice quit ({reason})", exact=True)

    again = await clients.connect(server, "alice")  # the name is free again
    await again.send("back again")
    await bob.expect("[#general] alice: back again", exact=True)
    assert not [line for line in bob.lines if "half" in line]


async def test_quit_with_a_reason_says_goodbye_and_tells_the_room(
    server: Server, clients: Clients
) -> None:
    """/quit gone fishing answers '-- goodbye', closes, and the room sees the reason."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.expect("[#general] --> bob joined", exact=True)
    await alice.send("/quit gone fishing")
    assert await alice.read_to_eof() == ["-- goodbye"]
    await bob.expect("[#general] <-- alice quit (gone fishing)", exact=True)
    carol = await clients.connect(server, "carol")
    await carol.send("/quit")
    assert await carol.read_to_eof() == ["-- goodbye"]
    await bob.expect("[#general] <-- carol quit (quit)", exact=True)


async def test_lines_sent_just_before_quit_are_echoed_before_goodbye(
    server: Server, clients: Clients
) -> None:
    """A line pipelined with /quit is echoed to the sender before '-- goodbye', as others see it."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.expect("[#general] --> bob joined", exact=True)
    await alice.send("last words", "/quit")
    await bob.expect("[#general] alice: last words", exact=True)
    await bob.expect("[#general] <-- alice quit (quit)", exact=True)
    assert await alice.read_to_eof() == ["[#general] alice: last words", "-- goodbye"]


# --- commands ------------------------------------------------------------------------------


async def test_who_lists_a_rooms_members_sorted_case_insensitively(
    server: Server, clients: Clients
) -> None:
    """/who lists the current room, /who #room any room; an unknown room is explained."""
    bob = await clients.connect(server, "bob")
    await clients.connect(server, "Alice")
    carol = await clients.connect(server, "carol")
    await carol.join("#rust")
    await bob.send("/who")
    assert await bob.expect("-- #general:") == "-- #general: Alice bob carol (3)"
    await bob.send("/who #rust")  # bob is not in #rust: who still answers
    assert await bob.expect("-- #rust:") == "-- #rust: carol (1)"
    await bob.send("/who #nowhere")
    assert await bob.expect("! ") == "! there is no room #nowhere: /rooms lists them"


async def rooms(client: Client) -> list[str]:
    """Send /rooms and return its answer: the header ('-- rooms: N; ...'), then N lines."""
    await client.send("/rooms")
    header = await client.expect(lambda line: line.startswith("-- rooms: "))
    count = re.match(r"-- rooms: (\d+)", header)
    assert count is not None, header
    return [header] + [await client.readline() for _ in range(int(count.group(1)))]


async def test_rooms_lists_rooms_with_nobody_online_and_the_unread_counts_of_mine(
    server: Server, clients: Clients
) -> None:
    """/rooms lists every room, those nobody is in now included (as the HTTP API does), with
    its member count, and for the rooms one is in, how many messages one has not been sent."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await bob.join("#rust")
    await bob.send("/leave #rust")
    await bob.expect("-- you left #rust", max_lines=5)
    assert await rooms(alice) == [
        "-- rooms: 2; text goes to #general",
        "--   #general  2 online, joined, 0 unread, current",
        "--   #rust     0 online",
    ]
    await alice.send("/list")  # the alias
    assert await alice.expect("-- rooms: ") == "-- rooms: 2; text goes to #general"
    await alice.send("/who #rust")  # listed, so /who knows it too
    assert await alice.expect("-- #rust") == "-- #rust: nobody is online (0)"


async def test_nick_renames_tells_every_room_and_frees_the_old_name(
    server: Server, clients: Clients
) -> None:
    """/nick alicia confirms, every room of alice is told, and the name alice is free again."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.join("#rust")
    await bob.join("#rust")
    await alice.send("/nick alicia")
    assert await alice.expect("-- you are now known") == "-- you are now known as alicia"
    await bob.expect_all(
        "[#general] -- alice is now known as alicia", "[#rust] -- alice is now known as alicia"
    )
    await alice.send("renamed")
    await bob.expect("[#rust] alicia: renamed", exact=True)
    await bob.send("/msg alicia hello alicia")
    await alice.expect("[pm bob -> alicia] hello alicia", exact=True)
    await clients.connect(server, "alice")
    await alice.send("/nick bob")
    assert await alice.expect("! ") == "! the name 'bob' is taken: choose another"


async def test_me_is_an_action_in_the_current_room(server: Server, clients: Clients) -> None:
    """/me waves is shown to the room as '* alice waves'; /me alone gets its usage."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.send("/me waves")
    for member in (alice, bob):
        await member.expect("[#general] * alice waves", exact=True)
    await alice.send("/me")
    assert await alice.expect("! ") == "! usage: /me text"


async def test_leave_stops_the_rooms_messages_and_returns_to_the_previous_room(
    server: Server, clients: Clients
) -> None:
    """After /leave, the room says '<-- alice left' and alice gets none of its later lines."""
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    await alice.join("#rust")
    await bob.join("#rust")
    await alice.send("/leave")
    await alice.expect("-- you left #rust", max_lines=5)
    await bob.expect("[#rust] <-- alice left", exact=True)

    await bob.send("after she left")
    await bob.expect("[#rust] bob: after she left", exact=True)
    await alice.send("back in general")  # the current room is #general again
    await bob.expect("[#general] alice: back in general", exact=True)
    await alice.expect("[#general] alice: back in general", exact=True)
    assert "[#rust] bob: after she left" not in alice.lines

    await alice.send("/leave #rust")
    assert await alice.expect("! ") == "! you are not in #rust: join it first"
    await alice.send("/leave #general", "nowhere to talk")
    assert await alice.expect("! ") == "! you are in no room: join one first"
    assert [line for line in alice.lines if line.startswith("-- you left #general")]


async def test_leaving_the_current_room_says_where_text_goes_now(
    server: Server, clients: Clients
) -> None:
    """/leave of the current room names the room plain text goes to from now on (or says
    there is none), and /rooms marks it current; leaving another room changes nothing."""
    alice = await clients.connect(server, "alice")
    for room in ("#a", "#b", "#c"):
        await alice.join(room)
    await alice.send("/leave #a")  # not the current room: text still goes to #c
    assert await alice.expect("-- you left") == "-- you left #a"
    await alice.send("/leave")
    assert await alice.expect("-- you left") == "-- you left #c; text now goes to #b"
    assert (await rooms(alice))[:3] == [
        "-- rooms: 4; text goes to #b",
        "--   #a        0 online",
        "--   #b        1 online, joined, 0 unread, current",
    ]
    await alice.send("where am i")
    await alice.expect("[#b] alice: where am i", exact=True)
    await alice.send("/leave #b", "/leave #general")
    await alice.expect("-- you left #b; text now goes to #general", exact=True)
    assert await alice.expect("-- you left #general") == (
        "-- you left #general; you are in no room now: /join #room to talk"
    )
    assert (await rooms(alice))[0] == "-- rooms: 4; you are in no room: /join #room to talk"


async def test_help_lists_the_commands(server: Server, clients: Clients) -> None:
    """/help answers the HELP text, line for line."""
    alice = await clients.connect(server, "alice")
    await alice.send("/help")
    first = await alice.expect("-- commands:", exact=True)
    rest = [await alice.readline() for _ in HELP.splitlines()[1:]]
    assert [first, *rest] == HELP.splitlines()


async def test_timestamps_on_prefixes_messages_with_the_utc_time(
    server: Server, clients: Clients
) -> None:
    """/timestamps on prefixes messages with HH:MM; off removes it; other values get usage."""
    alice = await clients.connect(server, "alice")
    await alice.send("/timestamps on", "tick")
    assert await alice.readline() == "-- timestamps on"
    assert re.fullmatch(r"\d\d:\d\d \[#general\] alice: tick", await alice.readline())
    await alice.send("/timestamps off", "tock")
    assert await alice.readline() == "-- timestamps off"
    assert await alice.readline() == "[#general] alice: tock"
    await alice.send("/timestamps maybe")
    assert await alice.readline() == "! usage: /timestamps on|off"


async def test_a_double_slash_says_a_line_that_starts_with_a_slash(
    server: Server, clients: Clients
) -> None:
    """//shrug says '/shrug' in the room."""
    alice = await clients.connect(server, "alice")
    await alice.send("//shrug")
    assert await alice.readline() == "[#general] alice: /shrug"


async def test_an_unknown_command_points_to_help(server: Server, clients: Clients) -> None:
    """/foo gets '! unknown command /foo: type /help' and the connection stays usable."""
    alice = await clients.connect(server, "alice")
    await alice.send("/foo bar", "/FOO", "still here")
    assert await alice.readline() == "! unknown command /foo: type /help"
    assert await alice.readline() == "! unknown command /foo: type /help"
    assert await alice.readline() == "[#general] alice: still here"


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("/join", "/join #room"),
        ("/join two words", "/join #room"),
        ("/msg bob", "/msg name text"),
        ("/nick", "/nick name"),
        ("/who #a #b", "/who [#room]"),
    ],
)
async def test_a_command_with_wrong_arguments_gets_its_usage(
    server: Server, clients: Clients, command: str, usage: str
) -> None:
    """A command with missing or extra arguments is answered with '! usage: ...'."""
    alice = await clients.connect(server, "alice")
    await alice.send(command)
    assert (await alice.readline()).startswith(f"! usage: {usage}")


# --- flood control -------------------------------------------------------------------------


async def test_a_pasted_block_of_60_lines_arrives_whole_and_in_order(
    start_server: StartServer, clients: Clients
) -> None:
    """Pasting 60 lines at once, far past the burst, delays them to the allowed rate instead of
    refusing them: every line is said, in order, none is answered '! you are sending too
    fast', and another client is served meanwhile."""
    rate, burst = 100.0, 10
    server = await start_server(rate=rate, burst=burst)
    alice = await clients.connect(server, "alice")
    paster = await clients.connect(server, "paster")
    pasted = [f"pasted {i:02d}" for i in range(60)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    await paster.send(*pasted)
    await alice.send("still served")
    await paster.expect("[#general] paster: pasted 59", exact=True, max_lines=200)
    took = loop.time() - start

    prefix = "[#general] paster: "
    for client in (paster, alice):
        if client is alice:
            await alice.expect(prefix + "pasted 59", exact=True, max_lines=200)
        said = [line.removeprefix(prefix) for line in client.lines if line.startswith(prefix)]
        assert said == pasted
    assert not [line for line in paster.lines + alice.lines if line.startswith("! ")]
    # held to the rate: the name took a token, the rest of the burst went at once
    assert took >= 0.8 * (len(pasted) - (burst - 1)) / rate
    # and alice was not held behind the paste
    assert alice.lines.index("[#general] alice: still served") < alice.lines.index(
        prefix + "pasted 59"
    )


async def test_a_client_held_back_longer_than_the_flood_hold_is_cut_with_a_reason(
    start_server: StartServer, clients: Clients, log_watch: LogWatch
) -> None:
    """A client with more input waiting than the rate lets through in flood_hold seconds has
    its lines said, in order, up to then, reads '! closing: sending too fast...' last, and its
    room sees it quit with that reason."""
    server = await start_server(rate=20.0, burst=5, flood_hold=0.5)
    alice = await clients.connect(server, "alice")
    bot = await clients.connect(server, "bot")
    await bot.send(*(f"spam {i:03d}" for i in range(100)))  # 5 s of lines at 20 a second

    lines = await bot.read_to_eof(max_lines=300)
    reason = "sending too fast: held back for more than 0.5 s"
    assert lines[-1] == f"! closing: {reason}"
    prefix = "[#general] bot: "
    said = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    assert said == [f"spam {i:03d}" for i in range(len(said))]
    assert 4 <= len(said) < 50, said  # the burst left, then 0.5 s at 20 a second
    assert [line for line in lines if line.startswith("! ")] == [f"! closing: {reason}"]
    await alice.expect(f"[#general] <-- bot quit ({reason})", exact=True)
    assert any(m.startswith("flooding peer=") for m in log_watch.messages)
    assert server.hub.online == 1


# --- logging -------------------------------------------------------------------------------


async def test_the_server_logs_one_line_per_connect_and_per_disconnect(
    server: Server, clients: Clients, log_watch: LogWatch, caplog: pytest.LogCaptureFixture
) -> None:
    """roomcast.tcp logs 'connect peer=...' once and 'disconnect peer=... reason=...' once."""
    nameless = await clients.connect(server)
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    peers = {"nameless": nameless.peer, "alice": alice.peer, "bob": bob.peer}

    await alice.send("/quit bye")
    await alice.read_to_eof()
    bob.reset_by_peer()
    await nameless.close()
    await log_watch.wait_for(lambda messages: sum("disconnect " in m for m in messages) == 3)

    tcp = [r.getMessage() for r in caplog.records if r.name == "roomcast.tcp"]
    assert sorted(m for m in tcp if m.startswith("connect ")) == sorted(
        f"connect peer={peer}" for peer in peers.values()
    )
    disconnects = [m for m in tcp if m.startswith("disconnect ")]
    for who, name, reason in [
        ("nameless", "None", "connection closed"),
        ("alice", r"\S+", "bye"),  # the name: see the next test
        ("bob", "bob", "connection lost"),
    ]:
        line = rf"disconnect peer={re.escape(peers[who])} name={name} reason={reason}"
        assert len([m for m in disconnects if re.fullmatch(line, m)]) == 1, disconnects
    assert len(disconnects) == 3


async def test_the_disconnect_log_line_names_a_user_who_quit(
    server: Server, clients: Clients, log_watch: LogWatch
) -> None:
    """The disconnect line of a client that sent /quit names its user, like any other."""
    alice = await clients.connect(server, "alice")
    await alice.send("/quit bye")
    await alice.read_to_eof()
    await log_watch.wait_for(lambda messages: any("disconnect " in m for m in messages))
    assert f"disconnect peer={alice.peer} name=alice reason=bye" in log_watch.messages


# --- a client that never reads -------------------------------------------------------------

CHAT = re.compile(r"\[#general\] (alice|bob): (n \d{4} .*)")  # the numbered lines of the chat


async def test_a_client_that_never_reads_costs_bounded_memory_and_is_cut_after_the_stall(
    start_server: StartServer,
    clients: Clients,
    log_watch: LogWatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client that never reads holds nobody back, costs bounded memory, and is cut after
    stall_timeout with '! closing: too slow...'."""
    high_water, stall_timeout = 16384, 3.0
    server = await start_server(
        high_water=high_water, stall_timeout=stall_timeout, rate=100_000.0, burst=100_000
    )
    alice = await clients.connect(server, "alice")
    bob = await clients.connect(server, "bob")
    slow = await clients.connect(server, "slow")
    slow.stop_reading()  # from now on, slow reads nothing
    throttle(server, "slow")
    slow_transport = transport_of(server, "slow")
    general = server.hub.core.rooms["#general"].tx  # the room's broadcast channel

    chunks, per_chunk, pad = 25, 100, "x" * 60  # 2 senders x 25 x 100 = 5,000 lines
    texts = {
        name: [f"n {i:04d} {name} {pad}" for i in range(chunks * per_chunk)]
        for name in ("alice", "bob")
    }
    longest = max(len(f"[#general] alice: {t}\n".encode()) for t in texts["alice"])
    bound = high_water + TcpLimits().batch * longest  # high_water plus one batch of output
    sizes: list[int] = []
    for chunk in range(chunks):
        part = slice(chunk * per_chunk, (chunk + 1) * per_chunk)
        await asyncio.gather(alice.send(*texts["alice"][part]), bob.send(*texts["bob"][part]))
        last = [f"[#general] {name}: {texts[name][part][-1]}" for name in ("alice", "bob")]
        for client in (alice, bob):
            await client.expect_all(*last, max_lines=4 * per_chunk + 10)
        sizes.append(slow_transport.get_write_buffer_size())
        stats = general.statistics()
        assert stats.held <= stats.capacity

    assert max(sizes) > high_water, f"the slow client never filled its buffer: {sizes}"
    assert max(sizes) < bound, f"buffer over high_water plus one batch ({bound}): {sizes}"
    assert general.statistics().sent >= 2 * chunks * per_chunk

    said = [(m.group(1), m.group(2)) for line in alice.lines if (m := CHAT.fullmatch(line))]
    assert len(said) == 2 * chunks * per_chunk
    assert said == [(m.group(1), m.group(2)) for line in bob.lines if (m := CHAT.fullmatch(line))]
    for name in ("alice", "bob"):
        assert [text for who, text in said if who == name] == texts[name]
    assert not [line for line in alice.lines + bob.lines if line.startswith("! ")]

    await log_watch.wait_for(
        lambda messages: any(m.startswith("too slow") for m in messages),
        within=stall_timeout + TIMEOUT,
    )
    assert "too slow peer=" in caplog.text

    slow.resume_reading()
    lines = await slow.read_to_eof(max_lines=len(said) + 100)
    assert lines[-1] == "! closing: too slow: not reading for 3 s"
    got = [(m.group(1), m.group(2)) for line in lines if (m := CHAT.fullmatch(line))]
    assert got == said[: len(got)]  # what it got before the cut is the chat's start, in order
    await alice.expect("[#general] <-- slow quit (too slow: not reading for 3 s)", exact=True)


async def test_a_client_cut_as_too_slow_sees_the_reason_when_it_reads_again(
    start_server: StartServer, clients: Clients, log_watch: LogWatch
) -> None:
    """A client that stopped reading and was cut as too slow finds '! closing: too slow...'
    at the end of what it reads when it comes back, even later than close_grace."""
    server = await start_server(high_water=16384, stall_timeout=1.5, rate=100_000.0, burst=100_000)
    # close_grace is what a closing client gets by default; short, so the test is quick
    server.line.limits = replace(server.line.limits, close_grace=0.1)
    alice = await clients.connect(server, "alice")
    slow = await clients.connect(server, "slow")
    slow.stop_reading()
    throttle(server, "slow")
    for chunk in range(20):  # 4,000 lines of ~100 bytes: far more than loopback absorbs
        await alice.send(*(f"n {chunk:02d}{i:03d} {'x' * 80}" for i in range(200)))
        await alice.expect(f"[#general] alice: n {chunk:02d}199", max_lines=300)
    await log_watch.wait_for(lambda messages: any(m.startswith("too slow") for m in messages))

    await asyncio.sleep(0.5)  # the scenario, not a wait: it stays away 5 times close_grace
    slow.resume_reading()
    lines = await slow.read_to_eof(max_lines=10_000)
    assert lines[-1] == "! closing: too slow: not reading for 1.5 s"


async def test_a_client_cut_as_too_slow_is_gone_even_if_it_never_reads_again(
    start_server: StartServer, clients: Clients, log_watch: LogWatch
) -> None:
    """Once cut as too slow, a client that never reads leaves: its room sees it quit at once."""
    server = await start_server(high_water=16384, stall_timeout=0.5, rate=100_000.0, burst=100_000)
    alice = await clients.connect(server, "alice")
    slow = await clients.connect(server, "slow")
    slow.stop_reading()
    throttle(server, "slow")
    for chunk in range(20):  # 4,000 lines of ~100 bytes: far more than loopback absorbs
        await alice.send(*(f"n {chunk:02d}{i:03d} {'x' * 80}" for i in range(200)))
        await alice.expect(f"[#general] alice: n {chunk:02d}199", max_lines=300)
    await log_watch.wait_for(lambda messages: any(m.startswith("too slow") for m in messages))
    quit_line = "[#general] <-- slow quit (too slow"
    if not any(line.startswith(quit_line) for line in alice.lines):  # may have come already
        await alice.expect(quit_line, within=2.0)
    assert server.hub.online == 1
    assert set(server.hub.core.rooms["#general"].members) == {"alice"}  # and no ghost in the room


# --- the roomcast serve command ------------------------------------------------------------


@on_asyncio_only
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_serve_shuts_down_cleanly_on_a_signal(
    serve: Serve, clients: Clients, sig: signal.Signals, loop: str
) -> None:
    """On SIGTERM or SIGINT, connected clients are told 'server shutting down' and it exits 0."""
    port = await serve.start("--port", "0", "--loop", loop)
    alice = await clients.connect(port, "alice")
    assert serve.process is not None
    serve.process.send_signal(sig)
    assert await alice.expect("server shutting down") == "! closing: server shutting down"
    assert await alice.read_to_eof() == []
    assert await serve.wait() == 0, serve.log
    assert [line for line in serve.log if "roomcast.server: stopped" in line]
    assert not [line for line in serve.log if "Traceback" in line]


@on_asyncio_only
async def test_serve_listens_on_the_port_roomcast_port_names(
    serve: Serve, clients: Clients
) -> None:
    """ROOMCAST_PORT sets the port when no --port flag is given."""
    port = free_port()
    assert await serve.start(env={"ROOMCAST_PORT": str(port)}) == port
    alice = await clients.connect(port, "alice")
    await alice.send("hello")
    await alice.expect("[#general] alice: hello", exact=True)


@on_asyncio_only
async def test_a_flag_overrides_its_environment_variable(serve: Serve, clients: Clients) -> None:
    """--max-line beats ROOMCAST_MAX_LINE, which beats the default."""
    port = await serve.start("--port", "0", "--max-line", "64", env={"ROOMCAST_MAX_LINE": "8"})
    alice = await clients.connect(port, "alice")
    await alice.send("a line of more than eight bytes", "b" * 65)
    await alice.expect_all(
        "[#general] alice: a line of more than eight bytes",
        "! line too long (over 64 bytes): it was dropped",
    )


@on_asyncio_only
async def test_an_invalid_environment_variable_is_reported_without_a_traceback(
    serve: Serve,
) -> None:
    """ROOMCAST_PORT=abc makes serve exit non-zero with one error naming the variable."""
    with pytest.raises(AssertionError, match="exited before listening"):
        await serve.start(env={"ROOMCAST_PORT": "abc"})
    assert await serve.wait() != 0
    assert [line for line in serve.log if "ROOMCAST_PORT='abc' is not a valid int" in line]
    assert not [line for line in serve.log if "Traceback" in line], serve.log
