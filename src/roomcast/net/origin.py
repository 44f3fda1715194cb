"""Which web pages may open a WebSocket: the ``Origin`` and ``Host`` of a handshake, checked.

A browser sends both with every WebSocket handshake and a page cannot forge either: Origin is
the scheme, host and port of the page that opens the socket; Host is the name the browser
resolved to reach this server. Two attacks meet here:

- a page on another site opening a socket to this server (cross-site WebSocket hijacking):
  its Origin is not this server's;
- DNS rebinding: a page on a name the attacker controls, made to resolve to this server
  (e.g. a server on 127.0.0.1 behind the victim's firewall). Its Origin and Host agree with
  each other, so comparing the two proves nothing; the Host is not a name of this server.

So a handshake that carries an Origin is accepted only if its Origin is one of this server's
origins (scheme included) and its Host one of this server's names. A server's origins are
the ``--public-origin`` list when one is given (the address a reverse proxy serves it at),
else the listener's own address over plain ``http``: its host, the address the connection
came in on, and, on a loopback address, the loopback names (``localhost``, ``127.0.0.1``,
``[::1]``), each with the listener's port. Clients without an Origin are not browsers
(scripts, bots) and are not concerned. No I/O here: the listener gives the names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple
from urllib.parse import urlsplit

__all__ = ["LOOPBACK_NAMES", "Origin", "allowed", "local_names", "parse_origins"]

_DEFAULT_PORT = {"http": 80, "https": 443}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")  # names a rebinding attacker cannot own


class Origin(NamedTuple):
    """A web origin: scheme, host (lower case, IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _DEFAULT_PORT.get(self.scheme)
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def origin_of(text: str) -> Origin | None:
    """The origin ``text`` names (``https://chat.example.org``, a trailing ``/`` allowed);
    ``None`` if it is not one (``null``, another scheme, a path, a user, a bad port)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        return None
    if (
        parts.scheme not in _DEFAULT_PORT
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        return None
    return Origin(parts.scheme, parts.hostname, port or _DEFAULT_PORT[parts.scheme])


def _host_of(header: str, scheme: str) -> tuple[str, int] | None:
    """The (host, port) of a ``Host`` header, the port defaulting to the scheme's."""
    found = origin_of(f"{scheme}://{header}") if header else None
    return None if found is None else (found.host, found.port)


def parse_origins(text: str) -> frozenset[Origin]:
    """The origins of a comma-separated ``--public-origin``; ``ValueError`` naming the first
    that is not an origin."""
    origins = set()
    for item in text.split(","):
        if not item.strip():
            continue
        found = origin_of(item)
        if found is None:
            raise ValueError(
                f"--public-origin {item.strip()!r} is not an origin: give the scheme and host"
                " the pages are served at, as https://chat.example.org (a port if not the"
                " scheme's own), comma-separated"
            )
        origins.add(found)
    return frozenset(origins)


def local_names(bound: str, local: str | None) -> set[str]:
    """This listener's names: the host it was told to bind (unless a wildcard), the address
    a connection came in on (``local``), and the loopback names if that is a loopback
    address."""
    names = set()
    if bound not in ("", "0.0.0.0", "::"):
        names.add(bound.strip("[]").lower())
    if local:
        try:
            ip = ipaddress.ip_address(local.split("%", 1)[0])
        except ValueError:
            names.add(local.lower())
        else:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            names.add(str(ip))
            if ip.is_loopback:
                names.update(LOOPBACK_NAMES)
    return names


def allowed(
    origin: str | None,
    host: str,
    *,
    public: frozenset[Origin],
    names: Iterable[str],
    port: int,
) -> bool:
    """Whether a handshake with this ``Origin`` (``None``: absent) and ``Host`` may open a
    WebSocket on a listener at ``port`` known by ``names``, serving the ``public`` origins
    (empty: its own address over http)."""
    if origin is None:  # not a browser: no page to protect
        return True
    seen = origin_of(origin)
    if seen is None:  # "null" (a sandboxed page, a file), or not an origin at all
        return False
    own = {Origin("http", name, port) for name in names}
    origins = public or own
    if seen not in origins:
        return False
    # The Host: one of the server's origins' (the proxy passed it on), or the listener's own
    # (a proxy that sends its upstream address); never a name the page's owner controls.
    hosts = {(o.host, o.port) for o in origins | own}
    return _host_of(host, seen.scheme) in hosts
