"""National (GM/T) cryptography: SM3 hashing, SM2 signatures, SM4 authenticated encryption.

Why: government peers require the GM suite. Tongsuo (``tongsuopy``, C) is the fast product
path; ``gmssl`` is pure Python, slow and sharp-edged, kept as baseline and no-C fallback.
Both sit behind :class:`SM2Backend`, so callers never touch either library and tests can
prove they interoperate. Signatures are SM3withSM2 (GM/T 0009, default user id hashed into
Z) as 64 bytes ``r || s`` (32-byte big-endian each), the shape JWS uses for ES256.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = [
    "C2SP_SIGNATURE_TYPE",
    "DEFAULT_USER_ID",
    "SM2_N",
    "SM2_P",
    "GmsslSM2",
    "SM2Backend",
    "SM2PrivateKey",
    "SM2PublicKey",
    "TongsuoSM2",
    "default_backend",
    "get_backend",
    "hmac_sm3",
    "is_on_curve",
    "load_or_create_private_key",
    "load_private_key",
    "save_private_key",
    "sm3",
    "sm4_decrypt",
    "sm4_encrypt",
    "use_backend",
]

# GM/T 0003.5 recommended curve parameters.
SM2_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
SM2_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
SM2_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123
SM2_GX = 0x32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7
SM2_GY = 0xBC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0

DEFAULT_USER_ID = b"1234567812345678"
"""GM/T 0009 default signer id; both backends hard-wire it into the Z value."""

C2SP_SIGNATURE_TYPE = b"\xff" + b"tongban/SM3withSM2"
"""C2SP signed-note type: ``0xff`` (unregistered) followed by a collision-unlikely name."""

_SIG_LEN = 64
_SM4_KEY_LEN = 16
_GCM_NONCE_LEN = 12
_GCM_TAG_LEN = 16
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def sm3(data: bytes) -> bytes:
    """SM3 digest via OpenSSL's ``hashlib`` (C), ~100x faster than ``gmssl.sm3``."""
    return hashlib.new("sm3", data).digest()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (RFC 2104 over SM3) through the stdlib ``hmac`` module."""
    return hmac.new(key, data, "sm3").digest()


def is_on_curve(x: int, y: int) -> bool:
    """Whether (x, y) is an affine point of the SM2 curve (cofactor 1: also in the group)."""
    if not (0 <= x < SM2_P and 0 <= y < SM2_P):
        return False
    return (y * y - (x * x * x + SM2_A * x + SM2_B)) % SM2_P == 0


def _split_signature(sig: bytes) -> tuple[int, int] | None:
    """``r || s`` -> (r, s) if well-formed (64 bytes, both in [1, n-1]); else None."""
    if not isinstance(sig, bytes | bytearray) or len(sig) != _SIG_LEN:
        return None
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if not (0 < r < SM2_N and 0 < s < SM2_N):
        return None
    return r, s


def _check_scalar(d: int) -> None:
    # SM2 signing inverts (1 + d) mod n, so d = n - 1 is as unusable as 0.
    if not isinstance(d, int) or not 1 <= d <= SM2_N - 2:
        raise ValueError("SM2 private scalar out of range")


class SM2Backend(Protocol):
    """SM3withSM2 with the default user id. ``sign`` takes the message (not a digest) and
    returns 64-byte ``r || s``; ``verify`` returns False, never raises, on any bad input."""

    name: str

    def sign(self, d: int, data: bytes) -> bytes: ...

    def verify(self, x: int, y: int, data: bytes, sig: bytes) -> bool: ...


@functools.lru_cache(maxsize=256)
def _tongsuo_private(d: int) -> Any:
    # Building an EVP_PKEY from a scalar costs a point multiplication; keys are few and hot.
    from tongsuopy.crypto.asymciphers import ec

    return ec.derive_private_key(d, ec.SM2())


@functools.lru_cache(maxsize=1024)
def _tongsuo_public(x: int, y: int) -> Any:
    from tongsuopy.crypto.asymciphers import ec

    return ec.EllipticCurvePublicNumbers(x, y, ec.SM2()).public_key()


class TongsuoSM2:
    """SM2 through Tongsuo (OpenSSL fork with GM support): ~0.7 ms per sign or verify."""

    name = "tongsuo"

    def __init__(self) -> None:
        # Import eagerly so default_backend() can fall back when tongsuopy is missing.
        from tongsuopy.crypto import exceptions, hashes
        from tongsuopy.crypto.asymciphers import ec

        self._algorithm = ec.ECDSA(hashes.SM3())
        self._invalid: type[Exception] = exceptions.InvalidSignature

    def sign(self, d: int, data: bytes) -> bytes:
        _check_scalar(d)
        der: bytes = _tongsuo_private(d).sign(data, self._algorithm)
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, x: int, y: int, data: bytes, sig: bytes) -> bool:
        rs = _split_signature(sig)
        if rs is None or not is_on_curve(x, y):
            return False
        try:
            _tongsuo_public(x, y).verify(encode_dss_signature(*rs), data, self._algorithm)
        except (self._invalid, ValueError, TypeError):
            return False
        return True


@functools.lru_cache(maxsize=256)
def _gmssl_public_point(d: int) -> tuple[int, int]:
    from gmssl import sm2

    point: str = sm2.CryptSM2(private_key="", public_key="")._kg(d, sm2.default_ecc_table["g"])
    return int(point[:64], 16), int(point[64:], 16)


class GmsslSM2:
    """SM2 through pure-Python ``gmssl`` 3.2.2: the slow baseline and the no-C fallback.

    Works around three gmssl traps: its default nonce comes from ``random`` (we always pass
    K from ``secrets``); its constructor runs ``public_key.lstrip("04")``, which also strips
    leading ``0``/``4`` digits of x (we assign the attribute after construction); and its
    verifier raises or misbehaves on out-of-range input (we pre-validate and catch).
    """

    name = "gmssl"

    def __init__(self) -> None:
        from .extras import require_extra

        require_extra("gmssl", "gmssl", "the gmssl SM2 backend")
        from gmssl import sm2

        self._sm2 = sm2

    def _crypt(self, d: int | None, x: int, y: int) -> Any:
        crypt = self._sm2.CryptSM2(private_key="" if d is None else f"{d:064x}", public_key="")
        # Set after __init__ so no lstrip("04") can eat leading digits of x.
        crypt.public_key = f"{x:064x}{y:064x}"
        return crypt

    def sign(self, d: int, data: bytes) -> bytes:
        _check_scalar(d)
        crypt = self._crypt(d, *_gmssl_public_point(d))
        while True:
            k = secrets.randbelow(SM2_N - 1) + 1  # K in [1, n-1] from the CSPRNG
            sig_hex: str | None = crypt.sign_with_sm3(data, f"{k:064x}")
            if sig_hex is not None:  # None: r == 0, r + k == n or s == 0; retry
                return bytes.fromhex(sig_hex)

    def verify(self, x: int, y: int, data: bytes, sig: bytes) -> bool:
        if _split_signature(sig) is None or not is_on_curve(x, y):
            return False
        try:
            return self._crypt(None, x, y).verify_with_sm3(sig.hex(), data) is True
        except Exception:  # gmssl hits None arithmetic at the point at infinity
            return False


_BACKENDS: dict[str, SM2Backend] = {}


def get_backend(name: str) -> SM2Backend:
    """The shared instance of backend ``"tongsuo"`` or ``"gmssl"``."""
    if name not in _BACKENDS:
        if name == "tongsuo":
            _BACKENDS[name] = TongsuoSM2()
        elif name == "gmssl":
            _BACKENDS[name] = GmsslSM2()
        else:
            raise ValueError("unknown SM2 backend (expected 'tongsuo' or 'gmssl')")
    return _BACKENDS[name]


_CHOSEN: list[SM2Backend] = []


def use_backend(name: str | None) -> None:
    """Pin the process-wide SM2 backend (configuration calls this once at start-up);
    ``None`` returns to the automatic choice. Benchmarks use it for the gmssl baseline."""
    _CHOSEN.clear()
    if name is not None:
        _CHOSEN.append(get_backend(name))


def default_backend() -> SM2Backend:
    """The pinned backend, else Tongsuo when importable (fast C), else pure-Python gmssl."""
    if _CHOSEN:
        return _CHOSEN[0]
    try:
        return get_backend("tongsuo")
    except ImportError:
        return get_backend("gmssl")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_coordinate(value: object) -> int:
    """Decode a 32-byte JWK coordinate strictly (canonical, unpadded base64url)."""
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{43}", value):
        raise ValueError("JWK coordinate must be 32 bytes of unpadded base64url")
    raw = base64.urlsafe_b64decode(value + "=")
    if _b64url(raw) != value:
        raise ValueError("JWK coordinate is not canonical base64url")
    return int.from_bytes(raw, "big")


def _public_point(d: int) -> tuple[int, int]:
    try:
        numbers = _tongsuo_private(d).public_key().public_numbers()
    except ImportError:
        return _gmssl_public_point(d)
    return int(numbers.x), int(numbers.y)


@dataclass(frozen=True)
class SM2PublicKey:
    """An SM2 public point. Construction validates it is on the curve (ValueError if not)."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not is_on_curve(self.x, self.y):
            raise ValueError("point is not on the SM2 curve")

    def verify(self, data: bytes, sig: bytes, backend: SM2Backend | None = None) -> bool:
        """SM3withSM2 verification of ``r || s``; False (never an exception) on any fault."""
        return (backend or default_backend()).verify(self.x, self.y, data, sig)

    def to_bytes(self) -> bytes:
        """Uncompressed SEC1 encoding: ``04 || x || y`` (65 bytes)."""
        return b"\x04" + self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Parse the 65-byte uncompressed encoding (compressed points are not accepted)."""
        if len(data) != 65 or data[0] != 4:
            raise ValueError("SM2 public key must be 65 bytes starting with 0x04")
        return cls(int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big"))

    def to_jwk(self, kid: str | None = None) -> dict[str, str]:
        """JWK with ``crv: SM2`` (no IANA name exists; this is what GM JOSE libraries use)."""
        jwk = {
            "kty": "EC",
            "crv": "SM2",
            "x": _b64url(self.x.to_bytes(32, "big")),
            "y": _b64url(self.y.to_bytes(32, "big")),
            "alg": "SM2",
            "use": "sig",
        }
        if kid is not None:
            jwk["kid"] = kid
        return jwk

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> Self:
        """Parse a public SM2 JWK; refuses private material so a leaked ``d`` is noticed."""
        if jwk.get("kty") != "EC" or jwk.get("crv") != "SM2":
            raise ValueError("JWK is not an SM2 key (kty EC, crv SM2)")
        if jwk.get("alg", "SM2") != "SM2":
            raise ValueError("SM2 JWK must not name another alg")
        if "d" in jwk:
            raise ValueError("JWK contains private key material")
        return cls(_b64url_coordinate(jwk.get("x")), _b64url_coordinate(jwk.get("y")))

    def thumbprint(self) -> str:
        """RFC 7638 JWK thumbprint with SM3 instead of SHA-256 (base64url, 43 chars)."""
        jwk = self.to_jwk()
        canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        return _b64url(sm3(canonical.encode("ascii")))

    @property
    def key_id(self) -> str:
        """Stable short id: the first 16 characters (96 bits) of :meth:`thumbprint`."""
        return self.thumbprint()[:16]

    def c2sp_key_id(self, name: str) -> bytes:
        """4-byte C2SP signed-note key id, following the spec's recommended formula::

            SHA-256(name || 0x0A || 0xFF || b"tongban/SM3withSM2" || 04 || x || y)[:4]

        SHA-256 (not SM3) because the id is a lookup hint, not a security property, and
        C2SP tooling computes it that way; ``0xFF`` is the spec's marker for signature
        types it has not assigned, followed by our identifier as it recommends.
        """
        if not name or any(c.isspace() or c == "+" for c in name):
            raise ValueError("C2SP key names must be non-empty without spaces or '+'")
        preimage = name.encode("utf-8") + b"\n" + C2SP_SIGNATURE_TYPE + self.to_bytes()
        return hashlib.sha256(preimage).digest()[:4]


@dataclass(frozen=True)
class SM2PrivateKey:
    """An SM2 private scalar ``d`` in [1, n-2]. ``repr`` never shows it."""

    d: int = field(repr=False)

    def __post_init__(self) -> None:
        _check_scalar(self.d)

    @classmethod
    def generate(cls) -> Self:
        """A fresh key from the OS CSPRNG (``secrets``), uniform in [1, n-2]."""
        return cls(secrets.randbelow(SM2_N - 2) + 1)

    @classmethod
    def from_hex(cls, value: str) -> Self:
        """Parse exactly 64 hex digits (``int(..., 16)`` alone would accept ``_`` and spaces)."""
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            raise ValueError("SM2 private key must be 64 hex digits")
        return cls(int(value, 16))

    def to_hex(self) -> str:
        return f"{self.d:064x}"

    @functools.cached_property
    def public_key(self) -> SM2PublicKey:
        """d·G, computed once per instance (cached_property writes past the frozen guard)."""
        return SM2PublicKey(*_public_point(self.d))

    def sign(self, data: bytes, backend: SM2Backend | None = None) -> bytes:
        """SM3withSM2 signature of ``data`` as 64 bytes ``r || s``."""
        return (backend or default_backend()).sign(self.d, data)


def _write_private(path: Path, key: SM2PrivateKey, *, overwrite: bool) -> bool:
    """Write the key file atomically, mode 0600 from creation (temp file, then rename).

    Without ``overwrite`` the rename is ``os.link``, which fails instead of clobbering a
    concurrent creator; then this returns False.
    """
    payload = json.dumps({"kty": "SM2", "d": key.to_hex()}).encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # mkstemp already uses 0600; be explicit
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_private_key(key: SM2PrivateKey, path: str | os.PathLike[str]) -> None:
    """Store ``{"kty": "SM2", "d": hex}`` at ``path`` (0600, atomic replace)."""
    _write_private(Path(path), key, overwrite=True)


def load_private_key(path: str | os.PathLike[str]) -> SM2PrivateKey:
    """Read a key written by :func:`save_private_key`; errors never echo the key."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("SM2 key file is not JSON") from None
    if not isinstance(doc, dict) or doc.get("kty") != "SM2" or not isinstance(doc.get("d"), str):
        raise ValueError('SM2 key file must be {"kty": "SM2", "d": hex}')
    return SM2PrivateKey.from_hex(doc["d"])


