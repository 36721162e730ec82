"""Client secrets: minted once, stored only as a salted scrypt hash, compared in constant time.

Why scrypt for a random 256-bit secret: the secret's entropy already defeats guessing, but a
leaked registry table should not hand out working credentials either, and scrypt's cost
also slows an attacker who got a low-entropy secret imported from an older system.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

__all__ = [
    "SCRYPT_N",
    "SCRYPT_P",
    "SCRYPT_R",
    "dummy_check",
    "hash_secret",
    "new_secret",
    "verify_secret",
]

SCRYPT_N = 2**14  # ~50 ms and 16 MiB per check: once per token, and tokens are cached
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_LEN = 16
_HASH_LEN = 32
_MAX_SECRET = 512
_MAX_N = 2**20


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


def new_secret() -> str:
    """32 bytes from the OS CSPRNG, URL-safe so it survives HTTP Basic without escaping."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` with a fresh per-client salt."""
    salt = secrets.token_bytes(_SALT_LEN)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(secret, salt, n, r, p))}"


def verify_secret(secret: str, encoded: str | None) -> bool:
    """Whether ``secret`` matches ``encoded``; False (never an exception) on any malformation."""
    if encoded is None or not isinstance(secret, str) or len(secret) > _MAX_SECRET:
        return False
    try:
        scheme, n_text, r_text, p_text, salt_text, hash_text = encoded.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
        salt, expected = _unb64(salt_text), _unb64(hash_text)
    except ValueError:
        return False
    if scheme != "scrypt" or not (1 < n <= _MAX_N and 0 < r <= 32 and 0 < p <= 16):
        return False
    return hmac.compare_digest(_scrypt(secret, salt, n, r, p), expected)


@functools.cache
def _dummy_hash() -> str:
    return hash_secret(new_secret())


def dummy_check(secret: str) -> None:
    """Spend the time of one real check, so an unknown client id answers as slowly as a
    wrong secret and response timing does not enumerate client ids."""
    verify_secret(secret, _dummy_hash())
