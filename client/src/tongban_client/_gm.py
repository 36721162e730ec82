"""SM3 and SM2 (SM3withSM2, GM/T 0009 default user id) for the SDK, without the server.

SM3 comes from ``cryptography``; SM2 from ``tongsuopy`` (Tongsuo, the OpenSSL fork with the
GM suite), exactly as the gateway computes them: signatures are 64 bytes ``r || s`` (32-byte
big-endian each), the shape JOSE uses for ES256, over the message itself (Tongsuo hashes
``Z || M`` with the default signer id ``1234567812345678``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "C2SP_SIGNATURE_TYPE",
    "SM2_N",
    "SM2PrivateKey",
    "SM2PublicKey",
    "b64url",
    "b64url_decode",
    "sm3",
]

# GM/T 0003.5 recommended curve parameters.
SM2_P = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFF
SM2_A = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC
SM2_B = 0x28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93
SM2_N = 0xFFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123

C2SP_SIGNATURE_TYPE = b"\xff" + b"tongban/SM3withSM2"
"""The gateway's C2SP signed-note signature type (unregistered marker, then its name)."""

_SIG_LEN = 64
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def sm3(data: bytes) -> bytes:
    """The SM3 digest of ``data`` (32 bytes)."""
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Strict: URL alphabet, no padding, canonical (re-encodes to the same text)."""
    if not isinstance(segment, str) or not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("bad base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if b64url(raw) != segment:
        raise ValueError("non-canonical base64url")
    return raw


def _coordinate(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("JWK coordinate must be a string")
    raw = b64url_decode(value)
    if len(raw) != 32:
        raise ValueError("JWK coordinate must be 32 bytes")
    return int.from_bytes(raw, "big")


def is_on_curve(x: int, y: int) -> bool:
    """Whether (x, y) is an affine point of the SM2 curve (cofactor 1: also in the group)."""
    if not (0 <= x < SM2_P and 0 <= y < SM2_P):
        return False
    return (y * y - (x * x * x + SM2_A * x + SM2_B)) % SM2_P == 0


def _split_signature(sig: bytes) -> tuple[int, int] | None:
    if len(sig) != _SIG_LEN:
        return None
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    if not (0 < r < SM2_N and 0 < s < SM2_N):
        return None
    return r, s


@functools.cache
def _tongsuo() -> tuple[Any, Any, Any]:
    """(ec module, the SM3withSM2 signature algorithm, InvalidSignature), imported once."""
    from tongsuopy.crypto import exceptions
    from tongsuopy.crypto import hashes as tongsuo_hashes
    from tongsuopy.crypto.asymciphers import ec

    return ec, ec.ECDSA(tongsuo_hashes.SM3()), exceptions.InvalidSignature


@dataclass(frozen=True)
class SM2PublicKey:
    """An SM2 public point; construction checks that it is on the curve."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not is_on_curve(self.x, self.y):
            raise ValueError("point is not on the SM2 curve")

    def verify(self, data: bytes, sig: bytes) -> bool:
        """SM3withSM2 over ``data``; False (never an exception) for any bad signature."""
        rs = _split_signature(sig)
        if rs is None:
            return False
        ec, algorithm, invalid = _tongsuo()
        key = ec.EllipticCurvePublicNumbers(self.x, self.y, ec.SM2()).public_key()
        try:
            key.verify(encode_dss_signature(*rs), data, algorithm)
        except (invalid, ValueError, TypeError):
            return False
        return True

    def to_bytes(self) -> bytes:
        """Uncompressed SEC1: ``04 || x || y``."""
        return b"\x04" + self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")

    def to_jwk(self, kid: str | None = None) -> dict[str, str]:
        """The gateway's SM2 JWK shape: ``kty`` EC, ``crv`` SM2, ``alg`` SM2."""
        jwk = {
            "kty": "EC",
            "crv": "SM2",
            "x": b64url(self.x.to_bytes(32, "big")),
            "y": b64url(self.y.to_bytes(32, "big")),
            "alg": "SM2",
            "use": "sig",
        }
        if kid is not None:
            jwk["kid"] = kid
        return jwk

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> Self:
        if jwk.get("kty") != "EC" or jwk.get("crv") != "SM2":
            raise ValueError("JWK is not an SM2 key (kty EC, crv SM2)")
        if jwk.get("alg", "SM2") != "SM2":
            raise ValueError("SM2 JWK names another alg")
        return cls(_coordinate(jwk.get("x")), _coordinate(jwk.get("y")))

    @property
    def key_id(self) -> str:
        """The gateway's kid convention: RFC 7638 thumbprint with SM3, first 16 characters."""
        jwk = self.to_jwk()
        canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
        return b64url(sm3(canonical.encode("ascii")))[:16]

    def c2sp_key_id(self, name: str) -> bytes:
        """The 4-byte C2SP signed-note key id the gateway writes for signer ``name``:
        ``SHA-256(name || 0x0A || 0xFF || "tongban/SM3withSM2" || 04 || x || y)[:4]``."""
        preimage = name.encode("utf-8") + b"\n" + C2SP_SIGNATURE_TYPE + self.to_bytes()
        return hashlib.sha256(preimage).digest()[:4]


@dataclass(frozen=True)
class SM2PrivateKey:
    """An SM2 private scalar ``d`` in [1, n-2]; ``repr`` never shows it."""

    d: int = field(repr=False)

    def __post_init__(self) -> None:
        # SM2 signing inverts (1 + d) mod n, so d = n - 1 is as unusable as 0.
        if not 1 <= self.d <= SM2_N - 2:
            raise ValueError("SM2 private scalar out of range")

    @classmethod
    def generate(cls) -> Self:
        return cls(secrets.randbelow(SM2_N - 2) + 1)

    @classmethod
    def from_hex(cls, value: str) -> Self:
        if not _HEX64.fullmatch(value):
            raise ValueError("SM2 private key must be 64 hex digits")
        return cls(int(value, 16))

    def _key(self) -> Any:
        ec, _, _ = _tongsuo()
        return ec.derive_private_key(self.d, ec.SM2())

    @functools.cached_property
    def public_key(self) -> SM2PublicKey:
        numbers = self._key().public_key().public_numbers()
        return SM2PublicKey(int(numbers.x), int(numbers.y))

    def sign(self, data: bytes) -> bytes:
        """SM3withSM2 signature of ``data``: 64 bytes ``r || s``."""
        _, algorithm, _ = _tongsuo()
        r, s = decode_dss_signature(self._key().sign(data, algorithm))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