def load_or_create_private_key(path: str | os.PathLike[str]) -> SM2PrivateKey:
    """Load the key at ``path``, creating it if absent; racing first starts agree on one."""
    target = Path(path)
    if not target.exists():
        key = SM2PrivateKey.generate()
        if _write_private(target, key, overwrite=False):
            return key
    return load_private_key(target)


def _sm4_key(key: bytes) -> algorithms.SM4:
    if len(key) != _SM4_KEY_LEN:
        raise ValueError("SM4 key must be 16 bytes")
    return algorithms.SM4(key)


def sm4_encrypt(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """SM4-GCM (RFC 8998) via ``cryptography``: ``nonce(12) || ciphertext || tag(16)``.

    The nonce is random, so keep a key under ~2**32 messages (NIST SP 800-38D bound).
    ``aad`` is authenticated but not stored; pass the same value to :func:`sm4_decrypt`.
    """
    nonce = secrets.token_bytes(_GCM_NONCE_LEN)
    encryptor = Cipher(_sm4_key(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(aad)
    body = encryptor.update(plaintext) + encryptor.finalize()
    return nonce + body + encryptor.tag


def sm4_decrypt(key: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
    """Inverse of :func:`sm4_encrypt`; ValueError (no data echoed) if anything was altered."""
    if len(ciphertext) < _GCM_NONCE_LEN + _GCM_TAG_LEN:
        raise ValueError("SM4-GCM decryption failed")
    nonce, body = ciphertext[:_GCM_NONCE_LEN], ciphertext[_GCM_NONCE_LEN:-_GCM_TAG_LEN]
    tag = ciphertext[-_GCM_TAG_LEN:]
    decryptor = Cipher(_sm4_key(key), modes.GCM(nonce, tag)).decryptor()
    decryptor.authenticate_additional_data(aad)
    try:
        return decryptor.update(body) + decryptor.finalize()
    except InvalidTag:
        raise ValueError("SM4-GCM decryption failed") from None
