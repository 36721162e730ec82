"""Keys in the shapes a requester meets: JWKs and JWK Sets (the gateway's ``crv: SM2``
ones and P-256), PEM files, and the gateway's own SM2 key file ``{"kty": "SM2", "d": hex}``.

Public keys are :class:`SM2PublicKey` or ``cryptography``'s P-256 public key; private
keys likewise. Errors never repeat key material.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._gm import SM2PrivateKey, SM2PublicKey, b64url, b64url_decode

__all__ = [
    "KeySource",
    "PrivateKey",
    "PublicKey",
    "jwks_keys",
    "load_private_key",
    "load_public_key",
    "public_jwk",
    "public_key_from_jwk",
]

PublicKey = SM2PublicKey | ec.EllipticCurvePublicKey
PrivateKey = SM2PrivateKey | ec.EllipticCurvePrivateKey
KeySource = Mapping[str, Any] | str | bytes | os.PathLike[str]
"""A JWK (or a JWK Set of one key) as a mapping; PEM or JSON text or bytes; or a path to a
file holding either. A ``str`` is text if it starts with ``-----BEGIN`` or ``{``, else a path."""

_MAX_KEY_FILE = 64 * 1024


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def _int_member(jwk: Mapping[str, Any], name: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"JWK member {name} must be a string")
    raw = b64url_decode(value)
    if len(raw) != 32:
        raise ValueError(f"JWK member {name} must be 32 bytes")
    return int.from_bytes(raw, "big")


def public_key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """An SM2 (``kty`` EC, ``crv`` SM2) or P-256 public JWK; refuses private members."""
    if "d" in jwk:
        raise ValueError("a public key was expected, but the JWK holds private material")
    crv = jwk.get("crv")
    if crv == "SM2":
        return SM2PublicKey.from_jwk(jwk)
    if jwk.get("kty") != "EC" or crv != "P-256" or jwk.get("alg", "ES256") != "ES256":
        raise ValueError("unsupported JWK (expected kty EC with crv SM2 or P-256)")
    numbers = ec.EllipticCurvePublicNumbers(
        _int_member(jwk, "x"), _int_member(jwk, "y"), ec.SECP256R1()
    )
    return numbers.public_key()  # ValueError if the point is not on P-256


def public_jwk(key: PublicKey, kid: str | None = None) -> dict[str, str]:
    """The JWK of a public key, in the gateway's shape."""
    if isinstance(key, SM2PublicKey):
        return key.to_jwk(kid)
    if not _is_p256(key):
        raise TypeError("only SM2 and P-256 keys are supported")
    numbers = key.public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-256",
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
        "alg": "ES256",
        "use": "sig",
    }
    if kid is not None:
        jwk["kid"] = kid
    return jwk


def jwks_keys(jwks: Mapping[str, Any]) -> dict[str, PublicKey]:
    """``kid`` -> key for the usable keys of a JWK Set (others, e.g. RSA, are skipped)."""
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ValueError('a JWK Set is an object with a "keys" list')
    out: dict[str, PublicKey] = {}
    for jwk in keys:
        if not isinstance(jwk, Mapping) or not isinstance(jwk.get("kid"), str):
            continue
        try:
            out.setdefault(jwk["kid"], public_key_from_jwk(jwk))
        except ValueError:
            continue
    return out


def _read(source: KeySource) -> Mapping[str, Any] | bytes:
    """The key document: a mapping, or the raw bytes of PEM or JSON text."""
    if isinstance(source, Mapping):
        return source
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith(("-----BEGIN", "{")):
        return source.encode("utf-8")
    path = Path(source)
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path.name}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise ValueError(f"the key file {path.name} is too large")
    return data


