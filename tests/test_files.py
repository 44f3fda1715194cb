"""Private files: a directory roomcast makes is 0700, a file 0600, whatever the umask."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomcast.files import narrow, private_dir, private_file


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The umask most systems give: files world-readable unless made otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_directory_is_0700_and_its_missing_parents_are_made(tmp_path: Path) -> None:
    """The directory itself is 0700; the parents made on the way get the usual mode."""
    path = tmp_path / "share" / "roomcast"
    private_dir(path)
    assert mode(path) == 0o700
    assert mode(path.parent) == 0o755


def test_an_existing_directory_is_left_as_it_is(tmp_path: Path) -> None:
    """A directory that exists may be shared on purpose: its mode is not changed."""
    path = tmp_path / "shared"
    path.mkdir(mode=0o777)
    path.chmod(0o1777)
    private_dir(path)
    assert mode(path) == 0o1777


def test_a_new_file_is_empty_and_0600(tmp_path: Path) -> None:
    """A missing file is made, empty, readable and writable by its owner only."""
    path = tmp_path / "chat.db"
    private_file(path)
    assert path.read_bytes() == b"" and mode(path) == 0o600


def test_an_existing_file_keeps_its_content_and_loses_the_permissions_of_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 0644 file becomes 0600, its bytes untouched, and the log says what changed."""
    path = tmp_path / "chat.db"
    path.write_bytes(b"history")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="roomcast.files"):
        private_file(path)
    assert path.read_bytes() == b"history" and mode(path) == 0o600
    assert caplog.messages == [f"narrowed the permissions of {path} from 0644 to 0600"]


def test_narrow_keeps_the_owner_bits_and_is_quiet_when_nothing_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0755 becomes 0700; a file already private, or missing, is left alone silently."""
    script = tmp_path / "run"
    script.write_bytes(b"")
    script.chmod(0o755)
    private = tmp_path / "key"
    private.write_bytes(b"k")
    private.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="roomcast.files"):
        narrow(script)
        narrow(private)
        narrow(tmp_path / "missing")
    assert mode(script) == 0o700 and mode(private) == 0o600
    assert len(caplog.messages) == 1
