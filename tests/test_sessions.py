"""The session cookie: signed, short-lived, bound to the credential it was made with, never
holding that credential or a plain hash of it; every odd cookie is refused, never raised on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes

from flask_tailnet import sessions
from flask_tailnet.secretfile import SecretFile
from flask_tailnet.sessions import (
    DEFAULT_LIFETIME,
    MAX_CLOCK_SKEW,
    MAX_COOKIE_LENGTH,
    Session,
    SessionCodec,
    SessionMethod,
)

from .conftest import TAILNET_HOST, TAILNET_PEER, call, make_app

T0 = 1_700_000_000.0
TOKEN = b"tok-4fQ0wz8Yt2V1mX9kLrP3sB7nD5hJ6cE0aG1iK2uO3y"
PASSWORD = b"correct horse battery staple"


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Credentials:
    """What ``current_credential`` answers: the credential now in force for each method."""

    current: dict[str, bytes | None] = field(
        default_factory=lambda: {"token": TOKEN, "password": PASSWORD, "pam": b"pam:login"}
    )

    def __call__(self, method: SessionMethod) -> bytes | None:
        return self.current.get(method)


@pytest.fixture
def key_file(state_dir: Path) -> SecretFile:
    return SecretFile(state_dir, "session_key")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def codec(key_file: SecretFile, clock: Clock) -> SessionCodec:
    return SessionCodec(key_file, now=clock)


@pytest.fixture
def credentials() -> Credentials:
    return Credentials()


def issue(codec: SessionCodec, method: SessionMethod = "token", user: str | None = None) -> str:
    credential = Credentials().current[method]
    assert credential is not None
    cookie = codec.issue(user=user, method=method, credential=credential)
    assert cookie is not None
    return cookie


def sign(key: bytes, segment: bytes, *, at: float = T0, salt: str | None = None) -> str:
    """``segment`` as a cookie's payload, validly signed with ``key`` at time ``at``."""

    class At(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(at)

    signer = At(key, salt=salt or "flask-tailnet session", digest_method=hashlib.sha256)
    return signer.sign(segment).decode()


def forge(key: bytes, payload: object, *, salt: str | None = None) -> str:
    """A cookie carrying ``payload`` as JSON, validly signed with ``key``."""
    return sign(key, base64_encode(json.dumps(payload)), salt=salt)


def fingerprint(codec: SessionCodec, credential: bytes) -> str:
    value = codec.fingerprint(credential)
    assert value is not None
    return value


# ---- what works ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "user"),
    [("token", None), ("password", "alice"), ("pam", "bob"), ("password", "zoë ✓")],
)
def test_round_trip(
    codec: SessionCodec, credentials: Credentials, method: SessionMethod, user: str | None
) -> None:
    cookie = issue(codec, method, user)
    assert cookie.isascii()
    assert codec.open(cookie, credentials) == Session(user=user, method=method, issued_at=int(T0))
    assert codec.open(cookie, credentials) == Session(user=user, method=method, issued_at=int(T0))


def test_key_file_is_created_private(codec: SessionCodec, key_file: SecretFile) -> None:
    issue(codec)
    assert (key_file.path.stat().st_mode & 0o777) == 0o600
    assert key_file.read() is not None


def test_another_worker_with_the_same_key_opens_the_cookie(
    codec: SessionCodec, state_dir: Path, clock: Clock, credentials: Credentials
) -> None:
    cookie = issue(codec, "password", "alice")
    other = SessionCodec(SecretFile(state_dir, "session_key"), now=clock)
    assert other.open(cookie, credentials) == Session("alice", "password", int(T0))


def test_forged_helper_matches_the_real_format(
    codec: SessionCodec, key_file: SecretFile, credentials: Credentials
) -> None:
    """The attack tables below forge with the real key; this shows a forged sound cookie opens."""
    issue(codec)
    key = key_file.ensure()
    good = forge(key, ["alice", "password", fingerprint(codec, PASSWORD)])
    assert codec.open(good, credentials) == Session("alice", "password", int(T0))


