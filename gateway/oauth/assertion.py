"""``private_key_jwt`` client authentication (RFC 7523 section 2.2, OpenID Connect Core 9).

The client proves itself with a short JWT signed by its own key: ``iss`` = ``sub`` = its
client_id, ``aud`` = the token endpoint URL, a short ``exp``, and a ``jti`` that is accepted
once. Authlib's :class:`JWTBearerClientAssertion` drives the flow (find the client by
``sub``, verify, authenticate); this subclass changes three things:

- **Pinned algorithm.** Each client registered ONE alg (SM2 or ES256). A header naming any
  other alg is refused before any key is touched, so a client can never be downgraded or
  confused across key families.
- **SM2.** Authlib's JOSE layer (joserfc) has no SM2, so SM2 assertions are verified by
  :func:`primitives.jws.verify_compact`; ES256 ones still go through joserfc.
- **Distinct reasons and a shared replay cache.** Claims are checked here, not by joserfc,
  so each failure carries a tongban slug (``token-replayed``, ``token-expired``, ...) in a
  ``type`` member next to the RFC 6749 ``error``; ``jti`` goes to a
  :class:`~primitives.replay.ReplayCache` (the SQL one in production, shared by workers).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from authlib.oauth2.rfc6749 import InvalidClientError
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from joserfc import jwt as jose_jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from tongban.primitives.errors import Unauthenticated
from tongban.primitives.jws import PrivateKey, sign_compact, verify_compact
from tongban.primitives.replay import ReplayCache

from ._jwt import check_audience, check_times, string_claim, unverified_header
from .errors import InvalidToken, TokenReplayed, TokenWrongType
from .registry import AuthMethod, Client
from .throttle import mark_proven

__all__ = [
    "ASSERTION_TYPE",
    "ASSERTION_TYPES",
    "AssertionRejected",
    "PrivateKeyJWT",
    "sign_client_assertion",
]

ASSERTION_TYPE = "client-authentication+jwt"
"""The explicit typ of draft-ietf-oauth-rfc7523bis; what :func:`sign_client_assertion` uses."""
ASSERTION_TYPES = frozenset({ASSERTION_TYPE, "JWT"})
"""Accepted ``typ`` values. Stock libraries write ``JWT``; any other value (``at+jwt``, a
signed answer) is another kind of token and refused."""


class AssertionRejected(InvalidClientError):  # type: ignore[misc]  # Authlib is untyped
    """``invalid_client`` with the tongban problem ``type`` of the reason as an extra member
    (RFC 6749 section 5.2 clients ignore members they do not know)."""

    def __init__(self, reason: InvalidToken) -> None:
        super().__init__(description=reason.detail)
        self.problem_type = reason.type

    def get_body(self) -> list[tuple[str, Any]]:
        body: list[tuple[str, Any]] = super().get_body()
        return [*body, ("type", self.problem_type)]


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]  # Authlib is untyped
    """Register with ``server.register_client_auth_method("private_key_jwt", instance)``."""

    CLIENT_AUTH_METHOD = AuthMethod.PRIVATE_KEY_JWT.value

    def __init__(
        self,
        token_endpoint: str,
        replay_cache: ReplayCache,
        *,
        leeway: int = 5,
        max_lifetime: int = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(validate_jti=True, leeway=leeway)
        self.token_endpoint = token_endpoint
        self.replay_cache = replay_cache
        self.max_lifetime = max_lifetime
        self._clock = clock

    def __call__(self, query_client: Callable[[str], Client | None], request: Any) -> Any:
        try:
            return super().__call__(query_client, request)
        except InvalidToken as exc:  # the one boundary from tongban reasons to RFC 6749
            raise AssertionRejected(exc) from exc

    def extract_assertion(self, assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Authlib's parse, but a malformed assertion (two segments, bad base64, a payload
        that is not an object) carries the ``token-invalid`` type like every other refusal."""
        try:
            headers, claims = super().extract_assertion(assertion)
        except InvalidClientError as exc:
            raise InvalidToken("client_assertion: malformed") from exc
        return dict(headers), dict(claims)

    def get_audiences(self) -> list[str]:
        return [self.token_endpoint]

    def resolve_client_public_key(self, client: Client) -> Client:
        """Return the client itself: Authlib passes non-dict objects through unchanged to
        :meth:`process_assertion_claims`, where the key is chosen with the pinned alg."""
        if client.auth_method is not AuthMethod.PRIVATE_KEY_JWT or not client.jwks:
            raise InvalidToken("client_assertion: this client has no registered keys")
        return client

    def process_assertion_claims(self, assertion: str, client: Client) -> dict[str, Any]:
        if not isinstance(client, Client):  # guards the pass-through described above
            raise TypeError("expected the Client from resolve_client_public_key")
        header = unverified_header(assertion)
        if header.get("alg") != client.assertion_alg:
            raise InvalidToken(f"alg: this client is pinned to {client.assertion_alg}")
        typ = header.get("typ")
        if typ is not None and typ not in ASSERTION_TYPES:
            raise TokenWrongType(f"typ: expected {ASSERTION_TYPE}")
        if client.assertion_alg == "SM2":
            claims = self._verify_sm2(assertion, typ, client)
        else:
            claims = self._verify_es256(assertion, header, client)
        mark_proven()  # the token endpoint's throttle may now tell the holder the reason
        self.verify_claims(claims)
        return claims

    @staticmethod
    def _verify_sm2(assertion: str, typ: object, client: Client) -> dict[str, Any]:
        if not isinstance(typ, str):  # our signer always writes typ and kid
            raise TokenWrongType(f"typ: SM2 assertions carry {ASSERTION_TYPE}")
        try:
            _, claims = verify_compact(assertion, client.keys.get, typ=typ, algorithms=("SM2",))
        except Unauthenticated as exc:
            raise InvalidToken(f"client_assertion: {exc.detail}") from exc
        return claims

    @staticmethod
    def _verify_es256(assertion: str, header: dict[str, Any], client: Client) -> dict[str, Any]:
        kid = header.get("kid")
        if kid is None and len(client.jwks) == 1:  # stock signers often omit kid
            kid = next(iter(client.jwks))
        jwk = client.jwks.get(kid) if isinstance(kid, str) else None
        if jwk is None:
            raise InvalidToken("kid: not one of this client's keys")
        try:
            token = jose_jwt.decode(assertion, ECKey.import_key(dict(jwk)), algorithms=["ES256"])
        except (JoseError, ValueError):
            raise InvalidToken("client_assertion: signature does not verify") from None
        return dict(token.claims)

    def verify_claims(self, claims: dict[str, Any]) -> None:
        """Replaces Authlib's joserfc claim check, to report each failure distinctly and to
        cap ``exp``: a long-lived assertion would be a bearer credential in disguise."""
        if string_claim(claims, "iss") != string_claim(claims, "sub"):
            raise InvalidToken("iss: must equal sub, the client_id")
        check_audience(claims, self.token_endpoint)
        check_times(
            claims,
            now=self._clock(),
            leeway=self.leeway,
            max_lifetime=self.max_lifetime,
            require_iat=False,
        )
        jti = string_claim(claims, "jti")
        if not self.validate_jti(claims, jti):
            raise TokenReplayed("jti: this assertion was already used")

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        # Keyed per client, remembered until exp (+ leeway): after that the assertion is
        # refused as expired anyway, so the row may go.
        key = f"private_key_jwt\x00{claims['sub']}\x00{jti}"
        return self.replay_cache.first_use(key, float(claims["exp"]) + self.leeway)


def sign_client_assertion(
    key: PrivateKey,
    client_id: str,
    token_endpoint: str,
    *,
    kid: str,
    lifetime: int = 60,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """The client side: a ``private_key_jwt`` assertion signed with SM2 or ES256 (by key
    type). For requester systems written in Python, the demo and the tests."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": jti or secrets.token_urlsafe(16),
    }
    return sign_compact(claims, key, typ=ASSERTION_TYPE, kid=kid)
