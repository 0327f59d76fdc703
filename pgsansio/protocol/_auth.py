"""Password authentication primitives: MD5 and SCRAM-SHA-256, both sides.

Sans-IO: each SCRAM side is a state machine fed the SASL payloads (the bytes
inside AuthenticationSASLContinue, SASLResponse, ...) that returns the next
payload. A pooler needs both: it authenticates clients (server) and logs in to
PostgreSQL (client). Holding only a verifier, it can still log in after a
client proved itself: ClientKey falls out of the proof (``ScramServer.client_key``)
and is all that ``ScramClient(client_key=...)`` needs, as in PgBouncer.

Peers may be hostile: payloads are capped at :data:`MAX_MESSAGE_SIZE`, every
attribute is checked, a malformed message raises :class:`RemoteProtocolError`
and a wrong password :class:`AuthenticationFailed`. No message quotes a secret.
Strings are encoded as UTF-8 with ``surrogateescape``, like the event layer's.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Final

from ._errors import SQLSTATE_FEATURE_NOT_SUPPORTED as _UNSUPPORTED
from ._errors import SQLSTATE_INVALID_PASSWORD, LocalProtocolError, RemoteProtocolError
from ._saslprep import normalize_password, saslprep

__all__ = [
    "DEFAULT_ITERATIONS", "MAX_ITERATIONS", "MAX_MESSAGE_SIZE", "SCRAM_SHA_256",
    "AuthenticationFailed", "ScramClient", "ScramServer", "ScramVerifier", "md5_hash",
    "md5_response", "md5_verify", "normalize_password", "saslprep", "scram_verifier",
]  # fmt: skip

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
#: PostgreSQL's default ``scram_iterations``.
DEFAULT_ITERATIONS: Final = 4096
#: The largest iteration count our client accepts from a server. PostgreSQL
#: allows INT_MAX, but then a hostile server could make us spin in PBKDF2 for
#: hours; 10 million (~2500 times the default) costs seconds.
MAX_ITERATIONS: Final = 10_000_000
#: The largest SCRAM payload we parse. Honest ones are ~100 bytes; the cap
#: stops a peer making us buffer and hash megabytes of "nonce".
MAX_MESSAGE_SIZE: Final = 4096

_SALT_LENGTH = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
_NONCE_LENGTH = 18  # PostgreSQL's SCRAM_RAW_NONCE_LEN; base64 makes it 24 chars
_KEY_LENGTH = 32  # SHA-256 digest size
_INT_MAX = 2**31 - 1  # pg_authid keeps the iteration count in a C int
_MD5_HASH = re.compile(r"md5[0-9a-f]{32}")  # PostgreSQL's test: lower-case hex only
_SASLNAME = re.compile(r"(?:[^=,]|=2C|=3D)*")  # RFC 5802 saslname
_VERIFIER = re.compile(r"SCRAM-SHA-256\$([^:$]*):([^$]*)\$([^:]*):(.*)", re.DOTALL)
_hmac = functools.partial(hmac.digest, digest="sha256")
# usedforsecurity=False keeps FIPS builds working: MD5 is wire compatibility.
_md5 = functools.partial(hashlib.md5, usedforsecurity=False)


class AuthenticationFailed(Exception):
    """The password, proof or server signature is wrong.

    Not a :class:`RemoteProtocolError` because the answer differs: a pooler
    reports ``28P01`` invalid_password (the ``sqlstate`` attribute), as
    PostgreSQL does, and a protocol violation is ``08P01``.
    """

    def __init__(self, msg: str = "password authentication failed") -> None:
        super().__init__(msg)
        # Set here, not as a class-level default: a mypyc-compiled exception class
        # does not give its instances class-level defaults.
        self.sqlstate: str = SQLSTATE_INVALID_PASSWORD


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes | None:
    # Canonical padded base64 only, as every encoder emits: no whitespace, no
    # missing padding, no ignored trailing bits. None if it is not.
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        return None
    return data if _b64(data) == text else None


def _posint(text: str) -> int | None:
    # RFC 5802 posit-number = %x31-39 *DIGIT: no sign, no leading zero, no
    # non-ASCII digits; a long string is refused before int() parses it.
    if not text or len(text) > 10 or text[0] == "0" or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


def _is_nonce(nonce: str) -> bool:
    # RFC 5802 printable = %x21-2B / %x2D-7E: visible ASCII except ",".
    return bool(nonce) and all("!" <= ch <= "~" and ch != "," for ch in nonce)


def _nonce_argument(nonce: str | None) -> str:
    if nonce is None:
        return _b64(secrets.token_bytes(_NONCE_LENGTH))
    if not _is_nonce(nonce):
        raise ValueError("a SCRAM nonce must be non-empty printable ASCII without ','")
    return nonce


def _check_size(message: bytes, what: str) -> None:
    if len(message) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(f"SCRAM {what} is longer than {MAX_MESSAGE_SIZE} bytes")


def _parse(message: bytes, what: str, names: str) -> tuple[str, list[tuple[str, str]]]:
    # Decode and split into (name, value) pairs. The first len(names) must be
    # `names`, in order; any more are extensions, which RFC 5802 says to
    # ignore. A leading "m=" is its reserved mandatory extension: refused.
    _check_size(message, what)
    try:
        text = bytes(message).decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"malformed SCRAM {what}: not valid UTF-8") from None
    pairs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not (part[0].isascii() and part[0].isalpha()):
            raise RemoteProtocolError(f"malformed SCRAM {what}: expected attribute=value")
        if "\x00" in part:
            raise RemoteProtocolError(f"malformed SCRAM {what}: contains a NUL byte")
        pairs.append((part[0], part[2:]))
    if pairs[0][0] == "m":
        raise RemoteProtocolError(f"SCRAM {what} requires an unsupported extension", _UNSUPPORTED)
    got = "".join(name for name, _ in pairs[: len(names)])
    if got != names:
        raise RemoteProtocolError(f"malformed SCRAM {what}: attributes {got!r}, want {names!r}")
    return text, pairs


#: How many (password, salt, iterations) -> keys results _salted_keys keeps.
_SALTED_KEPT = 64
_salted: dict[tuple[bytes, bytes, int], tuple[bytes, bytes]] = {}


def _salted_keys(password: bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    # RFC 5802 section 3: SaltedPassword := Hi(Normalize(password), salt, i),
    # Hi() being PBKDF2-HMAC with one output block; returns (ClientKey, ServerKey).
    # PBKDF2 is slow on purpose (4096 rounds by default: milliseconds), and a pooler
    # logs in to the same server with the same password and the same stored salt for
    # every connection it opens: the keys are found once, as PgBouncer keeps them.
    key = (password, salt, iterations)
    keys = _salted.get(key)
    if keys is None:
        salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
        keys = _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")
        if len(_salted) >= _SALTED_KEPT:
            _salted.clear()
        _salted[key] = keys
    return keys


def md5_hash(user: str, password: str | bytes) -> str:
    """Return what ``pg_authid`` stores for an MD5 password.

    Args:
        user: the role name, which PostgreSQL uses as the salt.
        password: the plaintext password.

    Returns:
        ``"md5"`` + hex(md5(password + user)).
    """
    raw = password if isinstance(password, bytes) else _utf8(password)
    return "md5" + _md5(raw + _utf8(user)).hexdigest()


#: How many (user, password) -> inner MD5 hash results md5_response keeps.
_INNER_KEPT = 256
_inner_md5: dict[tuple[str, str | bytes], str] = {}


def md5_response(user: str, password: str | bytes, salt: bytes) -> str:
    """Build the PasswordMessage text answering AuthenticationMD5Password.

    A stored hash works as the password (the outer hash is computed from it),
    which lets a pooler holding only ``pg_authid`` contents log in.

    Args:
        user: the startup user name.
        password: the plaintext password, or a stored hash (``"md5"`` and 32
            lower-case hex digits), then used as the inner hash.
        salt: the 4-byte salt from the server's request.

    Returns:
        ``"md5"`` + hex(md5(hex(md5(password + user)) + salt)).

    Raises:
        ValueError: ``salt`` is not 4 bytes.
    """
    if len(salt) != 4:
        raise ValueError(f"an MD5 salt is 4 bytes, got {len(salt)}")
    key = (user, password)
    inner = _inner_md5.get(key)
    if inner is None:
        # The same for every login of a user (a pooler checks thousands a second):
        # found once per (user, password).
        if isinstance(password, str) and _MD5_HASH.fullmatch(password):
            inner = password
        else:
            inner = md5_hash(user, password)
        if len(_inner_md5) >= _INNER_KEPT:
            _inner_md5.clear()
        _inner_md5[key] = inner
    return "md5" + _md5(inner[3:].encode("ascii") + bytes(salt)).hexdigest()


def md5_verify(user: str, stored: str, salt: bytes, response: str) -> bool:
    """Check a client's MD5 PasswordMessage against the stored secret.

    Args:
        user: the startup user name.
        stored: a plaintext password or an ``"md5..."`` hash. An empty one
            never matches, as PostgreSQL never stores an empty password.
        salt: the 4-byte salt we sent.
        response: the text of the client's PasswordMessage.

    Returns:
        Whether the response is right, compared in constant time.

    Raises:
        ValueError: ``stored`` is a SCRAM verifier (MD5 authentication is then
            impossible: use SCRAM), or ``salt`` is not 4 bytes.
    """
    if stored.startswith(SCRAM_SHA_256 + "$"):
        raise ValueError("MD5 authentication is not possible with a SCRAM verifier")
    expected = md5_response(user, stored, salt)
    if not stored or not response.isascii():
        return False
    return hmac.compare_digest(expected.encode("ascii"), response.encode("ascii"))


@dataclass(frozen=True, slots=True)
class ScramVerifier:
    """A SCRAM-SHA-256 secret as stored in ``pg_authid.rolpassword``.

    It does not reveal the password, but StoredKey and ServerKey let the
    holder act as the server, so ``repr()`` leaves them out.

    Attributes:
        iterations: the PBKDF2 iteration count, 1 to 2**31-1.
        salt: the salt, non-empty.
        stored_key: H(ClientKey), 32 bytes.
        server_key: HMAC(SaltedPassword, "Server Key"), 32 bytes.
    """

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= _INT_MAX:
            raise ValueError(f"SCRAM iteration count must be 1 to {_INT_MAX}")
        if not self.salt:
            raise ValueError("SCRAM salt must not be empty")
        if len(self.stored_key) != _KEY_LENGTH or len(self.server_key) != _KEY_LENGTH:
            raise ValueError(f"SCRAM StoredKey and ServerKey are {_KEY_LENGTH} bytes")

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.

        Args:
            text: the verifier as PostgreSQL stores it (padded base64).

        Returns:
            The verifier.

        Raises:
            ValueError: not such a verifier; the message names the faulty
                field but never quotes the secret.
        """
        match = _VERIFIER.fullmatch(text)
        if match is None:
            raise ValueError(
                "malformed SCRAM verifier: expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            )
        iterations = _posint(match[1])
        if iterations is None:
            raise ValueError("malformed SCRAM verifier: bad iteration count")
        values = []
        for name, value in zip(
            ("salt", "StoredKey", "ServerKey"), match.groups()[1:], strict=True
        ):
            data = _unb64(value)
            if data is None:
                raise ValueError(f"malformed SCRAM verifier: {name} is not base64")
            values.append(data)
        return cls(iterations, *values)

    @classmethod
    def from_password(
        cls,
        password: str | bytes,
        *,
        salt: bytes | None = None,
        iterations: int = DEFAULT_ITERATIONS,
    ) -> ScramVerifier:
        """Derive a verifier as PostgreSQL does for ``ALTER ROLE ... PASSWORD``.

        Args:
            password: the plaintext password (see :func:`normalize_password`).
            salt: the salt; 16 random bytes, like PostgreSQL, if omitted.
            iterations: the PBKDF2 iteration count.

        Returns:
            The verifier.

        Raises:
            ValueError: an empty password (PostgreSQL refuses to store one),
                an empty salt or an iteration count out of range.
        """
        if not password:
            raise ValueError("empty password")
        salt = secrets.token_bytes(_SALT_LENGTH) if salt is None else salt
        cls(iterations, salt, bytes(_KEY_LENGTH), bytes(_KEY_LENGTH))  # check before PBKDF2
        client_key, server_key = _salted_keys(normalize_password(password), salt, iterations)
        return cls(iterations, salt, hashlib.sha256(client_key).digest(), server_key)

    def __str__(self) -> str:
        return (
            f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
            f"${_b64(self.stored_key)}:{_b64(self.server_key)}"
        )


def scram_verifier(
    password: str | bytes, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Return the SCRAM secret PostgreSQL would store for a password.

    Byte-identical to ``pg_authid.rolpassword`` for the same salt and count;
    arguments and errors as for :meth:`ScramVerifier.from_password`.

    Returns:
        ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.
    """
    return str(ScramVerifier.from_password(password, salt=salt, iterations=iterations))


_START, _FIRST, _FINAL, _DONE, _FAILED = range(5)


class _Exchange:
    # Each step runs once, in order. A step marks the exchange failed before
    # it starts, so one that raised cannot be retried with other input.
    __slots__ = ("_state",)
    mechanism: Final = SCRAM_SHA_256

    def __init__(self) -> None:
        self._state = _START

    def _step(self, expected: int, name: str) -> None:
        if self._state != expected:
            raise LocalProtocolError(f"SCRAM: {name}() called out of order")
        self._state = _FAILED


class ScramClient(_Exchange):
    """The client side of SCRAM-SHA-256 (no channel binding).

    Call :meth:`client_first`, :meth:`client_final`, :meth:`verify_server_final`
    once each, in order; otherwise they raise :class:`LocalProtocolError`.

    Args:
        password: the plaintext password (see :func:`normalize_password`).
        nonce: our nonce; 18 random bytes in base64 if omitted. Inject one
            only for tests and replays: a repeated nonce allows replay.
        client_key: instead of a password, the ClientKey a
            :class:`ScramServer` recovered from a client's proof (pass-through).
        server_key: with ``client_key``, the verifier's ServerKey to check the
            server's signature. Without it a pass-through login cannot tell
            the real server from an impostor (``server_verified`` stays False).
        max_iterations: the largest iteration count accepted from the server.
        username: the ``n=`` value. PostgreSQL ignores it (libpq sends it
            empty); other SCRAM servers may need it.

    Raises:
        ValueError: neither or both of password and client_key, a server_key
            without client_key, a key not 32 bytes, or a bad nonce.

    Attributes:
        server_verified: True once the server's signature checked out.
    """

    __slots__ = ("_bare", "_keys", "_max", "_nonce", "_password", "_signature", "server_verified")

    def __init__(
        self,
        password: str | bytes | None = None,
        *,
        nonce: str | None = None,
        client_key: bytes | None = None,
        server_key: bytes | None = None,
        max_iterations: int = MAX_ITERATIONS,
        username: str = "",
    ) -> None:
        super().__init__()
        if (password is None) == (client_key is None):
            raise ValueError("ScramClient needs either a password or a client_key")
        if server_key is not None and client_key is None:
            raise ValueError("server_key is only used with client_key")
        if any(key is not None and len(key) != _KEY_LENGTH for key in (client_key, server_key)):
            raise ValueError(f"SCRAM keys are {_KEY_LENGTH} bytes")
        self._password = None if password is None else normalize_password(password)
        self._keys = (client_key, server_key)
        self._nonce = _nonce_argument(nonce)
        self._max = max_iterations
        user = _utf8(username.replace("=", "=3D").replace(",", "=2C"))
        self._bare = b"n=" + user + b",r=" + self._nonce.encode("ascii")
        self._signature: bytes | None = None
        self.server_verified = False

    def client_first(self) -> bytes:
        """Return the client-first-message, for SASLInitialResponse.

        The user name is empty unless given, as from libpq: PostgreSQL
        ignores it and authenticates the startup packet's user.

        Returns:
            ``b"n,,n=,r=<nonce>"``.
        """
        self._step(_START, "client_first")
        self._state = _FIRST
        return b"n,," + self._bare

    def client_final(self, server_first: bytes) -> bytes:
        """Answer the server-first-message (AuthenticationSASLContinue).

        Args:
            server_first: ``r=<nonce>,s=<salt>,i=<iterations>[,extensions]``.

        Returns:
            ``b"c=biws,r=<nonce>,p=<proof>"``.

        Raises:
            RemoteProtocolError: a malformed message, a nonce that does not
                extend ours, an empty salt, an iteration count out of
                1..max_iterations; ``0A000`` for a mandatory extension.
        """
        self._step(_FIRST, "client_final")
        what = "server-first-message"
        text, pairs = _parse(server_first, what, "rsi")
        (_, nonce), (_, salt_text), (_, count) = pairs[:3]
        if not _is_nonce(nonce) or len(nonce) <= len(self._nonce):
            raise RemoteProtocolError(f"malformed SCRAM {what}: bad nonce")
        if not nonce.startswith(self._nonce):
            raise RemoteProtocolError("SCRAM server nonce does not extend the client nonce")
        salt = _unb64(salt_text)
        if not salt:
            raise RemoteProtocolError(f"malformed SCRAM {what}: bad salt")
        iterations = _posint(count)
        if iterations is None or iterations > self._max:
            raise RemoteProtocolError(f"SCRAM iteration count must be 1 to {self._max}")
        without_proof = f"c=biws,r={nonce}".encode("ascii")
        auth_message = b",".join((self._bare, text.encode("utf-8"), without_proof))
        client_key, server_key = self._keys
        if self._password is not None:
            client_key, server_key = _salted_keys(self._password, salt, iterations)
        assert client_key is not None
        proof = _xor(client_key, _hmac(hashlib.sha256(client_key).digest(), auth_message))
        if server_key is not None:
            self._signature = _hmac(server_key, auth_message)
        self._state = _FINAL
        return without_proof + b",p=" + _b64(proof).encode("ascii")

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server-final-message (AuthenticationSASLFinal).

        The signature proves the server knows the verifier, which unmasks a
        man in the middle. Without a key (pass-through with no ``server_key``)
        only the syntax is checked.

        Args:
            server_final: ``v=<signature>`` or ``e=<error>``, then extensions.

        Raises:
            AuthenticationFailed: ``e=...``, or a wrong signature.
            RemoteProtocolError: a malformed message.
        """
        self._step(_FINAL, "verify_server_final")
        what = "server-final-message"
        _, pairs = _parse(server_final, what, "")
        name, value = pairs[0]
        if name == "e":
            reason = value[:80] if value.isascii() and value.isprintable() else "(unprintable)"
            raise AuthenticationFailed(f"server rejected SCRAM authentication: {reason}")
        signature = _unb64(value)
        if name != "v" or signature is None or len(signature) != _KEY_LENGTH:
            raise RemoteProtocolError(f"malformed SCRAM {what}: expected v=<signature>")
        if self._signature is not None:
            if not hmac.compare_digest(signature, self._signature):
                raise AuthenticationFailed("SCRAM server signature is wrong")
            self.server_verified = True
        self._state = _DONE


class ScramServer(_Exchange):
    """The server side of SCRAM-SHA-256, as PostgreSQL runs it.

    Call :meth:`server_first` then :meth:`server_final`, once each, or they
    raise :class:`LocalProtocolError`. We never offer SCRAM-SHA-256-PLUS, so
    a client's ``y`` flag ("I could bind but you don't offer it") is honest
    and accepted, and ``p=`` is refused (0A000).

    Args:
        secret: a :class:`ScramVerifier`, its text, or a plaintext password
            (a verifier is then derived with a random salt).
        nonce: our part of the nonce; 18 random bytes in base64 if omitted.
            Inject one only for tests and replays.

    Raises:
        ValueError: text starting ``SCRAM-SHA-256$`` that does not parse, an
            ``md5...`` hash (useless for SCRAM), an empty password, a bad nonce.

    Attributes:
        verifier: the secret checked against.
        username: the client's ``n=`` value, unescaped; informative only, as
            PostgreSQL authenticates the startup packet's user.
        client_key: ClientKey (ClientProof XOR ClientSignature) once the proof
            checked out; feed it to ``ScramClient(client_key=...)``.
    """

    __slots__ = (
        "_bare",
        "_first",
        "_gs2",
        "_mock",
        "_nonce",
        "client_key",
        "username",
        "verifier",
    )

    def __init__(self, secret: str | bytes | ScramVerifier, *, nonce: str | None = None) -> None:
        super().__init__()
        if isinstance(secret, ScramVerifier):
            self.verifier = secret
        elif isinstance(secret, str) and secret.startswith(SCRAM_SHA_256 + "$"):
            self.verifier = ScramVerifier.parse(secret)
        elif isinstance(secret, str) and _MD5_HASH.fullmatch(secret):
            raise ValueError("an MD5 hash cannot be used for SCRAM authentication")
        else:
            self.verifier = ScramVerifier.from_password(secret)
        self._nonce = _nonce_argument(nonce)
        self._gs2 = self._bare = self._first = b""
        self._mock = False
        self.username: str | None = None
        self.client_key: bytes | None = None

    @classmethod
    def for_unknown_user(
        cls, user: str, *, mock_seed: bytes, nonce: str | None = None
    ) -> ScramServer:
        """An exchange that looks real but always fails, for a user we don't have.

        PostgreSQL does the same ("mock authentication"): answering an unknown
        user at once, or with a fresh random salt each time, would tell an
        attacker which user names exist. The salt is derived from the user name
        and ``mock_seed`` (keep one random seed per process), so it is stable
        across attempts like a real user's; ``server_final`` then raises
        :class:`AuthenticationFailed` exactly as for a wrong password.
        """
        salt = hashlib.sha256(b"pgsansio mock salt\0" + mock_seed + user.encode()).digest()[:16]
        fake = ScramVerifier(
            DEFAULT_ITERATIONS, salt, secrets.token_bytes(32), secrets.token_bytes(32)
        )
        server = cls(fake, nonce=nonce)
        server._mock = True
        return server

    def server_first(self, client_first: bytes) -> bytes:
        """Answer the client-first-message (in SASLInitialResponse).

        Args:
            client_first: ``gs2-header n=<user>,r=<nonce>[,extensions]``.

        Returns:
            ``b"r=<client nonce + ours>,s=<salt>,i=<iterations>"``.

        Raises:
            RemoteProtocolError: a malformed message; ``0A000`` for channel
                binding, an authorization identity or a mandatory extension.
        """
        self._step(_START, "server_first")
        what = "client-first-message"
        _check_size(client_first, what)
        # gs2-header = gs2-cbind-flag "," [ authzid ] ","
        flag, _, rest = bytes(client_first).partition(b",")
        authzid, comma, bare = rest.partition(b",")
        if flag.startswith(b"p="):
            raise RemoteProtocolError("SCRAM channel binding is not supported", _UNSUPPORTED)
        if flag not in (b"n", b"y") or not comma or authzid[:2] not in (b"", b"a="):
            raise RemoteProtocolError(f"malformed SCRAM {what}: bad GS2 header")
        if authzid:
            raise RemoteProtocolError(
                "SCRAM authorization identity is not supported", _UNSUPPORTED
            )
        _, pairs = _parse(bare, what, "nr")
        (_, user), (_, nonce) = pairs[:2]
        if not _SASLNAME.fullmatch(user):
            raise RemoteProtocolError(f"malformed SCRAM {what}: bad user name escape")
        if not _is_nonce(nonce):
            raise RemoteProtocolError(f"malformed SCRAM {what}: bad nonce")
        self.username = user.replace("=2C", ",").replace("=3D", "=")
        self._gs2, self._bare = flag + b",,", bare
        v = self.verifier
        self._first = f"r={nonce}{self._nonce},s={_b64(v.salt)},i={v.iterations}".encode("ascii")
        self._state = _FIRST
        return self._first

    def server_final(self, client_final: bytes) -> bytes:
        """Check the client-final-message (SASLResponse) and sign the answer.

        Args:
            client_final: ``c=<binding>,r=<nonce>[,extensions],p=<proof>``.

        Returns:
            ``b"v=<server signature>"``, for AuthenticationSASLFinal.

        Raises:
            AuthenticationFailed: the proof is wrong (a wrong password).
            RemoteProtocolError: a malformed message, a channel binding other
                than the client's GS2 header, a nonce other than the combined one.
        """
        self._step(_FIRST, "server_final")
        what = "client-final-message"
        text, pairs = _parse(client_final, what, "cr")
        (_, binding), (_, nonce) = pairs[:2]
        if len(pairs) < 3 or pairs[-1][0] != "p":
            raise RemoteProtocolError(f"malformed SCRAM {what}: proof is not the last attribute")
        if _unb64(binding) != self._gs2:
            raise RemoteProtocolError("SCRAM channel binding check failed")
        if nonce.encode("utf-8") != self._first[2 : self._first.index(b",")]:
            raise RemoteProtocolError(f"malformed SCRAM {what}: nonce does not match")
        proof = _unb64(pairs[-1][1])
        if proof is None or len(proof) != _KEY_LENGTH:
            raise RemoteProtocolError(f"malformed SCRAM {what}: bad proof")
        without_proof = text[: text.rindex(",p=")].encode("utf-8")
        auth_message = b",".join((self._bare, self._first, without_proof))
        client_key = _xor(proof, _hmac(self.verifier.stored_key, auth_message))
        matches = hmac.compare_digest(
            hashlib.sha256(client_key).digest(), self.verifier.stored_key
        )
        if self._mock or not matches:
            raise AuthenticationFailed()
        self.client_key = client_key
        self._state = _DONE
        return b"v=" + _b64(_hmac(self.verifier.server_key, auth_message)).encode("ascii")
