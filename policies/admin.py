"""Two-person policy administration: one administrator proposes, a different one approves.

Why this shape: a policy change decides who may learn what about citizens, so no single
administrator can make one. Pending changes have no effect. Approval applies the change, the
approval record and the new head version in one database transaction, and the audit event
is appended inside that transaction, before the commit: if the audit log refuses the event,
the transaction rolls back and nothing changed (the audit write is part of the pipeline, not
a notification). The enforcer is reloaded only after the commit, with a policy compiled
before it, so a committed policy is always one the enforcer can load. The remaining gap is
the commit failing after the append: the log then holds an "approved" event whose
``new_policy_version`` never became the store's head version, which a reader can detect;
the opposite order would allow an unaudited change, which no reader could.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sqlalchemy import Connection

from tongban.audit.sink import AuditSink
from tongban.primitives.errors import BadRequest, TongbanError

from .change import Change, apply_change
from .enforcer import CompiledPolicy, PolicyEnforcer, compile_policy
from .errors import AuditFailed, ChangeNotPending, TwoPersonRule, UnknownChange
from .rules import (
    ClaimCatalog,
    Policy,
    Rule,
    build_policy,
    default_legal_bases,
    default_model_text,
    default_rules,
)
from .store import ChangeRecord, ChangeStatus, PolicyStore

__all__ = ["ChangeKind", "PolicyAdmin", "change_kind", "open_enforcer"]

_ADMIN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")


def open_enforcer(
    store: PolicyStore, catalog: ClaimCatalog, *, model_text: str | None = None
) -> PolicyEnforcer:
    """Start-up: create the tables, seed the demo policy into an empty store, and return an
    enforcer over what the store holds."""
    model = default_model_text() if model_text is None else model_text
    store.create_schema()
    seed_rules, seed_bases = default_rules(), default_legal_bases()
    seed = build_policy(seed_rules, seed_bases, catalog, model)
    store.seed_if_empty(seed_rules, seed_bases, seed.version)
    rules, bases = store.load()
    return PolicyEnforcer(build_policy(rules, bases, catalog, model))


class ChangeKind(Protocol):
    """A kind of two-person change besides a policy edit: a client's registration, say.

    Its ``spec`` (JSON-able, no secrets: it is stored and audited as is) is checked when it
    is proposed and again when it is approved, inside the approval's transaction, against
    whatever the stores hold by then; ``apply`` makes it, on that transaction's connection.
    ``policy_delta`` is the policy edit it needs (a client's role, say), applied with it in
    the same transaction by the same code as a policy change."""

    name: str

    def validate(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The normalised spec, or a problem (``invalid-policy``, ``policy-change-conflict``)."""
        ...

    def policy_delta(self, spec: Mapping[str, Any], rules: frozenset[Rule]) -> Change | None: ...

    def apply(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Make the change; what it returns is added to the approval's audit event."""
        ...

    def after_commit(self, spec: Mapping[str, Any], done: Mapping[str, Any]) -> None:
        """What cannot be part of the transaction (a key file), done once it committed:
        the audit entry already says what it does, so it is never unaudited."""
        ...


def change_kind(record: ChangeRecord) -> str:
    """``policy`` for a policy edit (stored as the change itself), else the kind's name."""
    kind = record.body.get("kind")
    return kind if isinstance(kind, str) else "policy"


def _check_admin(admin_id: object) -> str:
    if not isinstance(admin_id, str) or not _ADMIN_ID.fullmatch(admin_id):
        raise BadRequest("admin_id: expected 1-128 of [A-Za-z0-9_.:@-]")
    return admin_id


class PolicyAdmin:
    """Propose, approve and reject policy changes. Use one instance per enforcer: its lock
    keeps the enforcer's reloads in commit order within the process."""

    def __init__(
        self,
        store: PolicyStore,
        enforcer: PolicyEnforcer,
        catalog: ClaimCatalog,
        audit: AuditSink,
        kinds: Iterable[ChangeKind] = (),
    ) -> None:
        self._store = store
        self._enforcer = enforcer
        self._catalog = catalog
        self._audit = audit
        self._lock = threading.Lock()
        self._kinds = {k.name: k for k in kinds}

    def add_kind(self, kind: ChangeKind) -> None:
        """Accept changes of ``kind`` (before the first request)."""
        self._kinds[kind.name] = kind

    @property
    def store(self) -> PolicyStore:
        return self._store

    def _policy(self, rules: frozenset[Rule], bases: Mapping[str, str]) -> Policy:
        return build_policy(rules, bases, self._catalog, self._enforcer.policy.model_text)

    def _emit(self, event: dict[str, Any]) -> None:
        # Serialise first: an event the log could not canonicalise is a bug to catch here,
        # inside the transaction, not in the audit package after the commit.
        json.dumps(event, sort_keys=True, allow_nan=False)
        try:
            self._audit.append(event)
        except TongbanError:
            raise
        except Exception as exc:
            raise AuditFailed("audit: the policy event was not recorded") from exc

    def propose(self, admin_id: str, change: Change | Mapping[str, Any]) -> str:
        """Record ``change`` (a :class:`Change` or its JSON form) as pending and return its
        id. Validated now against the catalog and the current policy, so a reviewer never
        sees a change that cannot apply."""
        admin = _check_admin(admin_id)
        if not isinstance(change, Change):
            change = Change.from_json(change)
        change_id = uuid.uuid4().hex
        with self._lock, self._store.transaction() as conn:
            rules, bases = self._store.read(conn)
            current = self._policy(rules, bases)
            compile_policy(self._policy(*apply_change(rules, bases, change, self._catalog)))
            self._store.insert_change(conn, change_id, admin, change.to_json(), current.version)
            self._emit(
                {
                    "kind": "policy.change.proposed",
                    "change_id": change_id,
                    "admin": admin,
                    "change": change.to_json(),
                    "policy_version": current.version,
                }
            )
        return change_id

    def propose_kind(self, kind_name: str, admin_id: str, spec: Mapping[str, Any]) -> str:
        """Record a change of another kind (:class:`ChangeKind`) as pending; its id."""
        admin = _check_admin(admin_id)
        kind = self._kind(kind_name)
        change_id = uuid.uuid4().hex
        with self._lock, self._store.transaction() as conn:
            rules, bases = self._store.read(conn)
            current = self._policy(rules, bases)
            normal = kind.validate(conn, spec)
            delta = kind.policy_delta(normal, rules)
            if delta is not None:
                compile_policy(self._policy(*apply_change(rules, bases, delta, self._catalog)))
            body = {"kind": kind.name, "spec": normal}
            self._store.insert_change(conn, change_id, admin, body, current.version)
            self._emit(
                {
                    "kind": f"{kind.name}.change.proposed",
                    "change_id": change_id,
                    "admin": admin,
                    "spec": normal,
                    "policy_version": current.version,
                }
            )
        return change_id

    def _kind(self, name: object) -> ChangeKind:
        kind = self._kinds.get(name) if isinstance(name, str) else None
        if kind is None:
            raise BadRequest("kind: this gateway takes no such change")
        return kind

    def _pending(self, conn: Connection, change_id: object) -> ChangeRecord:
        if not isinstance(change_id, str) or not change_id:
            raise UnknownChange("change_id: no such policy change")
        record = self._store.get_change(conn, change_id, for_update=True)
        if record is None:
            raise UnknownChange("change_id: no such policy change")
        if record.status is not ChangeStatus.PENDING:
            raise ChangeNotPending(f"change_id: the change is already {record.status.value}")
        return record

    def approve(self, change_id: str, admin_id: str) -> str:
        """Apply a pending change proposed by someone else, of any kind; returns the policy
        version now enforced (changed only if the change edits the policy).
        :class:`TwoPersonRule` if ``admin_id`` proposed it."""
        admin = _check_admin(admin_id)
        with self._lock:
            with self._store.transaction() as conn:
                self._store.lock_head(conn)
                record = self._pending(conn, change_id)
                if record.proposer == admin:
                    raise TwoPersonRule("admin_id: the proposer may not approve their own change")
                name = change_kind(record)
                rules, bases = self._store.read(conn)
                old = self._policy(rules, bases)
                done: dict[str, Any] = {}
                later: tuple[ChangeKind, dict[str, Any], dict[str, Any]] | None = None
                if name == "policy":
                    delta: Change | None = Change.from_json(record.body)
                    described: dict[str, Any] = {"change": delta.to_json() if delta else {}}
                else:
                    kind = self._kind(name)
                    spec = kind.validate(conn, record.body.get("spec", {}))
                    delta = kind.policy_delta(spec, rules)
                    done = kind.apply(conn, spec)
                    described = {"spec": spec}
                    later = (kind, spec, done)
                compiled: CompiledPolicy | None = None
                new_version = old.version
                if delta is not None:
                    compiled = self._write_policy(conn, rules, bases, delta)
                    new_version = compiled.policy.version
                if not self._store.finish_change(
                    conn, record.id, ChangeStatus.APPROVED, admin, new_version
                ):
                    raise ChangeNotPending("change_id: the change was decided concurrently")
                if compiled is not None:
                    self._store.set_head(conn, new_version)
                self._emit(
                    {
                        "kind": f"{name}.change.approved",
                        "change_id": record.id,
                        "admin": admin,
                        "proposer": record.proposer,
                        **described,
                        **done,
                        "old_policy_version": old.version,
                        "new_policy_version": new_version,
                    }
                )
            if later is not None:
                later[0].after_commit(later[1], later[2])
            return self._enforcer.load(compiled) if compiled is not None else self._enforcer.version

    def _write_policy(
        self, conn: Connection, rules: frozenset[Rule], bases: Mapping[str, str], delta: Change
    ) -> CompiledPolicy:
        """Store the policy after ``delta`` on ``conn``; the compiled policy."""
        new_rules, new_bases = apply_change(rules, bases, delta, self._catalog)
        compiled = compile_policy(self._policy(new_rules, new_bases))
        for rule in rules - new_rules:
            self._store.remove_rule(conn, rule)
        for rule in sorted(new_rules - rules):
            self._store.add_rule(conn, rule)
        for purpose in bases.keys() - new_bases.keys():
            self._store.unset_legal_basis(conn, purpose)
        for purpose, basis in new_bases.items():
            if bases.get(purpose) != basis:
                self._store.set_legal_basis(conn, purpose, basis)
        return compiled

    def reject(self, change_id: str, admin_id: str) -> None:
        """Close a pending change without applying it. The proposer may withdraw their own
        change: discarding a change needs no second pair of eyes."""
        admin = _check_admin(admin_id)
        with self._lock, self._store.transaction() as conn:
            record = self._pending(conn, change_id)
            if not self._store.finish_change(conn, record.id, ChangeStatus.REJECTED, admin, None):
                raise ChangeNotPending("change_id: the change was decided concurrently")
            name = change_kind(record)
            described = (
                {"change": dict(record.body)}
                if name == "policy"
                else {"spec": dict(record.body.get("spec", {}))}
            )
            self._emit(
                {
                    "kind": f"{name}.change.rejected",
                    "change_id": record.id,
                    "admin": admin,
                    "proposer": record.proposer,
                    **described,
                    "policy_version": self._enforcer.version,
                }
            )

    def pending(self) -> list[ChangeRecord]:
        """Changes awaiting a second administrator."""
        with self._store.transaction() as conn:
            return self._store.list_changes(conn, ChangeStatus.PENDING)

    def change(self, change_id: str) -> ChangeRecord:
        with self._store.transaction() as conn:
            record = self._store.get_change(conn, change_id)
        if record is None:
            raise UnknownChange("change_id: no such policy change")
        return record

    def reload(self) -> str:
        """Reload from the store (e.g. when :meth:`PolicyStore.head_version` shows another
        process approved a change); returns the version now enforced."""
        with self._lock:
            rules, bases = self._store.load()
            return self._enforcer.load(self._policy(rules, bases))
