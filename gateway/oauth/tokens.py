"""Access tokens: JWTs per RFC 9068, minted by the gateway and checked by its resource side.

Self-contained tokens mean no token table and no lookup per request; the price is that a
token lives until ``exp``, so lifetimes are short (5 minutes by default) and the verifier
can additionally ask the registry whether the client is still enabled.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import SUPPORTED_ALGORITHMS, PrivateKey, PublicKey, sign_compact
from tongban.primitives.rotation import FixedKey, FollowedKey, KeySource

from ._jwt import (
    bearer_token,
    check_audience,
    check_issuer,
    check_times,
    key_id,
    string_claim,
    verify_signed,
)
from .errors import InsufficientScope, InvalidToken, TokenRevoked

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AccessTokenVerifier",
    "IssuedToken",
    "Principal",
    "TokenIssuer",
    "require_scope",
]

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105  # a media type, not a secret
"""RFC 9068 section 2.1; the verifier accepts exactly this, not ``application/at+jwt``."""

_MIN_LIFETIME = 30
_MAX_LIFETIME = 3600


@dataclass(frozen=True)
class IssuedToken:
    """One minted access token and the RFC 6749 section 5.1 response describing it."""

    access_token: str = field(repr=False)
    scope: str
    expires_in: int
    token_id: str

    def to_response(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            # Always present: it may differ from the request (the default when none was asked).
            "scope": self.scope,
        }


@dataclass(frozen=True)
class Principal:
    """The authenticated requester system behind a request."""

    client_id: str
    scopes: frozenset[str]
    token_id: str

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes


def require_scope(principal: Principal, *scopes: str) -> None:
    """InsufficientScope (403) unless ``principal`` holds every one of ``scopes``."""
    for scope in scopes:
        if scope not in principal.scopes:
            raise InsufficientScope(scope)


def _public(key: PrivateKey) -> PublicKey:
    return key.public_key if isinstance(key, SM2PrivateKey) else key.public_key()


class TokenIssuer:
    """Mints access tokens with the gateway's key: SM2 by default, P-256 (ES256) if given."""

    def __init__(
        self,
        key: PrivateKey | KeySource,
        *,
        issuer: str,
        audience: str,
        lifetime: int = 300,
        kid: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``key`` may rotate (a :class:`~tongban.primitives.rotation.FollowedKey`): tokens
        are signed with its current key, and verified with it and its retired keys."""
        if not _MIN_LIFETIME <= lifetime <= _MAX_LIFETIME:
            raise ValueError(f"lifetime: expected {_MIN_LIFETIME}-{_MAX_LIFETIME} seconds")
        self._source: KeySource | None = key if isinstance(key, FollowedKey | FixedKey) else None
        self._key = key if self._source is None else self._source.current()
        self.issuer = issuer
        self.audience = audience
        self.lifetime = lifetime
        self._kid = kid
        self._clock = clock

    def _signing(self) -> tuple[PrivateKey, str]:
        key = self._key if self._source is None else self._source.current()
        assert not isinstance(key, FollowedKey | FixedKey)
        return key, (self._kid if self._source is None and self._kid else key_id(_public(key)))

    @property
    def kid(self) -> str:
        return self._signing()[1]

    def public_keys(self) -> dict[str, PublicKey]:
        """``kid`` -> public key, for the verifier and for ``/.well-known/jwks.json``: the
        current key and, during a rotation's overlap, the retired ones."""
        if self._source is not None:
            return dict(self._source.published())
        key, kid = self._signing()
        return {kid: _public(key)}

    def issue(self, client_id: str, scopes: Iterable[str]) -> IssuedToken:
        now = int(self._clock())
        scope = " ".join(sorted(set(scopes)))
        jti = secrets.token_urlsafe(16)
        claims = {
            "iss": self.issuer,
            "sub": client_id,  # RFC 9068 section 2.2: the client itself, no resource owner
            "aud": self.audience,
            "client_id": client_id,
            "scope": scope,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": jti,
        }
        key, kid = self._signing()
        token = sign_compact(claims, key, typ=ACCESS_TOKEN_TYPE, kid=kid)
        return IssuedToken(token, scope, self.lifetime, jti)

    def verifier(self, **options: Any) -> AccessTokenVerifier:
        """A verifier matching this issuer (same issuer, audience, key, lifetime cap)."""
        options.setdefault("max_lifetime", self.lifetime)
        options.setdefault("clock", self._clock)
        return AccessTokenVerifier(
            issuer=self.issuer, audience=self.audience, keys=self.public_keys, **options
        )


_VERIFIED_CACHE = 10_000  # distinct live tokens remembered per process


class AccessTokenVerifier:
    """The resource-server side: turns an ``Authorization`` header into a :class:`Principal`.

    Checks, in order: Bearer scheme; ``typ`` exactly ``at+jwt``; ``alg`` in the allowlist
    (never ``none`` or HMAC, so a public key cannot double as an HMAC secret); ``kid``
    among ``keys`` (embedded ``jwk``/``jku``/``x5u`` headers are ignored); the signature
    with a key of the alg's family; ``iss``; ``aud``; ``exp``, ``nbf``, ``iat`` and the
    lifetime cap; the claim shapes; and, if ``client_active`` is given, that the client
    is still enabled. ``keys`` may hold retired keys during a rotation.
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        keys: Mapping[str, PublicKey] | Callable[[], Mapping[str, PublicKey]],
        algorithms: Collection[str] = ("SM2", "ES256"),
        leeway: float = 5,
        max_lifetime: float = 300,
        client_active: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = set(algorithms) - SUPPORTED_ALGORITHMS
        if unknown or not algorithms:
            raise ValueError(f"algorithms: expected a subset of {sorted(SUPPORTED_ALGORITHMS)}")
        self.issuer = issuer
        self.audience = audience
        # A callable is asked at every verification (a rotating key's current set).
        self._keys = keys if callable(keys) else dict(keys)
        self._algorithms = frozenset(algorithms)
        self._leeway = leeway
        self._max_lifetime = max_lifetime
        self._client_active = client_active
        self._clock = clock
        self._verified: dict[str, tuple[Principal, float]] = {}

    def authenticate_request(self, authorization_header: str | None) -> Principal:
        """The principal of a request's ``Authorization`` header; InvalidToken subclasses
        (401, see :mod:`gateway.oauth.errors`) on any failure."""
        return self.verify(bearer_token(authorization_header))

    def verify(self, token: str) -> Principal:
        # A token verified once is remembered until it expires: requesters reuse a token
        # for minutes, and its signature check would otherwise run on every request. The
        # client's enabled flag is still looked up every time, so disabling is immediate.
        hit = self._verified.get(token)
        if hit is not None and self._clock() < hit[1]:
            principal = hit[0]
            if self._client_active is not None and not self._client_active(principal.client_id):
                raise TokenRevoked("client_id: the client has been disabled")
            return principal
        principal, expires = self._verify(token)
        if len(self._verified) >= _VERIFIED_CACHE:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        payload = verify_signed(
            token,
            self._keys() if callable(self._keys) else self._keys,
            typ=ACCESS_TOKEN_TYPE,
            algorithms=self._algorithms,
        )
        check_issuer(payload, self.issuer)
        check_audience(payload, self.audience)
        check_times(
            payload, now=self._clock(), leeway=self._leeway, max_lifetime=self._max_lifetime
        )
        client_id = string_claim(payload, "client_id")
        if string_claim(payload, "sub") != client_id:
            raise InvalidToken("sub: must equal client_id")
        token_id = string_claim(payload, "jti")
        scope = payload.get("scope")
        if not isinstance(scope, str):
            raise InvalidToken("scope: expected a space-separated string")
        if self._client_active is not None and not self._client_active(client_id):
            raise TokenRevoked("client_id: the client has been disabled")
        return Principal(client_id, frozenset(scope.split()), token_id), float(payload["exp"])
