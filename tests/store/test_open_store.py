"""``open_store``: the implementation is chosen by URL scheme."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from roomcast.errors import Broken
from roomcast.model import Draft, Kind
from roomcast.store import MemoryStore, open_store, public_url
from roomcast.store.sqlite import SqliteStore
from tests.conftest import PgSchema


async def test_memory_url_opens_a_memory_store() -> None:
    """``memory:`` gives a ``MemoryStore``."""
    store = await open_store("memory:")
    assert isinstance(store, MemoryStore)
    await store.close()


async def test_absolute_sqlite_url_creates_directories(tmp_path: Path) -> None:
    """``sqlite:///absolute/path`` opens that file, creating missing directories."""
    where = tmp_path / "deep" / "er" / "chat.db"
    store = await open_store(f"sqlite://{where}")
    assert isinstance(store, SqliteStore) and store.path == where
    await store.close()
    assert where.is_file()


async def test_relative_sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:path`` is relative to the working directory."""
    monkeypatch.chdir(tmp_path)
    store = await open_store("sqlite:data/chat.db")
    assert isinstance(store, SqliteStore) and store.path == tmp_path / "data" / "chat.db"
    await store.close()


@pytest.mark.parametrize(
    "url",
    ["postgresql:chat", "sqlite:", "sqlite://host/chat.db", "memory", "", "mem:", "mysql://h/c"],
)
async def test_unknown_urls_are_refused(url: str) -> None:
    """Any other URL raises ``ValueError`` naming the accepted schemes."""
    with pytest.raises(ValueError, match="'memory:', 'sqlite:PATH'"):
        await open_store(url)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
async def test_a_postgresql_url_opens_a_postgres_store(postgres: PgSchema, scheme: str) -> None:
    """``postgresql://`` (or ``postgres://``) opens a ``PostgresStore``; the URL's query sets
    server settings, here the schema its tables live in."""
    from roomcast.store.postgres import PostgresStore

    url = postgres.store_url.replace("postgresql", scheme, 1)
    store = await open_store(url)
    try:
        assert isinstance(store, PostgresStore)
        await store.append(
            Draft(id="m1", room="#a", sender="ann", kind=Kind.MESSAGE, text="hi", ts=1.0)
        )
    finally:
        await store.close()
    watcher = await postgres.connect()
    assert await watcher.fetchval("SELECT count(*) FROM messages") == 1


async def test_a_postgresql_url_without_asyncpg_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the optional driver, a PostgreSQL URL raises ``Broken`` naming the extra to
    install."""
    monkeypatch.delitem(sys.modules, "roomcast.store.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # as if it were not installed
    with pytest.raises(Broken, match=r"pip install 'roomcast\[postgres\]'"):
        await open_store("postgresql://localhost/chat")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://ann:s3cret@db:5432/chat", "postgresql://ann:***@db:5432/chat"),
        ("postgresql://:s3cret@db/chat?x=1", "postgresql://:***@db/chat?x=1"),
        ("postgresql://ann@db/chat", "postgresql://ann@db/chat"),
        ("sqlite:/tmp/chat.db", "sqlite:/tmp/chat.db"),
    ],
)
def test_public_url_masks_the_password(url: str, shown: str) -> None:
    """``public_url`` hides a URL's password and nothing else."""
    assert public_url(url) == shown
