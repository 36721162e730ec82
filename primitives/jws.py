"""Compact JWS (RFC 7515) with ``SM2`` (SM3withSM2) and ``ES256``, verified strictly.

Why not PyJWT directly: its algorithm registry is process-global, it has no SM2, and it
does not check ``typ``. Here a token only verifies if every one of these holds: three
canonical base64url segments, JSON-object header without ``crit``, an allowed ``alg`` (never
``none``), the exact expected ``typ``, a ``kid`` that resolves, a key whose type matches the
``alg`` (so an SM2 key can never verify an ES256-labelled token, or the reverse), and the
signature. Any failure raises :class:`~primitives.errors.Unauthenticated` with a short
detail that repeats nothing from the token. Time and audience claims are separate helpers
because callers differ on which claims they require.

For third parties, :func:`tongban.primitives.pyjwt_sm2.pyjwt_with_sm2` (extra ``pyjwt``) returns
a private ``PyJWS`` that knows ``SM2``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from tongban.primitives.errors import Unauthenticated
from tongban.primitives.gm import SM2PrivateKey, SM2PublicKey

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "PrivateKey",
    "PublicKey",
    "check_audience",
    "check_time_claims",
    "jwks",
    "key_from_jwk",
    "sign_compact",
    "verify_compact",
]

PublicKey = SM2PublicKey | ec.EllipticCurvePublicKey
PrivateKey = SM2PrivateKey | ec.EllipticCurvePrivateKey
SUPPORTED_ALGORITHMS = frozenset({"SM2", "ES256"})

_MAX_TOKEN = 64 * 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str) -> bytes:
    """Strict decode: URL alphabet, no padding, canonical (re-encodes to the same text)."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("bad base64url")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if _b64url(raw) != segment:
        raise ValueError("non-canonical base64url")
    return raw


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member")  # RFC 7515 section 4: reject, do not guess
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes) -> dict[str, Any]:
    value = json.loads(
        raw.decode("utf-8"),
        object_pairs_hook=_reject_duplicates,
        parse_constant=_reject_constant,
    )
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _compact_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        dict(value), separators=(",", ":"), sort_keys=True, allow_nan=False, ensure_ascii=False
    ).encode("utf-8")


def _is_p256(key: object) -> bool:
    return isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    )


def _es256_sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _es256_verify(key: ec.EllipticCurvePublicKey, data: bytes, sig: bytes) -> bool:
    if len(sig) != 64:
        return False
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_compact(payload: Mapping[str, Any], key: PrivateKey, *, typ: str, kid: str) -> str:
    """Sign ``payload`` as a compact JWS; ``alg`` follows from the key (SM2 or P-256)."""
    if isinstance(key, SM2PrivateKey):
        alg = "SM2"
    elif _is_p256(key):
        alg = "ES256"
    else:
        raise TypeError("signing key must be SM2 or P-256")
    header = {"alg": alg, "kid": kid, "typ": typ}
    signing_input = f"{_b64url(_compact_json(header))}.{_b64url(_compact_json(payload))}"
    data = signing_input.encode("ascii")
    sig = key.sign(data) if isinstance(key, SM2PrivateKey) else _es256_sign(key, data)
    return f"{signing_input}.{_b64url(sig)}"


