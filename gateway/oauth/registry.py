"""The requester (OAuth client) registry, through SQLAlchemy: SQLite by default, PostgreSQL
in production.

A client authenticates either with a secret (``client_secret_basic``; only a keyed
HMAC-SM3 hash, or on older rows a scrypt hash, is stored (see :mod:`.credentials`) and the
plaintext is shown once, at registration or rotation) or with a signed
assertion (``private_key_jwt``; the client's public JWKS is stored with ONE pinned
algorithm, so an attacker cannot pick a weaker or confusable algorithm for that client).
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, cast

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, Engine, Row, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from tongban.primitives.db import transaction
from tongban.primitives.errors import BadRequest, Conflict, NotFound, StoreUnavailable
from tongban.primitives.gm import SM2PublicKey
from tongban.primitives.jws import PublicKey, key_from_jwk
from tongban.primitives.jws import jwks as public_jwks

from ._schema import clients, create_schema, make_engine
from .credentials import (
    PEPPER_LEN,
    SCRYPT_N,
    dummy_check,
    hash_secret,
    hmac_secret,
    needs_rehash,
    new_secret,
    verify_secret,
)

__all__ = [
    "GRANT_TYPE",
    "KNOWN_SCOPES",
    "AssertionAlg",
    "AuthMethod",
    "Client",
    "ClientRegistry",
    "Registration",
    "jwks_alg",
    "parse_scope",
    "validated_jwks",
]

GRANT_TYPE = "client_credentials"
KNOWN_SCOPES = frozenset(
    {"checks", "checks:batch", "audit:read", "admin", "statistics", "federation"}
)
AssertionAlg = Literal["SM2", "ES256"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,63}")
_KID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 section 3.3 scope-token
_MAX_KEYS = 8


class AuthMethod(StrEnum):
    """Token endpoint client authentication (RFC 7591 names)."""

    CLIENT_SECRET_BASIC = "client_secret_basic"  # noqa: S105  # a method name
    PRIVATE_KEY_JWT = "private_key_jwt"


def parse_scope(scope: str | None) -> frozenset[str]:
    """Space-separated scope tokens; ValueError on anything RFC 6749 section 3.3 forbids."""
    if not scope:
        return frozenset()
    tokens = scope.split(" ")
    if not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
        raise ValueError("scope: expected space-separated scope tokens")
    return frozenset(tokens)


@dataclass(frozen=True)
class Client:
    """A registered requester. Also speaks Authlib's ``ClientMixin`` protocol (duck-typed:
    Authlib ships no type information to inherit from)."""

    client_id: str
    display_name: str
    auth_method: AuthMethod
    scopes: frozenset[str]
    enabled: bool = True
    assertion_alg: AssertionAlg | None = None
    jwks: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # kid -> public JWK
    secret_hash: str | None = field(default=None, repr=False)

    @functools.cached_property
    def keys(self) -> dict[str, PublicKey]:
        """``kid`` -> public key, parsed once per instance."""
        return {kid: key_from_jwk(jwk) for kid, jwk in self.jwks.items()}

    def granted_scopes(self, requested: frozenset[str]) -> frozenset[str] | None:
        """What a token may carry: the request if the client holds all of it, everything
        the client holds if nothing was requested (RFC 6749 3.3 default), else None."""
        if not requested:
            return self.scopes
        return requested if requested <= self.scopes else None

    # --- Authlib ClientMixin --------------------------------------------------------

    def get_client_id(self) -> str:
        return self.client_id

    def check_client_secret(self, client_secret: str) -> bool:
        """Authlib's hook, for scrypt rows only (it has no pepper): the token endpoint
        checks secrets through :meth:`ClientRegistry.check_secret` instead."""
        return verify_secret(client_secret, self.secret_hash, client_id=self.client_id)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint == "token" and method == self.auth_method.value

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == GRANT_TYPE

    def get_allowed_scope(self, scope: str | None) -> str:
        granted = self.granted_scopes(parse_scope(scope))
        return " ".join(sorted(granted or ()))


@dataclass(frozen=True)
class Registration:
    """What :meth:`ClientRegistry.register_client` returns: the client, and for
    ``client_secret_basic`` the plaintext secret, which is not stored and never shown again."""

    client: Client
    secret: str | None = field(repr=False)


def jwks_alg(value: object) -> AssertionAlg:
    """The one algorithm a JWK Set's keys are for: SM2 for SM2 keys, ES256 for P-256 ones
    (each key's ``alg``, if given, must agree); BadRequest for a set that mixes them."""
    keys = value.get("keys") if isinstance(value, Mapping) else None
    if not isinstance(keys, list) or not keys:
        raise BadRequest(f"jwks: expected a JWK Set with 1 to {_MAX_KEYS} keys")
    crvs = {k.get("crv") for k in keys if isinstance(k, Mapping)}
    if crvs == {"SM2"}:
        return "SM2"
    if crvs == {"P-256"}:
        return "ES256"
    raise BadRequest("jwks: expected SM2 keys or P-256 keys, one kind for the client")


def validated_jwks(value: object, alg: AssertionAlg) -> dict[str, dict[str, str]]:
    """:func:`_validated_jwks`, for callers outside the registry (a proposed client)."""
    return _validated_jwks(value, alg)


def _validated_jwks(value: object, alg: AssertionAlg) -> dict[str, dict[str, str]]:
    """Public keys of one family matching ``alg``, each with a unique ``kid``; normalised to
    the public members only, so nothing else a caller sent is ever stored."""
    keys = value.get("keys") if isinstance(value, Mapping) else None
    if not isinstance(keys, list) or not 0 < len(keys) <= _MAX_KEYS:
        raise BadRequest(f"jwks: expected a JWK Set with 1 to {_MAX_KEYS} keys")
    out: dict[str, dict[str, str]] = {}
    for jwk in keys:
        if not isinstance(jwk, Mapping):
            raise BadRequest("jwks: every key must be a JSON object")
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not _KID.fullmatch(kid) or kid in out:
            raise BadRequest("jwks: every key needs a unique kid of 1-64 URL-safe characters")
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
            raise BadRequest(f"jwks: keys must be signature keys for {alg}")
        try:
            key = key_from_jwk(jwk)
        except (ValueError, TypeError):
            raise BadRequest("jwks: not a public SM2 or P-256 key") from None
        family_ok = (
            isinstance(key, SM2PublicKey)
            if alg == "SM2"
            else isinstance(key, ec.EllipticCurvePublicKey)
        )
        if not family_ok:
            raise BadRequest(f"jwks: key type does not match the pinned alg {alg}")
        out[kid] = public_jwks({kid: key})["keys"][0]
    return out


def _client(row: Row[Any]) -> Client:
    stored = json.loads(row.jwks) if row.jwks else {"keys": []}
    return Client(
        client_id=row.client_id,
        display_name=row.display_name,
        auth_method=AuthMethod(row.auth_method),
        scopes=frozenset(row.scopes.split()),
        enabled=bool(row.enabled),
        assertion_alg=cast("AssertionAlg | None", row.assertion_alg),
        jwks={k["kid"]: k for k in stored["keys"]},
        secret_hash=row.secret_hash,
    )


class ClientRegistry:
    """Requester systems allowed to ask the gateway for tokens.

    Every method translates database failures into :class:`StoreUnavailable` (503).
    """

    def __init__(
        self,
        engine: Engine | str,
        *,
        known_scopes: Iterable[str] = KNOWN_SCOPES,
        scrypt_n: int = SCRYPT_N,
        pepper: bytes | None = None,
    ) -> None:
        """``pepper``: the 32-byte HMAC-SM3 key for stored secrets (kept outside the
        database). With it, new and rotated secrets are stored as ``hmac-sm3`` and scrypt
        rows are re-hashed on their next successful use; without it, every row is scrypt."""
        if pepper is not None and len(pepper) != PEPPER_LEN:
            raise ValueError(f"pepper: expected {PEPPER_LEN} bytes")
        self.engine = make_engine(engine) if isinstance(engine, str) else engine
        self.known_scopes = frozenset(known_scopes)
        self._scrypt_n = scrypt_n
        self._pepper = pepper

    def __repr__(self) -> str:  # the pepper never appears in a repr or a log line
        return f"ClientRegistry({self.engine.url!r}, pepper={self._pepper is not None})"

    def _store_secret(self, client_id: str, secret: str) -> str:
        if self._pepper is not None:
            return hmac_secret(secret, client_id=client_id, pepper=self._pepper)
        return hash_secret(secret, n=self._scrypt_n)

    def check_secret(
        self, client: Client | None, client_id: str, secret: str, *, cheap_only: bool = False
    ) -> bool:
        """The token endpoint's secret check. ``client`` is what :meth:`query_client`
        found for ``client_id`` (None: unknown or disabled), which costs one HMAC-SM3
        and never a scrypt; so does a scrypt row when ``cheap_only`` (the request is past
        its client id's budget), and it fails. A scrypt row of a 256-bit secret is
        re-stored as ``hmac-sm3`` after it matched (if nobody rotated it meanwhile)."""
        stored = client.secret_hash if client is not None else None
        if client is None or (cheap_only and not (stored or "").startswith("hmac-sm3$")):
            dummy_check(secret, client_id)
            return False
        if not verify_secret(secret, stored, client_id=client.client_id, pepper=self._pepper):
            return False
        if self._pepper is not None and needs_rehash(secret, stored, self._pepper):
            rehashed = hmac_secret(secret, client_id=client.client_id, pepper=self._pepper)
            # Best effort: a store that cannot take the write now is asked again next time;
            # the client authenticated all the same.
            with contextlib.suppress(StoreUnavailable), self._begin() as conn:
                conn.execute(
                    update(clients)
                    .where(clients.c.client_id == client.client_id)
                    .where(clients.c.secret_hash == stored)
                    .values(secret_hash=rehashed)
                )
        return True

    def create_schema(self) -> None:
        create_schema(self.engine)

    def _begin(self) -> AbstractContextManager[Connection]:
        return transaction(self.engine, "oauth client registry")

    def register_client(
        self,
        client_id: str,
        display_name: str,
        *,
        scopes: Iterable[str],
        auth_method: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC,
        jwks: Mapping[str, Any] | None = None,
        alg: AssertionAlg | None = None,
        enabled: bool = True,
        conn: Connection | None = None,
    ) -> Registration:
        """Add a client; Conflict if ``client_id`` exists, BadRequest on invalid input.
        On ``conn`` (a transaction of the caller's, on this registry's database) if given."""
        if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
            raise BadRequest("client_id: expected 3-64 letters, digits, dot, dash, underscore")
        if not display_name or len(display_name) > 200:
            raise BadRequest("display_name: expected 1-200 characters")
        granted = frozenset(scopes)
        if not granted or not granted <= self.known_scopes:
            raise BadRequest(f"scopes: expected a non-empty subset of {sorted(self.known_scopes)}")
        method = AuthMethod(auth_method)
        secret: str | None = None
        stored_jwks: dict[str, dict[str, str]] = {}
        if method is AuthMethod.CLIENT_SECRET_BASIC:
            if jwks is not None or alg is not None:
                raise BadRequest("jwks: only for private_key_jwt clients")
            secret = new_secret()
        else:
            if alg not in ("SM2", "ES256"):
                raise BadRequest("alg: private_key_jwt clients pin exactly one of SM2, ES256")
            stored_jwks = _validated_jwks(jwks, alg)
        client = Client(
            client_id=client_id,
            display_name=display_name,
            auth_method=method,
            scopes=granted,
            enabled=enabled,
            assertion_alg=alg,
            jwks=stored_jwks,
            secret_hash=self._store_secret(client_id, secret) if secret else None,
        )
        try:
            if conn is not None:
                if self.exists(client_id, conn=conn):
                    raise Conflict("client_id: already registered")
                conn.execute(insert(clients).values(**self._row(client)))
            else:
                with self.engine.begin() as own:
                    own.execute(insert(clients).values(**self._row(client)))
        except IntegrityError:
            raise Conflict("client_id: already registered") from None
        except SQLAlchemyError as exc:
            raise StoreUnavailable("oauth client registry is unavailable") from exc
        return Registration(client, secret)

    @staticmethod
    def _row(client: Client) -> dict[str, Any]:
        jwks = {"keys": list(client.jwks.values())} if client.jwks else None
        return {
            "client_id": client.client_id,
            "display_name": client.display_name,
            "auth_method": client.auth_method.value,
            "secret_hash": client.secret_hash,
            "assertion_alg": client.assertion_alg,
            "jwks": json.dumps(jwks, sort_keys=True) if jwks else None,
            "scopes": " ".join(sorted(client.scopes)),
            "enabled": client.enabled,
        }

    def get(self, client_id: str) -> Client | None:
        """The client, enabled or not; None if unknown or not a well-formed id."""
        if not isinstance(client_id, str) or not _CLIENT_ID.fullmatch(client_id):
            return None
        with self._begin() as conn:
            row = conn.execute(select(clients).where(clients.c.client_id == client_id)).first()
        return _client(row) if row is not None else None

    def exists(self, client_id: str, *, conn: Connection) -> bool:
        """Whether ``client_id`` is registered (enabled or not), read on ``conn``."""
        query = select(clients.c.client_id).where(clients.c.client_id == client_id)
        return conn.execute(query).first() is not None

    def query_client(self, client_id: str) -> Client | None:
        """Authlib's lookup: a disabled client is indistinguishable from an unknown one."""
        client = self.get(client_id)
        return client if client is not None and client.enabled else None

    def is_enabled(self, client_id: str) -> bool:
        return self.query_client(client_id) is not None

    def clients(self) -> list[Client]:
        with self._begin() as conn:
            rows = conn.execute(select(clients).order_by(clients.c.client_id)).all()
        return [_client(r) for r in rows]

    def _update(self, client_id: str, conn: Connection | None = None, **values: Any) -> None:
        query = update(clients).where(clients.c.client_id == client_id).values(**values)
        if conn is not None:
            result = conn.execute(query)
        else:
            with self._begin() as own:
                result = own.execute(query)
        if result.rowcount != 1:
            raise NotFound("client_id: no such client")

    def set_enabled(self, client_id: str, enabled: bool, *, conn: Connection | None = None) -> None:
        """Disable (or re-enable) a client; its live tokens stop working on the next request
        when the resource server checks ``is_enabled``."""
        self._update(client_id, conn, enabled=enabled)

    def rotate_secret(self, client_id: str) -> str:
        """A new secret for a ``client_secret_basic`` client; the old one stops working."""
        client = self.get(client_id)
        if client is None:
            raise NotFound("client_id: no such client")
        if client.auth_method is not AuthMethod.CLIENT_SECRET_BASIC:
            raise Conflict("client_id: this client authenticates with private_key_jwt")
        secret = new_secret()
        self._update(client_id, None, secret_hash=self._store_secret(client_id, secret))
        return secret

    def set_jwks(self, client_id: str, jwks: Mapping[str, Any]) -> None:
        """Replace a ``private_key_jwt`` client's keys (rotation); the pinned alg stays."""
        client = self.get(client_id)
        if client is None:
            raise NotFound("client_id: no such client")
        if client.assertion_alg is None:
            raise Conflict("client_id: this client authenticates with a secret")
        stored = _validated_jwks(jwks, client.assertion_alg)
        payload = json.dumps({"keys": list(stored.values())}, sort_keys=True)
        self._update(client_id, None, jwks=payload)
