"""National (GM/T) cryptography: SM3 hashing, SM2 signatures, SM4 authenticated encryption.

Why: government peers require the GM suite. Tongsuo (``tongsuopy``, C) is the fast product
path; ``gmssl`` is pure Python, slow and sharp-edged, kept as baseline and no-C fallback.
Both sit behind :class:`SM2Backend`, so callers never touch either library and tests can
prove they interoperate. Signatures are SM3withSM2 (GM/T 0009, default user id hashed into
Z) as 64 bytes ``r || s`` (32-byte big-endian each), the shape JWS uses for ES256.

Key files: a private key is unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``,
algorithm id-ecPublicKey with the named curve SM2, 1.2.156.10197.1.301), byte for byte what
OpenSSL 3 and Tongsuo write for an SM2 key (tests/test_keys_pkcs8.py checks both), the
standard form GmSSL's tools and an HSM's PKCS#8 import take; a public key is
SubjectPublicKeyInfo PEM. Both are DER-encoded here, in Python, so a
process without tongsuopy (the gmssl fallback) still reads and writes them. A file in the
format tongban used before (JSON ``{"kty": "SM2", "d": hex}``) or a SEC1 ``EC PRIVATE KEY``
is rewritten as PKCS#8 the first time it is loaded (:func:`load_private_key`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
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

from .errors import TongbanError

__all__ = [
    "C2SP_SIGNATURE_TYPE",
    "DEFAULT_USER_ID",
    "SM2_N",
    "SM2_P",
    "GmsslSM2",
    "KeyFileError",
    "SM2Backend",
    "SM2PrivateKey",
    "SM2PublicKey",
    "TongsuoSM2",
    "convert_private_key",
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

    def to_der(self) -> bytes:
        """SubjectPublicKeyInfo (RFC 5480): id-ecPublicKey, named curve SM2, the point."""
        return _der(_SEQUENCE, _SM2_ALGORITHM + _der(_BIT_STRING, b"\x00" + self.to_bytes()))

    def to_pem(self) -> bytes:
        """``-----BEGIN PUBLIC KEY-----``: what ``openssl pkey -pubout`` prints for SM2."""
        return _pem("PUBLIC KEY", self.to_der())

    @classmethod
    def from_pem(cls, data: bytes) -> Self:
        """Parse a SubjectPublicKeyInfo PEM of an SM2 key (ValueError, naming what it is
        instead, for anything else)."""
        body = _only_block(data, {"PUBLIC KEY"})[1]
        items = _der_items(_der_one(body, _SEQUENCE, "SubjectPublicKeyInfo"))
        if len(items) != 2 or items[0][0] != _SEQUENCE or items[1][0] != _BIT_STRING:
            raise ValueError("not a SubjectPublicKeyInfo")
        _check_algorithm(items[0][1])
        bits = items[1][1]
        if bits[:1] != b"\x00":
            raise ValueError("malformed public key BIT STRING")
        return cls.from_bytes(bits[1:])

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

    def to_der(self) -> bytes:
        """PKCS#8 PrivateKeyInfo (RFC 5208) around an RFC 5915 ECPrivateKey with the public
        key and without curve parameters (they are in the algorithm identifier): the DER
        OpenSSL 3 and Tongsuo write for an SM2 key."""
        ec_key = _der(
            _SEQUENCE,
            _der(_INTEGER, b"\x01")
            + _der(_OCTET_STRING, self.d.to_bytes(32, "big"))
            + _der(_CONTEXT_1, _der(_BIT_STRING, b"\x00" + self.public_key.to_bytes())),
        )
        return _der(
            _SEQUENCE, _der(_INTEGER, b"\x00") + _SM2_ALGORITHM + _der(_OCTET_STRING, ec_key)
        )

    def to_pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (``-----BEGIN PRIVATE KEY-----``), as ``openssl genpkey``."""
        return _pem("PRIVATE KEY", self.to_der())

    @classmethod
    def from_pem(cls, data: bytes) -> Self:
        """Parse a PEM SM2 private key: PKCS#8 (``PRIVATE KEY``) or SEC1 (``EC PRIVATE
        KEY``, ``SM2 PRIVATE KEY``). ValueError, never quoting the key, for an encrypted,
        truncated or malformed key, or one on another curve (P-256...)."""
        return cls(_decode_pem_private(data)[0].d)

    @functools.cached_property
    def public_key(self) -> SM2PublicKey:
        """d·G, computed once per instance (cached_property writes past the frozen guard)."""
        return SM2PublicKey(*_public_point(self.d))

    def sign(self, data: bytes, backend: SM2Backend | None = None) -> bytes:
        """SM3withSM2 signature of ``data`` as 64 bytes ``r || s``."""
        return (backend or default_backend()).sign(self.d, data)


