"""``open_store``: the implementation is chosen by URL scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.store import MemoryStore, open_store
from roomcast.store.sqlite import SqliteStore


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
    ["postgresql://localhost/chat", "sqlite:", "sqlite://host/chat.db", "memory", "", "mem:"],
)
async def test_unknown_urls_are_refused(url: str) -> None:
    """Any other URL raises ``ValueError`` naming the accepted schemes."""
    with pytest.raises(ValueError, match="'memory:', 'sqlite:PATH'"):
        await open_store(url)
