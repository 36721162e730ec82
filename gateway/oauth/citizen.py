"""Citizen tokens: the identity provider vouches for a citizen; the gateway only verifies.

The gateway holds no citizen passwords. A configured identity provider (IdP) signs a short
JWT, ``typ: tongban-citizen+jwt``, whose ``sub`` is the citizen's GB 11643 ID number; the
citizen endpoints (consents, access log) accept nothing else. The distinct ``typ`` keeps a
citizen token from being accepted as a requester's access token, and the reverse.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field

from tongban.primitives.errors import InvalidIdNumber
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import mask, parse
from tongban.primitives.jws import SUPPORTED_ALGORITHMS, PrivateKey, PublicKey, sign_compact

from ._jwt import (
    bearer_token,
    check_audience,
    check_issuer,
    check_times,
    key_id,
    string_claim,
    verify_signed,
)
from .errors import InvalidToken

__all__ = [
    "CITIZEN_TOKEN_TYPE",
    "Citizen",
    "CitizenTokenVerifier",
    "mint_citizen_token",
]

CITIZEN_TOKEN_TYPE = "tongban-citizen+jwt"  # noqa: S105  # a media type, not a secret


@dataclass(frozen=True)
class Citizen:
    """An authenticated citizen. ``repr`` masks the ID number so it cannot reach a log."""

    id_number: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Citizen(id_number={mask(self.id_number)!r})"


class CitizenTokenVerifier:
    """Verifies IdP-signed citizen tokens against the IdP's configured public keys."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: Mapping[str, PublicKey],
        algorithms: Collection[str] = ("SM2", "ES256"),
        leeway: float = 5,
        max_lifetime: float = 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not algorithms or set(algorithms) - SUPPORTED_ALGORITHMS:
            raise ValueError(f"algorithms: expected a subset of {sorted(SUPPORTED_ALGORITHMS)}")
        self.issuer = issuer
        self.audience = audience
        self._keys = dict(keys)
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._clock = clock

    def verify_citizen_token(self, authorization_header: str | None) -> Citizen:
        """The citizen of an ``Authorization: Bearer`` header; InvalidToken subclasses (401)
        on any failure, never echoing the ID number."""
        return self.verify(bearer_token(authorization_header))

    def verify(self, token: str) -> Citizen:
        payload = verify_signed(
            token, self._keys, typ=CITIZEN_TOKEN_TYPE, algorithms=self._algorithms
        )
        check_issuer(payload, self.issuer)
        check_audience(payload, self.audience)
        check_times(
            payload, now=self._clock(), leeway=self._leeway, max_lifetime=self._max_lifetime
        )
        sub = string_claim(payload, "sub")
        try:
            # A signed but invalid ID is the IdP's fault, not the caller's input: 401.
            return Citizen(parse(sub).number)
        except InvalidIdNumber as exc:
            raise InvalidToken("sub: expected a valid GB 11643 ID number") from exc


def mint_citizen_token(
    idp_key: PrivateKey,
    id_number: str,
    *,
    issuer: str,
    audience: str,
    kid: str | None = None,
    lifetime: int = 600,
    now: float | None = None,
) -> str:
    """Sign a citizen token as the IdP would. DEMO AND TESTS ONLY: in production the IdP
    mints these, and the gateway never holds an IdP private key.

    Raises :class:`InvalidIdNumber` (naming the reason, not the value) for a bad number.
    """
    number = parse(id_number).number
    issued = int(time.time() if now is None else now)
    public = idp_key.public_key if isinstance(idp_key, SM2PrivateKey) else idp_key.public_key()
    claims = {
        "iss": issuer,
        "sub": number,
        "aud": audience,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(16),
    }
    return sign_compact(claims, idp_key, typ=CITIZEN_TOKEN_TYPE, kid=kid or key_id(public))
