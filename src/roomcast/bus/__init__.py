"""Fan-out between nodes behind a small interface; see ``roomcast.bus.base``.

``await open_bus(url)`` picks the implementation by URL scheme.
"""

from __future__ import annotations

from roomcast.bus.base import (
    Bus,
    Handler,
    Outage,
    Statistics,
    Topic,
    room_topic,
    topic_fits,
    topic_of,
    user_topic,
)
from roomcast.bus.local import LocalBroker, LocalBus
from roomcast.errors import Broken

__all__ = [
    "Bus",
    "Handler",
    "LocalBroker",
    "LocalBus",
    "Outage",
    "Statistics",
    "Topic",
    "open_bus",
    "room_topic",
    "topic_fits",
    "topic_of",
    "user_topic",
]

_SCHEMES = "'local' (one process) or 'redis://HOST:PORT/DB?prefix=PREFIX' (several)"


async def open_bus(url: str = "local", *, node: str | None = None) -> Bus:
    """Open the bus that ``url`` names, as the node ``node`` (a fresh name if ``None``);
    ``ValueError`` for an unknown URL or a bad node name.

    ``local`` (or ``local:``), the default: one process, the node alone on a broker of its
    own. ``redis://[:password@]host[:port][/db]`` (``rediss://`` for TLS) joins the nodes
    that use the same Redis and prefix (``pip install 'roomcast[redis]'``); its query may
    set the prefix and the bus's limits (``roomcast.bus.redis.RedisBus.open``). ``Broken``
    when Redis cannot be reached.
    """
    scheme, colon, rest = url.partition(":")
    scheme = scheme.lower()
    if scheme == "local" and not rest:
        return LocalBroker().bus(node)
    if colon and scheme in ("redis", "rediss") and rest.startswith("//"):
        try:  # redis-py is an optional dependency: only the Redis bus needs it
            from roomcast.bus.redis import RedisBus
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("redis"):
                raise
            raise Broken(
                f"the Redis bus needs redis-py ({e}): pip install 'roomcast[redis]'"
            ) from e
        return await RedisBus.open(url, node=node)
    raise ValueError(f"unknown bus URL {url!r}: use {_SCHEMES}")
