"""Compact JWS with ``SM2`` and ``ES256``, verified strictly, and the offline check of a
gateway's signed answer.

A token verifies only if all of these hold: three canonical base64url segments; a JSON
object header without ``crit`` or duplicate members; an ``alg`` that is allowed (never
``none``); exactly the expected ``typ``; a ``kid`` found in the JWK Set; a key of the
family the ``alg`` names (an SM2 key never verifies an ES256-labelled token, nor the
reverse); the signature (64 bytes ``r || s`` for both); a JSON object payload; and the
time claims (``exp`` required).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Collection, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ._gm import SM2PrivateKey, SM2PublicKey, b64url, b64url_decode
from .errors import AnswerRejected
from .keys import PrivateKey, PublicKey, jwks_keys

__all__ = [
    "ANSWER_TYP",
    "ASSERTION_TYP",
    "client_assertion",
    "sign_compact",
    "verify_answer",
    "verify_compact",
]

ANSWER_TYP = "tongban-answer+jwt"
"""The ``typ`` of the gateway's signed answers (checks, batches)."""
ASSERTION_TYP = "client-authentication+jwt"
"""The ``typ`` of a ``private_key_jwt`` client assertion (draft-ietf-oauth-rfc7523bis)."""

_MAX_TOKEN = 4 * 1024 * 1024  # a batch answer of 10,000 subjects is ~1.5 MB
_ALGORITHMS = ("SM2", "ES256")


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member")
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes) -> dict[str, Any]:
    value = json.loads(
        raw.decode("utf-8"), object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
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


def sign_compact(payload: Mapping[str, Any], key: PrivateKey, *, typ: str, kid: str | None) -> str:
    """A compact JWS of ``payload``; ``alg`` follows from the key (SM2 or P-256)."""
    if isinstance(key, SM2PrivateKey):
        alg = "SM2"
    elif _is_p256(key):
        alg = "ES256"
    else:
        raise TypeError("signing key must be SM2 or P-256")
    header = {"alg": alg, "typ": typ} | ({"kid": kid} if kid is not None else {})
    signing_input = f"{b64url(_compact_json(header))}.{b64url(_compact_json(payload))}"
    data = signing_input.encode("ascii")
    if isinstance(key, SM2PrivateKey):
        sig = key.sign(data)
    else:
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input}.{b64url(sig)}"


def client_assertion(
    key: PrivateKey,
    client_id: str,
    token_endpoint: str,
    *,
    kid: str | None,
    lifetime: int = 60,
    now: float | None = None,
) -> str:
    """A ``private_key_jwt`` assertion (RFC 7523 section 2.2) as the gateway wants it:
    ``iss`` = ``sub`` = the client id, ``aud`` = the token endpoint URL, a short ``exp``
    (the gateway refuses more than 300 s), a fresh ``jti`` (accepted once)."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    return sign_compact(claims, key, typ=ASSERTION_TYP, kid=kid)


def _signature_ok(alg: str, key: PublicKey, data: bytes, sig: bytes) -> bool:
    if alg == "SM2":
        if not isinstance(key, SM2PublicKey):
            raise AnswerRejected("key does not match alg")
        return key.verify(data, sig)
    if not (_is_p256(key) and isinstance(key, ec.EllipticCurvePublicKey)):
        raise AnswerRejected("key does not match alg")
    if len(sig) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def verify_compact(
    token: str,
    keys: Mapping[str, PublicKey],
    *,
    typ: str,
    algorithms: Collection[str] = _ALGORITHMS,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a compact JWS against ``keys`` (kid -> key): ``(header, payload)``, or
    :class:`AnswerRejected` with a short reason that repeats nothing from the token."""
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise AnswerRejected("malformed token")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise AnswerRejected("malformed token")
    try:
        header = _json_object(b64url_decode(parts[0]))
        sig = b64url_decode(parts[2])
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        raise AnswerRejected("malformed token") from None
    alg = header.get("alg")
    allowed = {algorithms} if isinstance(algorithms, str) else set(algorithms)
    if not isinstance(alg, str) or alg not in allowed or alg not in _ALGORITHMS:
        raise AnswerRejected("algorithm not allowed")
    if "crit" in header:
        raise AnswerRejected("unsupported critical header")
    if header.get("typ") != typ:
        raise AnswerRejected("unexpected typ")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AnswerRejected("missing kid")
    key = keys.get(kid)
    if key is None:
        raise AnswerRejected("unknown kid")
    if not _signature_ok(alg, key, f"{parts[0]}.{parts[1]}".encode("ascii"), sig):
        raise AnswerRejected("signature does not verify")
    try:  # the payload is parsed only once it is authentic
        payload = _json_object(b64url_decode(parts[1]))
    except ValueError:
        raise AnswerRejected("malformed payload") from None
    return header, payload


def _numeric_date(payload: Mapping[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AnswerRejected(f"{claim} is not a NumericDate")
    return float(value)


def verify_answer(
    jws: str,
    jwks: Mapping[str, Any],
    *,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
    leeway: int = 5,
    algorithms: Collection[str] = _ALGORITHMS,
) -> dict[str, Any]:
    """Verify a gateway's signed answer offline and return its payload.

    ``jwks`` is the gateway's JWK Set (``/.well-known/jwks.json``, fetched once and kept).
    ``audience`` (your client id) and ``issuer`` (the gateway's public URL) are checked
    when given. Raises :class:`AnswerRejected` for a malformed token, ``alg`` ``none`` or
    unknown, a wrong ``typ``, an unknown ``kid``, a key of the wrong family, a bad
    signature, or an ``exp`` that has passed (``exp`` is required).
    """
    keys = jwks_keys(jwks)
    _, payload = verify_compact(jws, keys, typ=ANSWER_TYP, algorithms=algorithms)
    moment = time.time() if now is None else now
    exp = _numeric_date(payload, "exp")
    if exp is None:
        raise AnswerRejected("missing exp")
    if moment - leeway >= exp:
        raise AnswerRejected("answer expired")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and moment + leeway < nbf:
        raise AnswerRejected("answer not yet valid")
    iat = _numeric_date(payload, "iat")
    if iat is not None and moment + leeway < iat:
        raise AnswerRejected("answer issued in the future")
    if audience is not None:
        aud = payload.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or audience not in audiences:
            raise AnswerRejected("wrong audience")
    if issuer is not None and payload.get("iss") != issuer:
        raise AnswerRejected("wrong issuer")
    return payload
