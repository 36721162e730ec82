"""Requesters registered by administrators, under the two-person rule.

A registration is a :class:`~tongban.policies.ChangeKind`: one administrator proposes it
(``POST /v1/admin/clients``), a different one approves it (``POST
/v1/admin/changes/{id}/approve``), and the approval inserts the client and its role's
grouping rule (``g, <client>, <role>``) in one transaction with the change's record and its
audit entry. Clients registered so use ``private_key_jwt`` with the public keys of the
proposal: given inline, or fetched from an https ``jwks_uri`` when it is proposed, so that
what the second administrator reviews is exactly what will be trusted (a live URL would let
whoever controls it change the keys without review). No secret travels.

Disabling takes one administrator and is immediate: taking access away needs no second pair
of eyes, and a compromised client must stop at once. Re-enabling is a change of its own
(``client-enable``), under the two-person rule.
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from sqlalchemy import Connection

from tongban.audit.sink import AuditSink
from tongban.policies import Change, ChangeConflict, InvalidPolicy, Rule
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest, NotFound

from .models import ClientInfo, ClientProposal
from .oauth.registry import AuthMethod, Client, ClientRegistry, jwks_alg, validated_jwks

__all__ = [
    "MAX_JWKS_BYTES",
    "ClientAdmin",
    "ClientEnable",
    "ClientRegistration",
    "JwksFetch",
    "describe",
    "fetch_jwks",
    "fetch_loopback_jwks",
]

MAX_JWKS_BYTES = 64 * 1024
JwksFetch = Callable[[str], Mapping[str, Any]]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def fetch_jwks(url: str, *, timeout: float = 5.0) -> Mapping[str, Any]:
    """The JWK Set at ``url``: https, or http to a loopback address only; at most
    :data:`MAX_JWKS_BYTES`, no redirects. A failure is a ``bad-request`` naming the field."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(host)):
        raise BadRequest("jwks_uri: expected an https URL")
    try:
        with httpx.stream("GET", url, timeout=timeout, follow_redirects=False) as resp:
            if resp.status_code != 200:
                raise BadRequest(f"jwks_uri: the server answered HTTP {resp.status_code}")
            data = b""
            for chunk in resp.iter_bytes():
                data += chunk
                if len(data) > MAX_JWKS_BYTES:
                    raise BadRequest(f"jwks_uri: a JWK Set of more than {MAX_JWKS_BYTES} bytes")
    except httpx.HTTPError:
        raise BadRequest("jwks_uri: could not be fetched") from None
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("jwks_uri: not a JSON JWK Set") from None
    if not isinstance(doc, Mapping):
        raise BadRequest("jwks_uri: not a JSON JWK Set")
    return doc


def fetch_loopback_jwks(url: str) -> Mapping[str, Any]:
    """:func:`fetch_jwks` for a gateway that may reach nothing beyond this host (tests, an
    isolated network): any other host is refused before a name is even resolved."""
    if not _loopback(urllib.parse.urlsplit(url).hostname or ""):
        raise BadRequest("jwks_uri: this gateway fetches JWK Sets from loopback only")
    return fetch_jwks(url)


def describe(client: Client) -> dict[str, Any]:
    """What administrators see of a client: never a secret or its hash."""
    return ClientInfo(
        client_id=client.client_id,
        display_name=client.display_name,
        auth_method=client.auth_method.value,
        scopes=sorted(client.scopes),
        enabled=client.enabled,
        alg=client.assertion_alg,
        kids=sorted(client.jwks),
    ).model_dump()


class ClientRegistration:
    """The ``client`` change kind: register a ``private_key_jwt`` requester with a role."""

    name = "client"

    def __init__(self, registry: ClientRegistry, fetch: JwksFetch = fetch_jwks) -> None:
        self._registry = registry
        self._fetch = fetch

    def validate(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        data = dict(spec)
        source: dict[str, Any] = {}
        if "alg" in data:  # the stored form, checked again at approval: keys as reviewed
            del data["alg"]
            if "jwks_uri" in data:
                source["jwks_uri"] = data.pop("jwks_uri")
        proposal = parse_body(ClientProposal, data)
        if proposal.jwks is not None:
            jwks: Mapping[str, Any] = proposal.jwks.model_dump()
        else:
            assert proposal.jwks_uri is not None
            jwks = self._fetch(proposal.jwks_uri)
            source = {"jwks_uri": proposal.jwks_uri}
        alg = jwks_alg(jwks)
        keys = validated_jwks(jwks, alg)
        if self._registry.exists(proposal.client_id, conn=conn):
            raise ChangeConflict("client_id: already registered")
        return {
            "client_id": proposal.client_id,
            "display_name": proposal.display_name or proposal.client_id,
            "role": proposal.role,
            "scopes": sorted(set(proposal.scopes)),
            "alg": alg,
            "jwks": {"keys": [keys[k] for k in sorted(keys)]},
            **source,
        }

    def policy_delta(self, spec: Mapping[str, Any], rules: frozenset[Rule]) -> Change:
        role = str(spec["role"])
        if not any(r.ptype == "p" and r.values[:1] == (role,) for r in rules):
            raise InvalidPolicy("role: no rule of the policy names this role")
        return Change.add(f"g, {spec['client_id']}, {role}, *")

    def apply(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        self._registry.register_client(
            str(spec["client_id"]),
            str(spec["display_name"]),
            scopes=spec["scopes"],
            auth_method=AuthMethod.PRIVATE_KEY_JWT,
            jwks=spec["jwks"],
            alg=spec["alg"],
            conn=conn,
        )
        return {"client_id": spec["client_id"]}

    def after_commit(self, spec: Mapping[str, Any], done: Mapping[str, Any]) -> None:
        return None


class ClientEnable:
    """The ``client-enable`` change kind: give a disabled client its access back."""

    name = "client-enable"

    def __init__(self, registry: ClientRegistry) -> None:
        self._registry = registry

    def validate(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        client_id = spec.get("client_id")
        client = self._registry.get(client_id) if isinstance(client_id, str) else None
        if client is None:
            raise NotFound("client_id: no such client")
        if client.enabled:
            raise ChangeConflict("client_id: the client is enabled")
        return {"client_id": client.client_id}

    def policy_delta(self, spec: Mapping[str, Any], rules: frozenset[Rule]) -> None:
        return None

    def apply(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        self._registry.set_enabled(str(spec["client_id"]), True, conn=conn)
        return {"client_id": spec["client_id"]}

    def after_commit(self, spec: Mapping[str, Any], done: Mapping[str, Any]) -> None:
        return None


class ClientAdmin:
    """What one administrator may do alone: read the clients, and disable one."""

    def __init__(self, registry: ClientRegistry, audit: AuditSink) -> None:
        self._registry = registry
        self._audit = audit

    def list(self) -> list[dict[str, Any]]:
        return [describe(c) for c in self._registry.clients()]

    def disable(self, admin: str, client_id: str) -> int:
        """Disable ``client_id`` now (its live tokens stop at their next request); the
        audit index of the record. Recorded before it takes effect: a log that refuses
        the entry leaves the client as it was."""
        client = self._registry.get(client_id)
        if client is None:
            raise NotFound("client_id: no such client")
        if client_id == admin:
            raise BadRequest("client_id: an administrator may not disable itself")
        index = self._audit.append(
            {"kind": "client.disabled", "client_id": client_id, "admin": admin}
        )
        self._registry.set_enabled(client_id, False)
        return index
