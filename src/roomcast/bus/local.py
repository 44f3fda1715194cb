"""The bus inside one process: the default, and a cluster of nodes in one test.

Theory of operation
-------------------
A ``LocalBroker`` is the medium: it knows, for each topic, the buses (nodes) subscribed to
it. ``LocalBus.publish`` looks the topic up and appends ``(topic, message, origin)`` to the
pending deque of every other subscribed node: the message object itself, never a copy or an
encoding (it is immutable). A node whose deque was empty schedules one ``call_soon`` of its
delivery, which hands everything pending to its handler on the next loop turn: one callback
per node per loop turn, not a task or a callback per message, and never a handler called
from inside ``publish`` (as with Redis, where deliveries come from the socket later).

A server of one node (``open_bus("local")``) has a broker of its own with nobody else on
it: a publish costs a dictionary lookup and delivers nothing, since a node hands its own
messages to its members itself. Several ``Hub``s in one process that share one broker and
one store behave as nodes of a cluster, without Redis.

Memory is bounded: a node holds at most ``max_pending`` deliveries. One more (a publisher
that queued that many in one loop turn) drops them all, as Redis cuts a subscriber that
falls behind, and the node hears ``lost`` then ``resumed`` at that point of the stream, so
it refills from the store; deliveries after that point go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from roomcast.bus.base import Handler, Outage, Statistics, Topic, check_fit, new_node_name
from roomcast.errors import Broken
from roomcast.model import Message, Private
from roomcast.wire.bus import node_name

__all__ = ["DEFAULT_MAX_PENDING", "LocalBroker", "LocalBus"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 100_000  # deliveries one node holds for the next loop turn


class _Gap:
    """In a node's pending deque: deliveries were dropped here (the node fell behind)."""

    __slots__ = ("lost_at", "reason")

    def __init__(self, reason: str, lost_at: float) -> None:
        self.reason = reason  # told to the handler's lost()
        self.lost_at = lost_at  # UTC time of the first drop


_Delivery = tuple[Topic, Message | Private, str]  # topic, message, origin


class LocalBroker:
    """The medium shared by in-process buses: every ``bus()`` made from one broker hears
    what the others publish on the topics it subscribes to."""

    def __init__(self, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be 1 or more, got {max_pending}")
        self.max_pending = max_pending  # deliveries a node holds for its next loop turn
        self._nodes: dict[str, LocalBus] = {}  # name -> the open bus of that node
        # topic -> the nodes subscribed to it (a dict: set semantics in subscription order)
        self._subscribers: dict[Topic, dict[LocalBus, None]] = {}

    def bus(self, node: str | None = None) -> LocalBus:
        """A new node on this broker, named ``node`` (a fresh name if ``None``);
        ``ValueError`` if the name is taken or invalid."""
        name = new_node_name() if node is None else node_name(node)
        if name in self._nodes:
            raise ValueError(f"a node named {name!r} is already on this bus")
        bus = LocalBus(self, name)
        self._nodes[name] = bus
        return bus


class LocalBus:
    """One node's endpoint on a ``LocalBroker`` (see the module docstring). Implements
    ``roomcast.bus.base.Bus``; make it with ``LocalBroker.bus`` or ``open_bus("local")``."""

    def __init__(self, broker: LocalBroker, node: str) -> None:
        self._broker = broker  # the medium
        self._node = node  # this node's name
        self._handler: Handler | None = None  # where deliveries go
        self._topics: set[Topic] = set()  # subscribed
        self._pending: deque[_Delivery | _Gap] = deque()  # for the next loop turn
        self._scheduled = False  # a delivery callback is scheduled
        self._closed = False
        # counters for statistics()
        self._published = 0
        self._failed = 0
        self._received = 0
        self._outages = 0

    @property
    def node(self) -> str:
        """This node's name."""
        return self._node

    def listen(self, handler: Handler) -> None:
        """Deliver to ``handler`` from now on."""
        self._handler = handler

    async def subscribe(self, topic: Topic) -> None:
        """Receive what other nodes publish on ``topic`` from now on."""
        if self._closed:
            raise Broken("the bus is closed")
        self._topics.add(topic)
        self._broker._subscribers.setdefault(topic, {})[self] = None

    async def unsubscribe(self, topic: Topic) -> None:
        """Receive nothing more for ``topic`` (what is pending for it is dropped too)."""
        self._topics.discard(topic)
        nodes = self._broker._subscribers.get(topic)
        if nodes is not None:
            nodes.pop(self, None)
            if not nodes:
                del self._broker._subscribers[topic]

    def publish(self, topic: Topic, message: Message | Private) -> None:
        """Hand ``message`` to every other node subscribed to ``topic``, for their next
        loop turn. Costs a lookup, plus an append per such node; ``Broken`` if closed,
        ``ValueError`` if ``topic`` is not the message's."""
        check_fit(topic, message)
        if self._closed:
            self._failed += 1
            raise Broken("the bus is closed")
        self._published += 1
        nodes = self._broker._subscribers.get(topic)
        if nodes:
            for bus in nodes:
                if bus is not self:
                    bus._put((topic, message, self._node))

    def statistics(self) -> Statistics:
        """The counters now."""
        return Statistics(
            node=self._node,
            connected=not self._closed,
            topics=len(self._topics),
            published=self._published,
            failed=self._failed,
            received=self._received,
            own=0,
            refused=0,
            outages=self._outages,
            pending_bytes=0,
        )

    async def close(self) -> None:
        """Leave the broker: nothing more is delivered to this node. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for topic in list(self._topics):
            await self.unsubscribe(topic)
        self._pending.clear()
        if self._broker._nodes.get(self._node) is self:
            del self._broker._nodes[self._node]

    # --- delivery ----------------------------------------------------------------------

    def _put(self, delivery: _Delivery) -> None:
        pending = self._pending
        if len(pending) >= self._broker.max_pending:
            self._fell_behind()
        pending.append(delivery)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._deliver)

    def _fell_behind(self) -> None:
        """Drop what is pending: the node hears lost and resumed here, and refills."""
        pending = self._pending
        first = pending[0] if pending else None
        gap = first if isinstance(first, _Gap) else None
        dropped = len(pending) - (gap is not None)
        if gap is None:
            gap = _Gap(
                f"node {self._node} fell {dropped} deliveries behind on the local bus",
                time.time(),
            )
            self._outages += 1
            log.warning("bus: %s; they are dropped, to be read from the store", gap.reason)
        pending.clear()
        pending.append(gap)

    def _deliver(self) -> None:
        """Hand what is pending to the handler (on the loop, once per turn)."""
        self._scheduled = False
        pending = self._pending
        # What arrives meanwhile (a handler that publishes to a node that publishes back)
        # waits for the next turn: bounded work per turn.
        for _ in range(len(pending)):
            if not pending:  # a handler's publish overflowed this deque: a gap is next
                break
            item = pending.popleft()
            handler = self._handler
            if handler is None:
                continue
            try:
                if isinstance(item, _Gap):
                    handler.lost(item.reason)
                    handler.resumed(
                        Outage(
                            reason=item.reason,
                            lost_at=item.lost_at,
                            resumed_at=time.time(),
                            attempts=1,
                        )
                    )
                    continue
                topic, message, origin = item
                if topic in self._topics:
                    self._received += 1
                    handler.received(topic, message, origin)
            except Exception:
                log.exception("bus: the handler of node %s failed; delivering on", self._node)
