"""A session's listener: what the hub tells a connection of its session's life, driven
directly (a hub on the memory store, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from roomcast.auth import Cost, Passwords
from roomcast.hub import Hub
from roomcast.model import Info, Logout, Quit, Say, SetName
from roomcast.session import Session
from roomcast.store import MemoryStore

pytestmark = pytest.mark.timeout(10)


class Heard:
    """A listener that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def ready(self) -> None:
        self.told.append(("ready", None))

    def named(self, named: bool) -> None:
        self.told.append(("named", named))

    def ended(self, reason: str) -> None:
        self.told.append(("ended", reason))


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    cheap = Cost(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, test-sized
    hub = Hub(MemoryStore(), passwords=Passwords(cheap))
    yield hub
    await hub.close()


def connect(hub: Hub) -> tuple[Session, Heard]:
    heard = Heard()
    return hub.connect("127.0.0.1:1", heard), heard


async def test_a_session_is_delivered_to_only_once_its_name_was_answered(hub: Hub) -> None:
    """Nothing is said to be ready while a session is being named (its join, its room list):
    delivery starts as the answer is returned, after the name was told."""
    session, heard = connect(hub)
    assert not session.delivering
    await hub.handle(session, Say(text="too early"))  # refused: no name yet
    assert heard.told == []
    await hub.handle(session, SetName(name="alice"))
    assert heard.told == [("named", True), ("ready", None)]
    assert session.delivering


async def test_a_logout_says_the_session_has_no_name_and_delivery_goes_on(hub: Hub) -> None:
    """After a logout the listener is told the session has no name, and still hears what is
    ready (the notice that it logged out)."""
    session, heard = connect(hub)
    await hub.handle(session, SetName(name="alice"))
    heard.told.clear()
    await hub.handle(session, Logout())
    assert ("named", False) in heard.told
    assert heard.told[-1] == ("ready", None)
    last = session.take_ready()[-1]
    assert isinstance(last, Info) and last.text.startswith("logged out")


async def test_the_end_is_told_once_with_its_reason(hub: Hub) -> None:
    """A quit ends the session: the listener hears it once, with the quit's reason."""
    session, heard = connect(hub)
    await hub.handle(session, SetName(name="alice"))
    await hub.handle(session, Quit(reason="bye"))
    await hub.disconnect(session, "connection closed")  # too late: it has ended
    assert [t for t in heard.told if t[0] == "ended"] == [("ended", "bye")]
    assert ("named", False) in heard.told


async def test_a_session_that_never_had_a_name_hears_only_its_end(hub: Hub) -> None:
    """A connection that closes before choosing a name is told the end, and nothing else."""
    session, heard = connect(hub)
    await hub.disconnect(session, "connection closed")
    assert heard.told == [("ended", "connection closed")]
