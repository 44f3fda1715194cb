"""End to end: how a line session ends, over real sockets.

Every way a connection can end (``/quit``, ``/quit`` then an immediate close, a close in the
middle of a command, a TCP reset, a half-close, a stall cut-off, the server stopping) must
leave the rooms' member lists and the presence count exactly right; and every line the client
sent before its end is handled, in order, and answered, before the server closes its side.

The servers here keep history in SQLite files: a store that answers on another thread is what
makes a command take several loop turns, which is when a connection can end under it. The
state machine at the end runs random orderings of connects, joins and endings against a real
server (port 0) and, after every step, compares the server's rooms, presence and ``/who``
answers with a model.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from roomcast.config import Config
from roomcast.model import Kind, fold
from roomcast.server import Server
from roomcast.wire.line import GREETING
from tests.e2e.conftest import TIMEOUT, Client, Clients, StartServer


async def sqlite_server(start_server: StartServer, tmp_path: Path, **overrides: Any) -> Server:
    """A server on ``tmp_path/rc.db`` with flood control out of the way."""
    settings_: dict[str, Any] = {
        "store": f"sqlite:{tmp_path / 'rc.db'}",
        "rate": 100_000.0,
        "burst": 100_000,
    }
    return await start_server(**(settings_ | overrides))


def members(server: Server, room: str) -> set[str]:
    """The names the hub holds as members of ``room`` (none if it is not open)."""
    found = server.hub.core.rooms.get(room)
    return set() if found is None else {u.name for u in found.members.values()}


def who_line(room: str, names: set[str]) -> str:
    """The line ``/who room`` answers when ``names`` are its members."""
    return f"-- {room}: {' '.join(sorted(names, key=fold))} ({len(names)})"


# --- the reported cases ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_quit_then_close_leaves_no_ghost(
    start_server: StartServer, clients: Clients, tmp_path: Path, how: str
) -> None:
    """A client that sends /quit and closes at once leaves every room and is no longer online."""
    server = await sqlite_server(start_server, tmp_path)
    watcher = await clients.connect(server, "watcher")
    ghosty = await clients.connect(server, "ghosty")
    await ghosty.join("#rust")
    await watcher.join("#rust")
    await ghosty.send("/quit")
    if how == "reset":
        ghosty.reset_by_peer()
    else:
        await ghosty.close()

    await watcher.expect("[#general] <-- ghosty quit (", within=TIMEOUT)
    await watcher.send("/who #general", "/who #rust", "/msg ghosty hi")
    assert await watcher.expect("-- #general: ") == who_line("#general", {"watcher"})
    assert await watcher.expect("-- #rust: ") == who_line("#rust", {"watcher"})
    assert (await watcher.expect("! ")).startswith("! nobody named 'ghosty' is online")
    assert members(server, "#general") == members(server, "#rust") == {"watcher"}
    assert server.hub.online == 1


async def test_lines_before_a_half_close_are_all_handled_in_order(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """What a bot pipes in before it half-closes (nc -N) is handled in order and answered,
    then the server closes."""
    server = await sqlite_server(start_server, tmp_path)
    watcher = await clients.connect(server, "watcher")
    await watcher.join("#x")
    bot = await clients.connect(server)
    await bot.send("bot", "/join #x", "hello", "/quit")
    bot.writer.write_eof()  # like `printf ... | nc -N`: our side is done, theirs goes on

    lines = await bot.read_to_eof()
    assert lines[:2] == [GREETING, "-- hello bot. type text to talk, /help for commands."]
    assert sorted(lines[2:-2]) == sorted(  # the room's lines and the replies may interleave
        [
            who_line("#general", {"bot", "watcher"}),
            "[#general] --> bot joined",
            who_line("#x", {"bot", "watcher"}),
            "[#x] --> bot joined",
        ]
    )
    assert lines[-2:] == ["[#x] bot: hello", "-- goodbye"]
    await watcher.expect("[#x] bot: hello", exact=True)
    await watcher.expect("[#x] <-- bot quit (quit)", exact=True)
    history = await server.store.history("#x", limit=10)
    assert [m.text for m in history.messages if m.kind is Kind.MESSAGE] == ["hello"]


async def test_lines_before_a_half_close_without_quit_are_handled_then_the_user_leaves(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A client that half-closes without /quit has its lines said, gets them echoed, then
    quits with 'connection closed'."""
    server = await sqlite_server(start_server, tmp_path)
    watcher = await clients.connect(server, "watcher")
    bot = await clients.connect(server, "bot")
    await bot.send(*(f"line {i}" for i in range(20)))
    bot.writer.write_eof()

    lines = await bot.read_to_eof()
    assert [line for line in lines if line.startswith("[#general] bot: ")] == [
        f"[#general] bot: line {i}" for i in range(20)
    ]
    await watcher.expect("[#general] bot: line 19", exact=True)
    await watcher.expect("[#general] <-- bot quit (connection closed)", exact=True)
    assert members(server, "#general") == {"watcher"}
    assert server.hub.online == 1


