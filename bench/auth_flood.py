"""A registration flood against a real server: how long a real login waits, and peak memory.

In a fresh ``roomcast serve`` (memory store, the default argon2id cost of 64 MiB and 3
passes) with one registered account:

1. time a login of that account alone (the baseline);
2. send N registrations at once (``--flood``, 100), from ``--addresses`` source addresses
   on the loopback (127.0.0.2 ...: a flood from many addresses, which a per-address limit
   alone does not stop), and while they are answered, time the account's login again;
3. print how the registrations were answered (201, 429, 503), the seconds the login took
   during the flood, and the server's peak RSS (``VmHWM``) before and after.

``--src`` runs another checkout's sources (for a before/after comparison). Run
``python bench/auth_flood.py`` (about 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import proc_status_bytes

LISTENING = re.compile(r".* listening http=127\.0\.0\.1:(\d+)")
PASSWORD = "correct horse battery"


async def start(src: str, data: str) -> tuple[asyncio.subprocess.Process, int]:
    """Start the server from ``src``; the process and its HTTP port."""
    env = {
        **os.environ,
        "PYTHONPATH": src,
        "ROOMCAST_STORE": "memory:",
        "ROOMCAST_DATA_DIR": data,
        "ROOMCAST_PORT": "0",
        "ROOMCAST_HTTP_PORT": "0",
        "ROOMCAST_LOG_LEVEL": "WARNING",
        # the flood's connections from one address are the bench's (a variable: a tree
        # without this setting ignores it)
        "ROOMCAST_MAX_PER_ADDRESS": "0",
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "roomcast.cli", "serve", "--log-level", "INFO",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert child.stderr is not None
    async with asyncio.timeout(30):
        while True:
            line = (await child.stderr.readline()).decode()
            if not line:
                raise SystemExit("the server exited before listening")
            if m := LISTENING.match(line):
                asyncio.get_running_loop().create_task(drain(child.stderr))
                return child, int(m.group(1))


async def drain(stream: asyncio.StreamReader) -> None:
    """Read the server's log so that its pipe never fills."""
    while await stream.readline():
        pass


async def call(session: aiohttp.ClientSession, url: str, name: str) -> tuple[int, float]:
    """POST {name, password} to ``url``; the status and the seconds it took."""
    begun = time.perf_counter()
    async with session.post(url, json={"name": name, "password": PASSWORD}) as resp:
        await resp.read()
        return resp.status, time.perf_counter() - begun


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as data:
        child, port = await start(args.src, data)
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as me:
                status, _ = await call(me, base + "/api/register", "alice")
                assert status == 201, status
                status, alone = await call(me, base + "/api/login", "alice")
                assert status == 200, status
                before = proc_status_bytes(child.pid, "VmHWM")
                sessions = [
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(
                            local_addr=(f"127.0.0.{2 + i % args.addresses}", 0)
                        )
                    )
                    for i in range(args.addresses)
                ]
                try:
                    flood = [
                        asyncio.ensure_future(
                            call(sessions[i % args.addresses], base + "/api/register", f"bot{i}")
                        )
                        for i in range(args.flood)
                    ]
                    await asyncio.sleep(0.05)  # the flood is in the server's hands
                    login_status, during = await call(me, base + "/api/login", "alice")
                    answers = await asyncio.gather(*flood)
                finally:
                    for s in sessions:
                        await s.close()
                after = proc_status_bytes(child.pid, "VmHWM")
        finally:
            child.terminate()
            await child.wait()
    counts = collections.Counter(status for status, _ in answers)
    slowest = max(seconds for _, seconds in answers)
    print(f"server: {args.src}")
    print(f"login alone: {alone:.2f} s")
    print(f"flood of {args.flood} registrations from {args.addresses} addresses:")
    print(f"  answers: {dict(sorted(counts.items()))}; the slowest took {slowest:.1f} s")
    print(f"  a login during it: {login_status} in {during:.2f} s")
    print(f"peak RSS: {before / 2**20:.0f} MiB before, {after / 2**20:.0f} MiB after")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=100, help="registrations sent at once")
    parser.add_argument("--addresses", type=int, default=100, help="source addresses (<= 250)")
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--src", default=os.path.join(here, "src"), help="roomcast sources")
    args = parser.parse_args()
    if not 1 <= args.addresses <= 250:
        parser.error("--addresses must be 1-250")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