def _checked_header(segment: str, typ: str, algorithms: Collection[str]) -> dict[str, Any]:
    try:
        header = _json_object(_b64url_decode(segment))
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        raise Unauthenticated("malformed token") from None
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise Unauthenticated("algorithm not allowed")
    allowed = {algorithms} if isinstance(algorithms, str) else set(algorithms)  # "SM" in "SM2"
    if alg not in allowed or alg not in SUPPORTED_ALGORITHMS:
        raise Unauthenticated("algorithm not allowed")
    if "crit" in header:
        raise Unauthenticated("unsupported critical header")
    if header.get("typ") != typ:
        raise Unauthenticated("unexpected typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("missing kid")
    return header


def _signature_ok(alg: str, key: PublicKey, data: bytes, sig: bytes) -> bool:
    """Dispatch on ``alg``, refusing a key of the other family (no key confusion)."""
    if alg == "SM2":
        if not isinstance(key, SM2PublicKey):
            raise Unauthenticated("key does not match alg")
        return key.verify(data, sig)
    if not (_is_p256(key) and isinstance(key, ec.EllipticCurvePublicKey)):
        raise Unauthenticated("key does not match alg")
    return _es256_verify(key, data, sig)


def verify_compact(
    token: str,
    resolve_key: Callable[[str], PublicKey | None],
    *,
    typ: str,
    algorithms: Collection[str],
    max_length: int = _MAX_TOKEN,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS and return ``(header, payload)``; Unauthenticated on any fault.

    ``resolve_key`` maps a ``kid`` to a public key or None; exceptions it raises (for
    example a store outage) propagate unchanged. ``max_length`` bounds the token (64 KiB
    unless the caller expects bulk payloads, such as a department's ciphertexts).
    """
    if not isinstance(token, str) or len(token) > max_length:
        raise Unauthenticated("malformed token")
    parts = token.split(".")
    if len(parts) != 3:
        raise Unauthenticated("malformed token")
    header = _checked_header(parts[0], typ, algorithms)
    try:
        sig = _b64url_decode(parts[2])
    except ValueError:
        raise Unauthenticated("malformed token") from None
    key = resolve_key(header["kid"])
    if key is None:
        raise Unauthenticated("unknown kid")
    if not _signature_ok(header["alg"], key, f"{parts[0]}.{parts[1]}".encode("ascii"), sig):
        raise Unauthenticated("signature does not verify")
    try:  # parse the payload only once it is authentic
        payload = _json_object(_b64url_decode(parts[1]))
    except ValueError:
        raise Unauthenticated("malformed payload") from None
    return header, payload


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"{claim} must be a NumericDate")
    return float(value)


def check_time_claims(
    payload: Mapping[str, Any],
    *,
    now: float,
    leeway: int = 5,
    require: Iterable[str] = ("iat", "exp"),
) -> None:
    """Check ``exp``/``nbf``/``iat`` against ``now`` (seconds) with ``leeway`` seconds."""
    for claim in (require,) if isinstance(require, str) else require:
        if claim not in payload:
            raise Unauthenticated(f"missing {claim}")
    exp = _numeric_date(payload, "exp")
    if exp is not None and now - leeway >= exp:
        raise Unauthenticated("token expired")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise Unauthenticated("token not yet valid")
    iat = _numeric_date(payload, "iat")
    if iat is not None and now + leeway < iat:
        raise Unauthenticated("token issued in the future")


def check_audience(payload: Mapping[str, Any], expected: str) -> None:
    """``aud`` (a string or list of strings) must contain ``expected``."""
    aud = payload.get("aud")
    if aud is None:
        raise Unauthenticated("missing aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise Unauthenticated("malformed aud")
    if expected not in audiences:
        raise Unauthenticated("wrong audience")


def _p256_jwk(key: ec.EllipticCurvePublicKey, kid: str) -> dict[str, str]:
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(32, "big")),
        "y": _b64url(numbers.y.to_bytes(32, "big")),
        "alg": "ES256",
        "use": "sig",
        "kid": kid,
    }


def jwks(keys: Mapping[str, PublicKey]) -> dict[str, list[dict[str, str]]]:
    """A JWK Set (RFC 7517) of public keys, ``kid`` taken from the mapping's keys."""
    out: list[dict[str, str]] = []
    for kid, key in keys.items():
        if isinstance(key, SM2PublicKey):
            out.append(key.to_jwk(kid))
        elif _is_p256(key):
            out.append(_p256_jwk(key, kid))
        else:
            raise TypeError("JWKS keys must be SM2 or P-256 public keys")
    return {"keys": out}


def _coordinate(value: object) -> int:
    if not isinstance(value, str):
        raise ValueError("JWK coordinate must be a string")
    try:
        raw = _b64url_decode(value)
    except (ValueError, binascii.Error):
        raise ValueError("JWK coordinate is not base64url") from None
    if len(raw) != 32:
        raise ValueError("JWK coordinate must be 32 bytes")
    return int.from_bytes(raw, "big")


def key_from_jwk(jwk: Mapping[str, Any]) -> PublicKey:
    """Public key from an SM2 or P-256 JWK; ValueError if malformed, private, or off-curve."""
    if "d" in jwk:
        raise ValueError("JWK contains private key material")
    crv = jwk.get("crv")
    if crv == "SM2":
        return SM2PublicKey.from_jwk(jwk)
    if jwk.get("kty") != "EC" or crv != "P-256" or jwk.get("alg", "ES256") != "ES256":
        raise ValueError("unsupported JWK (expected EC with crv SM2 or P-256)")
    numbers = ec.EllipticCurvePublicNumbers(
        _coordinate(jwk.get("x")), _coordinate(jwk.get("y")), ec.SECP256R1()
    )
    return numbers.public_key()  # raises ValueError if the point is not on P-256
