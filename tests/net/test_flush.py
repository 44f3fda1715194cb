"""The flusher: marked connections pumped once per flush, in order; a failing pump costs
its connection only."""

from __future__ import annotations

import asyncio

from roomcast.net.flush import Flusher


class Conn:
    def __init__(self, name: str, log: list[str], *, broken: bool = False) -> None:
        self.name = name
        self.log = log
        self.broken = broken

    def pump(self) -> None:
        self.log.append(self.name)
        if self.broken:
            raise RuntimeError(f"{self.name} is broken")


async def flushed() -> None:
    """Wait for the flush the marks scheduled (gap 0: it comes first at the next turn)."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


async def test_marked_connections_are_pumped_once_each_in_the_order_marked() -> None:
    log: list[str] = []
    failures: list[tuple[str, str]] = []
    flusher = Flusher[Conn](0.0, lambda c, e: failures.append((c.name, str(e))))
    a, b, c = Conn("a", log), Conn("b", log), Conn("c", log)
    for conn in (b, a, b, c):
        flusher.mark(conn)
    flusher.forget(c)
    await flushed()
    assert log == ["b", "a"] and failures == []


async def test_a_pump_that_fails_costs_its_connection_only() -> None:
    log: list[str] = []
    failures: list[tuple[str, str]] = []
    flusher = Flusher[Conn](0.0, lambda c, e: failures.append((c.name, str(e))))
    for conn in (Conn("a", log), Conn("bad", log, broken=True), Conn("c", log)):
        flusher.mark(conn)
    await flushed()
    assert log == ["a", "bad", "c"]
    assert failures == [("bad", "bad is broken")]
    flusher.mark(Conn("d", log))  # the flusher goes on
    await flushed()
    assert log[-1] == "d"
