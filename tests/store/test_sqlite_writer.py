"""The SQLite writer's guard: writes that would not last are refused, not acknowledged.

Each test makes the real condition (a file deleted or replaced under the open store, a
read-only file, a full tmpfs) and watches what the store does: no SQLite call is faked.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from pathlib import Path

import pytest

from roomcast.errors import Broken, Unwritable
from roomcast.model import Draft, Kind
from roomcast.store.sqlite import SqliteStore
from tests.conftest import SmallDisk, read_only

_ids = itertools.count()


def draft(text: str = "hello", room: str = "#a") -> Draft:
    return Draft(id=f"w{next(_ids)}", room=room, sender="ann", kind=Kind.MESSAGE, text=text, ts=1.0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder / "store.db"


async def test_a_deleted_file_refuses_writes_and_fails_its_check(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Once its file is deleted, the store refuses every write (SQLite would acknowledge
    them into a file nobody can open again) and says so in one log line."""
    caplog.set_level(logging.INFO, logger="roomcast")
    store = await SqliteStore.open(path)
    try:
        await store.append(draft("kept"))
        await store.check()
        os.remove(path)
        for text in ("lost", "lost too"):
            with pytest.raises(Unwritable, match=f"its file {path} was deleted"):
                await store.append(draft(text))
        with pytest.raises(Unwritable, match="was deleted while the server ran"):
            await store.check()
        said = [r.getMessage() for r in caplog.records if "not writable" in r.getMessage()]
        assert len(said) == 1, said
        assert f"/proc/{os.getpid()}/fd/" in said[0]  # where the deleted data can be copied from
    finally:
        await store.close()


async def test_a_replaced_file_refuses_writes(path: Path) -> None:
    """A file put at the path in place of the open one (a restore from a backup, say) is not
    the one written to: writes are refused until the server is restarted on it."""
    store = await SqliteStore.open(path)
    try:
        await store.append(draft())
        shutil.copy(path, path.with_name("copy.db"))
        os.replace(path.with_name("copy.db"), path)
        with pytest.raises(Unwritable, match="was replaced while the server ran"):
            await store.append(draft())
    finally:
        await store.close()


async def test_a_deleted_write_ahead_log_refuses_writes(path: Path) -> None:
    """Deleting the -wal file loses every commit not yet copied into the database at the
    next start: the store refuses writes from then on too."""
    store = await SqliteStore.open(path)
    try:
        await store.append(draft())
        os.remove(path.with_name(path.name + "-wal"))
        with pytest.raises(Unwritable, match="store.db-wal was deleted"):
            await store.append(draft())
    finally:
        await store.close()


async def test_a_file_made_read_only_refuses_writes_until_it_is_writable_again(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database that turns read-only under the store refuses writes and fails its check;
    writable again, it takes them again, and the log says both."""
    caplog.set_level(logging.INFO, logger="roomcast")
    store = await SqliteStore.open(path)
    try:
        await store.append(draft("before"))
        with read_only(path.parent):
            with pytest.raises(Unwritable, match="is read-only"):
                await store.append(draft("refused"))
            with pytest.raises(Unwritable, match="is read-only"):
                await store.check()
        await store.check()
        assert (await store.append(draft("after"))).seq == 2
        said = [r.getMessage() for r in caplog.records if "SQLite store" in r.getMessage()]
        assert any("not writable" in m for m in said) and any("writable again" in m for m in said)
    finally:
        await store.close()


async def test_a_read_only_database_is_not_opened(path: Path) -> None:
    """A store that can be read but not written is refused at open, saying so: a server on
    it could store nothing."""
    store = await SqliteStore.open(path)
    await store.append(draft())
    await store.history("#a", limit=1)  # a reader too, as a server has
    await store.close()
    with read_only(path.parent), pytest.raises(Unwritable, match="is not writable"):
        await SqliteStore.open(path)


async def test_a_read_only_folder_without_the_database_is_not_opened(tmp_path: Path) -> None:
    """A new store in a folder it may not write to is refused, naming the folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    with read_only(folder), pytest.raises(Unwritable, match="is not writable: its directory"):
        await SqliteStore.open(folder / "store.db")


async def test_a_full_disk_refuses_writes_and_fails_the_check_until_space_is_freed(
    small_disk: SmallDisk,
) -> None:
    """On a full disk, a write fails as Unwritable ('database or disk is full') and the check
    says the disk is full; once space is freed, writes go on with the next number."""
    store = await SqliteStore.open(small_disk.path / "store.db")
    try:
        await store.append(draft("before"))
        small_disk.fill()
        with pytest.raises(Unwritable, match="disk is full"):
            await store.append(draft("refused"))
        with pytest.raises(Unwritable, match="the disk of .* is full"):
            await store.check()
        small_disk.free()
        await store.check()
        assert (await store.append(draft("after"))).seq == 2
    finally:
        await store.close()


async def test_a_closed_store_fails_its_check(path: Path) -> None:
    """After close, the check says the store is closed."""
    store = await SqliteStore.open(path)
    await store.close()
    with pytest.raises(Broken, match="closed"):
        await store.check()
