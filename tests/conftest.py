"""Real storage conditions for the tests of storage failures: a disk that fills up, a folder
that turns read-only. Nothing is mocked: the store meets what a server on a full or read-only
disk meets, from the kernel.

A small tmpfs needs ``mount``, so root (with CAP_SYS_ADMIN): without it the tests that need
one are skipped, saying why. A read-only folder is permissions taken away, or a read-only
bind mount for root, whom permissions do not bind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["SmallDisk", "read_only"]

DISK_SIZE = 4 * 1024 * 1024  # bytes: room for a fresh store and its write-ahead log


def _mount(*args: str) -> str | None:
    """Run ``mount`` with ``args``; ``None`` if it worked, else why not."""
    try:
        done = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[0]


def _unmount(where: Path) -> None:
    # lazy: a store a failed test left open must not keep the mount (nor fail the teardown)
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=10, check=False)


class SmallDisk:
    """A tmpfs of ``DISK_SIZE`` bytes at ``path``: a file system that really fills up."""

    def __init__(self, path: Path) -> None:
        self.path = path  # where it is mounted
        self._filler = path / "filler"  # the file that takes every block left

    def fill(self) -> None:
        """Take every free block, as other programs filling the disk would; then a write
        that needs a block more fails with ENOSPC."""
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        page = b"\0" * 4096  # tmpfs gives out pages: a page at a time takes them all
        try:
            for _ in range(DISK_SIZE // len(page) + 2):  # bounded: no more pages than exist
                try:
                    os.write(fd, page)
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        return
                    raise
        finally:
            os.close(fd)
        raise AssertionError(f"{self.path} never filled up")

    def free(self) -> None:
        """Give the blocks back."""
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A small tmpfs under ``tmp_path``, unmounted after the test (ask for it before the
    fixtures that start servers on it, so that it outlives them); skips the test when this
    process may not mount one."""
    where = tmp_path / "disk"
    where.mkdir()
    why = _mount("-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(where))
    if why is not None:
        pytest.skip(f"a full disk is a small tmpfs, and mounting one failed: {why}")
    try:
        yield SmallDisk(where)
    finally:
        _unmount(where)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make ``folder`` and the files in it read-only for new opens, until the block ends.

    Files already open keep working, as on a server whose disk is remounted read-only
    under it: what changes is what the path gives. Permissions are taken away; where they
    do not bind this process (root), the folder is bind-mounted read-only over itself; where
    neither can be done, the test is skipped.
    """
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}
    for p, mode in modes.items():
        p.chmod(mode & ~0o222)
    try:
        if not os.access(folder, os.W_OK):  # permissions bind us
            yield
            return
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    why = _mount("--bind", str(folder), str(folder))
    if why is None:
        why = _mount("-o", "remount,bind,ro", str(folder))
        if why is not None:
            _unmount(folder)
    if why is not None:
        pytest.skip(f"a read-only folder needs permissions that bind, or a mount: {why}")
    try:
        yield
    finally:
        _unmount(folder)