async def test_a_command_cut_short_by_a_close_is_still_carried_out(
    start_server: StartServer, clients: Clients, tmp_path: Path
) -> None:
    """A /join sent just before a close is carried out (its half-sent next line is dropped),
    then the user quits and is in no room."""
    server = await sqlite_server(start_server, tmp_path)
    watcher = await clients.connect(server, "watcher")
    await watcher.join("#x")
    alice = await clients.connect(server, "alice")
    await alice.send_raw(b"/join #x\nhalf a li")
    await alice.close()
    await watcher.expect("[#x] --> alice joined", exact=True)
    await watcher.expect("[#x] <-- alice quit (connection ", within=TIMEOUT)
    assert members(server, "#x") == members(server, "#general") == {"watcher"}
    assert not [line for line in watcher.lines if "half" in line]


# --- random orderings: a state machine on a real server --------------------------------------

NAMES = ("ann", "Bob", "cy", "dee")  # the clients the machine may connect
ROOMS = ("#general", "#a", "#b")  # every room the machine uses; the observer is in all
OBSERVER = "zed"  # a client that stays, sees every quit and asks /who
ENDINGS = ("quit", "quit_close", "close", "close_mid_command", "reset", "half_close")
QUIT_REASONS: dict[str, tuple[str, ...]] = {  # what the room may be told, per ending
    "quit": ("quit",),
    "quit_close": ("quit",),
    "close": ("connection closed", "connection lost"),  # lost: a reply crossed the close
    "close_mid_command": ("connection closed", "connection lost"),
    "reset": ("connection lost",),
    "half_close": ("connection closed",),
}


