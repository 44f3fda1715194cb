"""End to end: which pages may open a WebSocket, over real sockets with aiohttp's client.

A browser sends ``Origin`` (the page's scheme, host and port) and ``Host`` (the name it
resolved) with every WebSocket handshake. A page on another site is refused by its Origin;
a page on a name the attacker controls that resolves to this server (DNS rebinding) has an
Origin and a Host that agree with each other, and is refused because the name is not this
server's. Clients that send no Origin (scripts, bots) are not browsers and may connect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from roomcast.server import Server
from tests.e2e.conftest import TIMEOUT, LogWatch, StartServer


@pytest.fixture
async def http(start_server: StartServer) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client, closed before the servers are stopped."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT * 2)) as session:
        yield session


async def handshake(
    http: aiohttp.ClientSession, server: Server, *, origin: str | None, host: str | None = None
) -> int:
    """Open ``/ws`` with this ``Origin`` and ``Host`` (by default the address dialled); the
    HTTP status of the answer: 101 when the WebSocket opened (it is closed again at once)."""
    assert server.web is not None
    headers = {} if host is None else {"Host": host}
    try:
        async with http.ws_connect(
            f"ws://127.0.0.1:{server.web.port}/ws", origin=origin, headers=headers
        ) as ws:
            await ws.send_json({"type": "ping", "id": 1})
            assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "pong"
            return 101
    except aiohttp.WSServerHandshakeError as e:
        return e.status


async def test_a_page_on_a_rebound_name_cannot_open_a_websocket(
    server: Server, http: aiohttp.ClientSession, log_watch: LogWatch
) -> None:
    """DNS rebinding: a page at http://evil.example:PORT whose name now resolves to this
    server sends an Origin matching its Host; neither is this server's name: 403."""
    assert server.web is not None
    port = server.web.port
    rebound = f"evil.example:{port}"
    assert await handshake(http, server, origin=f"http://{rebound}", host=rebound) == 403
    assert any("origin refused" in m and "evil.example" in m for m in log_watch.messages)


async def test_a_page_of_another_scheme_cannot_open_a_websocket(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """The listener serves http: an https:// Origin with the same host and port is another
    origin, refused."""
    assert server.web is not None
    port = server.web.port
    assert await handshake(http, server, origin=f"https://127.0.0.1:{port}") == 403


async def test_the_own_page_scripts_and_loopback_names_may_open_a_websocket(
    server: Server, http: aiohttp.ClientSession
) -> None:
    """The page's own origin, a loopback name of the listener (localhost), and a client with
    no Origin are accepted; a foreign Host under the own Origin is not."""
    assert server.web is not None
    port = server.web.port
    assert await handshake(http, server, origin=f"http://127.0.0.1:{port}") == 101
    local = f"localhost:{port}"
    assert await handshake(http, server, origin=f"http://{local}", host=local) == 101
    assert await handshake(http, server, origin=None) == 101
    foreign = f"evil.example:{port}"
    assert await handshake(http, server, origin=f"http://127.0.0.1:{port}", host=foreign) == 403


async def test_behind_a_proxy_the_public_origin_is_checked_by_scheme_and_host(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """With --public-origin https://chat.example.org, that origin may connect (through a
    proxy that passes Host on, or one that does not); the same name over http, another
    name, or a foreign Host under the public Origin may not."""
    server = await start_server(public_origin="https://Chat.Example.org:443/")
    public = "https://chat.example.org"
    assert await handshake(http, server, origin=public, host="chat.example.org") == 101
    assert await handshake(http, server, origin=public) == 101  # Host: the proxy's upstream
    assert await handshake(http, server, origin="http://chat.example.org") == 403
    assert await handshake(http, server, origin="https://evil.example") == 403
    assert await handshake(http, server, origin=public, host="evil.example") == 403


async def test_several_public_origins_may_be_given_separated_by_commas(
    start_server: StartServer, http: aiohttp.ClientSession
) -> None:
    """--public-origin takes a comma-separated list: each may connect, the listener's own
    address (not among them) may not."""
    server = await start_server(public_origin="https://chat.example.org, http://10.0.0.5:8080")
    assert server.web is not None
    assert await handshake(http, server, origin="https://chat.example.org") == 101
    assert await handshake(http, server, origin="http://10.0.0.5:8080") == 101
    own = f"http://127.0.0.1:{server.web.port}"
    assert await handshake(http, server, origin=own) == 403


@pytest.mark.parametrize("bad", ["chat.example.org", "ftp://chat.example.org", "https://x/path"])
async def test_a_public_origin_that_is_not_an_origin_stops_the_start(
    start_server: StartServer, bad: str
) -> None:
    """A --public-origin without a scheme, of another scheme, or with a path is refused at
    start with a message naming it."""
    with pytest.raises(ValueError, match="public-origin"):
        await start_server(public_origin=bad)
