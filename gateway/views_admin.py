"""Administrators' endpoints for requesters and for every kind of two-person change (scope
``admin``): thin shells over :mod:`.client_changes` and :class:`~tongban.policies.PolicyAdmin`.

``POST /v1/admin/changes/{change_id}/approve`` and ``/reject`` decide a pending change of
any kind (a policy edit, a client's registration, a client's re-enabling); the policy
paths under ``/v1/admin/policy/changes/`` stay as aliases for policy changes."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, jsonify

from tongban.policies import PolicyAdmin, change_kind
from tongban.policies.errors import (
    AuditFailed,
    ChangeConflict,
    ChangeNotPending,
    InvalidPolicy,
    TwoPersonRule,
    UnknownChange,
)
from tongban.primitives.errors import BadRequest, Conflict, NotFound, StoreUnavailable

from .client_changes import ClientAdmin, ClientEnable, ClientRegistration, JwksFetch, fetch_jwks
from .key_changes import ROTATABLE, KeyRotation
from .models import (
    ChangeDecided,
    ChangeList,
    ChangePending,
    ClientDisabled,
    ClientList,
    ClientProposal,
)
from .oauth.flask import current_principal
from .oauth.registry import ClientRegistry
from .operations import Errors, Operation, Out
from .views_checks import CHANGE_ID_PATTERN, pending_change

__all__ = ["OPERATIONS", "admin_blueprint"]

_ADMIN = ("admin",)
_WRITE: Errors = (StoreUnavailable, AuditFailed)
_CHANGE_ID = {"change_id": (CHANGE_ID_PATTERN, "The change's id.")}
_CLIENT_ID = {"client_id": ("^[A-Za-z0-9][A-Za-z0-9._-]{2,63}$", "The client's id.")}
_DECIDE: Errors = (*_WRITE, BadRequest, UnknownChange, ChangeNotPending, ChangeConflict)

LIST_CLIENTS = Operation(
    "GET",
    "/v1/admin/clients",
    "listClients",
    "admin",
    "The registered requesters",
    (Out(ClientList, "Every client, enabled or not; never a secret."),),
    (StoreUnavailable,),
    scopes=_ADMIN,
)
PROPOSE_CLIENT = Operation(
    "POST",
    "/v1/admin/clients",
    "proposeClient",
    "admin",
    "Propose a requester (private_key_jwt; needs a second administrator)",
    (
        Out(
            ChangePending,
            "Recorded as pending and audited; approve it at "
            "`POST /v1/admin/changes/{change_id}/approve`.",
            202,
        ),
    ),
    (*_WRITE, InvalidPolicy, ChangeConflict),
    scopes=_ADMIN,
    body=ClientProposal,
    description="The client is registered, with its role's grouping rule, when a different "
    "administrator approves. `jwks_uri` is fetched now (https), so the approver reviews the "
    "keys that will be trusted.",
)
DISABLE_CLIENT = Operation(
    "POST",
    "/v1/admin/clients/{client_id}/disable",
    "disableClient",
    "admin",
    "Disable a requester now (one administrator)",
    (Out(ClientDisabled, "Audited; its live tokens stop working at their next request."),),
    (*_WRITE, BadRequest, NotFound),
    scopes=_ADMIN,
    path_params=_CLIENT_ID,
)
ENABLE_CLIENT = Operation(
    "POST",
    "/v1/admin/clients/{client_id}/enable",
    "proposeClientEnable",
    "admin",
    "Propose re-enabling a disabled requester (needs a second administrator)",
    (Out(ChangePending, "Recorded as pending and audited.", 202),),
    (*_WRITE, NotFound, ChangeConflict),
    scopes=_ADMIN,
    path_params=_CLIENT_ID,
)
LIST_CHANGES = Operation(
    "GET",
    "/v1/admin/changes",
    "listChanges",
    "admin",
    "Pending two-person changes of every kind",
    (Out(ChangeList, "Oldest first."),),
    (StoreUnavailable,),
    scopes=_ADMIN,
)
APPROVE = Operation(
    "POST",
    "/v1/admin/changes/{change_id}/approve",
    "approveChange",
    "admin",
    "Approve another administrator's change of any kind; it takes effect now",
    (Out(ChangeDecided, "Applied, with its audit entry, in one transaction."),),
    (*_DECIDE, InvalidPolicy, TwoPersonRule, Conflict),
    scopes=_ADMIN,
    path_params=_CHANGE_ID,
)
REJECT = Operation(
    "POST",
    "/v1/admin/changes/{change_id}/reject",
    "rejectChange",
    "admin",
    "Reject (or withdraw) a pending change of any kind",
    (Out(ChangeDecided, "Closed without applying it."),),
    _DECIDE,
    scopes=_ADMIN,
    path_params=_CHANGE_ID,
)
ROTATE_KEY = Operation(
    "POST", "/v1/admin/keys/{name}/rotate", "proposeKeyRotation", "admin",
    "Propose rotating a signing key (needs a second administrator)",
    (Out(ChangePending, "Recorded as pending and audited.", 202),),
    (*_WRITE, NotFound), scopes=_ADMIN,
    path_params={"name": ("^(" + "|".join(sorted(ROTATABLE)) + ")$", "The key's name.")},
    description="When a different administrator approves, the key is replaced and the old "
    "public key stays published for as long as what it signed may be presented (answers and "
    "consent artefacts: a year; access tokens: an hour); every worker signs with the new "
    "key within a second.",
)  # fmt: skip
OPERATIONS = (LIST_CLIENTS, PROPOSE_CLIENT, DISABLE_CLIENT, ENABLE_CLIENT, LIST_CHANGES,
              APPROVE, REJECT, ROTATE_KEY)  # fmt: skip


def admin_blueprint(
    admin: PolicyAdmin,
    registry: ClientRegistry,
    clients: ClientAdmin,
    fetch: JwksFetch | None = None,
    keys_dir: Path | None = None,
) -> Blueprint:
    """The endpoints, with ``admin`` taught the client change kinds (and key rotation, when
    the gateway's key directory is known)."""
    admin.add_kind(ClientRegistration(registry, fetch or fetch_jwks))
    admin.add_kind(ClientEnable(registry))
    if keys_dir is not None:
        admin.add_kind(KeyRotation(keys_dir))
    bp = Blueprint("admin", __name__)

    @LIST_CLIENTS.route(bp)
    def list_clients() -> Response:
        return jsonify(clients=clients.list())

    @PROPOSE_CLIENT.route(bp)
    def propose_client(body: ClientProposal) -> tuple[Response, int]:
        spec = body.model_dump(exclude_none=True)
        change_id = admin.propose_kind("client", current_principal().client_id, spec)
        return jsonify(change_id=change_id, status="pending"), 202

    @DISABLE_CLIENT.route(bp)
    def disable_client(client_id: str) -> Response:
        index = clients.disable(current_principal().client_id, client_id)
        return jsonify(client_id=client_id, enabled=False, audit_index=index)

    @ENABLE_CLIENT.route(bp)
    def enable_client(client_id: str) -> tuple[Response, int]:
        spec = {"client_id": client_id}
        change_id = admin.propose_kind("client-enable", current_principal().client_id, spec)
        return jsonify(change_id=change_id, status="pending"), 202

    @LIST_CHANGES.route(bp)
    def list_changes() -> Response:
        return jsonify(changes=[pending_change(c) for c in admin.pending()])

    @ROTATE_KEY.route(bp)
    def rotate_key(name: str) -> tuple[Response, int]:
        change_id = admin.propose_kind("key-rotation", current_principal().client_id, {"key": name})
        return jsonify(change_id=change_id, status="pending"), 202

    @APPROVE.route(bp)
    def approve(change_id: str) -> Response:
        version = admin.approve(change_id, current_principal().client_id)
        kind = change_kind(admin.change(change_id))
        return jsonify(id=change_id, kind=kind, status="approved", policy_version=version)

    @REJECT.route(bp)
    def reject(change_id: str) -> Response:
        admin.reject(change_id, current_principal().client_id)
        return jsonify(id=change_id, kind=change_kind(admin.change(change_id)), status="rejected")

    return bp
