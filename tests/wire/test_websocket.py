"""Server frames: what ``websockets`` parses back, and a shared run framed once for everyone."""

from __future__ import annotations

import orjson
import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from roomcast.model import Event, Info, Kind, Message
from roomcast.wire.json import JsonCodec, encoded_messages
from roomcast.wire.websocket import MAX_CLOSE_REASON, Frames, close_frame, text_frame


def parse(data: bytes) -> Frame:
    """The one unmasked frame ``data`` holds, parsed by ``websockets``."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        assert reader.at_eof(), "bytes after the frame"
        return frame
    raise AssertionError("the frame is incomplete")


def message(seq: int, room: str = "#a", text: str = "hi") -> Message:
    return Message(
        id=f"{room}-{seq}", room=room, seq=seq, sender="alice", kind=Kind.MESSAGE, text=text, ts=0.0
    )


def frames() -> Frames:
    messages = encoded_messages()
    return Frames(JsonCodec(messages=messages), messages)


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70_000])
def test_a_text_frame_of_any_length_parses_back_to_its_payload(size: int) -> None:
    """The three length encodings (7-bit, 16-bit, 64-bit) all come back whole and unmasked."""
    payload = b"x" * size
    frame = parse(text_frame(payload))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


def test_a_close_frame_carries_the_code_and_the_reason() -> None:
    frame = parse(close_frame(1008, "too slow: not reading for 30 s"))
    assert frame.opcode is Opcode.CLOSE
    assert Close.parse(frame.data) == Close(1008, "too slow: not reading for 30 s")


def test_a_long_close_reason_is_cut_on_a_character_boundary() -> None:
    """A control frame holds 125 bytes: the reason is cut to fit, never inside a character."""
    reason = "é" * 100  # 200 bytes
    close = Close.parse(parse(close_frame(1001, reason)).data)
    assert close.code == 1001
    assert reason.startswith(close.reason)
    assert MAX_CLOSE_REASON - 1 <= len(close.reason.encode()) <= MAX_CLOSE_REASON


def test_a_run_of_one_room_is_framed_once_and_the_same_bytes_go_to_everyone() -> None:
    """Two members taking the same slice of a room get the very same frame object, holding
    the batch of those messages."""
    shared = frames()
    run = [message(s) for s in (4, 5, 6)]
    first = shared(run)
    assert shared([message(s) for s in (4, 5, 6)]) is first
    body = orjson.loads(parse(first).data)
    assert body["type"] == "batch"
    assert [e["seq"] for e in body["events"]] == [4, 5, 6]
    assert shared([message(4)]) is shared([message(4)])  # a single message too


def test_what_is_not_one_rooms_run_is_framed_on_its_own() -> None:
    """Mixed rooms and other events are encoded and framed for the one connection."""
    shared = frames()
    mixed: list[Event] = [message(1), Info(text="x")]
    assert shared(mixed) == shared(mixed)
    assert shared(mixed) is not shared(mixed)
    body = orjson.loads(parse(shared(mixed)).data)
    assert [e["type"] for e in body["events"]] == ["message", "info"]


def test_the_memo_keeps_the_newest_frames_only() -> None:
    """Past its size, the oldest frame is forgotten (and framed again when asked)."""
    messages = encoded_messages()
    shared = Frames(JsonCodec(messages=messages), messages, size=2)
    one = shared([message(1)])
    shared([message(2)])
    shared([message(3)])
    again = shared([message(1)])
    assert again == one and again is not one


def test_the_memo_of_frames_is_bounded_by_bytes() -> None:
    """Frames of big runs are forgotten past the byte bound, however few they are."""
    messages = encoded_messages()
    shared = Frames(JsonCodec(messages=messages), messages, max_bytes=20_000)
    texts = ["x" * 4000] * 3
    one = shared([message(1, text=texts[0]), message(2, text=texts[1])])
    shared([message(3, text=texts[2]), message(4, text=texts[2])])
    shared([message(5, text=texts[2]), message(6, text=texts[2])])
    again = shared([message(1, text=texts[0]), message(2, text=texts[1])])
    assert again == one and again is not one


def test_replies_are_one_frame_each_in_one_write() -> None:
    shared = frames()
    data = shared.replies([b'{"type":"ok","id":1}', b'{"type":"ok","id":2}'])
    first = text_frame(b'{"type":"ok","id":1}')
    assert data.startswith(first)
    assert parse(data[len(first) :]).data == b'{"type":"ok","id":2}'