@pytest.mark.parametrize(
    "lifetime", [timedelta(hours=1), 3600, 3600.0], ids=["timedelta", "int", "float"]
)
def test_lifetime_accepts_timedelta_or_seconds(
    key_file: SecretFile, lifetime: timedelta | float
) -> None:
    assert SessionCodec(key_file, lifetime).lifetime == 3600.0


def test_default_lifetime_is_twelve_hours(key_file: SecretFile) -> None:
    assert DEFAULT_LIFETIME == 12 * 3600
    assert SessionCodec(key_file).lifetime == 12 * 3600


@pytest.mark.parametrize(
    "lifetime",
    [
        pytest.param(0, id="zero"),
        pytest.param(-1, id="negative"),
        pytest.param(timedelta(0), id="zero timedelta"),
        pytest.param(timedelta(seconds=-5), id="negative timedelta"),
        pytest.param(float("nan"), id="NaN"),
    ],
)
def test_nonpositive_lifetime_is_a_configuration_error(
    key_file: SecretFile, lifetime: timedelta | float
) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        SessionCodec(key_file, lifetime)


# ---- the credential it was made with -------------------------------------------------------


def test_rotated_token_ends_token_sessions(
    codec: SessionCodec, state_dir: Path, credentials: Credentials
) -> None:
    token_file = SecretFile(state_dir, "token")
    credentials.current["token"] = token_file.ensure()
    cookie = codec.issue(user=None, method="token", credential=token_file.ensure())
    assert codec.open(cookie, credentials) is not None
    credentials.current["token"] = token_file.rotate()
    assert codec.open(cookie, credentials) is None


@pytest.mark.parametrize(
    ("method", "now_in_force"),
    [
        pytest.param("password", b"a new password", id="password file changed"),
        pytest.param("password", PASSWORD + b"!", id="password variable changed"),
        pytest.param("token", b"new-token", id="token rotated"),
        pytest.param("password", None, id="password method no longer configured"),
        pytest.param("password", b"", id="password now empty"),
        pytest.param("token", None, id="token file now unusable"),
        pytest.param("pam", None, id="pam no longer enabled"),
    ],
)
def test_session_ends_when_its_credential_changes(
    codec: SessionCodec,
    credentials: Credentials,
    method: SessionMethod,
    now_in_force: bytes | None,
) -> None:
    cookie = issue(codec, method, "alice")
    assert codec.open(cookie, credentials) is not None
    credentials.current[method] = now_in_force
    assert codec.open(cookie, credentials) is None


def test_other_methods_survive_a_changed_credential(
    codec: SessionCodec, credentials: Credentials
) -> None:
    token_cookie = issue(codec, "token")
    credentials.current["password"] = b"changed"
    assert codec.open(token_cookie, credentials) is not None


def test_credential_checked_against_the_cookies_own_method(
    codec: SessionCodec, credentials: Credentials
) -> None:
    """A password session is not kept alive by the password also being the token."""
    cookie = issue(codec, "password", "alice")
    credentials.current["token"] = PASSWORD
    credentials.current["password"] = b"changed"
    assert codec.open(cookie, credentials) is None


def test_empty_credential_gets_no_cookie(codec: SessionCodec) -> None:
    assert codec.issue(user="alice", method="password", credential=b"") is None
    assert codec.fingerprint(b"") is None


def test_unknown_method_cannot_be_issued(codec: SessionCodec) -> None:
    with pytest.raises(ValueError, match="method"):
        codec.issue(user="alice", method="root", credential=PASSWORD)  # type: ignore[arg-type]


# ---- the cookie holds no credential --------------------------------------------------------


def _spellings(credential: bytes) -> list[str]:
    """The credential and plain hashes of it, as text an attacker would look for."""
    out = [credential.decode()]
    for name in ("sha256", "sha1", "md5", "sha512"):
        digest = hashlib.new(name, credential).digest()
        out.append(digest.hex())
        out.append(digest.hex().upper())
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(digest).decode()
            out.append(text)
            out.append(text.rstrip("="))
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        out.append(encode(credential).decode().rstrip("="))
    return out