# --- key files: DER, PEM, PKCS#8 --------------------------------------------------------

_LOG = logging.getLogger(__name__)

_INTEGER, _BIT_STRING, _OCTET_STRING, _OID, _SEQUENCE = 0x02, 0x03, 0x04, 0x06, 0x30
_CONTEXT_0, _CONTEXT_1 = 0xA0, 0xA1  # [0] and [1], constructed (EXPLICIT, or IMPLICIT SET)
_PKCS8_PUBLIC_KEY = 0x81  # OneAsymmetricKey (RFC 5958) publicKey: [1] IMPLICIT BIT STRING
_OID_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
_OID_SM2 = bytes.fromhex("2a811ccf5501822d")  # 1.2.156.10197.1.301
_SM2_ALGORITHM = bytes.fromhex("301306072a8648ce3d020106082a811ccf5501822d")
"""AlgorithmIdentifier {id-ecPublicKey, namedCurve SM2}, DER."""
# What a refusal calls a key of another kind.
_OID_NAMES = {
    "1.2.840.10045.3.1.7": "P-256 (prime256v1)",
    "1.3.132.0.34": "P-384 (secp384r1)",
    "1.3.132.0.35": "P-521 (secp521r1)",
    "1.3.132.0.10": "secp256k1",
    "1.2.840.113549.1.1.1": "RSA",
    "1.2.840.113549.1.1.10": "RSA-PSS",
    "1.2.840.10040.4.1": "DSA",
    "1.3.101.110": "X25519",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
}
_MAX_KEY_FILE = 64 * 1024
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END ([A-Z0-9 ]+)-----", re.S)
_PRIVATE_LABELS = frozenset({"PRIVATE KEY", "EC PRIVATE KEY", "SM2 PRIVATE KEY"})
# ``openssl ecparam -genkey`` puts the curve's parameters in a block before the key.
_PARAMETER_LABELS = frozenset({"EC PARAMETERS", "SM2 PARAMETERS"})


