"""Client secrets: minted once, stored only as a one-way hash, compared in constant time.

Two stored forms, both self-describing:

``hmac-sm3$<pepper id>$<mac>`` (what new secrets get when the registry holds a pepper)
    HMAC-SM3 under a server-side 256-bit *pepper* (``DIR/keys/client-pepper.secret``, never
    in the database) over the client id and the secret. A secret from :func:`new_secret`
    has 256 bits of entropy: nobody can guess it, so the only point of a slow hash would be
    a leaked table, and a table without the pepper is useless for that too (an HMAC under
    an unknown 256-bit key cannot be searched). A check costs microseconds instead of
    scrypt's ~34 ms, so a flood of wrong secrets cannot buy the gateway's CPU. The client
    id is inside the MAC, so a database writer cannot copy one client's hash to another.

``scrypt$n$r$p$salt$hash`` (older rows, and a registry without a pepper)
    Still verifies. :func:`needs_rehash` tells the registry to replace it by the HMAC form
    after the next successful check, for a secret of :func:`new_secret`'s shape (43
    URL-safe characters); a shorter secret imported from an older system keeps scrypt,
    whose cost is what protects a low-entropy secret in a leaked table.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets

from tongban.primitives.gm import hmac_sm3

__all__ = [
    "PEPPER_LEN",
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "dummy_check",
    "hash_secret",
    "hmac_secret",
    "needs_rehash",
    "new_secret",
    "pepper_id",
    "verify_secret",
]

SCRYPT_N = 2**14  # ~50 ms and 16 MiB per check: once per token, and tokens are cached
SCRYPT_R = 8
SCRYPT_P = 1
PEPPER_LEN = 32
_SALT_LEN = 16
_HASH_LEN = 32
_MAX_SECRET = 512
_MAX_N = 2**20
_HMAC = "hmac-sm3"
_DOMAIN = b"tongban client secret v1\x00"
# What new_secret() returns: 32 random bytes, base64url without padding.
_RANDOM_256 = re.compile(r"[A-Za-z0-9_-]{43}")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL needs 128*r*(n+2) bytes for V plus 128*r*p for B; allow exactly that (+ slack).
    maxmem = 128 * r * (n + 2 + p) + 65536
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=_HASH_LEN
    )


def _mac(pepper: bytes, client_id: str, secret: str) -> bytes:
    message = _DOMAIN + client_id.encode("utf-8") + b"\x00" + secret.encode("utf-8")
    return hmac_sm3(pepper, message)


def pepper_id(pepper: bytes) -> str:
    """A short public name of the pepper (not a hash of it: an HMAC under it), so a row
    hashed under another pepper is recognised rather than silently failing to match."""
    if len(pepper) != PEPPER_LEN:
        raise ValueError(f"client secret pepper: expected {PEPPER_LEN} bytes")
    return hmac_sm3(pepper, b"tongban pepper id").hex()[:12]


def new_secret() -> str:
    """32 bytes from the OS CSPRNG, URL-safe so it survives HTTP Basic without escaping."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` with a fresh per-client salt."""
    salt = secrets.token_bytes(_SALT_LEN)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(secret, salt, n, r, p))}"


def hmac_secret(secret: str, *, client_id: str, pepper: bytes) -> str:
    """``hmac-sm3$<pepper id>$<mac>``: for a 256-bit random secret only (see the module
    docstring); ValueError for anything else, which must keep scrypt."""
    if not _RANDOM_256.fullmatch(secret):
        raise ValueError("hmac-sm3 storage is for 256-bit random secrets only")
    return f"{_HMAC}${pepper_id(pepper)}${_b64(_mac(pepper, client_id, secret))}"


def _verify_scrypt(secret: str, fields: list[str]) -> bool:
    try:
        n_text, r_text, p_text, salt_text, hash_text = fields
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(hash_text)
    except ValueError:
        return False
    if not (1 < n <= _MAX_N and 0 < r <= 32 and 0 < p <= 16):
        return False
    return hmac.compare_digest(_scrypt(secret, salt, n, r, p), expected)


def _verify_hmac(secret: str, fields: list[str], client_id: str, pepper: bytes | None) -> bool:
    if pepper is None or len(fields) != 2 or fields[0] != pepper_id(pepper):
        return False
    try:
        expected = _unb64(fields[1])
    except ValueError:
        return False
    return hmac.compare_digest(_mac(pepper, client_id, secret), expected)


def verify_secret(
    secret: str, encoded: str | None, *, client_id: str = "", pepper: bytes | None = None
) -> bool:
    """Whether ``secret`` matches ``encoded``; False (never an exception) on any
    malformation, and for an ``hmac-sm3`` row without the pepper it was made under."""
    if encoded is None or not isinstance(secret, str) or len(secret) > _MAX_SECRET:
        return False
    scheme, _, rest = encoded.partition("$")
    fields = rest.split("$")
    if scheme == "scrypt":
        return _verify_scrypt(secret, fields)
    if scheme == _HMAC:
        return _verify_hmac(secret, fields, client_id, pepper)
    return False


def needs_rehash(secret: str, encoded: str | None, pepper: bytes | None) -> bool:
    """After a successful check: whether the row should be re-stored as ``hmac-sm3``
    (a scrypt row of a 256-bit random secret, with a pepper at hand)."""
    return (
        pepper is not None
        and encoded is not None
        and encoded.startswith("scrypt$")
        and _RANDOM_256.fullmatch(secret) is not None
    )


@functools.cache
def _dummy_key() -> bytes:
    return secrets.token_bytes(PEPPER_LEN)


def dummy_check(secret: str, client_id: str = "") -> None:
    """What an unknown client id costs: one HMAC-SM3, as much as checking a known client's
    ``hmac-sm3`` row, and never a scrypt (the unknown-client path must stay cheap under a
    flood of made-up ids). A known client still on a scrypt row answers ~34 ms slower than
    an unknown one; docs/security.md explains why that residual signal is accepted."""
    if isinstance(secret, str) and len(secret) <= _MAX_SECRET:
        hmac.compare_digest(_mac(_dummy_key(), client_id, secret), bytes(32))