def _readable(cookie: str) -> str:
    """The cookie with its base64 payload decoded, so a hash hidden inside it shows."""
    payload = cookie.split(".", maxsplit=1)[0]
    return cookie + base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()


@pytest.mark.parametrize("method", ["token", "password", "pam"])
def test_cookie_holds_neither_credential_nor_plain_hash(
    codec: SessionCodec, method: SessionMethod
) -> None:
    credential = Credentials().current[method]
    assert credential is not None
    text = _readable(issue(codec, method, "alice"))
    for spelling in _spellings(credential):
        assert spelling not in text
        assert spelling[:16] not in text


def test_fingerprint_is_keyed_by_the_server_secret(
    codec: SessionCodec, tmp_path: Path, clock: Clock
) -> None:
    """Without the session key the fingerprint cannot be recomputed, so a stolen cookie cannot
    test password guesses offline: the same password under another key gives another print."""
    other = SessionCodec(SecretFile(tmp_path / "other", "session_key"), now=clock)
    assert fingerprint(codec, PASSWORD) != fingerprint(other, PASSWORD)
    assert fingerprint(codec, PASSWORD) != fingerprint(codec, PASSWORD + b"x")
    assert len(fingerprint(codec, PASSWORD)) == 22  # 16 bytes, URL-safe base64 without padding
    assert fingerprint(codec, PASSWORD) in _readable(issue(codec, "password", "alice"))


# ---- the signing key -----------------------------------------------------------------------


def test_rotated_session_key_ends_every_session(
    codec: SessionCodec, key_file: SecretFile, credentials: Credentials
) -> None:
    cookies = [issue(codec, "token"), issue(codec, "password", "alice")]
    for cookie in cookies:
        assert codec.open(cookie, credentials) is not None
    key_file.rotate()
    for cookie in cookies:
        assert codec.open(cookie, credentials) is None
    assert codec.open(issue(codec, "token"), credentials) is not None


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: os.chmod(p, 0o644), id="key file readable by others"),
        pytest.param(lambda p: os.chmod(p, 0o640), id="key file readable by group"),
        pytest.param(lambda p: p.write_bytes(b"  \n"), id="key file emptied"),
        pytest.param(lambda p: (p.unlink(), p.symlink_to("/etc/hostname")), id="key file symlink"),
    ],
)
def test_unusable_key_fails_closed(
    codec: SessionCodec,
    key_file: SecretFile,
    credentials: Credentials,
    spoil: Callable[[Path], object],
) -> None:
    cookie = issue(codec, "password", "alice")
    assert codec.open(cookie, credentials) is not None
    spoil(key_file.path)
    assert codec.open(cookie, credentials) is None
    assert codec.issue(user="alice", method="password", credential=PASSWORD) is None
    assert codec.fingerprint(PASSWORD) is None


def forged_with(
    key: bytes, method: SessionMethod, user: str | None, credential: bytes, *, at: float = T0
) -> str:
    """The cookie a guesser who knew ``key`` would make: a valid signature and fingerprint."""
    fingerprint_key = hmac.digest(key, b"flask-tailnet credential fingerprint", "sha256")
    digest = hmac.digest(fingerprint_key, credential, "sha256")[:16]
    mark = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    return sign(key, base64_encode(json.dumps([user, method, mark])), at=at)