class KeyFileError(TongbanError, ValueError):
    """A private key file that cannot be used. ``detail`` is one line naming the file and
    what is wrong with it, never a byte of its contents. A ValueError too, for callers that
    catch that."""


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + content


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The TLVs that make up exactly ``data``: DER only (single-byte tags, definite and
    minimal lengths); ValueError on anything else or on a truncation."""
    items: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise ValueError("truncated DER")
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise ValueError("unexpected DER tag")
        length = first
        if first >= 0x80:
            count = first & 0x7F
            if not 1 <= count <= 4 or len(data) - pos < count:
                raise ValueError("truncated or indefinite DER length")
            length = int.from_bytes(data[pos : pos + count], "big")
            if data[pos] == 0 or length < 0x80:
                raise ValueError("non-minimal DER length")
            pos += count
        if len(data) - pos < length:
            raise ValueError("truncated DER")
        items.append((tag, data[pos : pos + length]))
        pos += length
    return items


def _der_one(data: bytes, tag: int, what: str) -> bytes:
    """The content of ``data``, which must be exactly one TLV with ``tag``."""
    items = _der_items(data)
    if len(items) != 1 or items[0][0] != tag:
        raise ValueError(f"not a DER {what}")
    return items[0][1]


def _oid_name(content: bytes) -> str:
    """A dotted OID, or the name of a well-known key type or curve, for messages."""
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if not arcs or content[-1] & 0x80:
        return "a malformed OID"
    first = min(arcs[0] // 40, 2)
    dotted = ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))
    return _OID_NAMES.get(dotted, dotted)


def _check_curve(tag: int, content: bytes) -> None:
    """ECParameters (RFC 5480) must be the named curve SM2."""
    if tag == _SEQUENCE:
        raise ValueError(
            "explicit curve parameters: tongban reads the named curve SM2 "
            "(`openssl pkey -in FILE -out NEW` writes it)"
        )
    if tag != _OID:
        raise ValueError("an EC key without a named curve")
    if content != _OID_SM2:
        raise ValueError(f"a key on the curve {_oid_name(content)}, not SM2")


def _check_algorithm(algorithm: bytes) -> None:
    """An AlgorithmIdentifier's content must be {id-ecPublicKey, namedCurve SM2}."""
    items = _der_items(algorithm)
    if not items or items[0][0] != _OID:
        raise ValueError("malformed algorithm identifier")
    if items[0][1] != _OID_EC_PUBLIC_KEY:
        raise ValueError(f"an {_oid_name(items[0][1])} key, not SM2")
    if len(items) != 2:
        raise ValueError("an EC key without curve parameters")
    _check_curve(*items[1])


def _check_public(key: SM2PrivateKey, bits: bytes) -> None:
    """A public key stored beside the scalar must be d·G (uncompressed or compressed)."""
    if bits[:1] != b"\x00" or len(bits) not in (34, 66):
        raise ValueError("malformed public key")
    point, ours = bits[1:], key.public_key
    if point[0] == 4 and len(point) == 65:
        matches = point == ours.to_bytes()
    elif point[0] in (2, 3) and len(point) == 33:
        matches = point[1:] == ours.x.to_bytes(32, "big") and point[0] & 1 == ours.y & 1
    else:
        matches = False
    if not matches:
        raise ValueError("its public key does not belong to its private key")


def _ec_private_key(der: bytes, *, curve_known: bool) -> SM2PrivateKey:
    """RFC 5915 ECPrivateKey; ``curve_known`` when PKCS#8 named the curve already."""
    items = _der_items(_der_one(der, _SEQUENCE, "ECPrivateKey"))
    if len(items) < 2 or items[0] != (_INTEGER, b"\x01") or items[1][0] != _OCTET_STRING:
        raise ValueError("not an EC private key (RFC 5915)")
    raw, rest = items[1][1], items[2:]
    params = rest.pop(0)[1] if rest and rest[0][0] == _CONTEXT_0 else None
    public = rest.pop(0)[1] if rest and rest[0][0] == _CONTEXT_1 else None
    if rest:
        raise ValueError("unexpected fields in the EC private key")
    if params is not None:
        curve = _der_items(params)
        if len(curve) != 1:
            raise ValueError("malformed curve parameters")
        _check_curve(*curve[0])
    elif not curve_known:
        raise ValueError("an EC private key that names no curve")
    if not 1 <= len(raw) <= 32:
        raise ValueError("a private scalar that is not 32 bytes")
    try:
        key = SM2PrivateKey(int.from_bytes(raw, "big"))
    except ValueError:
        raise ValueError("a private scalar out of range for SM2") from None
    if public is not None:
        _check_public(key, _der_one(public, _BIT_STRING, "BIT STRING"))
    return key


