"""Files for the server's user only: the data directory, the database and the token key.

The database holds password hashes and private messages, and the key signs login tokens:
another local user must read neither. Whatever the umask, a directory roomcast makes is
0700 and a file it makes is 0600. SQLite gives a database's ``-wal`` and ``-shm`` files the
permissions of the database file itself, so creating the database 0600 before SQLite opens
it covers them too, with no process-wide umask to change (which would race other threads).

A file that already exists with permissions for others (an older roomcast made its files
0644) is narrowed to its owner's bits, with a warning in the log. A directory that already
exists is left as it is: it may be shared on purpose (``sqlite:/tmp/chat.db``), and once
its files are private it shows only their names.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["narrow", "private_dir", "private_file"]

log = logging.getLogger("roomcast.files")

DIR_MODE = 0o700  # a directory roomcast makes
FILE_MODE = 0o600  # a file roomcast makes


def private_dir(path: Path) -> None:
    """Make the directory ``path`` 0700 if it is missing (its missing parents get the usual
    permissions); leave it as it is if it exists."""
    try:
        path.mkdir(mode=DIR_MODE, parents=True)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)  # mkdir's mode passes through the umask, which may narrow it


def private_file(path: Path) -> None:
    """Make ``path`` an empty 0600 file if it is missing; narrow it if it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        narrow(path)
    else:
        os.close(fd)


def narrow(path: Path) -> None:
    """Take away every permission of others on ``path`` (a missing file is fine), and say so
    in the log; a file that cannot be changed (not ours) gets a warning instead."""
    try:
        old = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if not old & 0o077:
        return
    new = old & 0o700
    try:
        os.chmod(path, new)
    except OSError as e:
        log.warning("%s is readable by others (mode %04o) and cannot be changed: %s", path, old, e)
        return
    log.warning("narrowed the permissions of %s from %04o to %04o", path, old, new)