#: Session keys a careless hand could write, each shorter than the 43 bytes the guard generates.
WEAK_KEYS = [
    pytest.param(b"k", id="one-byte"),
    pytest.param(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEF", id="42-bytes"),
    pytest.param(b"  k\n\n", id="one-byte-padded"),
]


@pytest.mark.parametrize("key", WEAK_KEYS)
@pytest.mark.parametrize(("method", "user"), [("token", None), ("pam", "root"), ("password", "a")])
def test_a_short_session_key_issues_and_accepts_no_cookie(
    codec: SessionCodec,
    key_file: SecretFile,
    clock: Clock,
    credentials: Credentials,
    key: bytes,
    method: SessionMethod,
    user: str | None,
) -> None:
    """Even where the key file itself allows any length (here: no ``min_length``), the codec
    refuses a key a guesser could find online, one forged cookie at a time."""
    earlier = issue(codec, method, user)
    key_file.write(key)
    credential = credentials(method)
    assert credential is not None
    assert codec.issue(user=user, method=method, credential=credential) is None
    assert codec.fingerprint(credential) is None
    assert codec.open(earlier, credentials) is None
    clock.now = T0 + 1
    assert codec.open(forged_with(key.strip(), method, user, credential), credentials) is None


def test_a_session_key_as_long_as_a_generated_one_works(
    codec: SessionCodec, key_file: SecretFile, credentials: Credentials
) -> None:
    key_file.write(b"K" * 43)  # only the length is checked: a hand-written key must be random
    cookie = issue(codec, "pam", "root")
    assert codec.open(cookie, credentials) is not None
    # whoever knows the key forges as forged_with does: the refusal above is the length check's
    assert codec.open(forged_with(b"K" * 43, "pam", "root", b"pam:login"), credentials) is not None


@pytest.mark.parametrize("key", [b"k\n", b"a" * 42])
def test_an_app_with_a_short_session_key_issues_and_accepts_no_cookie(
    tmp_path: Path, key: bytes
) -> None:
    app = make_app(tmp_path / "state")
    state = app.extensions["tailnet"]
    token = state.token_file.ensure()
    client = app.test_client(use_cookies=False)  # each request carries the cookie it is given

    def get(path: str = "/", cookie: str | None = None) -> Any:
        headers = {} if cookie is None else {"Cookie": f"tailnet_session={cookie}"}
        return call(client, path, peer=TAILNET_PEER, host=TAILNET_HOST, headers=headers)

    link = get(f"/?token={token.decode()}")
    assert link.status_code == 303
    earlier = link.headers["Set-Cookie"].partition("tailnet_session=")[2].partition(";")[0]
    assert get(cookie=earlier).status_code == 200
    (tmp_path / "state" / "session_key").write_bytes(key)
    assert get(cookie=earlier).status_code == 401
    forged = forged_with(key.strip(), "token", None, token, at=time.time())
    assert get(cookie=forged).status_code == 401
    relink = get(f"/?token={token.decode()}")
    assert relink.status_code == 303
    assert "tailnet_session=" not in relink.headers.get("Set-Cookie", "")


def test_key_file_that_cannot_be_created_fails_closed(
    tmp_path: Path, credentials: Credentials
) -> None:
    (tmp_path / "not-a-dir").write_text("")
    codec = SessionCodec(SecretFile(tmp_path / "not-a-dir", "session_key"))
    assert codec.issue(user=None, method="token", credential=TOKEN) is None
    assert codec.open("x.y.z", credentials) is None


# ---- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued", "opened", "accepted"),
    [
        pytest.param(T0, T0, True, id="just issued"),
        pytest.param(T0, T0 + 3600, True, id="at the end of its lifetime"),
        pytest.param(T0, T0 + 3601, False, id="one second past its lifetime"),
        pytest.param(T0, T0 + 86400, False, id="a day old"),
        pytest.param(T0 + MAX_CLOCK_SKEW, T0, True, id="issued within the clock skew"),
        pytest.param(T0 + MAX_CLOCK_SKEW + 1, T0, False, id="issued in the future beyond the skew"),
        pytest.param(T0 + 365 * 86400, T0, False, id="issued a year ahead"),
        pytest.param(0, T0, False, id="issued at the epoch"),
    ],
)
def test_lifetime_enforced_from_the_signed_timestamp(
    key_file: SecretFile,
    clock: Clock,
    credentials: Credentials,
    issued: float,
    opened: float,
    accepted: bool,
) -> None:
    codec = SessionCodec(key_file, timedelta(hours=1), now=clock)
    clock.now = issued
    cookie = issue(codec, "password", "alice")
    clock.now = opened
    assert (codec.open(cookie, credentials) is not None) is accepted


def test_opened_cookie_still_expires(
    codec: SessionCodec, clock: Clock, credentials: Credentials
) -> None:
    cookie = issue(codec)
    assert codec.open(cookie, credentials) is not None
    clock.now += DEFAULT_LIFETIME + 1
    assert codec.open(cookie, credentials) is None