def _pkcs8_private_key(der: bytes) -> SM2PrivateKey:
    """PKCS#8 PrivateKeyInfo (v1) or OneAsymmetricKey (v2) of an SM2 key."""
    items = _der_items(_der_one(der, _SEQUENCE, "PKCS#8 PrivateKeyInfo"))
    if (
        len(items) < 3
        or items[0][0] != _INTEGER
        or items[0][1] not in (b"\x00", b"\x01")
        or items[1][0] != _SEQUENCE
        or items[2][0] != _OCTET_STRING
    ):
        raise ValueError("not a PKCS#8 PrivateKeyInfo")
    _check_algorithm(items[1][1])
    rest = items[3:]
    if rest and rest[0][0] == _CONTEXT_0:  # attributes: nothing tongban needs
        rest.pop(0)
    public = rest.pop(0)[1] if rest and rest[0][0] == _PKCS8_PUBLIC_KEY else None
    if rest or (public is not None and items[0][1] != b"\x01"):
        raise ValueError("unexpected fields in the PKCS#8 structure")
    key = _ec_private_key(items[2][1], curve_known=True)
    if public is not None:
        _check_public(key, public)
    return key


def _pem(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""]).encode()


def _blocks(data: bytes) -> list[tuple[str, bytes]]:
    found = []
    for match in _PEM_BLOCK.finditer(data):
        if match.group(1) != match.group(3):
            raise ValueError("a PEM block whose BEGIN and END lines differ")
        found.append((match.group(1).decode("ascii"), match.group(2)))
    return found


def _only_block(data: bytes, wanted: frozenset[str] | set[str]) -> tuple[str, bytes]:
    """The one PEM block with a label in ``wanted`` (parameter blocks aside), decoded."""
    blocks = [(label, body) for label, body in _blocks(data) if label not in _PARAMETER_LABELS]
    if not blocks:
        raise ValueError(
            "no complete PEM block (truncated?)" if b"-----BEGIN" in data else "not PEM"
        )
    labels = [label for label, _ in blocks]
    if "ENCRYPTED PRIVATE KEY" in labels or any(b"Proc-Type:" in body for _, body in blocks):
        raise ValueError(
            "an encrypted key: tongban reads unencrypted PKCS#8 "
            "(`openssl pkcs8 -in FILE -out NEW` decrypts it; keep NEW mode 0600)"
        )
    if len(blocks) != 1 or labels[0] not in wanted:
        kinds = ", ".join(sorted(set(labels)))
        raise ValueError(f"expected one {' or '.join(sorted(wanted))} block, found {kinds}")
    label, body = blocks[0]
    try:
        return label, base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ValueError(f"the {label} block is not base64 (truncated?)") from None


def _decode_pem_private(data: bytes) -> tuple[SM2PrivateKey, str]:
    """The key of a PEM private key file, and its form: "PKCS#8" or "SEC1"."""
    label, der = _only_block(data, _PRIVATE_LABELS)
    if label == "PRIVATE KEY":
        return _pkcs8_private_key(der), "PKCS#8"
    return _ec_private_key(der, curve_known=False), "SEC1"


