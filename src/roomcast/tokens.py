"""Signed, expiring login tokens: ``base64url(payload) "." base64url(HMAC-SHA256(payload))``.

The payload is the JSON ``{"a": account id, "g": generation, "e": expiry}`` (UTC seconds). A
token proves that the server logged the account in before ``expiry``, when the account's
token generation was ``g``; it carries no password and no name. The signature is all this
module checks: whether the account still exists and still has that generation (no password
change, no "log out everywhere" since) is the hub's check, made on every use
(``Hub.authenticate``). Naming the account by its id, which is never reused, keeps a token
from passing to a later account of the same name.

The signing key is 32 random bytes kept in the data directory (``secret.key``, mode 0600, in
a directory made 0700: ``roomcast.files``), so tokens outlive a restart; without a data
directory a key is made per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from roomcast.errors import ClientError
from roomcast.files import narrow, private_dir

__all__ = ["Claims", "Tokens", "load_key"]

_MAX_ID = 64  # characters in an account id claim
_MAX_GENERATION = 2**53  # generations beyond are not a counter of ours

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Claims:
    """What a correctly signed, unexpired token says."""

    account: str  # the account's id (``Account.id``)
    generation: int  # the account's token generation when the token was issued


def _valid_id(value: object) -> bool:
    return (
        isinstance(value, str) and 0 < len(value) <= _MAX_ID and value.isascii() and value.isalnum()
    )


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

    def issue(self, account: str, generation: int) -> str:
        """A token for the account with id ``account`` at token ``generation``, valid for
        ``ttl`` seconds."""
        claims = {"a": account, "g": generation, "e": int(self._clock() + self.ttl)}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> Claims:
        """What ``token`` says, if this key signed it and it has not expired; else
        ``ClientError`` ``bad_token`` or ``expired_token``. Tokens of the older
        ``{"n": name}`` form are ``bad_token``: they named no account id."""
        bad = ClientError("bad_token", "the token is not valid: log in again")
        payload, dot, signature = token.partition(".")
        if not dot or not payload.isascii() or not signature.isascii():
            raise bad
        if not hmac.compare_digest(self._sign(payload), signature):
            raise bad
        try:
            claims = json.loads(_unb64(payload))
            account, generation, expiry = claims["a"], claims["g"], claims["e"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise bad from None
        if not _valid_id(account) or type(expiry) is not int or type(generation) is not int:
            raise bad
        if not 0 <= generation < _MAX_GENERATION:
            raise bad
        if expiry <= self._clock():
            raise ClientError("expired_token", "the token has expired: log in again")
        return Claims(account=account, generation=generation)