# ---- forged and malformed cookies ----------------------------------------------------------


def _flip(text: str, index: int) -> str:
    char = text[index]
    return text[:index] + ("A" if char != "A" else "B") + text[index + 1 :]


def _swap_segment(cookie: str, index: int, value: str) -> str:
    parts = cookie.split(".")
    parts[index] = value
    return ".".join(parts)


def _with_user(cookie: str, user: str | None) -> str:
    """The cookie with another user in its payload (the fingerprint kept, so it would match)."""
    payload = json.loads(base64_decode(cookie.split(".", 1)[0]))
    payload[0] = user
    return _swap_segment(cookie, 0, base64_encode(json.dumps(payload)).decode())


def _with_time(cookie: str, issued: int) -> str:
    return _swap_segment(cookie, 1, base64_encode(int_to_bytes(issued)).decode())


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda c: _flip(c, 0), id="payload first char changed"),
        pytest.param(lambda c: _flip(c, c.index(".") - 1), id="payload last char changed"),
        pytest.param(lambda c: _with_user(c, "root"), id="user changed"),
        pytest.param(lambda c: _with_user(c, None), id="user removed"),
        pytest.param(lambda c: _with_time(c, int(T0) - 60), id="timestamp changed"),
        pytest.param(lambda c: _flip(c, c.index(".") + 1), id="timestamp char changed"),
        pytest.param(lambda c: _flip(c, -1), id="signature last char changed"),
        pytest.param(lambda c: _flip(c, c.rindex(".") + 1), id="signature first char changed"),
        pytest.param(lambda c: c[:-1], id="signature truncated"),
        pytest.param(lambda c: c + "A", id="signature extended"),
        pytest.param(lambda c: c.rsplit(".", 1)[0], id="signature removed"),
        pytest.param(lambda c: c.rsplit(".", 1)[0] + ".", id="signature empty"),
        pytest.param(lambda c: c.split(".", 1)[1], id="payload removed"),
        pytest.param(lambda c: "." + c.split(".", 1)[1], id="payload empty"),
        pytest.param(lambda c: c + ".extra", id="extra segment"),
        pytest.param(lambda c: c.replace(".", ":"), id="separators changed"),
        pytest.param(lambda c: c + " ", id="trailing space"),
        pytest.param(lambda c: " " + c, id="leading space"),
        pytest.param(lambda c: c.upper(), id="case changed"),
    ],
)
def test_tampered_cookie_refused(
    codec: SessionCodec, credentials: Credentials, tamper: Callable[[str], str]
) -> None:
    cookie = issue(codec, "password", "alice")
    assert codec.open(cookie, credentials) is not None
    assert codec.open(tamper(cookie), credentials) is None


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _low_bits(sig: str) -> str:
    """The last character of a 32-byte signature carries 4 bits; change an unused one."""
    return sig[:-1] + _B64[_B64.index(sig[-1]) ^ 1]


@pytest.mark.parametrize(
    "respell",
    [
        pytest.param(lambda sig: sig + "=", id="signature padded"),
        pytest.param(lambda sig: sig + "==", id="signature padded twice"),
        pytest.param(_low_bits, id="signature with unused bits set"),
        pytest.param(
            lambda sig: sig.replace("-", "+").replace("_", "/"), id="signature in standard base64"
        ),
    ],
)
def test_signature_has_one_spelling(
    codec: SessionCodec, credentials: Credentials, respell: Callable[[str], str]
) -> None:
    """itsdangerous decodes these to the same signature bytes; the cookie is still refused."""
    cookie = next(
        c
        for c in (issue(codec, "password", f"user{i}") for i in range(200))
        if {"-", "_"} & set(c.rsplit(".", 1)[1])
    )
    head, sig = cookie.rsplit(".", 1)
    respelled = respell(sig)
    assert respelled != sig
    assert base64_decode(respelled) == base64_decode(sig)
    assert codec.open(cookie, credentials) is not None
    assert codec.open(f"{head}.{respelled}", credentials) is None


