"""The token endpoint's logic on Authlib, without any web framework.

:func:`configure_server` takes any Authlib ``AuthorizationServer`` (the Flask one in
:mod:`gateway.oauth.flask`) and installs: the client credentials grant, the two client
authentication methods, and the RFC 9068 JWT access token generator.

Errors of the token endpoint stay in RFC 6749 section 5.2 form
(``{"error": "invalid_client", "error_description": ...}``), not problem+json: every OAuth
client library parses that shape, and the RFC requires it. Where tongban knows the precise
reason (a replayed or expired assertion) the body adds its problem ``type`` URI.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant

from .assertion import PrivateKeyJWT
from .credentials import dummy_check
from .registry import AuthMethod, Client, parse_scope
from .throttle import over_client_budget
from .tokens import TokenIssuer

__all__ = [
    "ClientCredentials",
    "SecretCheck",
    "authenticate_client_secret_basic",
    "configure_server",
    "token_generator",
]

_MAX_BASIC = 1024


class SecretCheck(Protocol):
    """``(client or None, claimed client_id, secret) -> matched``: what
    :meth:`ClientRegistry.check_secret` is, and what the token endpoint checks secrets
    with. ``cheap_only``: fail, for the cost of one HMAC, rather than run a scrypt."""

    def __call__(
        self, client: Client | None, client_id: str, secret: str, *, cheap_only: bool = False
    ) -> bool: ...


def _check_without_pepper(
    client: Client | None, client_id: str, secret: str, *, cheap_only: bool = False
) -> bool:
    if client is None or cheap_only:
        dummy_check(secret, client_id)
        return False
    return client.check_client_secret(secret)


def _basic_credentials(headers: Any) -> tuple[str, str] | None:
    """``client_id`` and secret from HTTP Basic, form-url-decoded (RFC 6749 2.3.1)."""
    auth = headers.get("Authorization") or ""
    scheme, _, encoded = auth.partition(" ")
    if scheme.lower() != "basic" or not encoded or len(encoded) > _MAX_BASIC:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep or not client_id or not secret:
        return None
    return unquote(client_id), unquote(secret)


def authenticate_client_secret_basic(
    query_client: Callable[[str], Client | None],
    request: Any,
    check_secret: SecretCheck = _check_without_pepper,
) -> Client | None:
    """Replaces Authlib's built-in: an unknown client fails the same way as a wrong secret
    and costs one HMAC-SM3 (as much as a known client's ``hmac-sm3`` row, and never a
    scrypt: see :func:`~.credentials.dummy_check`), and a non-UTF-8 header is a failed
    login, not a server error."""
    credentials = _basic_credentials(request.headers)
    if credentials is None:
        return None
    client_id, secret = credentials
    client = query_client(client_id)
    matched = check_secret(client, client_id, secret, cheap_only=over_client_budget())
    return client if matched and client is not None else None


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]  # Authlib is untyped
    """RFC 6749 4.4 with both tongban client authentication methods and per-client scopes."""

    TOKEN_ENDPOINT_AUTH_METHODS = [  # noqa: RUF012  # Authlib reads this class attribute
        AuthMethod.CLIENT_SECRET_BASIC.value,
        AuthMethod.PRIVATE_KEY_JWT.value,
    ]

    def validate_token_request(self) -> None:
        # RFC 6749 2.3: a client MUST NOT use more than one authentication method per request.
        if self.request.headers.get("Authorization") and self.request.form.get("client_assertion"):
            raise InvalidRequestError("use exactly one client authentication method")
        super().validate_token_request()

    def validate_requested_scope(self) -> None:
        """Refuse (``invalid_scope``) rather than silently trim a scope the client does not
        hold: a requester that asks for ``admin`` should learn it is not getting it."""
        try:
            requested = parse_scope(self.request.payload.scope)
        except ValueError:
            raise InvalidScopeError("scope: expected space-separated scope tokens") from None
        client: Client = self.request.client
        if client.granted_scopes(requested) is None:
            raise InvalidScopeError("scope: includes a scope this client may not request")


def token_generator(issuer: TokenIssuer) -> Callable[..., dict[str, Any]]:
    """An Authlib token generator that mints RFC 9068 JWTs with ``issuer``."""

    def generate(
        grant_type: str,
        client: Client,
        user: object = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = False,
    ) -> dict[str, Any]:
        granted = client.granted_scopes(parse_scope(scope))
        if granted is None:  # validate_requested_scope already refused this
            raise InvalidScopeError("scope: includes a scope this client may not request")
        return issuer.issue(client.client_id, granted).to_response()

    return generate


def configure_server(
    server: Any,
    issuer: TokenIssuer,
    private_key_jwt: PrivateKeyJWT,
    *,
    check_secret: SecretCheck = _check_without_pepper,
) -> None:
    """Install grant, client authentication and token generator on an Authlib server.
    ``check_secret``: the registry's :meth:`~.registry.ClientRegistry.check_secret` (with
    its pepper); the default checks scrypt rows only."""
    server.register_grant(ClientCredentials)
    server.register_client_auth_method(
        AuthMethod.CLIENT_SECRET_BASIC.value,
        functools.partial(authenticate_client_secret_basic, check_secret=check_secret),
    )
    server.register_client_auth_method(AuthMethod.PRIVATE_KEY_JWT.value, private_key_jwt)
    server.register_token_generator("default", token_generator(issuer))
