"""What tests in every directory share: the external services some of them need, and real
storage conditions for the tests of storage failures.

Services. A test that needs PostgreSQL gets a schema of its own (``postgres_schema``, or the
``postgres`` fixture), so that runs never see each other's tables. When the server cannot be
reached the test is skipped with the reason, except under ``CI=true``, where it fails: there
every service must be up, and a skip would hide a suite that no longer runs.
``ROOMCAST_TEST_POSTGRES`` names the database (default: ``postgres`` on 127.0.0.1:5432,
database ``test``); the user must be allowed to create schemas in it. A test that needs
Redis gets a channel prefix of its own (``redis_prefix``, or the ``redis_place`` fixture),
on the same terms; ``ROOMCAST_TEST_REDIS`` names the server (default: 127.0.0.1:6379,
database 0).

Storage conditions: a disk that fills up, a folder that turns read-only. Nothing is mocked:
the store meets what a server on a full or read-only disk meets, from the kernel. A small
tmpfs needs ``mount``, so root (with CAP_SYS_ADMIN): without it the tests that need one are
skipped, saying why. A read-only folder is permissions taken away, or a read-only bind mount
for root, whom permissions do not bind. A PostgreSQL server's full disk is a tablespace on
such a tmpfs (``postgres_small_disk``): that needs the server on this machine, and a
superuser to create tablespaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    import redis.asyncio

    from roomcast.store.postgres import PostgresStore

__all__ = [
    "POSTGRES_URL",
    "REDIS_URL",
    "PgSchema",
    "RedisPlace",
    "SmallDisk",
    "PgSmallDisk",
    "in_ci",
    "postgres_schema",
    "read_only",
    "redis_prefix",
    "service_missing",
]

POSTGRES_URL = os.environ.get("ROOMCAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("ROOMCAST_TEST_REDIS", "redis://127.0.0.1:6379/0")
CONNECT_TIMEOUT = 5.0  # seconds to reach a service before the test is skipped (or fails)
DISK_SIZE = 4 * 1024 * 1024  # bytes: room for a fresh store and its write-ahead log

# --- services ------------------------------------------------------------------------

_unreachable: dict[str, str] = {}  # service -> why it could not be reached, once tried


def in_ci() -> bool:
    """Whether the run is continuous integration (``CI=true``), where every service is up."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def service_missing(service: str, why: str) -> NoReturn:
    """Skip the running test, which needs ``service`` and cannot have it; under ``CI=true``,
    fail it instead."""
    _unreachable[service] = why
    if in_ci():
        pytest.fail(f"{service} is required under CI=true but unreachable: {why}", pytrace=False)
    pytest.skip(f"{service} is unreachable: {why}")


@dataclass(slots=True)
class PgSchema:
    """A PostgreSQL schema that lives as long as one test; ``settings`` put a connection in
    it (and name its connections after it, so a test can find them in ``pg_stat_activity``)."""

    url: str  # the database
    name: str  # the schema: unique to the test
    _opened: list[Any] = field(default_factory=list)  # connections and stores to close

    @property
    def settings(self) -> dict[str, str]:
        """Server settings for connections that work in this schema."""
        return {"search_path": self.name, "application_name": self.name}

    @property
    def store_url(self) -> str:
        """``url`` with this schema as its ``search_path``: for ``open_store`` and ``--store``."""
        return f"{self.url}?search_path={self.name}&application_name={self.name}"

    async def open_store(self, query: str = "") -> PostgresStore:
        """A ``PostgresStore`` in this schema (``query``: the URL's, e.g. ``max_batch=5``),
        closed after the test if it is still open."""
        from roomcast.store.postgres import PostgresStore

        url = f"{self.url}?{query}" if query else self.url
        store = await PostgresStore.open(url, server_settings=self.settings)
        self._opened.append(store)
        return store

    async def connect(self) -> Any:
        """Another asyncpg connection in this schema (as another process would hold), closed
        after the test."""
        import asyncpg

        conn = await asyncpg.connect(self.url, server_settings={"search_path": self.name})
        self._opened.append(conn)
        return conn


