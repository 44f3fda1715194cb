"""The bus interface: how a node hears what the other nodes stored.

Several nodes (processes) serve one chat. Each stores its messages in the shared store, which
gives each room's messages their gap-free sequence numbers, and then **publishes** them on the
bus; the other nodes with members in that room **receive** them and hand them to their
members. The bus carries stored messages only: it never decides an order (the sequence
numbers do) and never holds what the store does not.

Calling contract (every implementation passes ``tests/bus/test_contract.py``):

- **Topics** are rooms (``room_topic``) and users (``user_topic``: a private message goes
  to its recipient's topic and its sender's, so that every session of either hears it).
  A node subscribes only to the topics that have members on it.
- ``subscribe(topic)`` returns once the subscription is in force: what another node
  publishes on the topic afterwards is delivered. While the bus is down it records the
  topic and returns at once; the topic is subscribed again on reconnection, which
  ``Handler.resumed`` reports. After ``unsubscribe(topic)`` returns, nothing more is
  delivered for the topic.
- ``publish(topic, message)`` never waits: it queues the message and returns. What is
  queued when the bus's writer next runs goes out together (one write), in call order. It
  raises ``Broken`` when the bus is down or closed, or when too much is waiting already.
  The message is stored by then, so nothing is lost: the nodes that miss it get it from
  the store by sequence number when they notice the gap.
- A node never receives what it published itself: it has already handed its own messages
  to its members. The messages one node publishes on a topic reach each subscriber in the
  order they were published; messages from different nodes may arrive in any order (the
  receiver puts them in sequence order).
- ``Handler.received`` is called on the event loop, one call per message, never from
  inside ``publish``. It must not block; an exception it raises is logged and the bus goes
  on.
- ``Handler.lost`` says that deliveries stopped (the connection dropped, Redis restarted,
  a subscriber fell too far behind). ``Handler.resumed`` says that every topic is
  subscribed again: messages published from then on are delivered, and what was published
  between ``lost`` and ``resumed`` must be read from the store. ``resumed`` always follows
  a ``lost``, and the bus keeps trying to reconnect until it is closed.

Implementations: ``local.py`` (one process: a ``LocalBroker`` joins the nodes that share
it; the default) and ``redis.py`` (Redis pub/sub, for nodes in several processes); chosen
by URL with ``roomcast.bus.open_bus``. Driver errors become ``roomcast.errors.Broken`` at
this seam.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass
from typing import NewType, Protocol

from roomcast.model import Message, Private, fold, room_name, user_name
from roomcast.wire.bus import MAX_NODE

__all__ = [
    "Bus",
    "Handler",
    "Outage",
    "Statistics",
    "Topic",
    "check_fit",
    "describe",
    "new_node_name",
    "room_topic",
    "topic_fits",
    "topic_of",
    "user_topic",
]

Topic = NewType("Topic", str)  # what a node subscribes to: made by room_topic or user_topic


def room_topic(room: str) -> Topic:
    """The topic of a room's messages; ``room`` is a room name (``#name``, any case)."""
    return Topic("room:" + room_name(room))


def user_topic(name: str) -> Topic:
    """The topic of the private messages to and from the user ``name`` (any case)."""
    return Topic("user:" + fold(user_name(name)))


def topic_of(message: Message) -> Topic:
    """The topic a room message is published on: its room's."""
    return Topic("room:" + message.room)  # a stored message's room is spelled as rooms are


def new_node_name() -> str:
    """A name for this node: the host's, the process id and 48 random bits (so that two
    runs never share one), fit for ``roomcast.wire.bus.node_name``."""
    host = re.sub(r"[^A-Za-z0-9_.\-]", "-", socket.gethostname())[:32] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(6)}"[-MAX_NODE:]


def topic_fits(topic: Topic, message: Message | Private) -> bool:
    """Whether ``message`` may travel on ``topic``: a room message on its room's, a private
    message on its sender's or its recipient's."""
    if isinstance(message, Message):
        return topic == "room:" + message.room
    if not topic.startswith("user:"):
        return False
    name = topic[5:]
    return name == fold(message.recipient) or name == fold(message.sender)


def describe(message: Message | Private) -> str:
    """Where a message belongs, for error messages and logs: ``room #a``, ``ann to bob``."""
    if isinstance(message, Message):
        return f"room {message.room}"
    return f"{message.sender} to {message.recipient}"


def check_fit(topic: Topic, message: Message | Private) -> None:
    """Raise ``ValueError`` unless ``message`` may travel on ``topic`` (``topic_fits``)."""
    if not topic_fits(topic, message):
        raise ValueError(f"a message of {describe(message)} does not go on {topic!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Outage:
    """A time when the bus delivered nothing: what was published then is in the store."""

    reason: str  # why deliveries stopped, as a sentence
    lost_at: float  # UTC time it was noticed, seconds since the epoch
    resumed_at: float  # UTC time every topic was subscribed again
    attempts: int  # connection attempts it took (1: the first one succeeded)

    @property
    def seconds(self) -> float:
        """How long it lasted."""
        return max(0.0, self.resumed_at - self.lost_at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Statistics:
    """A snapshot of a bus's counters (for ``/metrics`` and the logs)."""

    node: str  # this node's name
    connected: bool  # publishing and receiving now
    topics: int  # topics subscribed
    published: int  # messages handed to the medium
    failed: int  # messages refused by publish or lost on a connection that dropped
    received: int  # messages handed to the handler
    own: int  # own publications that came back and were skipped (Redis)
    refused: int  # payloads that were not messages (another version, another program)
    outages: int  # times deliveries stopped
    pending_bytes: int  # payload bytes queued, not yet written


class Handler(Protocol):
    """What a node gives its bus to hear from it (``Bus.listen``). Called on the event loop;
    no method may block."""

    def received(self, topic: Topic, message: Message | Private, origin: str) -> None:
        """Another node, ``origin``, published ``message`` on ``topic``."""
        ...

    def lost(self, reason: str) -> None:
        """Deliveries stopped, for the reason given: what is published from now on may
        not arrive until ``resumed``."""
        ...

    def resumed(self, outage: Outage) -> None:
        """Every topic is subscribed again: refill each from the store by sequence number,
        from the last message received."""
        ...


class Bus(Protocol):
    """One node's endpoint on the bus; see the module docstring for the contract."""

    @property
    def node(self) -> str:
        """This node's name: unique among the nodes sharing the bus."""
        ...

    def listen(self, handler: Handler) -> None:
        """Deliver to ``handler`` from now on (replacing the previous one). Messages that
        arrive while no handler is set are dropped."""
        ...

    async def subscribe(self, topic: Topic) -> None:
        """Receive what other nodes publish on ``topic``, from when this returns (or, when
        the bus is down, from ``Handler.resumed``). Subscribing twice is subscribing once.
        ``Broken`` if the bus is closed."""
        ...

    async def unsubscribe(self, topic: Topic) -> None:
        """Receive nothing more for ``topic``; nothing if it was not subscribed."""
        ...

    def publish(self, topic: Topic, message: Message | Private) -> None:
        """Queue ``message`` (stored, with its sequence number) for the other nodes
        subscribed to ``topic``; never waits. ``Broken`` when the bus is down, closed or
        too far behind: the message stays in the store for them to refill."""
        ...

    def statistics(self) -> Statistics:
        """The bus's counters now."""
        ...

    async def close(self) -> None:
        """Write what is queued (bounded in time), then stop delivering and release the
        connections. Idempotent."""
        ...
