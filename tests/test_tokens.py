"""Login tokens: signing, checking, expiry, garbage, and the signing key on disk.

What a token names is checked here; whether that account still has that generation is the
hub's check (``tests/test_accounts.py``)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomcast.errors import ClientError
from roomcast.tokens import Claims, Tokens, load_key

KEY = bytes(range(32))  # a fixed signing key
NOW = 1_700_000_000.0  # the injected clock's start
ALICE = "0f3a9c2e4b7d1a6e8c5f2b90"  # an account id, as the stores make them
CLAIMS = Claims(account=ALICE, generation=3)  # what a token for ALICE at generation 3 says


class Clock:
    """A settable clock for ``Tokens``."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now  # the time it reads

    def __call__(self) -> float:
        return self.now


def b64(data: bytes) -> str:
    """URL-safe base64 without padding, as tokens spell it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def signed(payload: str, key: bytes = KEY) -> str:
    """A token of ``payload`` (already base64) with a valid signature under ``key``."""
    signature = hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest()
    return f"{payload}.{b64(signature)}"


def code_of(tokens: Tokens, token: str) -> str:
    """The error code ``verify`` refuses ``token`` with (fails if it accepts it)."""
    with pytest.raises(ClientError) as caught:
        tokens.verify(token)
    return caught.value.code


# --- round trip -------------------------------------------------------------------------------


def test_an_issued_token_verifies_to_its_account_and_generation() -> None:
    """verify(issue(id, generation)) is those claims, for as long as the token is valid."""
    clock = Clock()
    tokens = Tokens(KEY, ttl=60, clock=clock)
    token = tokens.issue(ALICE, 3)
    assert tokens.verify(token) == CLAIMS
    clock.now += 59.0
    assert tokens.verify(token) == CLAIMS
    assert tokens.verify(tokens.issue(ALICE, 0)) == Claims(account=ALICE, generation=0)


def test_a_token_carries_no_name() -> None:
    """The payload names the account by id only: a later account of the same name, which
    has another id, cannot be reached with it."""
    payload = Tokens(KEY).issue(ALICE, 3).partition(".")[0]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(claims) == {"a", "g", "e"} and claims["a"] == ALICE


def test_a_signed_token_of_the_older_name_form_is_bad_token() -> None:
    """A token issued before tokens named account ids ({"n": name}) is refused: it cannot
    be revoked, so its holder must log in again."""
    token = signed(b64(b'{"n":"alice","e":9999999999}'))
    assert code_of(Tokens(KEY, clock=Clock()), token) == "bad_token"


def test_a_token_is_two_ascii_base64url_parts() -> None:
    """A token is payload.signature, URL-safe and without padding: it fits a header or a URL."""
    token = Tokens(KEY).issue(ALICE, 0)
    payload, dot, signature = token.partition(".")
    assert dot and payload and signature and "." not in signature
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert set(payload + signature) <= allowed


def test_a_token_from_another_key_is_bad() -> None:
    """A token signed with another key is refused as bad_token."""
    other = Tokens(bytes(32)).issue(ALICE, 3)
    assert code_of(Tokens(KEY), other) == "bad_token"


def test_a_token_survives_a_new_tokens_object_with_the_same_key() -> None:
    """Tokens depend only on the key: another instance (a restart) accepts them."""
    token = Tokens(KEY).issue(ALICE, 3)
    assert Tokens(KEY).verify(token) == CLAIMS


# --- tampering --------------------------------------------------------------------------------


def test_a_tampered_payload_is_bad() -> None:
    """Changing the payload (another account, a later generation or expiry) breaks the
    signature."""
    tokens = Tokens(KEY, clock=Clock())
    payload, _, signature = tokens.issue(ALICE, 3).partition(".")
    forged = b64(b'{"a":"0f3a9c2e4b7d1a6e8c5f2b90","g":4,"e":9999999999}')
    assert code_of(tokens, f"{forged}.{signature}") == "bad_token"
    flipped = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    assert code_of(tokens, f"{flipped}.{signature}") == "bad_token"


def test_a_tampered_signature_is_bad() -> None:
    """Any change to the signature, or its loss, is refused."""
    tokens = Tokens(KEY, clock=Clock())
    payload, _, signature = tokens.issue(ALICE, 3).partition(".")
    for bad in (
        signature[:-1] + ("A" if signature[-1] != "A" else "B"),
        signature[:-2],
        signature + "A",
        "",
        signature.upper(),
    ):
        assert code_of(tokens, f"{payload}.{bad}") == "bad_token", bad


# --- expiry -----------------------------------------------------------------------------------


def test_a_token_expires_after_its_ttl() -> None:
    """At and after issue time + ttl, the token is expired_token, not bad_token."""
    clock = Clock()
    tokens = Tokens(KEY, ttl=3600, clock=clock)
    token = tokens.issue(ALICE, 3)
    clock.now += 3600
    assert code_of(tokens, token) == "expired_token"
    clock.now += 86400 * 365
    assert code_of(tokens, token) == "expired_token"


def test_the_expired_error_tells_the_user_to_log_in_again() -> None:
    """The expired message is a sentence saying what to do."""
    clock = Clock()
    tokens = Tokens(KEY, ttl=1, clock=clock)
    token = tokens.issue(ALICE, 3)
    clock.now += 2
    with pytest.raises(ClientError, match="log in again"):
        tokens.verify(token)


def test_a_zero_or_negative_ttl_issues_tokens_that_are_already_expired() -> None:
    """ttl <= 0 makes tokens that never verify (a server with token_days=0 logs nobody in)."""
    for ttl in (0.0, -86400.0):
        tokens = Tokens(KEY, ttl=ttl, clock=Clock(NOW + 0.9))
        assert code_of(tokens, tokens.issue(ALICE, 3)) == "expired_token"


# --- garbage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "nodot",
        "a.b",
        "a.b.c",
        "é.é",
        "caf\u00e9.sig",
        "abc.\u00e9t\u00e9",
        "\x00.\x00",
        "!!!!.????",
        "e30.",  # "{}" without a signature
        " " + Tokens(KEY).issue(ALICE, 3),
        Tokens(KEY).issue(ALICE, 3) + "\n",
    ],
)
def test_garbage_is_bad_token(token: str) -> None:
    """Strings that are not tokens are refused as bad_token."""
    assert code_of(Tokens(KEY, clock=Clock()), token) == "bad_token"


@pytest.mark.parametrize(
    "payload",
    [
        b64(b"not json"),
        b64(b"\xff\xfe\xfd"),  # not UTF-8
        b64(b"[]"),
        b64(b'"alice"'),
        b64(b"42"),
        b64(b"null"),
        b64(b"{}"),
        b64(b'{"a":"abc","g":0}'),
        b64(b'{"g":0,"e":9999999999}'),
        b64(b'{"a":"abc","e":9999999999}'),
        b64(b'{"a":7,"g":0,"e":9999999999}'),
        b64(b'{"a":null,"g":0,"e":9999999999}'),
        b64(b'{"a":"","g":0,"e":9999999999}'),
        b64(b'{"a":"not an id","g":0,"e":9999999999}'),
        b64(b'{"a":"' + b"a" * 65 + b'","g":0,"e":9999999999}'),
        b64('{"a":"\u00e9t\u00e9","g":0,"e":9999999999}'.encode()),
        b64(b'{"a":["abc"],"g":0,"e":9999999999}'),
        b64(b'{"a":"abc","g":"0","e":9999999999}'),
        b64(b'{"a":"abc","g":-1,"e":9999999999}'),
        b64(b'{"a":"abc","g":1.5,"e":9999999999}'),
        b64(b'{"a":"abc","g":true,"e":9999999999}'),
        b64(b'{"a":"abc","g":9007199254740992,"e":9999999999}'),
        b64(b'{"a":"abc","g":0,"e":"9999999999"}'),
        b64(b'{"a":"abc","g":0,"e":9999999999.5}'),
        b64(b'{"a":"abc","g":0,"e":Infinity}'),
        b64(b'{"a":"abc","g":0,"e":null}'),
        "A",  # impossible base64 length
        "!!!!",  # not base64 at all
    ],
)
def test_a_validly_signed_payload_with_the_wrong_content_is_bad_token(payload: str) -> None:
    """Even with a correct signature, a payload that is not the documented claims is bad_token."""
    assert code_of(Tokens(KEY, clock=Clock()), signed(payload)) == "bad_token"


def test_a_boolean_expiry_claim_is_bad_token() -> None:
    """An expiry that is a JSON boolean is a wrong claim type: bad_token."""
    token = signed(b64(b'{"a":"abc","g":0,"e":true}'))
    assert code_of(Tokens(KEY, clock=Clock()), token) == "bad_token"


def test_a_signed_deeply_nested_payload_is_bad_token() -> None:
    """A payload too deeply nested to read is a bad token, not a crash."""
    token = signed(b64(b"[" * 100_000))
    assert code_of(Tokens(KEY, clock=Clock()), token) == "bad_token"


@settings(max_examples=500, deadline=None)
@given(token=st.text(max_size=120))
def test_arbitrary_text_is_refused_as_bad_token_and_nothing_else(token: str) -> None:
    """verify(any text that is not a token) raises ClientError bad_token, never another error."""
    assert code_of(Tokens(KEY, clock=Clock()), token) == "bad_token"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.characters(codec="ascii"), max_size=60),
    cut=st.integers(min_value=0, max_value=200),
)
def test_a_real_token_with_any_edit_is_refused_as_bad_token(text: str, cut: int) -> None:
    """Splicing any ASCII text into a real token gives bad_token (or, unchanged, its claims)."""
    tokens = Tokens(KEY, clock=Clock())
    token = tokens.issue(ALICE, 3)
    at = cut % (len(token) + 1)
    edited = token[:at] + text + token[at:]
    if edited == token:
        assert tokens.verify(edited) == CLAIMS
    else:
        assert code_of(tokens, edited) == "bad_token"


# --- the key file -----------------------------------------------------------------------------


def test_load_key_without_a_directory_makes_a_fresh_key_each_time() -> None:
    """No data directory: a random 32-byte key per call (per process)."""
    first, second = load_key(None), load_key(None)
    assert len(first) == len(second) == 32 and first != second


def test_load_key_creates_a_private_32_byte_key_file_and_reads_it_back(tmp_path: Path) -> None:
    """The first call writes secret.key (32 bytes, mode 0600); the next returns the same key."""
    data_dir = tmp_path / "nested" / "roomcast"
    key = load_key(str(data_dir))
    path = data_dir / "secret.key"
    assert len(key) == 32
    assert path.read_bytes() == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(str(data_dir)) == key


def test_load_key_makes_its_directory_private_and_narrows_an_open_key(tmp_path: Path) -> None:
    """A data directory load_key makes is 0700 whatever the umask; a key file others can
    read (an older version's) is made 0600 and still used."""
    data_dir = tmp_path / "roomcast"
    old = os.umask(0o022)
    try:
        key = load_key(str(data_dir))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
    path = data_dir / "secret.key"
    path.chmod(0o644)
    assert load_key(str(data_dir)) == key
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_key_from_the_file_keeps_tokens_valid_across_restarts(tmp_path: Path) -> None:
    """Tokens issued with the file's key verify with the key loaded again later."""
    token = Tokens(load_key(str(tmp_path))).issue(ALICE, 3)
    assert Tokens(load_key(str(tmp_path))).verify(token) == CLAIMS


def test_load_key_refuses_a_short_key_file(tmp_path: Path) -> None:
    """A key file under 32 bytes raises ValueError naming the file and the size."""
    (tmp_path / "secret.key").write_bytes(b"x" * 31)
    with pytest.raises(ValueError, match=r"secret\.key holds 31 bytes; a signing key needs 32"):
        load_key(str(tmp_path))
    (tmp_path / "secret.key").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 0 bytes"):
        load_key(str(tmp_path))


def test_load_key_keeps_an_existing_key_file_as_it_is(tmp_path: Path) -> None:
    """An existing key file is read, never rewritten."""
    path = tmp_path / "secret.key"
    path.write_bytes(bytes(range(40)))
    assert load_key(str(tmp_path)) == bytes(range(40))
    assert path.read_bytes() == bytes(range(40))
