"""Room messages are encoded once, and a run of them is joined once, for every member."""

from __future__ import annotations

from roomcast.model import Info, Kind, Message
from roomcast.wire.cache import EncodedMessages


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
