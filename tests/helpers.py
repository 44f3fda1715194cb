"""Driving the chat core in tests: a hub on a memory store with a fake clock, cheap password
hashing and predictable message ids; named, registered and logged-in sessions; what a session
has ready. Shared by the tests of ``roomcast.hub`` and its parts."""

from __future__ import annotations

import itertools

from roomcast.auth import Cost, Passwords
from roomcast.hub import Hub, Limits
from roomcast.model import (
    Event,
    FetchHistory,
    Info,
    Kind,
    Login,
    Message,
    PrivateHistory,
    Register,
    Say,
    SetName,
    Welcome,
)
from roomcast.session import Session
from roomcast.store import MemoryStore, Storage
from roomcast.store.base import Account

__all__ = [
    "CHEAP",
    "FakeClock",
    "account_of",
    "login",
    "make_hub",
    "named",
    "private_page",
    "ready",
    "registered",
    "said",
    "say_many",
    "texts",
]

CHEAP = Cost(time_cost=1, memory_cost=1024, parallelism=1)  # real argon2id, test-sized


class FakeClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now  # seconds since the epoch, UTC

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        self.now += seconds


def make_hub(
    store: Storage | None = None, clock: FakeClock | None = None, **limits: int
) -> tuple[Hub, FakeClock]:
    """A hub on ``store`` (a fresh memory store by default) with ``limits``, a fake clock,
    cheap hashing and message ids m1, m2, ...; and its clock."""
    clock = clock or FakeClock()
    ids = itertools.count(1)
    hub = Hub(
        store or MemoryStore(),
        passwords=Passwords(CHEAP),
        limits=Limits(**limits),
        clock=clock,
        new_id=lambda: f"m{next(ids)}",
    )
    return hub, clock


async def named(hub: Hub, name: str) -> Session:
    """A new session of a guest named ``name`` (in #general)."""
    session = hub.connect(f"test:{name}")
    replies = await hub.handle(session, SetName(name=name))
    assert isinstance(replies[0], Welcome), replies
    return session


async def ready(session: Session) -> list[Event]:
    """Everything ready for the session now (it never waits for more)."""
    out: list[Event] = []
    for _ in range(1000):
        batch = await session.take()
        if not batch:
            return out
        out += batch
    raise AssertionError("session never ran dry")


def texts(events: list[Event], room: str | None = None) -> list[str]:
    """The texts of the plain messages among ``events`` (of ``room`` only, if given)."""
    return [
        e.text
        for e in events
        if isinstance(e, Message) and e.kind is Kind.MESSAGE and (room is None or e.room == room)
    ]


async def registered(hub: Hub, name: str, password: str = "correct horse") -> Session:
    """A new session of a guest named ``name`` that registered with ``password``."""
    session = await named(hub, name)
    [info] = await hub.handle(session, Register(password=password))
    assert isinstance(info, Info) and info.text.startswith(f"registered {name}")
    return session


async def login(
    hub: Hub, name: str, password: str = "correct horse"
) -> tuple[Session, list[Event]]:
    """A new session from 10.0.0.1 that logged in as ``name``; and the login's replies."""
    session = hub.connect(f"10.0.0.1:{name}")
    replies = await hub.handle(session, Login(name=name, password=password))
    return session, replies


async def say_many(hub: Hub, session: Session, count: int) -> None:
    """``session`` says m0, m1, ... (``count`` of them) in its current room."""
    for i in range(count):
        await hub.handle(session, Say(text=f"m{i}"))


async def account_of(hub: Hub, name: str) -> Account:
    """The stored account ``name`` (which must exist)."""
    account = await hub.store.account(name)
    assert account is not None
    return account


async def private_page(
    hub: Hub,
    session: Session,
    other: str,
    *,
    before: int | None = None,
    after: int | None = None,
    around: int | None = None,
    limit: int = 50,
) -> PrivateHistory:
    """A page of ``session``'s private conversation with ``other``."""
    query = FetchHistory(user=other, before=before, after=after, around=around, limit=limit)
    [page] = await hub.handle(session, query)
    assert isinstance(page, PrivateHistory), page
    return page


def said(page: PrivateHistory) -> list[str]:
    """The texts of a page of private messages."""
    return [p.text for p in page.messages]
