"""The Origin and Host rules of WebSocket handshakes (``roomcast.net.origin``), without sockets."""

from __future__ import annotations

import pytest

from roomcast.net.origin import Origin, allowed, local_names, origin_of, parse_origins

LOOPBACK = local_names("127.0.0.1", "127.0.0.1")


def test_origins_are_normalised_by_scheme_host_and_default_port() -> None:
    """Case, a trailing slash and the scheme's own port do not make another origin."""
    assert origin_of("HTTPS://Chat.Example.org:443/") == Origin("https", "chat.example.org", 443)
    assert origin_of("http://[::1]:8080") == Origin("http", "::1", 8080)
    assert str(Origin("https", "chat.example.org", 443)) == "https://chat.example.org"
    assert str(Origin("http", "::1", 8080)) == "http://[::1]:8080"


@pytest.mark.parametrize(
    "text",
    ["null", "", "chat.example.org", "ws://x", "file:///x", "http://x/a", "http://u@x",
     "http://x:99999", "http://x:port", "http://x?q", "http://x#f"],
)  # fmt: skip
def test_what_is_not_an_origin_is_none(text: str) -> None:
    """No scheme, another scheme, a path, a user, a bad port: not an origin."""
    assert origin_of(text) is None


def test_a_public_origin_list_is_comma_separated_and_checked() -> None:
    """Blank items are skipped; a bad one is named in the error."""
    assert parse_origins(" https://a.example , ,http://b.example:8080") == {
        Origin("https", "a.example", 443),
        Origin("http", "b.example", 8080),
    }
    assert parse_origins("") == frozenset()
    with pytest.raises(ValueError, match="'a.example/x'"):
        parse_origins("https://ok.example, a.example/x")


def test_the_listener_names_include_loopback_names_only_on_loopback() -> None:
    """Bound to 0.0.0.0, a connection on a LAN address names that address only; on a
    loopback address, the loopback names too; an IPv4-mapped address is its IPv4 one."""
    assert local_names("0.0.0.0", "192.168.1.5") == {"192.168.1.5"}
    assert {"localhost", "127.0.0.1", "::1"} <= local_names("::", "::ffff:127.0.0.1")
    assert local_names("chat.lan", None) == {"chat.lan"}


def test_by_default_only_the_listener_own_names_over_http_are_allowed() -> None:
    """The own origin and loopback names pass; another scheme, port, a rebound name, or a
    foreign Host do not; no Origin passes (not a browser)."""

    def ok(origin: str | None, host: str) -> bool:
        return allowed(origin, host, public=frozenset(), names=LOOPBACK, port=8080)

    assert ok("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert ok("http://localhost:8080", "localhost:8080")
    assert ok("http://[::1]:8080", "[::1]:8080")
    assert ok(None, "anything")
    assert not ok("https://127.0.0.1:8080", "127.0.0.1:8080")
    assert not ok("http://127.0.0.1:8081", "127.0.0.1:8080")
    assert not ok("http://evil.example:8080", "evil.example:8080")
    assert not ok("http://127.0.0.1:8080", "evil.example:8080")
    assert not ok("null", "127.0.0.1:8080")


def test_public_origins_replace_the_own_ones_and_the_host_is_checked() -> None:
    """Behind a proxy: the public origin passes with its own Host or the listener's (a proxy
    that sends its upstream), not with a foreign Host; the listener's own origin does not."""
    public = parse_origins("https://chat.example.org")

    def ok(origin: str, host: str) -> bool:
        return allowed(origin, host, public=public, names=LOOPBACK, port=8080)

    assert ok("https://chat.example.org", "chat.example.org")
    assert ok("https://chat.example.org", "chat.example.org:443")
    assert ok("https://chat.example.org", "127.0.0.1:8080")
    assert not ok("https://chat.example.org", "evil.example")
    assert not ok("http://chat.example.org", "chat.example.org")
    assert not ok("http://127.0.0.1:8080", "127.0.0.1:8080")