class SessionEnds(RuleBasedStateMachine):
    """Connects, joins and ends line sessions in random orders; after each step the server's
    members, presence and /who answers must match the model."""

    def __init__(self, loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        super().__init__()
        self.runner = asyncio.Runner(loop_factory=loop_factory)
        self.tmp = tempfile.TemporaryDirectory()
        self.rooms: dict[str, set[str]] = {}  # the model: online name -> rooms it is in
        self.clients: dict[str, Client] = {}  # online name -> its connection
        self.closed: list[Client] = []  # ended connections, closed at teardown
        self.server, self.observer = self.run(self._start())

    def run(self, coro: Any) -> Any:
        """Run one step on the machine's loop, under a safety timeout."""

        async def bounded() -> Any:
            async with asyncio.timeout(4 * TIMEOUT):
                return await coro

        return self.runner.run(bounded())

    async def _start(self) -> tuple[Server, Client]:
        server = Server(
            Config(
                host="127.0.0.1",
                port=0,
                http_port=-1,
                store=f"sqlite:{Path(self.tmp.name) / 'rc.db'}",
                rate=100_000.0,
                burst=100_000,
            )
        )
        await server.start()
        observer = await self._connect(server, OBSERVER)
        for room in ROOMS[1:]:
            await observer.join(room)
        return server, observer

    @staticmethod
    async def _connect(server: Server, name: str) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.line.port)
        client = Client(reader, writer)
        await client.login(name)
        return client

    # -- steps --

    @precondition(lambda self: len(self.rooms) < len(NAMES))
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([n for n in NAMES if n not in self.rooms]))
        self.clients[name] = self.run(self._connect(self.server, name))
        self.rooms[name] = {"#general"}

    @precondition(lambda self: self.rooms)
    @rule(data=st.data(), room=st.sampled_from(ROOMS[1:]))
    def join(self, data: st.DataObject, room: str) -> None:
        name = data.draw(st.sampled_from(sorted(self.rooms)))
        if room in self.rooms[name]:
            return
        self.run(self.clients[name].join(room))
        self.rooms[name].add(room)

    @precondition(lambda self: self.rooms)
    @rule(data=st.data(), how=st.sampled_from(ENDINGS))
    def end(self, data: st.DataObject, how: str) -> None:
        name = data.draw(st.sampled_from(sorted(self.rooms)))
        client = self.clients.pop(name)
        self.closed.append(client)
        self.run(self._end(client, name, how))
        del self.rooms[name]

    async def _end(self, client: Client, name: str, how: str) -> None:
        """End ``client`` as ``how`` says; wait until the observer sees it quit."""
        match how:
            case "quit":
                await client.send("/quit")
                assert (await client.read_to_eof())[-1] == "-- goodbye"
            case "quit_close":
                await client.send("/quit")
                await client.close()
            case "close":
                await client.close()
            case "close_mid_command":
                await client.send_raw(b"/join #b\nhalf a li")
                await client.close()
            case "reset":
                client.reset_by_peer()
            case "half_close":
                await client.send(f"last words of {name}")
                client.writer.write_eof()
                lines = await client.read_to_eof()  # said in its current room, echoed
                assert any(line.endswith(f"] {name}: last words of {name}") for line in lines)
            case _:
                raise AssertionError(how)
        line = await self.observer.expect(f"[#general] <-- {name} quit (")
        reason = line.removeprefix(f"[#general] <-- {name} quit (").removesuffix(")")
        assert reason in QUIT_REASONS[how], line

    # -- what must hold after every step --

    @invariant()
    def presence_and_membership_match(self) -> None:
        hub = self.server.hub
        online = {fold(n) for n in self.rooms} | {OBSERVER}
        assert set(hub.core.users) == online
        assert hub.online == len(online)
        for room in ROOMS:
            expected = {n for n, rooms in self.rooms.items() if room in rooms} | {OBSERVER}
            assert members(self.server, room) == expected, room
            for user in hub.core.rooms[room].members.values():
                assert user.sessions and user.rooms[room] is hub.core.rooms[room]

    @invariant()
    def who_answers_match(self) -> None:
        async def ask() -> list[str]:
            await self.observer.send(*(f"/who {room}" for room in ROOMS))
            return [await self.observer.expect(f"-- {room}: ") for room in ROOMS]

        expected = [
            who_line(room, {n for n, rs in self.rooms.items() if room in rs} | {OBSERVER})
            for room in ROOMS
        ]
        assert self.run(ask()) == expected

    def teardown(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.runner.close()
            self.tmp.cleanup()

    async def _stop(self) -> None:
        """Stop the server with clients still on: nobody is left online or in a room."""
        await self.server.stop()
        hub = self.server.hub
        assert hub.online == 0 and not hub.core.users
        assert all(not room.members for room in hub.core.rooms.values())
        for client in [self.observer, *self.clients.values(), *self.closed]:
            await client.close()


def _loops() -> Iterator[Any]:
    yield pytest.param(asyncio.new_event_loop, id="asyncio")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not built for Windows
        return
    yield pytest.param(uvloop.new_event_loop, id="uvloop")


@pytest.mark.parametrize("loop_factory", list(_loops()))
def test_every_way_a_session_ends_leaves_members_and_presence_exact(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Random orderings of connect, join, quit, close, reset and half-close over real sockets
    keep the rooms' members, the online count and /who equal to the model."""

    class OnThisLoop(SessionEnds):
        def __init__(self) -> None:
            super().__init__(loop_factory)

    run_state_machine_as_test(
        OnThisLoop,
        settings=settings(
            max_examples=12,
            stateful_step_count=10,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
