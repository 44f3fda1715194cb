"""The connection core, driven through an in-memory adapter and a real hub on the memory store.

``Fake`` is the thinnest adapter there can be: its input is already commands, it renders each
event as one line of text, and its transport records what is written, can be filled above
the high-water mark and drained (the transport's ``pause_writing``/``resume_writing``), and
closes like asyncio's (``connection_lost`` once the buffer is empty, or at ``abort``). Tests
wait on writes and closes, never on the clock; the timers that matter (stall, grace) are set
to a few hundredths of a second and awaited as events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from roomcast.auth import Cost, Passwords
from roomcast.errors import Broken
from roomcast.hub import Hub, Limits
from roomcast.model import (
    Action,
    Command,
    Draft,
    Error,
    Event,
    Info,
    Join,
    Logout,
    Message,
    Quit,
    Say,
    SetName,
    Welcome,
)
from roomcast.net.conn import Code, Connection, Connections, Step
from roomcast.store import MemoryStore
from roomcast.store.base import Page

pytestmark = pytest.mark.timeout(10)

WITHIN = 2.0  # seconds any one wait may take before a test fails
CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class Small:
    """Delivery limits small enough to reach in a test (``DeliveryLimits``)."""

    high_water: int = 1000
    stall_timeout: float = 30.0
    max_pending: int = 64
    batch: int = 512
    flush_gap: float = 0.0
    close_grace: float = 30.0


class CountingStore(MemoryStore):
    """The memory store, counting its writes of room messages, each committed on a later
    loop turn as SQLite's writer thread does (so that a command takes several turns)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []  # messages per append_many call
        self.broken = False  # history reads fail, as a store that cannot be reached

    async def history(
        self, room: str, *, before: int | None = None, after: int | None = None, limit: int
    ) -> Page:
        if self.broken:
            raise Broken("the store cannot be reached")
        return await super().history(room, before=before, after=after, limit=limit)

    def append_many(
        self,
        drafts: Sequence[Draft],
        *,
        then: Callable[[list[Message]], None] | None = None,
    ) -> asyncio.Future[list[Message]]:
        self.writes.append(len(drafts))
        stored: asyncio.Future[list[Message]] = asyncio.get_running_loop().create_future()

        def commit() -> None:  # in call order: the loop runs its callbacks first in, first out
            stored.set_result(super(CountingStore, self).append_many(drafts, then=then).result())

        asyncio.get_running_loop().call_soon(commit)
        return stored