@pytest.mark.parametrize(
    ("key", "salt"),
    [
        pytest.param(b"another-key-0123456789", None, id="signed with another key"),
        pytest.param(b"secret", None, id="signed with a guessable key"),
        pytest.param(None, "itsdangerous.Signer", id="signed for another purpose (salt)"),
    ],
)
def test_foreign_signature_refused(
    codec: SessionCodec,
    key_file: SecretFile,
    credentials: Credentials,
    key: bytes | None,
    salt: str | None,
) -> None:
    issue(codec)
    payload = ["alice", "password", fingerprint(codec, PASSWORD)]
    cookie = forge(key or key_file.ensure(), payload, salt=salt)
    assert codec.open(cookie, credentials) is None


def test_cookie_from_another_app_refused(
    codec: SessionCodec, tmp_path: Path, clock: Clock, credentials: Credentials
) -> None:
    other = SessionCodec(SecretFile(tmp_path / "other", "session_key"), now=clock)
    assert codec.open(issue(other, "password", "alice"), credentials) is None


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param(b"!!not-base64!!", id="payload not base64"),
        pytest.param(base64_encode(b"[]") + b"==", id="payload base64 with padding"),
        pytest.param(base64_encode(b"\xff\xfe"), id="payload not UTF-8"),
        pytest.param(base64_encode(b"alice:password"), id="payload not JSON"),
        pytest.param(base64_encode(b"[null,null,null]x"), id="payload JSON with trailing garbage"),
        pytest.param(base64_encode(b"[" * 100 + b"]" * 100), id="payload deeply nested"),
        pytest.param(
            base64_encode(b"[" * 1400 + b"]" * 1400), id="payload nested past the recursion limit"
        ),
    ],
)
def test_undecodable_payload_refused_even_when_signed(
    codec: SessionCodec, key_file: SecretFile, credentials: Credentials, segment: bytes
) -> None:
    issue(codec)
    assert codec.open(sign(key_file.ensure(), segment), credentials) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"u": "alice", "m": "password"}, id="payload JSON object"),
        pytest.param("alice", id="payload JSON string"),
        pytest.param(None, id="payload JSON null"),
        pytest.param([], id="payload list empty"),
        pytest.param(["alice", "password"], id="payload list too short"),
        pytest.param(["alice", "password", "FP", "admin"], id="payload list too long"),
        pytest.param([7, "password", "FP"], id="user not a string"),
        pytest.param([["alice"], "password", "FP"], id="user a list"),
        pytest.param(["alice", "root", "FP"], id="method unknown"),
        pytest.param(["alice", "loopback", "FP"], id="method loopback"),
        pytest.param(["alice", "", "FP"], id="method empty"),
        pytest.param(["alice", None, "FP"], id="method null"),
        pytest.param(["alice", ["password"], "FP"], id="method a list"),
        pytest.param(["alice", {"password": 1}, "FP"], id="method an object"),
        pytest.param(["alice", "Password", "FP"], id="method in other case"),
        pytest.param(["alice", "password", None], id="fingerprint missing"),
        pytest.param(["alice", "password", ""], id="fingerprint empty"),
        pytest.param(["alice", "password", 0], id="fingerprint a number"),
        pytest.param(["alice", "password", "é" * 22], id="fingerprint non-ASCII"),
        pytest.param(["alice", "password", "\ud800"], id="fingerprint lone surrogate"),
        pytest.param(["alice", "password", "A" * 22], id="fingerprint wrong"),
        pytest.param(["alice", "password", "TRUNCATED"], id="fingerprint truncated"),
        pytest.param(["alice", "password", "OTHER"], id="fingerprint of another credential"),
        pytest.param(["alice", "password", "SHA256"], id="fingerprint is the plain sha256"),
        pytest.param(["alice", "password", PASSWORD.decode()], id="password itself as fingerprint"),
    ],
)
def test_malformed_payload_refused_even_when_signed(
    codec: SessionCodec,
    key_file: SecretFile,
    credentials: Credentials,
    payload: object,
) -> None:
    issue(codec)
    real = fingerprint(codec, PASSWORD)
    stand_ins = {
        "FP": real,  # the right fingerprint, so that the row's one fault is what is refused
        "TRUNCATED": real[:-1],
        "OTHER": fingerprint(codec, TOKEN),
        "SHA256": hashlib.sha256(PASSWORD).hexdigest(),
    }
    if isinstance(payload, list):
        payload = [stand_ins.get(v, v) if isinstance(v, str) else v for v in payload]
    assert codec.open(forge(key_file.ensure(), payload), credentials) is None


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(None, id="no cookie"),
        pytest.param("", id="empty"),
        pytest.param("garbage", id="garbage"),
        pytest.param(".", id="one dot"),
        pytest.param("..", id="two dots"),
        pytest.param("a.b.c", id="three short segments"),
        pytest.param("a" * 10_000, id="10 kB"),
        pytest.param("a." * 5_000, id="10 kB of segments"),
        pytest.param("x" * (MAX_COOKIE_LENGTH + 1), id="one byte over the limit"),
        pytest.param("é.é.é", id="non-ASCII"),
        pytest.param("\ud800.a.b", id="lone surrogate"),
        pytest.param("\x00\x00.\x00.\x00", id="NUL bytes"),
        pytest.param("W10.AAAAAA.AAAA", id="plausible but unsigned"),
        pytest.param("W10.__________.AAAA", id="huge timestamp"),
        pytest.param('"quoted.cookie.value"', id="quoted"),
        pytest.param("null", id="the word null"),
    ],
)
def test_odd_cookie_refused_never_raises(
    codec: SessionCodec, credentials: Credentials, cookie: str | None
) -> None:
    issue(codec)
    assert codec.open(cookie, credentials) is None


