"""The in-memory store's own behaviour, beyond the contract every store meets."""

from __future__ import annotations

from roomcast.store import MemoryStore


async def test_asking_about_rooms_never_written_to_keeps_nothing() -> None:
    """room(), history() and search() of names nobody wrote to answer an empty room and keep
    no trace of it: a client asking about 10,000 made-up rooms costs the server no memory."""
    store = MemoryStore()
    for i in range(10_000):
        name = f"#nosuch{i}"
        assert (await store.room(name)).latest_seq == 0
        page = await store.history(name, limit=10)
        assert (page.messages, page.oldest_seq, page.latest_seq) == ((), 1, 0)
        assert await store.search(name, "words", limit=10) == []
    assert await store.rooms() == []
    assert store._rooms == {}
