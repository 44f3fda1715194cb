"""Signed, expiring login tokens: ``base64url(payload) "." base64url(HMAC-SHA256(payload))``.

The payload is the JSON ``{"n": name, "e": expiry}`` (UTC seconds). A token proves that the
server logged ``name`` in before ``expiry``; it carries no password. The signing key is 32
random bytes kept in the data directory (``secret.key``, mode 0600, in a directory made
0700: ``roomcast.files``), so tokens outlive a restart; without a data directory a key is
made per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from roomcast.errors import ClientError
from roomcast.files import narrow, private_dir
from roomcast.model import user_name

__all__ = ["Tokens", "load_key"]

_KEY_FILE = "secret.key"


def load_key(data_dir: str | None) -> bytes:
    """The signing key in ``data_dir`` (made on first use), or a fresh one without a dir."""
    if data_dir is None:
        return os.urandom(32)
    path = Path(data_dir) / _KEY_FILE
    try:
        key = path.read_bytes()
        narrow(path)  # an older version may have left it readable by others
    except FileNotFoundError:
        private_dir(path.parent)
        key = os.urandom(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    if len(key) < 32:
        raise ValueError(f"{path} holds {len(key)} bytes; a signing key needs 32")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """Issues and checks tokens signed with one key."""

    def __init__(
        self, key: bytes, *, ttl: float = 7 * 86400, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key  # HMAC-SHA256 key
        self.ttl = ttl  # seconds a token is valid
        self._clock = clock  # UTC seconds; injected for tests

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, name: str) -> str:
        """A token for ``name``, valid for ``ttl`` seconds."""
        body = json.dumps({"n": name, "e": int(self._clock() + self.ttl)}, separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> str:
        """The name ``token`` was issued for; ``ClientError`` ``bad_token`` or ``expired_token``."""
        bad = ClientError("bad_token", "the token is not valid: log in again")
        payload, dot, signature = token.partition(".")
        if not dot or not payload.isascii() or not signature.isascii():
            raise bad
        if not hmac.compare_digest(self._sign(payload), signature):
            raise bad
        try:
            claims = json.loads(_unb64(payload))
            name, expiry = claims["n"], claims["e"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise bad from None
        if not isinstance(name, str) or type(expiry) is not int:
            raise bad
        try:
            user_name(name)
        except ClientError:
            raise bad from None
        if expiry <= self._clock():
            raise ClientError("expired_token", "the token has expired: log in again")
        return name
