"""Room messages are encoded once, and a run of them is joined once, for every member."""

from __future__ import annotations

from roomcast.model import Info, Kind, Message
from roomcast.wire.cache import ENTRY_OVERHEAD, EncodedMessages, Memo


def message(seq: int, room: str = "#a") -> Message:
    return Message(
        id=f"{room}-{seq}", room=room, seq=seq, sender="alice", kind=Kind.MESSAGE, text="hi", ts=0.0
    )


def counting() -> tuple[EncodedMessages, list[int]]:
    calls: list[int] = []

    def encode(m: Message) -> bytes:
        calls.append(m.seq)
        return f"{m.room}:{m.seq};".encode()

    return EncodedMessages(encode), calls


def test_each_message_is_encoded_once() -> None:
    """The same message asked twice is encoded once and the same bytes come back."""
    cache, calls = counting()
    assert cache(message(1)) is cache(message(1))
    assert calls == [1]


def test_a_run_of_one_room_is_joined_once_for_everyone() -> None:
    """Two members reading the same slice get the very same bytes object."""
    cache, calls = counting()
    run = [message(s) for s in (4, 5, 6)]
    first = cache.run(run)
    assert first == b"#a:4;#a:5;#a:6;"
    assert cache.run([message(s) for s in (4, 5, 6)]) is first
    assert calls == [4, 5, 6]


def test_what_is_not_one_rooms_run_is_not_shared() -> None:
    """Mixed rooms, gaps and other events take the ordinary path."""
    cache, _ = counting()
    assert cache.run([message(1), message(2, "#b")]) is None
    assert cache.run([message(1), message(3)]) is None
    assert cache.run([Info(text="x"), message(1)]) is None
    assert cache.run([message(1), Info(text="x")]) is None


# --- bounds -------------------------------------------------------------------------------


def big(seq: int, size: int = 4000) -> Message:
    return Message(
        id=f"#a-{seq}", room="#a", seq=seq, sender="alice", kind=Kind.MESSAGE, text="x" * size, ts=0
    )


def test_messages_are_bounded_by_bytes_not_only_by_entries() -> None:
    """4 KB messages fill a 64 KB cache at about 15 entries, far below its 4,096: the
    oldest go first and what is held stays under the bound."""
    cache = EncodedMessages(lambda m: m.text.encode(), max_bytes=64 * 1024)
    first = cache(big(1))
    for seq in range(2, 100):
        cache(big(seq))
    assert cache.messages.bytes <= 64 * 1024
    assert len(cache.messages) == (64 * 1024) // (4000 + ENTRY_OVERHEAD)
    assert cache(big(1)) is not first  # forgotten, encoded again
    assert cache(big(99)) is cache(big(99))


def test_runs_are_bounded_by_bytes_and_the_newest_is_kept_whatever_its_size() -> None:
    """A run bigger than the whole bound is still kept (its readers share it), alone."""
    cache = EncodedMessages(lambda m: m.text.encode(), max_bytes=16 * 1024)
    small = cache.run([big(1, 10), big(2, 10)])
    huge = cache.run([big(s) for s in range(3, 13)])  # 40 KB
    assert huge is not None and len(huge) == 40_000
    assert cache.run([big(s) for s in range(3, 13)]) is huge
    assert len(cache.runs) == 1 and cache.runs.bytes == 40_000 + ENTRY_OVERHEAD
    assert cache.run([big(1, 10), big(2, 10)]) is not small


def test_the_memo_counts_what_it_holds_exactly() -> None:
    """Putting, replacing and forgetting keep the byte count equal to what is held."""
    memo = Memo[str, bytes](max_entries=3, max_bytes=10_000)
    memo.put("a", b"1" * 100, 100)
    memo.put("b", b"2" * 200, 200)
    memo.put("a", b"3" * 300, 300)  # replaced: counted once, and now the newest
    assert memo.bytes == 500 + 2 * ENTRY_OVERHEAD and len(memo) == 2
    memo.put("c", b"", 0)
    memo.put("d", b"", 0)  # past 3 entries: the oldest ("b") goes
    assert memo.get("b") is None and memo.get("a") == b"3" * 300
    assert memo.bytes == 300 + 3 * ENTRY_OVERHEAD