async def _connect_admin() -> Any:
    """An asyncpg connection to ``POSTGRES_URL``; skips (fails under CI) the test when
    PostgreSQL or asyncpg is missing."""
    service = f"PostgreSQL at {POSTGRES_URL}"
    if service in _unreachable:  # tried already: don't wait for the timeout again
        service_missing(service, _unreachable[service])
    try:
        import asyncpg
    except ImportError as e:
        service_missing(service, f"asyncpg is not installed ({e}): pip install -e '.[dev]'")
    try:
        return await asyncpg.connect(POSTGRES_URL, timeout=CONNECT_TIMEOUT)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        service_missing(service, f"{type(e).__name__}: {e}")


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[PgSchema]:
    """A new, uniquely named schema in ``POSTGRES_URL``; on exit, whatever the test opened in
    it is closed and the schema is dropped with everything in it. Skips (fails under CI) the
    test when PostgreSQL or asyncpg is missing."""
    admin = await _connect_admin()
    # A name of ours (letters, digits, '_'), not user text: quoting it is enough.
    schema = PgSchema(url=POSTGRES_URL, name=f"roomcast_test_{uuid.uuid4().hex[:16]}")
    try:
        await admin.execute(f'CREATE SCHEMA "{schema.name}"')
        yield schema
    finally:
        try:
            for opened in reversed(schema._opened):
                await opened.close()
        finally:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema.name}" CASCADE')
            await admin.close()


@pytest.fixture
async def postgres() -> AsyncIterator[PgSchema]:
    """A PostgreSQL schema of the test's own (see ``postgres_schema``)."""
    async with postgres_schema() as schema:
        yield schema


@dataclass(slots=True)
class RedisPlace:
    """A channel prefix of Redis that no other test uses, and a client of its own for
    what a test does to the server from outside (``CLIENT KILL``, a raw ``PUBLISH``)."""

    server: str  # the Redis URL, without a prefix
    prefix: str  # unique to the test
    admin: redis.asyncio.Redis  # closed after the test

    def node(self, name: str) -> str:
        """A node name unique to the test (``CLIENT KILL`` by name must not reach another
        run's nodes)."""
        return f"{name}-{self.prefix.rstrip(':').rsplit('-', 1)[-1]}"

    def url(self, query: str = "", *, server: str | None = None) -> str:
        """The bus URL for this prefix (``query``: more settings, e.g. ``timeout=1``), on
        ``server`` if given (a relay in front of Redis) rather than Redis itself."""
        base = server or self.server
        joined = f"prefix={self.prefix}" + (f"&{query}" if query else "")
        return f"{base}{'&' if '?' in base else '?'}{joined}"

    async def kill(self, *client_names: str) -> int:
        """``CLIENT KILL`` every connection with one of ``client_names``, as an operator
        would (those listed at the call: not those that replace them); how many."""
        ids = [c["id"] for c in await self.admin.client_list() if c.get("name") in client_names]
        async with self.admin.pipeline(transaction=True) as kills:  # at once: MULTI ... EXEC
            for client_id in ids:
                kills.client_kill_filter(_id=client_id)
            return sum(int(killed) for killed in await kills.execute())


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[RedisPlace]:
    """A ``RedisPlace`` on ``REDIS_URL``; skips (fails under CI) the test when Redis or
    redis-py is missing. Pub/sub leaves nothing behind in Redis: there is nothing to drop."""
    service = f"Redis at {REDIS_URL}"
    if service in _unreachable:  # tried already: don't wait for the timeout again
        service_missing(service, _unreachable[service])
    try:
        import redis.asyncio
        from redis.exceptions import RedisError
    except ImportError as e:
        service_missing(service, f"redis-py is not installed ({e}): pip install -e '.[dev]'")
    admin = redis.asyncio.Redis.from_url(
        REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT
    )
    try:
        try:
            await admin.ping()
        except (OSError, RedisError) as e:
            service_missing(service, f"{type(e).__name__}: {e}")
        yield RedisPlace(
            server=REDIS_URL, prefix=f"roomcast-test-{uuid.uuid4().hex[:16]}:", admin=admin
        )
    finally:
        await admin.aclose()


@pytest.fixture
async def redis_place() -> AsyncIterator[RedisPlace]:
    """A Redis channel prefix of the test's own (see ``redis_prefix``)."""
    async with redis_prefix() as place:
        yield place


# --- storage conditions ----------------------------------------------------------


def _mount(*args: str) -> str | None:
    """Run ``mount`` with ``args``; ``None`` if it worked, else why not."""
    try:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]


def _unmount(where: Path) -> None:
    # lazy: a store a failed test left open must not keep the mount (nor fail the teardown)
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10, check=False)


