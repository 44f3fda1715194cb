"""End to end: ``roomcast serve --store postgresql://...``, in a child process, on real sockets.

Each test's tables live in a schema of their own (the ``postgres`` fixture), named in the
URL's query (``?search_path=...``). The fixture is set up before ``serve`` so that the
schema is dropped only after the server is gone.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conftest import PgSchema
from tests.e2e.conftest import Client, Clients, Serve, on_asyncio_only
from tests.e2e.test_offline import entries, listing

OWN = re.compile(r"\[#general\] ann: ann (\d{5})")  # ann's numbered lines, as echoed


async def send_all(client: Client, lines: list[str]) -> None:
    """Send ``lines`` in chunks of 100 until done or the connection breaks."""
    for start in range(0, len(lines), 100):
        try:
            await client.send(*lines[start : start + 100])
        except ConnectionError:
            return


@on_asyncio_only
async def test_serve_on_postgresql_keeps_every_acknowledged_message_after_sigkill(
    postgres: PgSchema, serve: Serve, clients: Clients
) -> None:
    """A client sends numbered lines to a server on PostgreSQL, which is SIGKILLed once 300
    were echoed (acknowledged); a server started on the same database has every one of
    them in its history, in order, numbered gap-free from 1."""
    args = ["--port", "0", "--store", postgres.store_url, "--rate", "1e6", "--burst", "1000000"]
    port = await serve.start(*args)
    ann = await clients.connect(port, "ann")
    sending = asyncio.create_task(send_all(ann, [f"ann {i:05d}" for i in range(5000)]))
    acked: list[int] = []

    def enough(line: str) -> bool:
        if m := OWN.fullmatch(line):
            acked.append(int(m.group(1)))
        return len(acked) >= 300

    await ann.expect(enough, within=20.0, max_lines=5000)
    await serve.kill()  # SIGKILL: no shutdown, no last commit
    await sending
    assert acked == list(range(len(acked)))

    checker = await clients.connect(await serve.start(*args), "checker")
    stored: list[tuple[int, str]] = []
    for _ in range(5000 // 500 + 2):
        after = stored[-1][0] if stored else 0
        page = entries(await listing(checker, f"/history #general after {after} 500"))
        if not page:
            break
        stored += page
    assert [seq for seq, _ in stored] == list(range(1, len(stored) + 1))
    assert stored[-1][1] == "[#general] --> checker joined"
    own = [int(m.group(1)) for _, text in stored if (m := OWN.fullmatch(text))]
    assert own == list(range(len(own))), "not a gap-free prefix in order"
    assert len(own) >= len(acked), "acknowledged messages lost"


@on_asyncio_only
async def test_serve_reports_an_unreachable_postgresql_store_without_a_traceback(
    serve: Serve,
) -> None:
    """With a store that cannot be reached, serve exits 1 with one line that names the
    server, its password masked, and no traceback."""
    url = "postgresql://ann:s3cret@127.0.0.1:1/chat?connect_timeout=5"
    with pytest.raises(AssertionError, match="exited before listening"):
        await serve.start("--store", url)
    assert await serve.wait() == 1
    said = "cannot start: cannot open the PostgreSQL store postgresql://ann:***@127.0.0.1:1/chat"
    assert [line for line in serve.log if said in line], serve.log
    assert not [line for line in serve.log if "Traceback" in line or "s3cret" in line], serve.log


@on_asyncio_only
async def test_serve_on_a_read_only_postgresql_database_does_not_start(
    postgres: PgSchema, serve: Serve
) -> None:
    """On a database whose transactions are read-only, serve exits 1 with one line that
    says the store is not writable and why, and no traceback."""
    url = f"{postgres.store_url}&default_transaction_read_only=on"
    with pytest.raises(AssertionError, match="exited before listening"):
        await serve.start("--port", "0", "--store", url)
    assert await serve.wait() == 1
    said = "is not writable: its transactions are read-only"
    assert [line for line in serve.log if "cannot start" in line and said in line], serve.log
    assert not [line for line in serve.log if "Traceback" in line], serve.log