class FakeTransport:
    """An in-memory transport: it keeps what is written, and its buffer holds what the test
    says the client has not taken yet."""

    def __init__(self) -> None:
        self.written: list[bytes] = []  # every write, in order
        self.buffered = 0  # bytes the client has not taken
        self.high = 0  # the high-water mark the connection set
        self.reading = True
        self.closing = False
        self.aborted = False
        self.conn: Connection[Item] | None = None
        self.changed = asyncio.Event()  # set at each write and at the close

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after the close"
        self.written.append(data)
        self.changed.set()

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.high = high or 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True
        self.changed.set()
        if not self.buffered:
            asyncio.get_running_loop().call_soon(self._lost)

    def abort(self) -> None:
        self.aborted = self.closing = True
        self.changed.set()
        asyncio.get_running_loop().call_soon(self._lost)

    def _lost(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.connection_lost(None)

    # -- the client's side --

    def fill(self, size: int) -> None:
        """The client stops taking bytes: ``size`` wait in the buffer."""
        assert self.conn is not None
        self.buffered = size
        if size > self.high:
            self.conn.pause_writing()

    def drain(self) -> None:
        """The client took everything."""
        assert self.conn is not None
        self.buffered = 0
        self.conn.resume_writing()
        if self.closing:
            asyncio.get_running_loop().call_soon(self._lost)

    @property
    def lines(self) -> list[str]:
        return b"".join(self.written).decode().splitlines()

    async def expect(self, line: str) -> list[str]:
        """Wait until ``line`` is written; return every line written so far."""
        async with asyncio.timeout(WITHIN):
            for _ in range(10_000):
                if line in self.lines:
                    return self.lines
                self.changed.clear()
                await self.changed.wait()
        raise AssertionError(f"{line!r} never came: {self.lines[-8:]}")

    async def closed(self) -> None:
        """Wait until the connection is closed."""
        async with asyncio.timeout(WITHIN):
            for _ in range(10_000):
                if self.closing:
                    return
                self.changed.clear()
                await self.changed.wait()


Item = Command | bytes  # the fake codec's input: commands, or answers of its own


def render(e: Event) -> str:
    match e:
        case Message():
            return f"[{e.room}] {e.sender}: {e.text} ({e.kind.value})"
        case Welcome(name=name):
            return f"welcome {name}"
        case Info(text=text):
            return f"-- {text}"
        case Error(code=code, message=message):
            return f"! {code}: {message}"
    return type(e).__name__


class Fake(Connection[Item]):
    """The in-memory adapter."""

    __slots__ = ("names",)

    def __init__(self, owner: Connections, transport: FakeTransport, peer: str) -> None:
        super().__init__(owner)
        self.names: list[bool] = []  # what the hub said of its name, in order
        transport.conn = self
        self.open(transport, peer)

    def named(self, named: bool) -> None:
        super().named(named)
        self.names.append(named)

    def parse(self, item: Item) -> Sequence[Step]:
        return [item if isinstance(item, bytes) else (None, item)]

    def plain(self, item: Item) -> Sequence[Say | Action | bytes] | None:
        return [item] if isinstance(item, Say | Action) else None

    def encode(self, events: Sequence[Event]) -> bytes:
        return "".join(render(e) + "\n" for e in events).encode()

    def notice(self, code: Code, reason: str) -> bytes:
        return b"" if code is Code.NORMAL else f"closing {int(code)}: {reason}\n".encode()


class World:
    """A hub on a counting memory store, a listener's connections, and clients on them."""

    def __init__(self, limits: Small, **hub_limits: Any) -> None:
        self.store = CountingStore()
        self.hub = Hub(self.store, passwords=Passwords(CHEAP), limits=Limits(**hub_limits))
        self.connections = Connections(self.hub, limits, logging.getLogger("roomcast.test"))
        self._peers = 0

    def connect(self) -> tuple[Fake, FakeTransport]:
        self._peers += 1
        transport = FakeTransport()
        return Fake(self.connections, transport, f"127.0.0.1:{self._peers}"), transport

    async def named(self, name: str) -> tuple[Fake, FakeTransport]:
        """A client that chose ``name`` and saw itself join #general."""
        conn, transport = self.connect()
        conn.received([SetName(name=name)])
        await transport.expect(f"welcome {name}")
        await transport.expect(f"[#general] {name}:  (join)")  # delivery has started
        return conn, transport

    async def close(self) -> None:
        await self.connections.stop("test over", grace=0.05)
        await self.hub.close()


@pytest.fixture
async def world_factory() -> AsyncIterator[Callable[..., World]]:
    made: list[World] = []

    def make(limits: Small | None = None, **hub_limits: Any) -> World:
        world = World(limits or Small(), **hub_limits)
        made.append(world)
        return world

    yield make
    for world in made:
        await world.close()


Worlds = Callable[..., World]


# --- the session's life: decided by the hub -------------------------------------------------


async def test_the_welcome_is_written_before_anything_the_session_receives(
    world_factory: Worlds,
) -> None:
    """The reply that names a session is written before the first delivery (its join)."""
    world = world_factory()
    _, transport = await world.named("alice")
    replies, first_delivery = (data.decode().splitlines() for data in transport.written[:2])
    assert replies == ["welcome alice", "WhoList"]
    assert first_delivery == ["[#general] alice:  (join)"]


async def test_the_hub_tells_the_connection_when_it_is_named_and_when_it_is_not(
    world_factory: Worlds,
) -> None:
    """Naming and logging out are told to the connection by the hub (the codec's named mode)."""
    world = world_factory()
    conn, transport = await world.named("alice")
    conn.received([Logout()])
    await transport.expect("-- logged out: choose a name, or /login name password")
    assert conn.names == [True, False]


async def test_a_quit_writes_the_farewell_last_then_closes(world_factory: Worlds) -> None:
    """After a quit the session's last events and its farewell are written, then it closes."""
    world = world_factory()
    conn, transport = await world.named("alice")
    conn.received([Quit(reason="bye"), Say(text="never said")])
    await transport.closed()
    assert transport.lines[-1] == "-- goodbye"
    assert world.store.writes == [1, 1]  # the join and the quit: the say after was not read
    assert world.hub.online == 0


async def test_input_before_the_end_is_handled_then_the_session_leaves(
    world_factory: Worlds,
) -> None:
    """What came before the end of the input is handled in order; then the user quits."""
    world = world_factory()
    witness, seen = await world.named("witness")
    conn, transport = await world.named("alice")
    conn.received([Join(room="#x"), Say(text="one"), Say(text="two")])
    conn.input_over("connection closed")
    await seen.expect("[#general] alice: connection closed (quit)")
    assert [line for line in transport.lines if "alice: " in line and "(message)" in line] == [
        "[#x] alice: one (message)",
        "[#x] alice: two (message)",
    ]
    assert world.hub.online == 1


# --- runs of says -----------------------------------------------------------------------------


async def test_plain_says_that_come_together_are_one_store_write(world_factory: Worlds) -> None:
    """A run of says without ids is stored with one write and delivered in order."""
    world = world_factory(rate=1000.0, burst=1000)
    witness, seen = await world.named("witness")
    conn, _ = await world.named("alice")
    before = len(world.store.writes)
    conn.received([Say(text=f"line {i}") for i in range(40)] + [Action(text="waves")])
    await seen.expect("[#general] alice: waves (action)")
    assert world.store.writes[before:] == [41]
    said = [line for line in seen.lines if line.startswith("[#general] alice: line ")]
    assert said == [f"[#general] alice: line {i} (message)" for i in range(40)]


async def test_a_run_stops_at_what_the_flood_limit_lets_through(world_factory: Worlds) -> None:
    """A run takes no more says than the flood limit allows at once; the rest waits."""
    world = world_factory(rate=1000.0, burst=10)
    witness, seen = await world.named("witness")
    conn, _ = await world.named("alice")
    before = len(world.store.writes)
    conn.received([Say(text=f"line {i}") for i in range(25)])
    await seen.expect("[#general] alice: line 24 (message)")
    runs = world.store.writes[before:]
    assert sum(runs) == 25 and runs[0] <= 10 and len(runs) > 1


async def test_a_client_held_back_too_long_is_closed_with_the_hubs_reason(
    world_factory: Worlds,
) -> None:
    """A client the flood control would hold back past flood_hold is closed, saying why."""
    world = world_factory(rate=1.0, burst=2, flood_hold=0.5)  # one second's wait: too long
    witness, seen = await world.named("witness")
    conn, transport = await world.named("alice")  # its name and nothing else: a token left
    conn.received([Say(text="one"), Join(room="#x"), Join(room="#y")])
    await transport.closed()
    assert transport.lines[-1].startswith(
        "closing 1008: sending too fast: held back for more than 0.5 s"
    )
    await seen.expect("[#general] alice: sending too fast: held back for more than 0.5 s (quit)")


async def test_reading_pauses_past_max_pending_and_resumes_once_handled(
    world_factory: Worlds,
) -> None:
    """Input past max_pending pauses reading; once handled, reading resumes."""
    world = world_factory(Small(max_pending=4), rate=1000.0, burst=1000)
    conn, transport = await world.named("alice")
    conn.received([Say(text=f"line {i}") for i in range(6)])
    assert not transport.reading
    await transport.expect("[#general] alice: line 5 (message)")
    for _ in range(3):  # the reader resumes reading as it ends, after its last write
        if transport.reading:
            break
        await asyncio.sleep(0)
    assert transport.reading


# --- flow control -------------------------------------------------------------------------


async def test_above_high_water_nothing_is_pulled_until_the_client_reads(
    world_factory: Worlds,
) -> None:
    """A client above the mark gets nothing more (and is not read) until it drains; then
    everything comes, in one write."""
    world = world_factory(rate=1000.0, burst=1000)
    alice, said = await world.named("alice")
    bob, heard = await world.named("bob")
    await said.expect("[#general] bob:  (join)")
    heard.fill(5000)
    assert not heard.reading
    writes = len(heard.written)
    for i in range(3):
        alice.received([Say(text=f"while full {i}")])
        await said.expect(f"[#general] alice: while full {i} (message)")  # a flush went by
    assert len(heard.written) == writes
    heard.drain()
    lines = await heard.expect("[#general] alice: while full 2 (message)")
    assert len(heard.written) == writes + 1 and heard.reading
    assert lines[-3:] == [f"[#general] alice: while full {i} (message)" for i in range(3)]


async def test_a_member_that_lagged_behind_the_ring_is_refilled_from_the_store(
    world_factory: Worlds,
) -> None:
    """A member that fell behind the room's ring while above the mark gets every message
    once it reads again, from the store, in order, then live ones."""
    world = world_factory(ring_capacity=8, refill_page=5, rate=1000.0, burst=1000)
    alice, said = await world.named("alice")
    bob, heard = await world.named("bob")
    await said.expect("[#general] bob:  (join)")
    heard.fill(5000)
    alice.received([Say(text=f"n {i:02d}") for i in range(30)])
    await said.expect("[#general] alice: n 29 (message)")
    heard.drain()
    await heard.expect("[#general] alice: n 29 (message)")
    alice.received([Say(text="live")])
    lines = await heard.expect("[#general] alice: live (message)")
    got = [line for line in lines if line.startswith("[#general] alice: ")]
    assert got == [f"[#general] alice: n {i:02d} (message)" for i in range(30)] + [
        "[#general] alice: live (message)"
    ]


async def test_a_member_whose_refill_the_store_fails_is_closed_with_a_reason(
    world_factory: Worlds, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that fails while a lagged member is refilled closes that member only, saying
    why (it could not be served in order); the others chat on."""
    world = world_factory(ring_capacity=8, rate=1000.0, burst=1000)
    alice, said = await world.named("alice")
    bob, heard = await world.named("bob")
    await said.expect("[#general] bob:  (join)")
    heard.fill(5000)
    alice.received([Say(text=f"n {i:02d}") for i in range(30)])
    await said.expect("[#general] alice: n 29 (message)")
    world.store.broken = True
    heard.drain()
    await heard.closed()
    assert heard.lines[-1] == "closing 1011: internal error"
    assert "refill failed peer=127.0.0.1:2" in caplog.text
    await said.expect("[#general] bob: internal error (quit)")
    alice.received([Say(text="still here")])
    await said.expect("[#general] alice: still here (message)")


async def test_a_client_above_high_water_for_the_stall_timeout_is_closed_with_the_reason(
    world_factory: Worlds,
) -> None:
    """A client that stays above the mark for stall_timeout is closed: the reason goes after
    what is buffered, its room sees it quit, and it is cut if it never reads."""
    world = world_factory(Small(stall_timeout=0.05), rate=1000.0, burst=1000)
    witness, seen = await world.named("witness")
    slow, transport = await world.named("slow")
    transport.fill(5000)
    await transport.closed()
    assert transport.lines[-1] == "closing 1008: too slow: not reading for 0.05 s"
    await seen.expect("[#general] slow: too slow: not reading for 0.05 s (quit)")
    async with asyncio.timeout(WITHIN):  # cut after another stall_timeout, since it never reads
        while not transport.aborted:
            transport.changed.clear()
            await transport.changed.wait()
    assert world.hub.online == 1


async def test_a_client_that_drains_before_the_stall_timeout_stays(
    world_factory: Worlds,
) -> None:
    """Draining in time cancels the cut: the client goes on chatting."""
    world = world_factory(Small(stall_timeout=0.05))
    conn, transport = await world.named("alice")
    transport.fill(5000)
    transport.drain()
    await asyncio.sleep(0.1)  # the scenario, not a wait: longer than the stall timeout
    conn.received([Say(text="still here")])
    await transport.expect("[#general] alice: still here (message)")
    assert not transport.closing


# --- closing ------------------------------------------------------------------------------


async def test_close_with_a_reason_tells_the_client_last_and_its_rooms(
    world_factory: Worlds,
) -> None:
    """Closing with a reason writes the notice after what is buffered, closes the transport,
    and takes the session out of the hub at once, its rooms told the quit reason."""
    world = world_factory()
    witness, seen = await world.named("witness")
    conn, transport = await world.named("alice")
    conn.received([Say(text="queued, never handled")])
    conn.close(Code.POLICY, "go away", quit_reason="sent away")
    assert transport.closing and transport.lines[-1] == "closing 1008: go away"
    await seen.expect("[#general] alice: sent away (quit)")
    assert not [line for line in seen.lines if "never handled" in line]


async def test_a_closing_client_that_takes_nothing_is_cut_after_the_grace(
    world_factory: Worlds,
) -> None:
    """A client that does not take what is buffered when closed is cut after close_grace."""
    world = world_factory(Small(close_grace=0.05))
    conn, transport = await world.named("alice")
    transport.buffered = 10  # under the mark, but not taken
    conn.close(Code.GOING_AWAY, "server shutting down")
    assert not transport.aborted
    async with asyncio.timeout(WITHIN):
        while not transport.aborted:
            transport.changed.clear()
            await transport.changed.wait()


async def test_stop_closes_every_connection_and_waits_for_them(world_factory: Worlds) -> None:
    """Stopping the listener's connections closes each with the reason; none stays open."""
    world = world_factory(Small(close_grace=0.05))
    _, one = await world.named("one")
    _, two = await world.named("two")
    two.buffered = 10  # it will not take its close: cut
    await world.connections.stop("server shutting down", grace=0.05)
    assert one.lines[-1] == two.lines[-1] == "closing 1001: server shutting down"
    assert not world.connections.open and two.aborted