class SmallDisk:
    """A tmpfs of ``DISK_SIZE`` bytes at ``path``: a file system that really fills up."""

    def __init__(self, path: Path) -> None:
        self.path = path  # where it is mounted
        self._filler = path / "filler"  # the file that takes every block left

    def fill(self) -> None:
        """Take every free block, as other programs filling the disk would; then a write
        that needs a block more fails with ENOSPC."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        page = b"\0" * 4096  # tmpfs gives out pages: a page at a time takes them all
        try:
            for _ in range(DISK_SIZE // len(page) + 2):  # bounded: no more pages than exist
                try:
                    os.write(fd, page)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        return
                    raise
        finally:
            os.close(fd)
        raise AssertionError(f"{self.path} never filled up")

    def free(self) -> None:
        """Give the blocks back."""
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A small tmpfs under ``tmp_path``, unmounted after the test (ask for it before the
    fixtures that start servers on it, so that it outlives them); skips the test when this
    process may not mount one."""
    where = tmp_path / "disk"
    where.mkdir()
    why = _mount("-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(where))
    if why is not None:
        pytest.skip(f"a full disk is a small tmpfs, and mounting one failed: {why}")
    try:
        yield SmallDisk(where)
    finally:
        _unmount(where)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` and the files in it read-only for new opens, until the block ends.

    Files already open keep working, as on a server whose disk is remounted read-only
    under it: what changes is what the path gives. Permissions are taken away; where they
    do not bind this process (root), the folder is bind-mounted read-only over itself; where
    neither can be done, the test is skipped.
    """
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        if not os.access(folder, os.W_OK):  # permissions bind us
            yield
            return
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    why = _mount("--bind", str(folder), str(folder))
    if why is None:
        why = _mount("-o", "remount,bind,ro", str(folder))
        if why is not None:
            _unmount(folder)
    if why is not None:
        pytest.skip(f"a read-only folder needs permissions that bind, or a mount: {why}")
    try:
        yield
    finally:
        _unmount(folder)


@dataclass(frozen=True, slots=True)
class PgSmallDisk:
    """A PostgreSQL tablespace on a ``SmallDisk``: the tables made in it fill a disk."""

    disk: SmallDisk  # the tmpfs: fill() and free() it
    tablespace: str  # its name: ``default_tablespace=NAME`` makes a store's tables there


@contextlib.contextmanager
def _disk_for(owner: Path) -> Iterator[tuple[SmallDisk, Path]]:
    """A ``SmallDisk`` that the owner of ``owner`` (the server's data directory) may reach,
    and in it an empty folder of that owner's; unmounted and removed on exit."""
    where = Path(tempfile.mkdtemp(prefix="roomcast-pg-disk-"))  # not under tmp_path: the
    try:  # server must reach it, and pytest's folders are for us only
        where.chmod(0o711)
        why = _mount("-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0711", "tmpfs", str(where))
        if why is not None:
            pytest.skip(f"a full disk is a small tmpfs, and mounting one failed: {why}")
        try:
            folder = where / "tablespace"
            folder.mkdir()
            st = owner.stat()
            os.chown(folder, st.st_uid, st.st_gid)
            yield SmallDisk(where), folder
        finally:
            _unmount(where)
    finally:
        where.rmdir()


@pytest.fixture
async def postgres_small_disk() -> AsyncIterator[PgSmallDisk]:
    """A tablespace of the PostgreSQL server on a small tmpfs, dropped after the test. Ask
    for it before ``postgres``, so that the schema (and its tables in the tablespace) is
    dropped first. Skips the test when the server is not on this machine (its data
    directory is not here), when this process may not mount a tmpfs, or when the server
    refuses the tablespace."""
    import asyncpg

    admin = await _connect_admin()
    try:
        data = Path(await admin.fetchval("SHOW data_directory"))
        if not await asyncio.to_thread(data.is_dir):
            pytest.skip(f"the PostgreSQL server's data directory {data} is not on this machine")
        with _disk_for(data) as (disk, folder):
            name = f"roomcast_test_{uuid.uuid4().hex[:16]}"
            try:  # names of ours, not user text: quoting is enough (DDL takes no parameters)
                await admin.execute(f"CREATE TABLESPACE \"{name}\" LOCATION '{folder}'")
            except asyncpg.PostgresError as e:
                pytest.skip(f"the PostgreSQL server refused a tablespace on a tmpfs: {e}")
            try:
                yield PgSmallDisk(disk=disk, tablespace=name)
            finally:
                await admin.execute(f'DROP TABLESPACE IF EXISTS "{name}"')
    finally:
        await admin.close()