def _decode_key_file(data: bytes) -> tuple[SM2PrivateKey, str]:
    """The key of a key file's bytes and its form: "PKCS#8", "SEC1" or "JSON" (tongban's
    format before PKCS#8). ValueError with a reason that never quotes the file."""
    head = data.lstrip()[:1]
    if head == b"{":
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("neither PEM nor tongban's old JSON key format") from None
        if (
            not isinstance(doc, dict)
            or doc.get("kty") != "SM2"
            or not isinstance(doc.get("d"), str)
        ):
            raise ValueError('an old-format key file that is not {"kty": "SM2", "d": hex}')
        try:
            return SM2PrivateKey.from_hex(doc["d"]), "JSON"
        except ValueError:
            raise ValueError("an old-format key file whose d is not a valid SM2 key") from None
    if head == bytes((_SEQUENCE,)):
        raise ValueError("DER, not PEM (`openssl pkey -inform DER -in FILE -out NEW` converts it)")
    return _decode_pem_private(data)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # the rename itself is durable once the dir is
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_new(
    path: Path, payload: bytes, mode: int, *, owner: tuple[int, int] | None = None
) -> str:
    """A temporary file beside ``path`` holding ``payload`` (``mode`` from its creation,
    flushed to disk); the caller renames it or unlinks it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)  # mkstemp creates 0600; be explicit
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _write_private(path: Path, key: SM2PrivateKey, *, overwrite: bool) -> bool:
    """Write the key file as PKCS#8 PEM atomically, mode 0600 from creation (temp file
    in the same directory, fsync, rename).

    Without ``overwrite`` the rename is ``os.link``, which fails instead of clobbering a
    concurrent creator; then this returns False.
    """
    tmp = _write_new(path, key.to_pem(), 0o600)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
        _fsync_dir(path.parent)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_key_file(path: Path) -> tuple[SM2PrivateKey, str, bytes]:
    """The key in ``path``, its form and the bytes read. OSError if it cannot be read;
    :class:`KeyFileError` (one line naming the file) if it is not a usable SM2 key."""
    with path.open("rb") as fh:
        data = fh.read(_MAX_KEY_FILE + 1)
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{path}: not an SM2 private key: too large for a key file")
    try:
        key, form = _decode_key_file(data)
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a usable SM2 private key: {exc}") from None
    return key, form, data


def _convert(path: Path, key: SM2PrivateKey, form: str, data: bytes) -> bool:
    """Rewrite ``path`` (holding ``data``, ``key`` in ``form``) as PKCS#8 PEM with its
    mode (and, for root, its owner); True if this call replaced it.

    Concurrent loaders (gunicorn workers starting together) are safe: each writes its own
    temporary file and renames it over the old one, so a reader sees the old file or the
    new one, never a mix; the encoding is deterministic, so every converter writes the same
    bytes; and a converter that finds the file changed since it read it (converted or
    replaced by someone else) leaves it alone.
    """
    before = os.stat(path)
    owner = (before.st_uid, before.st_gid) if os.geteuid() == 0 else None
    tmp = _write_new(path, key.to_pem(), stat.S_IMODE(before.st_mode), owner=owner)
    try:
        with path.open("rb") as fh:
            now = fh.read(_MAX_KEY_FILE + 1)
        if now != data or os.stat(path).st_ino != before.st_ino:
            return False
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _LOG.info("%s: SM2 key file converted from the old %s format to PKCS#8 PEM", path, form)
    return True


def save_private_key(key: SM2PrivateKey, path: str | os.PathLike[str]) -> None:
    """Store ``key`` at ``path`` as unencrypted PKCS#8 PEM (0600, atomic replace)."""
    _write_private(Path(path), key, overwrite=True)


def load_private_key(path: str | os.PathLike[str], *, convert: bool = True) -> SM2PrivateKey:
    """Read an SM2 private key file: PKCS#8 PEM, or an old form (tongban's JSON, SEC1
    PEM), which is rewritten as PKCS#8 PEM unless ``convert`` is false. A rewrite that
    fails (a read-only directory) is logged and the key is still returned.

    :class:`KeyFileError` (a ValueError) for an encrypted, malformed or non-SM2 file;
    OSError if it cannot be read. No error or log line ever shows key material.
    """
    target = Path(path)
    key, form, data = _read_key_file(target)
    if form != "PKCS#8" and convert:
        try:
            _convert(target, key, form, data)
        except OSError as exc:
            _LOG.warning(
                "%s: SM2 key file left in the old %s format, cannot rewrite it (%s); run "
                "`tongban keys convert` with write access",
                target,
                form,
                exc.strerror or type(exc).__name__,
            )
    return key


def convert_private_key(path: str | os.PathLike[str]) -> bool:
    """Rewrite an old-format key file as PKCS#8 PEM; False if it is PKCS#8 already (or
    another process converted it meanwhile). KeyFileError or OSError as for loading."""
    target = Path(path)
    key, form, data = _read_key_file(target)
    return form != "PKCS#8" and _convert(target, key, form, data)


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
