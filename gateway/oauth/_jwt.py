"""Checks shared by access tokens, citizen tokens and client assertions.

:func:`primitives.jws.verify_compact` does the cryptographic part strictly but reports
every failure as one :class:`~primitives.errors.Unauthenticated`. Here its verdict is
wrapped, and the claims are checked by hand, so each failure class gets its own slug
(see :mod:`gateway.oauth.errors`) without matching on message strings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from tongban.primitives.errors import Unauthenticated
from tongban.primitives.gm import SM2PublicKey
from tongban.primitives.jws import PublicKey, jwks, verify_compact

from .errors import (
    InvalidToken,
    TokenExpired,
    TokenMissing,
    TokenNotYetValid,
    TokenWrongAudience,
    TokenWrongIssuer,
    TokenWrongType,
)

__all__ = [
    "bearer_token",
    "check_audience",
    "check_issuer",
    "check_times",
    "key_id",
    "string_claim",
    "unverified_header",
    "verify_signed",
]

# RFC 6750 section 2.1 b64token; a compact JWS only ever uses the base64url subset and dots.
_B64TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_MAX_HEADER_SEGMENT = 4096
_MAX_CLAIM = 256


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header (RFC 6750 section 2.1)."""
    if not authorization:
        raise TokenMissing("Authorization: expected a Bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110 11.1)
        raise TokenMissing("Authorization: expected the Bearer scheme")
    token = token.strip()
    if not token or not _B64TOKEN.fullmatch(token):
        raise InvalidToken("Authorization: malformed bearer token")
    return token


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, decoded but NOT authenticated: only for routing (which typ, which
    key); every decision on it is re-made by the verifier on the signed bytes."""
    segment = token.split(".", 1)[0]
    if len(segment) > _MAX_HEADER_SEGMENT:
        raise InvalidToken("header: too large")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw.decode("utf-8"))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError included
        raise InvalidToken("header: malformed") from None
    if not isinstance(header, dict):
        raise InvalidToken("header: malformed")
    return header


def verify_signed(
    token: str, keys: Mapping[str, PublicKey], *, typ: str, algorithms: Collection[str]
) -> dict[str, Any]:
    """Verify signature, alg allowlist, kid and exact ``typ``; return the payload.

    ``typ`` is looked at first so a token of another kind (a citizen token, a signed
    answer) is reported as such rather than as a forgery.
    """
    if unverified_header(token).get("typ") != typ:
        raise TokenWrongType(f"typ: expected {typ}")
    try:
        _, payload = verify_compact(token, keys.get, typ=typ, algorithms=algorithms)
    except Unauthenticated as exc:
        raise InvalidToken(exc.detail) from exc
    return payload


def _numeric_date(payload: Mapping[str, Any], claim: str, *, required: bool) -> float | None:
    value = payload.get(claim)
    if value is None:
        if required:
            raise InvalidToken(f"{claim}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidToken(f"{claim}: expected a NumericDate")
    return float(value)


def check_times(
    payload: Mapping[str, Any],
    *,
    now: float,
    leeway: float,
    max_lifetime: float,
    require_iat: bool = True,
) -> None:
    """``exp`` (required), ``nbf``, ``iat`` against ``now``, plus a lifetime cap.

    The cap is the "iat sanity" check: a token whose ``exp`` lies further out than the
    issuer would ever mint is refused, so a key that leaked once cannot mint tokens that
    outlive its rotation.
    """
    exp = _numeric_date(payload, "exp", required=True)
    if exp is None:  # unreachable with required=True; keeps the type narrow without assert
        raise InvalidToken("exp: required")
    iat = _numeric_date(payload, "iat", required=require_iat)
    nbf = _numeric_date(payload, "nbf", required=False)
    if now - leeway >= exp:
        raise TokenExpired("exp: the token has expired")
    if nbf is not None and nbf > now + leeway:
        raise TokenNotYetValid("nbf: the token is not valid yet")
    if iat is not None:
        if iat > now + leeway:
            raise TokenNotYetValid("iat: the token was issued in the future")
        if exp <= iat:
            raise InvalidToken("exp: must be later than iat")
        if exp - iat > max_lifetime:
            raise InvalidToken(f"exp: lifetime exceeds {max_lifetime:g} s")
    if exp - now > max_lifetime + leeway:
        raise InvalidToken(f"exp: more than {max_lifetime:g} s ahead")


def check_issuer(payload: Mapping[str, Any], expected: str) -> None:
    if payload.get("iss") != expected:
        raise TokenWrongIssuer("iss: not the expected issuer")


def check_audience(payload: Mapping[str, Any], expected: str) -> None:
    """``aud`` is a string or a list of strings (RFC 7519 4.1.3) that must name ``expected``."""
    aud = payload.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise InvalidToken("aud: expected a string or a list of strings")
    if expected not in audiences:
        raise TokenWrongAudience("aud: does not name this service")


def string_claim(payload: Mapping[str, Any], claim: str) -> str:
    value = payload.get(claim)
    if not isinstance(value, str) or not value or len(value) > _MAX_CLAIM:
        raise InvalidToken(f"{claim}: expected a non-empty string")
    return value


def key_id(public: PublicKey) -> str:
    """A stable ``kid``: the SM3 thumbprint prefix for SM2 (as everywhere in tongban), the
    RFC 7638 SHA-256 thumbprint prefix for P-256."""
    if isinstance(public, SM2PublicKey):
        return public.key_id
    jwk = jwks({"": public})["keys"][0]
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")[:16]
