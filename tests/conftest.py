"""What tests in every directory share: the external services some of them need.

A test that needs PostgreSQL gets a schema of its own (``postgres_schema``, or the
``postgres`` fixture), so that runs never see each other's tables. When the server cannot be
reached the test is skipped with the reason, except under ``CI=true``, where it fails: there
every service must be up, and a skip would hide a suite that no longer runs.

``ROOMCAST_TEST_POSTGRES`` names the database (default: ``postgres`` on 127.0.0.1:5432,
database ``test``); the user must be allowed to create schemas in it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from roomcast.store.postgres import PostgresStore

POSTGRES_URL = os.environ.get("ROOMCAST_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
CONNECT_TIMEOUT = 5.0  # seconds to reach a service before the test is skipped (or fails)

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


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[PgSchema]:
    """A new, uniquely named schema in ``POSTGRES_URL``; on exit, whatever the test opened in
    it is closed and the schema is dropped with everything in it. Skips (fails under CI) the
    test when PostgreSQL or asyncpg is missing."""
    service = f"PostgreSQL at {POSTGRES_URL}"
    if service in _unreachable:  # tried already: don't wait for the timeout again
        service_missing(service, _unreachable[service])
    try:
        import asyncpg
    except ImportError as e:
        service_missing(service, f"asyncpg is not installed ({e}): pip install -e '.[dev]'")
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=CONNECT_TIMEOUT)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        service_missing(service, f"{type(e).__name__}: {e}")
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