def test_oversized_cookie_refused_unread(codec: SessionCodec, credentials: Credentials) -> None:
    cookie = issue(codec, "password", "a" * 2000)
    assert codec.open(cookie, credentials) is not None
    huge = issue(codec, "password", "a" * MAX_COOKIE_LENGTH)
    assert codec.open(huge, credentials) is None


# ---- hypothesis ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    codec: SessionCodec
    cookie: str


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    codec = SessionCodec(SecretFile(tmp_path_factory.mktemp("sessions") / "state", "session_key"))
    cookie = codec.issue(user="alice", method="password", credential=PASSWORD)
    assert cookie is not None
    return Shared(codec, cookie)


COOKIE_CHARS = st.sampled_from("ABCabc0189-_.=+/ ")


@given(st.text())
def test_open_never_raises_for_any_text(shared: Shared, text: str) -> None:
    assert shared.codec.open(text, Credentials()) is None


@given(st.text(COOKIE_CHARS, max_size=200))
def test_open_never_raises_for_cookie_like_text(shared: Shared, text: str) -> None:
    assert shared.codec.open(text, Credentials()) is None


@given(st.integers(min_value=0), st.text(COOKIE_CHARS, min_size=1, max_size=3))
def test_no_edit_of_a_real_cookie_opens(shared: Shared, at: int, insert: str) -> None:
    cookie = shared.cookie
    at %= len(cookie) + 1
    edited = cookie[:at] + insert + cookie[at:]
    assert shared.codec.open(edited, Credentials()) is None
    assert shared.codec.open(cookie, Credentials()) is not None


# ---- caches --------------------------------------------------------------------------------


def test_caches_stay_bounded(
    codec: SessionCodec, credentials: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions, "_CACHE_LIMIT", 2)
    cookies = [issue(codec, "password", f"user{i}") for i in range(5)]
    prints = [fingerprint(codec, bytes([i + 1])) for i in range(5)]
    for _ in range(2):
        for i, cookie in enumerate(cookies):
            assert codec.open(cookie, credentials) == Session(f"user{i}", "password", int(T0))
        assert [fingerprint(codec, bytes([i + 1])) for i in range(5)] == prints
    keyed = codec._keyed
    assert keyed is not None
    assert len(keyed.opened) <= 2
    assert len(keyed.fingerprints) <= 2
