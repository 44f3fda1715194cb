"""A connection flood from one address against a server with 1,024 open files.

In a fresh ``roomcast serve`` (memory store) whose open-files limit is 1,024, soft and hard
(as on many hosts):

1. a user (from 127.0.0.5) names itself and is in ``#general``;
2. the flood opens N line connections (``--connections``, 1,100) from 127.0.0.1, 50 at a time,
   and never sends a name; each is classed by its first line within 1 s: greeted, refused
   with a reason (``! ...``), or nothing;
3. a newcomer from 127.0.0.2 connects: does it get the greeting, and how fast;
4. the user says something: does it still come back.

Everything it opened is closed at the end. ``--src`` runs another checkout's sources (for a
before/after comparison). Run ``python bench/conn_flood.py`` (a few seconds; a server that
stops accepting makes each of the connections it does not take wait 1 s).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import resource
import sys
import tempfile
import time

LISTENING = re.compile(r".* listening line=127\.0\.0\.1:(\d+)")
FILES = 1024  # the server's open-files limit, soft and hard


def limit_files() -> None:
    """In the child, before exec: the common limit of open files."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def first_line(port: int, source: str) -> tuple[bytes, Connection | None]:
    """Connect from ``source``; the first line the server sends within 1 s (b"" if none)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 1.0
        )
    except (OSError, TimeoutError):
        return b"", None
    try:
        return await asyncio.wait_for(reader.readline(), 1.0), (reader, writer)
    except (OSError, TimeoutError):
        return b"", (reader, writer)


async def run(args: argparse.Namespace) -> None:
    data = tempfile.mkdtemp(prefix="roomcast-conn-flood-")
    env = {
        **os.environ,
        "PYTHONPATH": args.src,
        "ROOMCAST_STORE": "memory:",
        "ROOMCAST_DATA_DIR": data,
        "ROOMCAST_PORT": "0",
        "ROOMCAST_HTTP_PORT": "-1",
        "ROOMCAST_LOG_LEVEL": "INFO",  # the listening line
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomcast.cli", "serve",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_files,
        env=env,
    )  # fmt: skip
    assert child.stderr is not None
    writers: list[asyncio.StreamWriter] = []
    try:
        async with asyncio.timeout(30):
            while not (m := LISTENING.match((await child.stderr.readline()).decode())):
                pass
        port = int(m.group(1))
        drain = asyncio.create_task(child.stderr.read())  # the log, never a full pipe
        greeting, user = await first_line(port, "127.0.0.5")
        assert user is not None and greeting.startswith(b"-- welcome"), greeting
        writers.append(user[1])
        user[1].write(b"alice\n")
        classes: collections.Counter[str] = collections.Counter()
        refusal = b""
        start = time.monotonic()
        for done in range(0, args.connections, 50):
            batch = min(50, args.connections - done)
            lines = await asyncio.gather(*[first_line(port, "127.0.0.1") for _ in range(batch)])
            for line, conn in lines:
                if conn is not None:
                    writers.append(conn[1])
                if line.startswith(b"-- welcome"):
                    classes["greeted"] += 1
                elif line.startswith(b"!"):
                    classes["refused with a reason"] += 1
                    refusal = refusal or line
                else:
                    classes["nothing"] += 1
        flood = time.monotonic() - start
        start = time.monotonic()
        line, newcomer = await first_line(port, "127.0.0.2")
        waited = time.monotonic() - start
        if newcomer is not None:
            writers.append(newcomer[1])
        user[1].write(b"still here?\n")
        echoed = False
        try:
            async with asyncio.timeout(3):
                for _ in range(100):
                    if b"alice: still here?" in await user[0].readline():
                        echoed = True
                        break
        except (OSError, TimeoutError):
            pass
    finally:
        for writer in writers:
            writer.close()
        child.terminate()
        await child.wait()
    drain.cancel()
    print(f"server: {args.src} (open files: {FILES})")
    print(f"{args.connections} idle connections from 127.0.0.1 in {flood:.1f} s: {dict(classes)}")
    if refusal:
        print(f"  refused with: {refusal.decode().strip()}")
    print(f"a newcomer from 127.0.0.2: {line.decode().strip() or 'nothing'!r} in {waited:.2f} s")
    print(f"a user online before: its message {'comes back' if echoed else 'does not come back'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1100, help="idle connections")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--src", default=os.path.join(here, "src"), help="roomcast sources")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
