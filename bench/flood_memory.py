"""The server's memory through floods of big messages: what its encoded-message caches hold.

Runs ``roomcast serve`` (history in memory) in a child process, connects line and WebSocket
readers to #general, and has senders flood it with messages of ``--size`` characters, in
``--floods`` rounds of ``--messages`` each. After each round (every reader has read its last
message) it prints the child's resident memory (VmRSS) and its peak (VmHWM).

    python bench/flood_memory.py [--size 4000] [--messages 5000] [--floods 3]
                                 [--line 20] [--ws 20] [--senders 4] [-- SERVE FLAGS...]

Everything stays on 127.0.0.1 and every wait is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import proc_status_bytes

LISTENING = re.compile(r".*listening (line|http)=127\.0\.0\.1:(\d+)")
TIMEOUT = 120.0  # seconds any one round may take
MIB = 1024 * 1024


async def start(extra: list[str]) -> tuple[asyncio.subprocess.Process, int, int]:
    """The server child, its line port and its HTTP port."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roomcast.cli",
        "serve",
        "--store",
        "memory:",
        "--port",
        "0",
        "--http-port",
        "0",
        "--rate",
        "1000000",
        "--burst",
        "1000000",
        "--max-per-address",  # every client comes from 127.0.0.1
        "0",
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ROOMCAST_LOG_LEVEL": "INFO"},  # the listening lines
    )
    assert child.stderr is not None
    ports: dict[str, int] = {}
    async with asyncio.timeout(20):
        while len(ports) < 2:
            raw = await child.stderr.readline()
            if not raw:
                raise SystemExit("the server exited before listening")
            if m := LISTENING.match(raw.decode()):
                ports[m.group(1)] = int(m.group(2))
    asyncio.get_running_loop().create_task(drain(child.stderr))
    return child, ports["line"], ports["http"]


async def drain(stream: asyncio.StreamReader) -> None:
    """Read the child's log so that it never blocks on a full pipe."""
    while await stream.readline():
        pass


async def line_client(port: int, name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A named line client in #general, its greeting and welcome read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    writer.write(f"{name}\n".encode())
    async with asyncio.timeout(10):
        while not (await reader.readline()).startswith(f"[#general] --> {name} joined".encode()):
            pass
    return reader, writer


async def line_reader(reader: asyncio.StreamReader, marker: bytes) -> None:
    """Read lines until the one holding ``marker``."""
    async with asyncio.timeout(TIMEOUT):
        while marker not in await reader.readline():
            pass


async def ws_reader(ws: aiohttp.ClientWebSocketResponse, marker: str) -> None:
    """Read frames until one holding ``marker``."""
    async with asyncio.timeout(TIMEOUT):
        while marker not in await ws.receive_str():
            pass


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4000, help="characters a message")
    parser.add_argument("--messages", type=int, default=5000, help="messages a flood")
    parser.add_argument("--floods", type=int, default=3)
    parser.add_argument("--line", type=int, default=20, help="line readers")
    parser.add_argument("--ws", type=int, default=20, help="WebSocket readers")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("serve", nargs="*", help="flags for roomcast serve (after --)")
    args = parser.parse_args()

    child, line_port, http_port = await start(args.serve)
    writers: list[asyncio.StreamWriter] = []
    try:
        async with aiohttp.ClientSession() as http:
            readers = [await line_client(line_port, f"r{i}") for i in range(args.line)]
            writers += [w for _, w in readers]
            sockets = []
            for i in range(args.ws):
                ws = await http.ws_connect(f"http://127.0.0.1:{http_port}/ws", max_msg_size=0)
                await ws.send_json({"type": "hello", "name": f"w{i}"})
                sockets.append(ws)
            senders = [await line_client(line_port, f"s{i}") for i in range(args.senders)]
            writers += [w for _, w in senders]
            rss = proc_status_bytes(child.pid, "VmRSS")
            print(f"before: rss {rss / MIB:.1f} MiB", flush=True)
            per_sender = args.messages // args.senders
            for flood in range(args.floods):
                marker = f"end-of-flood-{flood}"
                waits = [line_reader(r, marker.encode()) for r, _ in readers]
                waits += [ws_reader(ws, marker) for ws in sockets]
                waits += [line_reader(r, marker.encode()) for r, _ in senders]
                tasks = [asyncio.ensure_future(w) for w in waits]
                for n, (_, writer) in enumerate(senders):
                    body = "".join(
                        f"{flood}-{n}-{i} ".ljust(args.size, "x") + "\n" for i in range(per_sender)
                    )
                    writer.write(body.encode())
                await asyncio.gather(*(w.drain() for _, w in senders))
                senders[0][1].write(f"{marker}\n".encode())
                await asyncio.gather(*tasks)
                rss = proc_status_bytes(child.pid, "VmRSS")
                hwm = proc_status_bytes(child.pid, "VmHWM")
                print(
                    f"flood {flood + 1}: rss {rss / MIB:.1f} MiB, peak {hwm / MIB:.1f} MiB",
                    flush=True,
                )
            for ws in sockets:
                await ws.close()
    finally:
        for writer in writers:
            writer.close()
        with contextlib.suppress(ProcessLookupError):
            child.terminate()
        await child.wait()


if __name__ == "__main__":
    asyncio.run(main())