def _json(data: bytes) -> Mapping[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the key is neither PEM nor JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("a JSON key must be an object")
    return doc


def _single(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """A JWK Set of exactly one key stands for that key."""
    if "keys" in doc:
        keys = doc["keys"]
        if not isinstance(keys, list) or len(keys) != 1 or not isinstance(keys[0], Mapping):
            raise ValueError("a JWK Set given as one key must hold exactly one key")
        return keys[0]
    return doc


def load_public_key(source: KeySource | PublicKey) -> PublicKey:
    """A public SM2 or P-256 key from a JWK, a one-key JWK Set, a PEM, or a file of either."""
    if isinstance(source, SM2PublicKey):
        return source
    if isinstance(source, ec.EllipticCurvePublicKey):
        if not _is_p256(source):
            raise ValueError("only SM2 and P-256 keys are supported")
        return source
    doc = _read(source)
    if isinstance(doc, bytes):
        if not doc.lstrip().startswith(b"-----BEGIN"):
            return public_key_from_jwk(_single(_json(doc)))
        return _pem_public(doc)
    return public_key_from_jwk(_single(doc))


def _pem_public(pem: bytes) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except UnsupportedAlgorithm:  # an SM2 SubjectPublicKeyInfo: cryptography has no SM2
        return _tongsuo_public(pem)
    except ValueError:
        raise ValueError("the PEM is not a public key") from None
    if not _is_p256(key) or not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("only SM2 and P-256 keys are supported")
    return key


def _tongsuo_public(pem: bytes) -> SM2PublicKey:
    from tongsuopy.crypto import serialization as tongsuo_serialization

    try:
        key = tongsuo_serialization.load_pem_public_key(pem)
    except Exception:  # tongsuopy raises several unrelated types for a bad PEM
        raise ValueError("the PEM is not an SM2 or P-256 public key") from None
    if getattr(getattr(key, "curve", None), "name", None) != "SM2":
        raise ValueError("only SM2 and P-256 keys are supported")
    numbers = key.public_numbers()
    return SM2PublicKey(int(numbers.x), int(numbers.y))


def load_private_key(source: KeySource | PrivateKey) -> PrivateKey:
    """A private SM2 or P-256 key: the gateway's ``{"kty": "SM2", "d": hex}`` file, a
    private JWK (``crv`` SM2 or P-256), an unencrypted PEM, or a file of any of these."""
    if isinstance(source, SM2PrivateKey):
        return source
    if isinstance(source, ec.EllipticCurvePrivateKey):
        if not _is_p256(source):
            raise ValueError("only SM2 and P-256 keys are supported")
        return source
    doc = _read(source)
    if isinstance(doc, bytes):
        if doc.lstrip().startswith(b"-----BEGIN"):
            return _pem_private(doc)
        doc = _json(doc)
    if doc.get("kty") == "SM2" and isinstance(doc.get("d"), str):
        return SM2PrivateKey.from_hex(doc["d"])
    if doc.get("kty") == "EC" and doc.get("crv") == "SM2":
        return SM2PrivateKey(_int_member(doc, "d"))
    if doc.get("kty") == "EC" and doc.get("crv") == "P-256":
        return ec.derive_private_key(_int_member(doc, "d"), ec.SECP256R1())
    raise ValueError('unsupported private key (expected {"kty": "SM2", "d": hex}, a JWK or PEM)')


def _pem_private(pem: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except UnsupportedAlgorithm:
        return _tongsuo_private(pem)
    except (ValueError, TypeError):
        raise ValueError("the PEM is not an unencrypted private key") from None
    if not _is_p256(key) or not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only SM2 and P-256 keys are supported")
    return key


def _tongsuo_private(pem: bytes) -> SM2PrivateKey:
    from tongsuopy.crypto import serialization as tongsuo_serialization

    try:
        key = tongsuo_serialization.load_pem_private_key(pem, None)
    except Exception:  # tongsuopy raises several unrelated types for a bad PEM
        raise ValueError("the PEM is not an SM2 or P-256 private key") from None
    if getattr(getattr(key, "curve", None), "name", None) != "SM2":
        raise ValueError("only SM2 and P-256 keys are supported")
    return SM2PrivateKey(int(key.private_numbers().private_value))
