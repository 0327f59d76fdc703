"""Tests for the MD5 and SCRAM-SHA-256 primitives in ``pgsansio.protocol._auth``.

Reference points, none of them this module: RFC 7677's test vector, RFC 4013's
SASLprep examples, verifiers and MD5 hashes written by PostgreSQL 15 itself
(recorded once from a throwaway cluster, see ``PG15_VERIFIERS``), hashlib by
hand, and scramp (an independent SCRAM implementation) on the other end of
every exchange. No mocks.

scramp's server insists on a non-empty ``n=`` user name (PostgreSQL ignores
it, and our client leaves it empty by default), so clients that talk to it
are given ``username="user"``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import string

import pytest
import scramp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgsansio.protocol._auth import (
    DEFAULT_ITERATIONS,
    MAX_ITERATIONS,
    MAX_MESSAGE_SIZE,
    SCRAM_SHA_256,
    AuthenticationFailed,
    ScramClient,
    ScramServer,
    ScramVerifier,
    md5_hash,
    md5_response,
    md5_verify,
    normalize_password,
    saslprep,
    scram_verifier,
)
from pgsansio.protocol._errors import LocalProtocolError, RemoteProtocolError

# -- reference data ------------------------------------------------------------

# RFC 7677 section 3.
RFC_USER = "user"
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

# rolpassword written by PostgreSQL 15.18 (SQL_ASCII database, so that raw
# bytes reach the server) for CREATE ROLE ... PASSWORD E'\x..' with each
# password. They pin down SASLprep and its raw-bytes fallback.
PG15_VERIFIERS = [
    (b"pencil", "SCRAM-SHA-256$4096:kAQAuw3uxx6mYeFk7XYJpQ==$HqoIh8fHHy9tg7PaZTAAD552Ae9lB8eC9NNrntvlzoA=:CLJL8sKE5XjwMtqkhsFmcBdw5MBxv9DeUEHVFJdMY84="),  # noqa: E501
    (b"I\xc2\xadX", "SCRAM-SHA-256$4096:kGvtgGUTAPj4WTZimbnD2Q==$1uDENRGq7XPqF7Tq+ZyW4GmnFfupIcCjoDrFc+vF7CY=:q40q67PDYPffa4zeQq/OX15pPoguKSTohRkqYdmRgzs="),  # noqa: E501  soft hyphen
    (b"\xe2\x85\xa8", "SCRAM-SHA-256$4096:ZH6AKRFI+b9dz3cFe8KtoQ==$3C+h+2yF0CWATERJCKTsdhj2CY12m7Frg2GnQxJ8mig=:4zkfPKWC0vFkYqdwYl5u537VQXRIQxR38YzpB7gxJpY="),  # noqa: E501  roman nine
    (b"\xc2\xaa", "SCRAM-SHA-256$4096:KHDGIFOdJJxWGwNWo54lsQ==$cvBJgbQ42Wdb72yNPS+u8vl1CljQ6y3gpye3z676RJk=:NeTLr++yUoeSQW7VWeTj7GoqpxQ8h6dTHrPhd38iGc0="),  # noqa: E501  ordinal
    (b"a\x07b", "SCRAM-SHA-256$4096:jVd7PUmHMSN7Gb4CqERVxQ==$NNJy7lpOy8QM+xWbJ1IzdYKGvwX791LCwKECD9MkhmQ=:dHWyiuQx+SvzNEFKluS3vCWqu0InLhARe5+T8t/tzQw="),  # noqa: E501  ASCII control
    (b"\xc2\xad", "SCRAM-SHA-256$4096:80FYW1fp1fELDGA+t8Tdbw==$QNkaAgEBaNHGuk5/AIh4znY9DDPs3YoEIrUV9E8imP0=:l0Gbv3GUHeS//kkm2LQtUob/FNOveoSwwoupEZsG26c="),  # noqa: E501  maps to nothing
    (b"\xd8\xa71", "SCRAM-SHA-256$4096:TCIzpT7jy+MmaNiziXYq6A==$f7aKWGBKM8HyGpydCAggokexyXBlPj77sh/A1eZXq+0=:KlFrpRNRtxL9CvMTp42H8wUdku6txjMiFjapRq5uFcU="),  # noqa: E501  bidi failure
    (b"\xc8\xa1", "SCRAM-SHA-256$4096:Hytl1QCCLNRUCO+vnpYS9w==$exKQFZrMJ0o/4HMEPdnzUueaanMr+iUwcxTOGhIrw5U=:nbgJjxzZV2I4bIsSN1KxC4eHehxi6eV0GLW3r3qWBnc="),  # noqa: E501  unassigned in 3.2
    (b"\xee\x80\x80", "SCRAM-SHA-256$4096:jKi2GBbQFkm6OuUDgo8uzw==$ko6Vb1jCYaA3p+md6D36Sem7RZvxofoyggR8woDxK+Q=:fb+z0OXENkT2CYrUYm+648FBErFzhFaE49nXS9DHrRY="),  # noqa: E501  private use
    (b"\xff\xfe", "SCRAM-SHA-256$4096:3zQesmwv9OriZS5n3V/1GA==$7x5h3gIRbGtDICbs+6JycBzl+7js/PFvCeNcbqFj5Lc=:awJqlwcnfxTi7HxApX2YqguFPmixHJRLPQsH/TTL8rk="),  # noqa: E501  invalid UTF-8
    (b"cafe\xcc\x81", "SCRAM-SHA-256$4096:WNJFJJfIJbCLTZ6S/SEnww==$QoTBtyhXDpRtYQHKwfB/3Tiut3bHPE8QFo5T7+efUug=:wtx9o+mihCU4/gxlV9W3PxwRyf/3cQMZqRDyc0FT0Bw="),  # noqa: E501  combining mark
    (b"\xe3\x80\x80x", "SCRAM-SHA-256$4096:Cn+TqwuNZY3QM3OGXvMGRA==$1oqiiHa8YdF6AFS2HEE4lf3LbAYVtHt9kwgOTO+Erok=:zm6gEqZV8SL7Q3PkWGrrEKFp2bY8o9Bbls319ukq/do="),  # noqa: E501  ideographic space
    (b"\xef\xbc\xa1", "SCRAM-SHA-256$4096:Yo1ek9LBblwRduN+ovshxA==$m43Fd2YDEtgyggYzpf3ZhGasJE8xfsX2jcbprY1Ja+A=:Zzu2WTkkHx3zZXZz1Qf+devsdnlSShSqSMw/tSK4Dv0="),  # noqa: E501  fullwidth A
]  # fmt: skip

# SELECT rolpassword after SET password_encryption = 'md5' on PostgreSQL 15.
PG15_MD5 = [
    ("postgres", "secret", "md553f48b7c4b76a86ce72276c5755f217d"),
    ("md5user", "secret", "md52aea419619857e8a27f0f7aa641db0c6"),
]

PASSWORD = "correct horse battery staple"
VERIFIER = ScramVerifier.from_password(PASSWORD, salt=b"0123456789abcdef")
ALLOWED = (RemoteProtocolError, AuthenticationFailed)


# -- helpers: SCRAM restated by hand, and scramp -------------------------------


def _h(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _keys(password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes, bytes]:
    """(ClientKey, StoredKey, ServerKey) straight from RFC 5802 section 3."""
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    client_key = _h(salted, b"Client Key")
    return client_key, hashlib.sha256(client_key).digest(), _h(salted, b"Server Key")


def _proof(client_key: bytes, auth_message: bytes) -> str:
    signature = _h(hashlib.sha256(client_key).digest(), auth_message)
    return base64.b64encode(
        bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    ).decode()


def _scramp_server(verifier: ScramVerifier, nonce: str | None = None) -> scramp.ScramServer:
    info = (verifier.salt, verifier.stored_key, verifier.server_key, verifier.iterations)
    return scramp.ScramMechanism().make_server(lambda _user: info, s_nonce=nonce)


def _our_client_vs_scramp(client: ScramClient, verifier: ScramVerifier) -> None:
    server = _scramp_server(verifier)
    server.set_client_first(client.client_first().decode())
    final = client.client_final(server.get_server_first().encode())
    try:
        server.set_client_final(final.decode())
    except scramp.ScramException:
        pass  # the server now answers e=invalid-proof
    client.verify_server_final(server.get_server_final().encode())


def _scramp_client_vs_ours(
    password: str, server: ScramServer, user: str = "user"
) -> scramp.ScramClient:
    client = scramp.ScramClient([SCRAM_SHA_256], user, password)
    server_first = server.server_first(client.get_client_first().encode())
    client.set_server_first(server_first.decode())
    server_final = server.server_final(client.get_client_final().encode())
    client.set_server_final(server_final.decode())
    return client


def _ours(client: ScramClient, server: ScramServer) -> None:
    final = client.client_final(server.server_first(client.client_first()))
    client.verify_server_final(server.server_final(final))


def _server_after_first(nonce: str = "cnonce", flag: bytes = b"n") -> ScramServer:
    server = ScramServer(VERIFIER, nonce="snonce")
    server.server_first(flag + b",,n=,r=" + nonce.encode())
    return server


def _client_after_first(**kwargs: object) -> ScramClient:
    client = ScramClient(client_key=bytes(32), nonce="cnonce", **kwargs)  # type: ignore[arg-type]
    client.client_first()
    return client


def _client_after_final() -> ScramClient:
    client = _client_after_first()
    client.client_final(b"r=cnonceSNONCE,s=c2FsdA==,i=4096")
    return client


# -- RFC 7677 ------------------------------------------------------------------


def test_rfc7677_client_reproduces_the_exchange() -> None:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE, username=RFC_USER)
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)
    assert client.server_verified


def test_rfc7677_server_reproduces_the_exchange() -> None:
    verifier = ScramVerifier.from_password(RFC_PASSWORD, salt=RFC_SALT, iterations=4096)
    server = ScramServer(verifier, nonce=RFC_SERVER_NONCE)
    assert server.server_first(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.server_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.username == RFC_USER
    client_key, stored_key, server_key = _keys(b"pencil", RFC_SALT, 4096)
    assert server.client_key == client_key
    assert (verifier.stored_key, verifier.server_key) == (stored_key, server_key)


def test_rfc7677_vector_with_postgres_empty_user_name() -> None:
    # Our default client sends n= empty, as libpq does; the proof covers the
    # client-first-message-bare, so recompute it from the RFC's keys.
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    first = client.client_first()
    assert first == b"n,,n=,r=" + RFC_CLIENT_NONCE.encode()
    final = client.client_final(RFC_SERVER_FIRST)
    without_proof = b"c=biws,r=" + RFC_CLIENT_NONCE.encode() + RFC_SERVER_NONCE.encode()
    auth_message = b",".join((first[3:], RFC_SERVER_FIRST, without_proof))
    client_key, _, server_key = _keys(b"pencil", RFC_SALT, 4096)
    assert final == without_proof + b",p=" + _proof(client_key, auth_message).encode()
    client.verify_server_final(b"v=" + base64.b64encode(_h(server_key, auth_message)))
    assert client.server_verified


# -- verifiers -----------------------------------------------------------------


@pytest.mark.parametrize(("password", "stored"), PG15_VERIFIERS)
def test_verifier_is_byte_identical_to_postgres(password: bytes, stored: str) -> None:
    parsed = ScramVerifier.parse(stored)
    assert str(parsed) == stored
    as_text = password.decode("utf-8", "surrogateescape")
    for given_password in (password, as_text):
        derived = scram_verifier(given_password, salt=parsed.salt, iterations=parsed.iterations)
        assert derived == stored
    # And the login works against a server holding PostgreSQL's secret.
    client = ScramClient(as_text)
    _ours(client, ScramServer(stored))
    assert client.server_verified


def test_verifier_defaults_match_postgres() -> None:
    verifier = ScramVerifier.from_password("pencil")
    assert verifier.iterations == DEFAULT_ITERATIONS == 4096
    assert len(verifier.salt) == 16
    assert verifier.salt != ScramVerifier.from_password("pencil").salt
    text = scram_verifier("pencil", salt=verifier.salt)
    assert text == str(verifier)
    assert ScramVerifier.parse(text) == verifier


def test_verifier_repr_hides_keys() -> None:
    shown = repr(VERIFIER)
    assert "iterations=4096" in shown
    for key in (VERIFIER.stored_key, VERIFIER.server_key):
        assert repr(key) not in shown
        assert base64.b64encode(key).decode() not in shown


def test_verifier_is_frozen() -> None:
    with pytest.raises(AttributeError):
        VERIFIER.iterations = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected SCRAM-SHA-256$"),
        ("md5abc", "expected SCRAM-SHA-256$"),
        ("SCRAM-SHA-1$4096:c2FsdA==$AAAA:AAAA", "expected"),
        ("SCRAM-SHA-256$4096:c2FsdA==", "expected"),
        ("SCRAM-SHA-256$4096$c2FsdA==:AAAA:AAAA", "expected"),
        ("SCRAM-SHA-256$:c2FsdA==$AAAA:AAAA", "iteration count"),
        ("SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA", "iteration count"),
        ("SCRAM-SHA-256$-1:c2FsdA==$AAAA:AAAA", "iteration count"),
        ("SCRAM-SHA-256$04096:c2FsdA==$AAAA:AAAA", "iteration count"),
        ("SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA", "iteration count"),
        ("SCRAM-SHA-256$99999999999:c2FsdA==$AAAA:AAAA", "iteration count"),
        ("SCRAM-SHA-256$4096:c2Fsd$AAAA:AAAA", "salt is not base64"),
        ("SCRAM-SHA-256$4096:c2FsdA=$AAAA:AAAA", "salt is not base64"),
        ("SCRAM-SHA-256$4096:c2FsdB==$AAAA:AAAA", "salt is not base64"),  # non-canonical
        ("SCRAM-SHA-256$4096:c2Fs dA==$AAAA:AAAA", "salt is not base64"),
        ("SCRAM-SHA-256$4096:c2FsdA==$A!AA:AAAA", "StoredKey is not base64"),
        ("SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA:AAAA", "ServerKey is not base64"),
        ("SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA", "32 bytes"),
        ("SCRAM-SHA-256$4096:$AAAA:AAAA", "salt must not be empty"),
        ("SCRAM-SHA-256$2147483648:c2FsdA==$AAAA:AAAA", "iteration count must be"),
    ],
)
def test_verifier_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("$", r"\$")):
        ScramVerifier.parse(text)


def test_verifier_parse_error_never_quotes_the_secret() -> None:
    stored_key = base64.b64encode(VERIFIER.stored_key).decode()
    broken = str(VERIFIER).replace("$" + stored_key, "$!" + stored_key[1:])
    assert broken != str(VERIFIER)
    with pytest.raises(ValueError) as info:
        ScramVerifier.parse(broken)
    assert stored_key[4:] not in str(info.value)
    assert base64.b64encode(VERIFIER.server_key).decode() not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"password": ""}, "empty password"),
        ({"password": b""}, "empty password"),
        ({"password": "x", "salt": b""}, "salt"),
        ({"password": "x", "iterations": 0}, "iteration count"),
        # Refused before PBKDF2 runs, or this test would take hours.
        ({"password": "x", "iterations": 2**31}, "iteration count"),
    ],
)
def test_verifier_from_password_rejects(kwargs: dict[str, object], message: str) -> None:
    password = kwargs.pop("password")
    with pytest.raises(ValueError, match=message):
        ScramVerifier.from_password(password, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        scram_verifier(password, **kwargs)  # type: ignore[arg-type]


def test_verifier_constructor_checks_key_lengths() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ScramVerifier(4096, b"salt", bytes(31), bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        ScramVerifier(4096, b"salt", bytes(32), bytes(33))


# -- interoperability with scramp ----------------------------------------------


def test_our_client_against_scramp_server() -> None:
    client = ScramClient(PASSWORD, username="user")
    _our_client_vs_scramp(client, VERIFIER)
    assert client.server_verified


def test_our_client_escapes_the_user_name() -> None:
    assert ScramClient("x", username="a,b=c", nonce="n").client_first() == b"n,,n=a=2Cb=3Dc,r=n"
    client = ScramClient(PASSWORD, username="a,b=c")
    _our_client_vs_scramp(client, VERIFIER)
    assert client.server_verified


def test_our_client_wrong_password_against_scramp_server() -> None:
    client = ScramClient("wrong password", username="user")
    with pytest.raises(AuthenticationFailed, match="invalid-proof") as info:
        _our_client_vs_scramp(client, VERIFIER)
    assert info.value.sqlstate == "28P01"
    assert not client.server_verified


def test_scramp_client_against_our_server() -> None:
    server = ScramServer(VERIFIER)
    _scramp_client_vs_ours(PASSWORD, server, user="us,er=")
    assert server.username == "us,er="
    assert server.client_key == _keys(PASSWORD.encode(), VERIFIER.salt, 4096)[0]


def test_scramp_client_wrong_password_against_our_server() -> None:
    server = ScramServer(VERIFIER)
    with pytest.raises(AuthenticationFailed) as info:
        _scramp_client_vs_ours("wrong password", server)
    assert info.value.sqlstate == "28P01"
    assert PASSWORD not in str(info.value)
    assert server.client_key is None


def test_scramp_client_against_our_server_from_plaintext_and_text_verifier() -> None:
    for secret in (PASSWORD, PASSWORD.encode(), str(VERIFIER)):
        server = ScramServer(secret)
        _scramp_client_vs_ours(PASSWORD, server)
        assert server.client_key is not None


def test_pass_through_login_with_recovered_client_key() -> None:
    # A pooler checks the client against the verifier, then reuses ClientKey
    # to log in to a server holding the same verifier (scramp plays it).
    front = ScramServer(VERIFIER)
    _scramp_client_vs_ours(PASSWORD, front)
    assert front.client_key is not None
    back = ScramClient(client_key=front.client_key, server_key=VERIFIER.server_key, username="u")
    _our_client_vs_scramp(back, VERIFIER)
    assert back.server_verified
    # The same against our own server, with the other verifier text form.
    back = ScramClient(client_key=front.client_key, server_key=VERIFIER.server_key)
    _ours(back, ScramServer(str(VERIFIER)))
    assert back.server_verified


def test_pass_through_without_server_key_cannot_verify_the_server() -> None:
    front = ScramServer(VERIFIER)
    _scramp_client_vs_ours(PASSWORD, front)
    assert front.client_key is not None
    back = ScramClient(client_key=front.client_key, username="u")
    _our_client_vs_scramp(back, VERIFIER)
    assert not back.server_verified
    # Any well-formed signature passes: that is the documented limitation.
    impostor = ScramClient(client_key=front.client_key, nonce="cn")
    impostor.client_first()
    impostor.client_final(b"r=cnx,s=c2FsdA==,i=1")
    impostor.verify_server_final(b"v=" + base64.b64encode(bytes(32)))
    assert not impostor.server_verified


def test_pass_through_with_a_wrong_client_key_fails() -> None:
    back = ScramClient(client_key=bytes(32), server_key=VERIFIER.server_key, username="u")
    with pytest.raises(AuthenticationFailed):
        _our_client_vs_scramp(back, VERIFIER)


@settings(max_examples=60, deadline=None)
@given(
    password=st.text(min_size=1, max_size=20),
    salt=st.binary(min_size=1, max_size=32),
    iterations=st.integers(1, 64),
    nonces=st.tuples(*[st.text(string.ascii_letters + "!+/=~", min_size=1, max_size=30)] * 2),
)
def test_our_client_and_server_agree(
    password: str, salt: bytes, iterations: int, nonces: tuple[str, str]
) -> None:
    verifier = ScramVerifier.from_password(password, salt=salt, iterations=iterations)
    server = ScramServer(verifier, nonce=nonces[1])
    client = ScramClient(password, nonce=nonces[0])
    _ours(client, server)
    assert client.server_verified
    salted = normalize_password(password)
    assert server.client_key == _keys(salted, salt, iterations)[0]
    wrong = ScramClient(password + "x", nonce=nonces[0])
    with pytest.raises(AuthenticationFailed):
        _ours(wrong, ScramServer(verifier, nonce=nonces[1]))


# -- MD5 -----------------------------------------------------------------------


@pytest.mark.parametrize(("user", "password", "stored"), PG15_MD5)
def test_md5_hash_matches_postgres(user: str, password: str, stored: str) -> None:
    assert md5_hash(user, password) == stored
    assert md5_hash(user, password.encode()) == stored


def test_md5_by_hand() -> None:
    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"s3cr\xc3\xa9tj\xc3\xb6rg").hexdigest()
    assert md5_hash("j\u00f6rg", "s3cr\u00e9t") == "md5" + inner
    outer = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
    assert md5_response("j\u00f6rg", "s3cr\u00e9t", salt) == outer
    # Pass-through: the stored hash logs in like the password it hashes.
    assert md5_response("j\u00f6rg", "md5" + inner, salt) == outer
    # Upper-case hex is not a hash to PostgreSQL, so it is a password here.
    assert md5_response("j\u00f6rg", "md5" + inner.upper(), salt) != outer
    assert md5_response("j\u00f6rg", b"s3cr\xc3\xa9t", salt) == outer


def test_md5_verify() -> None:
    salt = b"abcd"
    good = md5_response("alice", "pw", salt)
    assert md5_verify("alice", "pw", salt, good)
    assert md5_verify("alice", md5_hash("alice", "pw"), salt, good)
    assert not md5_verify("alice", "pw2", salt, good)
    assert not md5_verify("bob", "pw", salt, good)
    assert not md5_verify("alice", "pw", b"abce", good)
    assert not md5_verify("alice", "pw", salt, good[:-1])
    assert not md5_verify("alice", "pw", salt, good[:-1] + "\u00e9")
    assert not md5_verify("alice", "", salt, md5_response("alice", "", salt))


def test_md5_rejects_bad_salt_and_scram_secret() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        md5_response("u", "p", b"abc")
    with pytest.raises(ValueError, match="4 bytes"):
        md5_verify("u", "p", b"abcde", "md5")
    with pytest.raises(ValueError, match="SCRAM verifier"):
        md5_verify("u", str(VERIFIER), b"abcd", "md5")


# -- SASLprep ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_text", "expected"),
    [
        # RFC 4013 section 3.
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        # More of the mapping: non-ASCII space, NFKC composition, RTL string.
        ("a\u00a0b", "a b"),
        ("cafe\u0301", "caf\u00e9"),
        ("\u0627\u0628", "\u0627\u0628"),
        ("\u00ad", ""),
        ("\u1680", " "),  # C.1.2 is mapped to U+0020 before it could be refused
    ],
)
def test_saslprep_maps(given_text: str, expected: str) -> None:
    assert saslprep(given_text) == expected


@pytest.mark.parametrize(
    ("given_text", "rule"),
    [
        ("\u0007", "C.2"),  # RFC 4013 section 3, example 6
        ("\u0627\u0031", "right-to-left string"),  # example 7
        ("\u0627a\u0628", "mixes"),
        ("a\ue000", "C.3"),
        ("\ufdd0", "C.4"),
        ("\ud800", "C.5"),
        ("\ufffd", "C.6"),
        ("\u2ff0", "C.7"),
        ("\u200e", "C.8"),
        ("\U000e0001", "C.9"),
        ("\u0221", "A.1"),
    ],
)
def test_saslprep_prohibits(given_text: str, rule: str) -> None:
    with pytest.raises(ValueError, match=rule) as info:
        saslprep(given_text)
    assert given_text not in str(info.value)


def test_normalize_password_follows_postgres_fallback() -> None:
    assert normalize_password("pencil") == b"pencil"
    assert normalize_password("I\u00adX") == b"IX"
    assert normalize_password(b"I\xc2\xadX") == b"IX"
    assert normalize_password("\u0007") == b"\x07"  # ASCII is used as is
    assert normalize_password("\u00ad") == b"\xc2\xad"  # would map to nothing
    assert normalize_password("\u0221") == b"\xc8\xa1"  # prohibited: raw bytes
    assert normalize_password(b"\xff") == b"\xff"  # invalid UTF-8: raw bytes
    assert normalize_password("\udcff") == b"\xff"  # surrogateescape round trip
    with pytest.raises(ValueError):
        normalize_password("\ud800")


@given(st.text())
def test_normalize_password_is_saslprep_or_raw(text: str) -> None:
    raw = text.encode()
    try:
        prepared = saslprep(text).encode()
    except ValueError:
        prepared = raw
    assert normalize_password(text) in (prepared or raw, raw)


# -- client: argument and state checks -----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either a password or a client_key"),
        ({"password": "x", "client_key": bytes(32)}, "either"),
        ({"password": "x", "server_key": bytes(32)}, "only used with client_key"),
        ({"client_key": bytes(31)}, "32 bytes"),
        ({"client_key": bytes(32), "server_key": bytes(33)}, "32 bytes"),
        ({"password": "x", "nonce": ""}, "nonce"),
        ({"password": "x", "nonce": "a,b"}, "nonce"),
        ({"password": "x", "nonce": "a b"}, "nonce"),
        ({"password": "x", "nonce": "\u00e9"}, "nonce"),
    ],
)
def test_client_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScramClient(**kwargs)  # type: ignore[arg-type]


def test_client_default_nonce_is_like_postgres() -> None:
    first, second = ScramClient("x").client_first(), ScramClient("x").client_first()
    nonce = first.rpartition(b"r=")[2]
    assert len(nonce) == 24 and len(base64.b64decode(nonce)) == 18
    assert first != second
    assert ScramClient.mechanism == ScramServer.mechanism == SCRAM_SHA_256


def test_client_steps_run_once_in_order() -> None:
    client = ScramClient(client_key=bytes(32), nonce="cnonce")
    with pytest.raises(LocalProtocolError):
        client.client_final(b"r=cnonceX,s=c2FsdA==,i=1")
    with pytest.raises(LocalProtocolError):
        client.verify_server_final(b"v=")
    client.client_first()
    with pytest.raises(LocalProtocolError):
        client.client_first()
    # A failed step cannot be retried with better input.
    with pytest.raises(RemoteProtocolError):
        client.client_final(b"garbage")
    with pytest.raises(LocalProtocolError):
        client.client_final(b"r=cnonceX,s=c2FsdA==,i=1")


def test_client_done_after_verification() -> None:
    client = _client_after_final()
    client.verify_server_final(b"v=" + base64.b64encode(bytes(32)) + b",x=ext")
    with pytest.raises(LocalProtocolError):
        client.verify_server_final(b"v=" + base64.b64encode(bytes(32)))


# -- client: hostile server-first-message --------------------------------------


@pytest.mark.parametrize(
    ("message", "match", "sqlstate"),
    [
        (b"", "attribute=value", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=4096" + b"," + b"x=" * MAX_MESSAGE_SIZE, "longer than", "08P01"),
        (b"r=cnonce\xff,s=c2FsdA==,i=1", "UTF-8", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=1,x=\x00", "NUL", "08P01"),
        (b"m=ext,r=cnonceX,s=c2FsdA==,i=1", "unsupported extension", "0A000"),
        (b"r=cnonceX,i=1,s=c2FsdA==", "attributes", "08P01"),
        (b"r=cnonceX,s=c2FsdA==", "attributes", "08P01"),
        (b"s=c2FsdA==,r=cnonceX,i=1", "attributes", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,,i=1", "attribute=value", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,1=1", "attribute=value", "08P01"),
        ("r=cnonceX,s=c2FsdA==,\u00e9=1".encode(), "attribute=value", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i", "attribute=value", "08P01"),
        (b"r=cnonce,s=c2FsdA==,i=1", "bad nonce", "08P01"),
        (b"r=cnonc,s=c2FsdA==,i=1", "bad nonce", "08P01"),
        (b"r=cnonce X,s=c2FsdA==,i=1", "bad nonce", "08P01"),
        (b"r=cnonce\xc3\xa9,s=c2FsdA==,i=1", "bad nonce", "08P01"),
        (b"r=Xcnonce,s=c2FsdA==,i=1", "does not extend", "08P01"),
        (b"r=cnonceX,s=,i=1", "bad salt", "08P01"),
        (b"r=cnonceX,s=c2FsdA,i=1", "bad salt", "08P01"),
        (b"r=cnonceX,s=c2FsdB==,i=1", "bad salt", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=0", "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=-1", "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=+1", "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=01", "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=", "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=4096.0", "iteration count", "08P01"),
        ("r=cnonceX,s=c2FsdA==,i=\u0664".encode(), "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=10000001", "iteration count", "08P01"),
        (b"r=cnonceX,s=c2FsdA==,i=99999999999999999999", "iteration count", "08P01"),
    ],
)
def test_client_rejects_server_first(message: bytes, match: str, sqlstate: str) -> None:
    client = _client_after_first()
    with pytest.raises(RemoteProtocolError, match=match) as info:
        client.client_final(message)
    assert info.value.sqlstate == sqlstate


def test_client_iteration_bound() -> None:
    assert MAX_ITERATIONS == 10_000_000
    _client_after_first().client_final(b"r=cnonceX,s=c2FsdA==,i=10000000,x=ext")
    with pytest.raises(RemoteProtocolError, match="1 to 5"):
        _client_after_first(max_iterations=5).client_final(b"r=cnonceX,s=c2FsdA==,i=6")


# -- client: hostile server-final-message --------------------------------------


@pytest.mark.parametrize(
    ("message", "error", "match"),
    [
        (b"e=invalid-proof", AuthenticationFailed, "invalid-proof"),
        (b"e=other-error,x=1", AuthenticationFailed, "other-error"),
        ("e=\u00e9\u00e9".encode(), AuthenticationFailed, "unprintable"),
        (b"e=\x1b[2J", AuthenticationFailed, "unprintable"),
        (b"v=" + base64.b64encode(b"\x01" * 32), AuthenticationFailed, "signature is wrong"),
        (b"", RemoteProtocolError, "attribute=value"),
        (b"v=", RemoteProtocolError, "v=<signature>"),
        (b"v=AAAA", RemoteProtocolError, "v=<signature>"),
        (b"v=!!!!", RemoteProtocolError, "v=<signature>"),
        (b"x=" + base64.b64encode(bytes(32)), RemoteProtocolError, "v=<signature>"),
        (b"m=" + base64.b64encode(bytes(32)), RemoteProtocolError, "unsupported extension"),
        (b"v=" + b"A" * MAX_MESSAGE_SIZE, RemoteProtocolError, "longer than"),
    ],
)
def test_client_rejects_server_final(message: bytes, error: type[Exception], match: str) -> None:
    client = ScramClient(client_key=bytes(32), server_key=bytes(32), nonce="cnonce")
    client.client_first()
    client.client_final(b"r=cnonceX,s=c2FsdA==,i=1")
    with pytest.raises(error, match=match):
        client.verify_server_final(message)
    assert not client.server_verified


def test_client_error_messages_never_quote_the_password() -> None:
    secret = "hunter2-\u00e9-secret"
    client = ScramClient(secret, username="u")
    with pytest.raises(AuthenticationFailed) as info:
        _our_client_vs_scramp(client, VERIFIER)
    assert secret not in str(info.value)
    assert secret not in repr(client)


# -- server: argument and state checks -----------------------------------------


@pytest.mark.parametrize(
    ("secret", "nonce", "message"),
    [
        ("SCRAM-SHA-256$4096:broken", None, "malformed SCRAM verifier"),
        ("md5" + "0" * 32, None, "MD5 hash"),
        ("", None, "empty password"),
        (b"", None, "empty password"),
        (VERIFIER, "", "nonce"),
        (VERIFIER, "a,b", "nonce"),
    ],
)
def test_server_arguments(secret: str | bytes | ScramVerifier, nonce: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScramServer(secret, nonce=nonce)


def test_server_plaintext_gets_random_salt() -> None:
    one, two = ScramServer("pencil"), ScramServer("pencil")
    assert one.verifier.salt != two.verifier.salt
    assert one.verifier.iterations == 4096
    # "md5" followed by something other than 32 lower-case hex is a password.
    assert ScramServer("md5" + "A" * 32).verifier.iterations == 4096


def test_server_steps_run_once_in_order() -> None:
    server = ScramServer(VERIFIER, nonce="snonce")
    with pytest.raises(LocalProtocolError):
        server.server_final(b"c=biws,r=cnoncesnonce,p=AAAA")
    server.server_first(b"n,,n=,r=cnonce")
    with pytest.raises(LocalProtocolError):
        server.server_first(b"n,,n=,r=cnonce")
    with pytest.raises(AuthenticationFailed):
        server.server_final(b"c=biws,r=cnoncesnonce,p=" + base64.b64encode(bytes(32)))
    with pytest.raises(LocalProtocolError):  # no second guess on the same exchange
        server.server_final(b"c=biws,r=cnoncesnonce,p=" + base64.b64encode(bytes(32)))


def test_server_default_nonce_extends_client_nonce() -> None:
    first = ScramServer(VERIFIER).server_first(b"n,,n=,r=abc")
    nonce = first.split(b",")[0][2:]
    assert nonce.startswith(b"abc") and len(nonce) == 3 + 24
    assert first.endswith(b",s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096")


# -- server: hostile client-first-message --------------------------------------


@pytest.mark.parametrize(
    ("message", "match", "sqlstate"),
    [
        (b"", "GS2 header", "08P01"),
        (b"n", "GS2 header", "08P01"),
        (b"n,", "GS2 header", "08P01"),
        (b"x,,n=,r=a", "GS2 header", "08P01"),
        (b"N,,n=,r=a", "GS2 header", "08P01"),
        (b"\xff,,n=,r=a", "GS2 header", "08P01"),
        (b"p=tls-server-end-point,,n=,r=a", "channel binding", "0A000"),
        (b"n,a=admin,n=,r=a", "authorization identity", "0A000"),
        (b"n,x,n=,r=a", "GS2 header", "08P01"),
        (b"n,a,n=,r=a", "GS2 header", "08P01"),
        (b"n,,m=ext,n=,r=a", "unsupported extension", "0A000"),
        (b"n,,", "attribute=value", "08P01"),
        (b"n,,n=", "attributes", "08P01"),
        (b"n,,r=a,n=", "attributes", "08P01"),
        (b"n,,n=,r=a" + b"a" * MAX_MESSAGE_SIZE, "longer than", "08P01"),
        (b"n,,n=\xff,r=a", "UTF-8", "08P01"),
        (b"n,,n=a=2,r=a", "user name escape", "08P01"),
        (b"n,,n=a=3d,r=a", "user name escape", "08P01"),
        (b"n,,n=a=,r=a", "user name escape", "08P01"),
        (b"n,,n=,r=", "bad nonce", "08P01"),
        (b"n,,n=,r=a b", "bad nonce", "08P01"),
        (b"n,,n=,r=a\x7f", "bad nonce", "08P01"),
    ],
)
def test_server_rejects_client_first(message: bytes, match: str, sqlstate: str) -> None:
    server = ScramServer(VERIFIER)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        server.server_first(message)
    assert info.value.sqlstate == sqlstate


def test_server_accepts_extensions_and_utf8_user_names() -> None:
    server = ScramServer(VERIFIER, nonce="s")
    first = server.server_first("n,,n=j\u00f6rg=3D=2C,r=abc,x=ext,y=".encode())
    assert first.startswith(b"r=abcs,")
    assert server.username == "j\u00f6rg=,"


# -- server: hostile client-final-message --------------------------------------

NONCE = "cnoncesnonce"
ZERO_PROOF = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ("", "attribute=value"),
        ("r=cnoncesnonce,c=biws,p=" + ZERO_PROOF, "attributes"),
        ("c=biws,p=" + ZERO_PROOF, "attributes"),
        ("c=biws,r=cnoncesnonce", "proof is not the last"),
        ("c=biws,r=cnoncesnonce,p=" + ZERO_PROOF + ",x=1", "proof is not the last"),
        ("c=eSws,r=cnoncesnonce,p=" + ZERO_PROOF, "channel binding"),
        ("c=biwsdGxz,r=cnoncesnonce,p=" + ZERO_PROOF, "channel binding"),
        ("c=biw,r=cnoncesnonce,p=" + ZERO_PROOF, "channel binding"),
        ("c=biws,r=cnonce,p=" + ZERO_PROOF, "nonce does not match"),
        ("c=biws,r=cnoncesnoncE,p=" + ZERO_PROOF, "nonce does not match"),
        ("c=biws,r=cnoncesnonce,p=", "bad proof"),
        ("c=biws,r=cnoncesnonce,p=AAAA", "bad proof"),
        ("c=biws,r=cnoncesnonce,p=" + ZERO_PROOF[:-1] + "B", "bad proof"),
        ("c=biws,r=cnoncesnonce,p=" + ZERO_PROOF + "A" * MAX_MESSAGE_SIZE, "longer than"),
        ("m=x,c=biws,r=cnoncesnonce,p=" + ZERO_PROOF, "unsupported extension"),
    ],
)
def test_server_rejects_client_final(message: str, match: str) -> None:
    server = _server_after_first()
    with pytest.raises(RemoteProtocolError, match=match):
        server.server_final(message.encode())
    assert server.client_key is None


def _client_final_for(server_first: bytes, bare: bytes, binding: str, extra: str = "") -> bytes:
    client_key = _keys(PASSWORD.encode(), VERIFIER.salt, VERIFIER.iterations)[0]
    without_proof = f"c={binding},r={NONCE}{extra}".encode()
    auth_message = b",".join((bare, server_first, without_proof))
    return without_proof + b",p=" + _proof(client_key, auth_message).encode()


@pytest.mark.parametrize(("flag", "binding"), [(b"n", "biws"), (b"y", "eSws")])
def test_server_checks_binding_against_gs2_flag(flag: bytes, binding: str) -> None:
    server = ScramServer(VERIFIER, nonce="snonce")
    server_first = server.server_first(flag + b",,n=,r=cnonce")
    final = _client_final_for(server_first, b"n=,r=cnonce", binding, ",x=ext")
    signature = server.server_final(final)
    assert signature.startswith(b"v=")
    assert server.client_key == _keys(PASSWORD.encode(), VERIFIER.salt, 4096)[0]
    # The other flag's binding is refused even with an otherwise right proof.
    other = "eSws" if binding == "biws" else "biws"
    server = ScramServer(VERIFIER, nonce="snonce")
    server_first = server.server_first(flag + b",,n=,r=cnonce")
    with pytest.raises(RemoteProtocolError, match="channel binding"):
        server.server_final(_client_final_for(server_first, b"n=,r=cnonce", other))


def test_server_error_messages_never_quote_secrets() -> None:
    server = _server_after_first()
    with pytest.raises(AuthenticationFailed) as info:
        server.server_final(f"c=biws,r={NONCE},p={ZERO_PROOF}".encode())
    text = str(info.value)
    assert text == "password authentication failed"
    for key in (VERIFIER.stored_key, VERIFIER.server_key, VERIFIER.salt):
        assert base64.b64encode(key).decode() not in text


# -- fuzzing: only the documented exceptions ------------------------------------

# Fragments that are valid somewhere, so that random joins reach deep checks.
_FRAGMENTS = [
    b"n",
    b"y",
    b"",
    b"p=tls-unique",
    b"a=x",
    b"n=",
    b"n=us=2Cer",
    b"m=x",
    b"r=cnonce",
    b"r=cnonceX",
    b"r=cnoncesnonce",
    b"s=c2FsdA==",
    b"s=",
    b"i=1",
    b"i=4096",
    b"i=0",
    b"i=99999999999",
    b"c=biws",
    b"c=eSws",
    b"p=" + ZERO_PROOF.encode(),
    b"v=" + ZERO_PROOF.encode(),
    b"e=invalid-proof",
    b"x=\xff",
    b"\x00",
    b"=",
]
_MESSAGES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map(b",".join),
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=6)), max_size=8).map(
        b",".join
    ),
)
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(_MESSAGES)
def test_fuzz_server_first(message: bytes) -> None:
    server = ScramServer(VERIFIER)
    try:
        reply = server.server_first(message)
    except RemoteProtocolError:
        return
    assert reply.startswith(b"r=")


@_FUZZ
@given(_MESSAGES)
def test_fuzz_server_final(message: bytes) -> None:
    server = _server_after_first()
    try:
        server.server_final(message)
    except ALLOWED:
        assert server.client_key is None


@_FUZZ
@given(_MESSAGES)
def test_fuzz_client_final(message: bytes) -> None:
    client = _client_after_first()
    try:
        reply = client.client_final(message)
    except RemoteProtocolError:
        return
    assert reply.startswith(b"c=biws,r=cnonce")


@_FUZZ
@given(_MESSAGES)
def test_fuzz_verify_server_final(message: bytes) -> None:
    client = _client_after_final()
    try:
        client.verify_server_final(message)
    except ALLOWED:
        pass


# --- mock exchange for unknown users ----------------------------------------------------


def _mock_salt(server_first: bytes) -> bytes:
    attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
    assert attrs[b"i"] == b"4096"
    return attrs[b"s"]


@pytest.mark.parametrize("password", ["", "anything", "scram-secret"])
def test_unknown_user_fails_like_a_wrong_password(password: str) -> None:
    server = ScramServer.for_unknown_user("nobody", mock_seed=b"seed")
    client = ScramClient(password or "x")
    server_first = server.server_first(client.client_first())
    with pytest.raises(AuthenticationFailed) as info:
        server.server_final(client.client_final(server_first))
    assert info.value.sqlstate == "28P01"
    assert server.client_key is None


def test_unknown_user_salt_is_stable_per_user_and_seed() -> None:
    def salt(user: str, seed: bytes) -> bytes:
        server = ScramServer.for_unknown_user(user, mock_seed=seed)
        return _mock_salt(server.server_first(ScramClient("pw").client_first()))

    # Stable across attempts, as a real user's salt is; different per user and seed.
    assert salt("nobody", b"a") == salt("nobody", b"a")
    assert salt("nobody", b"a") != salt("somebody", b"a")
    assert salt("nobody", b"a") != salt("nobody", b"b")


def test_scram_keys_are_derived_once_per_password_salt_and_iterations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pooler logs in to the same server with the same password and stored salt for
    every connection it opens: PBKDF2 (milliseconds, on purpose) runs once for them."""
    from pgsansio.protocol import _auth

    calls: list[tuple[bytes, int]] = []
    real = hashlib.pbkdf2_hmac

    def counted(name: str, password: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append((salt, iterations))
        return real(name, password, salt, iterations)

    monkeypatch.setattr(hashlib, "pbkdf2_hmac", counted)
    salt = b"a salt of its own for this test"
    first = _auth._salted_keys(b"secret", salt, 4096)
    assert _auth._salted_keys(b"secret", salt, 4096) == first
    assert calls == [(salt, 4096)]
    salted = real("sha256", b"secret", salt, 4096)
    assert first == (
        hmac.new(salted, b"Client Key", "sha256").digest(),
        hmac.new(salted, b"Server Key", "sha256").digest(),
    )
    # Another password, salt or count is another derivation.
    _auth._salted_keys(b"other", salt, 4096)
    _auth._salted_keys(b"secret", salt + b"!", 4096)
    _auth._salted_keys(b"secret", salt, 4097)
    assert len(calls) == 4


def test_md5_answers_follow_a_changed_password() -> None:
    """The inner hash is kept per (user, password): a new password is a new hash."""
    salt = b"\x01\x02\x03\x04"
    for password in ("one", "two", "one", md5_hash("u", "two")):
        expected = hashlib.md5(md5_hash("u", password)[3:].encode() + salt).hexdigest()
        if password.startswith("md5"):
            expected = hashlib.md5(password[3:].encode() + salt).hexdigest()
        assert md5_response("u", password, salt) == "md5" + expected
