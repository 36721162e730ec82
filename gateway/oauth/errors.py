"""Why a bearer token was refused, as stable problem slugs.

    Unauthenticated (primitives)              401
    └── InvalidToken          token-invalid   malformed, forged, bad alg, unknown kid, bad claim
        ├── TokenMissing      token-missing   no Authorization header, or not the Bearer scheme
        ├── TokenExpired      token-expired   exp has passed
        ├── TokenNotYetValid  token-not-yet-valid   nbf or iat lies in the future
        ├── TokenWrongType    token-wrong-type      typ names another kind of token
        ├── TokenWrongIssuer  token-wrong-issuer    iss is not the expected issuer
        ├── TokenWrongAudience token-wrong-audience aud does not name this service
        ├── TokenReplayed     token-replayed  a one-time token (client assertion) seen twice
        └── TokenRevoked      token-revoked   the client was disabled after the token was issued
    Forbidden (primitives)                    403
    └── InsufficientScope     insufficient-scope    authentic token without the needed scope
    BadRequest (primitives)                   400
    └── InsecureTransport     insecure-transport    token request over plain HTTP to a
                                                    non-loopback host (as the request says)
    TongbanError (primitives)                 503
    ├── IdentityProviderUnavailable  identity-provider-unavailable   the citizen IdP's
    │                                key set cannot be fetched (or is malformed) and no
    │                                usable copy is cached
    └── CitizenLoginNotConfigured    citizen-login-not-configured    this gateway trusts
                                     no citizen identity provider

A client fixing its integration needs to know *which* check failed, so each failure class
has its own slug; none of them says anything an attacker could not learn by decoding the
token it sent. ``detail`` names the claim or header at fault and never repeats its value.
Every detail is plain ASCII without quotes or backslashes, because the token endpoint
copies it into an RFC 6749 ``error_description``, which forbids those characters.
"""

from __future__ import annotations

from tongban.primitives.errors import BadRequest, Forbidden, TongbanError, Unauthenticated

__all__ = [
    "REALM",
    "CitizenLoginNotConfigured",
    "IdentityProviderUnavailable",
    "InsecureTransport",
    "InsufficientScope",
    "InvalidToken",
    "TokenExpired",
    "TokenMissing",
    "TokenNotYetValid",
    "TokenReplayed",
    "TokenRevoked",
    "TokenWrongAudience",
    "TokenWrongIssuer",
    "TokenWrongType",
]


#: The ``realm`` of every bearer challenge.
REALM = "tongban"


class InvalidToken(Unauthenticated):
    slug = "token-invalid"
    title = "Invalid token"

    def response_headers(self) -> dict[str, str]:
        """The RFC 6750 section 3 challenge of a refused bearer request."""
        detail = self.detail.replace('"', "'").replace("\\", "/")
        challenge = f'Bearer realm="{REALM}", error="invalid_token", error_description="{detail}"'
        return {"WWW-Authenticate": challenge}


class TokenMissing(InvalidToken):
    slug = "token-missing"
    title = "No bearer token"

    def response_headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}  # no credentials: no error code


class TokenExpired(InvalidToken):
    slug = "token-expired"
    title = "Token expired"


class TokenNotYetValid(InvalidToken):
    slug = "token-not-yet-valid"
    title = "Token not yet valid"


class TokenWrongType(InvalidToken):
    slug = "token-wrong-type"
    title = "Wrong kind of token"


class TokenWrongIssuer(InvalidToken):
    slug = "token-wrong-issuer"
    title = "Token from an unexpected issuer"


class TokenWrongAudience(InvalidToken):
    slug = "token-wrong-audience"
    title = "Token meant for another audience"


class TokenReplayed(InvalidToken):
    slug = "token-replayed"
    title = "Token already used"


class TokenRevoked(InvalidToken):
    slug = "token-revoked"
    title = "Token revoked"


class InsecureTransport(BadRequest):
    """Authlib refuses to run the token endpoint for a request that, by its own scheme and
    ``Host`` header, came over plain HTTP to a host that is not loopback (RFC 6749 3.2:
    TLS is required). The ``Host`` is the client's to choose, so this is the client's
    error, never a server error; ``detail`` does not repeat the host."""

    slug = "insecure-transport"
    title = "The token endpoint needs HTTPS"


class InsufficientScope(Forbidden):
    slug = "insufficient-scope"
    title = "Insufficient scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"scope: this operation needs {scope}", required_scope=scope)
        self.scope = scope

    def response_headers(self) -> dict[str, str]:
        challenge = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{self.scope}"'
        return {"WWW-Authenticate": challenge}


class IdentityProviderUnavailable(TongbanError):
    """The citizen identity provider's JWK Set could not be fetched, or was refused as
    malformed, and no copy of it is cached: the token may be fine, the gateway cannot tell.
    The citizen's client should retry later; ``detail`` says which, never the token."""

    status = 503
    slug = "identity-provider-unavailable"
    title = "The citizen identity provider is unavailable"

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": "30"}  # about the JWKS refresh interval (gateway/oauth/citizen.py)


class CitizenLoginNotConfigured(TongbanError):
    """This gateway trusts no citizen identity provider (none is configured, and the demo's
    is enabled only by ``tongban demo``): no citizen token can be accepted here."""

    status = 503
    slug = "citizen-login-not-configured"
    title = "Citizen login is not configured"
