"""docs/protocol.md against the code: every line command and every error code is documented."""

from __future__ import annotations

import re
from pathlib import Path

from roomcast.wire.line import HELP

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()
SOURCES = sorted((ROOT / "src" / "roomcast").rglob("*.py"))

# Where the code names an error code: a ClientError (or a subclass's __init__), an Error
# event, or a JSON error object built by an HTTP handler.
_CODE = re.compile(
    r"""(?:ClientError\(|super\(\).__init__\(|Error\(code=|"code":)\s*"([a-z_]+)\"""", re.S
)


def error_codes() -> set[str]:
    """Every error code the server can send, as the source spells it."""
    return {code for path in SOURCES for code in _CODE.findall(path.read_text())}


def test_every_command_of_help_is_in_the_protocol_command_table() -> None:
    """Each command /help lists (/history, /search, /register, /login... included) has a row
    in docs/protocol.md's command table."""
    helped = set(re.findall(r"^--\s+/(\w+)", HELP, re.M))
    table = PROTOCOL[PROTOCOL.index("## Commands") : PROTOCOL.index("## What the server sends")]
    documented = set(re.findall(r"^\| `/(\w+)", table, re.M))
    assert {"join", "history", "search", "register", "login", "logout"} <= helped
    assert helped - documented == set()


def test_every_error_code_the_server_sends_is_documented() -> None:
    """Every error code in the source (bad_request included) appears in docs/protocol.md."""
    codes = error_codes()
    assert {"bad_request", "no_such_room", "flood", "line_too_long"} <= codes
    assert {c for c in codes if f"`{c}`" not in PROTOCOL} == set()
