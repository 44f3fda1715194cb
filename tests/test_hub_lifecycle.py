"""The chat core's sessions, driven directly: how they end, and what that leaves behind.

A state machine starts commands (names, joins, quits) and disconnects as tasks that run
concurrently, lets the event loop take a few turns, and cancels some of them midway, as a
transport whose client went away might. Whatever the interleaving, the hub's picture must stay
whole after every step: no room holds a member that is not online, no user is online without
an open session, no closed session is attached to anything. The store is a real SQLite file,
so that a store write takes several loop turns, as it does in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from roomcast.auth import Cost, Passwords
from roomcast.hub import Hub, Limits
from roomcast.model import Command, Join, Quit, Say, SetName, fold
from roomcast.session import Session, State
from roomcast.store.sqlite import SqliteStore

NAMES = ("ann", "bob", "cy")
ROOMS = ("#general", "#a", "#b")
CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)


class HubSessions(RuleBasedStateMachine):
    """Concurrent commands, disconnects and cancellations against one hub."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmp = tempfile.TemporaryDirectory()
        self.store = self.runner.run(SqliteStore.open(Path(self.tmp.name) / "hub.db"))
        ids = itertools.count(1)
        self.hub = Hub(
            self.store,
            passwords=Passwords(CHEAP),
            limits=Limits(rate=1e6, burst=1_000_000),
            new_id=lambda: f"m{next(ids)}",
        )
        self.sessions: list[Session] = []  # every session ever connected
        self.tasks: list[asyncio.Task[object]] = []  # commands and disconnects started

    def _start(self, session: Session, command: Command | None) -> None:
        async def start() -> None:
            coro = (
                self.hub.disconnect(session, "connection lost")
                if command is None
                else self.hub.handle(session, command)
            )
            self.tasks.append(asyncio.ensure_future(coro))

        self.runner.run(start())

    # -- steps --

    @rule()
    def connect(self) -> None:
        self.sessions.append(self.hub.connect(f"test:{len(self.sessions)}"))

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), name=st.sampled_from(NAMES))
    def set_name(self, data: st.DataObject, name: str) -> None:
        self._start(data.draw(st.sampled_from(self.sessions)), SetName(name=name))

    @precondition(lambda self: self.sessions)
    @rule(data=st.data(), room=st.sampled_from(ROOMS[1:]))
    def join(self, data: st.DataObject, room: str) -> None:
        self._start(data.draw(st.sampled_from(self.sessions)), Join(room=room))

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def say(self, data: st.DataObject) -> None:
        self._start(data.draw(st.sampled_from(self.sessions)), Say(text="hi"))

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def quit(self, data: st.DataObject) -> None:
        self._start(data.draw(st.sampled_from(self.sessions)), Quit(reason="bye"))

    @precondition(lambda self: self.sessions)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        self._start(data.draw(st.sampled_from(self.sessions)), None)

    @rule(turns=st.integers(min_value=1, max_value=8))
    def run_loop(self, turns: int) -> None:
        async def spin() -> None:
            for _ in range(turns):
                await asyncio.sleep(0)

        self.runner.run(spin())

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        # Drawn among all the tasks started, done or not: which are done depends on the
        # store's thread, and what is drawn must not. Cancelling a done task does nothing.
        data.draw(st.sampled_from(self.tasks)).cancel()
        self.runner.run(self._settle_cancelled())

    async def _settle_cancelled(self) -> None:
        for _ in range(3):  # let a cancelled task take its CancelledError
            await asyncio.sleep(0)

    @rule()
    def settle(self) -> None:
        async def wait_all() -> None:
            async with asyncio.timeout(10.0):
                for task in self.tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

        self.runner.run(wait_all())
        self.tasks.clear()
        # once nothing is in flight, every session that began to end has ended
        assert not [s for s in self.sessions if s.state is State.CLOSING]

    # -- what must hold between any two steps --

    @invariant()
    def the_hubs_picture_is_whole(self) -> None:
        hub = self.hub
        online = {id(u) for u in hub.core.users.values()}
        for key, user in hub.core.users.items():
            assert key == fold(user.name)
            assert user.sessions, f"{user.name} is online without a session"
            for s in user.sessions:
                assert s.user is user and s.state is State.ACTIVE and s in hub.core.sessions
            for name, room in user.rooms.items():
                assert room.members.get(fold(user.name)) is user, f"{user.name} in {name}"
                assert hub.core.rooms.get(name) is room
        for name, room in hub.core.rooms.items():
            for user in room.members.values():
                assert id(user) in online, f"{user.name} is a ghost in {name}"
                assert user.rooms.get(name) is room
        for session in self.sessions:
            if session.state in (State.CLOSING, State.CLOSED):
                assert session.user is None and not session.rooms
                assert session not in hub.core.sessions, "a closed session is still held"
            else:
                assert session in hub.core.sessions
                if session.state is State.ACTIVE:
                    assert session.user is not None
                    assert hub.core.users.get(fold(session.user.name)) is session.user

    def teardown(self) -> None:
        async def close() -> None:
            async with asyncio.timeout(10.0):
                for task in self.tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                await self.hub.close()
                assert not self.hub.core.users and self.hub.online == 0
                await self.store.close()

        try:
            self.runner.run(close())
        finally:
            self.runner.close()
            self.tmp.cleanup()


def test_concurrent_commands_disconnects_and_cancellations_leave_no_ghost() -> None:
    """However commands, disconnects and cancellations interleave, no room keeps a member
    that is not online and no user stays online without an open session."""
    run_state_machine_as_test(
        HubSessions,
        settings=settings(
            max_examples=40,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
