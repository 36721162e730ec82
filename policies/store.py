"""The policy store: rule lines, legal bases and change requests in SQL (SQLite or PostgreSQL).

Why SQL and not Casbin's file adapter: a change must be applied atomically together with
its approval record, and every gateway process must be able to see that the policy moved.
``policy_head`` holds the current version; approvals lock that row (``SELECT ... FOR UPDATE``
on PostgreSQL; SQLite serialises writers anyway), so concurrent approvals apply one after
the other, each on top of the last. Foreign database errors become
:class:`~primitives.errors.StoreUnavailable` here, at the boundary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError

from tongban.primitives.db import make_engine
from tongban.primitives.errors import StoreUnavailable

from .rules import Rule

__all__ = ["ChangeRecord", "ChangeStatus", "PolicyStore", "metadata"]

_VALUES = 6  # v0..v5, as Casbin's SQL adapters do
_HEAD_ID = 1

metadata = MetaData()

rules_table = Table(
    "policy_rules",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ptype", String(8), nullable=False),
    # Empty string, not NULL, for unused values: NULLs never collide in a unique index.
    *(Column(f"v{i}", String(128), nullable=False, server_default="") for i in range(_VALUES)),
    UniqueConstraint("ptype", *(f"v{i}" for i in range(_VALUES)), name="uq_policy_rules_line"),
)

legal_bases_table = Table(
    "policy_legal_bases",
    metadata,
    Column("purpose", String(64), primary_key=True),
    Column("basis", Text, nullable=False),
)

changes_table = Table(
    "policy_changes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("proposer", String(128), nullable=False),
    Column("status", String(16), nullable=False),
    Column("body", Text, nullable=False),  # canonical JSON of the Change
    Column("base_version", String(64), nullable=False),
    Column("decided_by", String(128)),
    Column("result_version", String(64)),
)

head_table = Table(
    "policy_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", String(64), nullable=False),
)


class ChangeStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """A stored change request; ``body`` is the change as JSON-able data."""

    id: str
    proposer: str
    status: ChangeStatus
    body: Mapping[str, Any]
    base_version: str
    decided_by: str | None
    result_version: str | None


def _rule_row(rule: Rule) -> dict[str, str]:
    padded = (*rule.values, *("",) * (_VALUES - len(rule.values)))
    return {"ptype": rule.ptype, **{f"v{i}": v for i, v in enumerate(padded)}}


def _rule_clause(rule: Rule) -> list[Any]:
    row = _rule_row(rule)
    return [rules_table.c[name] == value for name, value in row.items()]


class PolicyStore:
    """Table access for policies. Methods taking ``conn`` run inside the caller's
    transaction (see :meth:`transaction`); the others open their own."""

    def __init__(self, engine: Engine, *, create: bool = False) -> None:
        """``create``: :meth:`create_schema` migrates the database to the code's revision
        (tests and the demo) instead of only checking that it is there."""
        self.engine = engine
        self.create = create

    @classmethod
    def from_url(cls, url: str = "sqlite://", *, create: bool = False) -> PolicyStore:
        """An engine for ``url``. In-memory SQLite gets one shared connection, so every
        thread sees the same database rather than a private empty one."""
        return cls(make_engine(url), create=create)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction, committed on success and rolled back on any exception."""
        try:
            with self.engine.begin() as conn:
                yield conn
        except OperationalError as exc:
            raise StoreUnavailable("policy store: the database could not be reached") from exc

    def create_schema(self) -> None:
        """At start-up (``open_enforcer``): refuse a database that is not at the gateway
        chain's head revision; a store made with ``create=True`` is migrated there instead.
        A deployment's tables come from ``tongban db upgrade``."""
        from tongban.migrations import GATEWAY, require_head, upgrade

        try:
            if self.create:
                upgrade(self.engine, GATEWAY)
            else:
                require_head(self.engine, GATEWAY)
        except OperationalError as exc:
            raise StoreUnavailable("policy store: the database could not be reached") from exc

    def seed_if_empty(
        self, rules: Iterable[Rule], legal_bases: Mapping[str, str], version: str
    ) -> bool:
        """Write the seed policy if the store has never held one; ``True`` if it did so.
        The head row marks "seeded", so a store an administrator emptied stays empty."""
        try:
            with self.transaction() as conn:
                if conn.execute(select(head_table.c.id)).first() is not None:
                    return False
                conn.execute(insert(head_table), {"id": _HEAD_ID, "version": version})
                rows = [_rule_row(r) for r in sorted(set(rules))]
                if rows:
                    conn.execute(insert(rules_table), rows)
                bases = [{"purpose": p, "basis": b} for p, b in sorted(legal_bases.items())]
                if bases:
                    conn.execute(insert(legal_bases_table), bases)
        except IntegrityError:
            return False  # another process seeded it first
        return True

    def load(self) -> tuple[frozenset[Rule], dict[str, str]]:
        with self.transaction() as conn:
            return self.read(conn)

    def head_version(self) -> str | None:
        """The version last committed by any process (``None`` before seeding)."""
        with self.transaction() as conn:
            version: str | None = conn.execute(select(head_table.c.version)).scalar()
            return version

    # --- inside a transaction -------------------------------------------------------------

    def read(self, conn: Connection) -> tuple[frozenset[Rule], dict[str, str]]:
        cols = [rules_table.c[f"v{i}"] for i in range(_VALUES)]
        rules = set()
        for row in conn.execute(select(rules_table.c.ptype, *cols)):
            values = tuple(row[1:])
            while values and values[-1] == "":
                values = values[:-1]
            rules.add(Rule(row[0], values))
        query = select(legal_bases_table.c.purpose, legal_bases_table.c.basis)
        bases = {str(purpose): str(basis) for purpose, basis in conn.execute(query)}
        return frozenset(rules), bases

    def lock_head(self, conn: Connection) -> str | None:
        """Take the write lock that serialises policy changes; returns the head version."""
        query = select(head_table.c.version).where(head_table.c.id == _HEAD_ID).with_for_update()
        version: str | None = conn.execute(query).scalar()
        return version

    def set_head(self, conn: Connection, version: str) -> None:
        if conn.execute(update(head_table).values(version=version)).rowcount == 0:
            conn.execute(insert(head_table), {"id": _HEAD_ID, "version": version})

    def has_rule(self, conn: Connection, rule: Rule) -> bool:
        query = select(func.count()).select_from(rules_table).where(*_rule_clause(rule))
        return bool(conn.execute(query).scalar())

    def add_rule(self, conn: Connection, rule: Rule) -> None:
        conn.execute(insert(rules_table), _rule_row(rule))

    def remove_rule(self, conn: Connection, rule: Rule) -> int:
        return conn.execute(delete(rules_table).where(*_rule_clause(rule))).rowcount

    def set_legal_basis(self, conn: Connection, purpose: str, basis: str) -> None:
        table = legal_bases_table
        done = conn.execute(update(table).where(table.c.purpose == purpose).values(basis=basis))
        if done.rowcount == 0:
            conn.execute(insert(table), {"purpose": purpose, "basis": basis})

    def unset_legal_basis(self, conn: Connection, purpose: str) -> int:
        table = legal_bases_table
        return conn.execute(delete(table).where(table.c.purpose == purpose)).rowcount

    def insert_change(
        self, conn: Connection, change_id: str, proposer: str, body: Mapping[str, Any], base: str
    ) -> None:
        row = {
            "id": change_id,
            "proposer": proposer,
            "status": ChangeStatus.PENDING.value,
            "body": json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            "base_version": base,
        }
        conn.execute(insert(changes_table), row)

    def get_change(
        self, conn: Connection, change_id: str, *, for_update: bool = False
    ) -> ChangeRecord | None:
        query = select(changes_table).where(changes_table.c.id == change_id)
        if for_update:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            return None
        return ChangeRecord(
            row["id"],
            row["proposer"],
            ChangeStatus(row["status"]),
            json.loads(row["body"]),
            row["base_version"],
            row["decided_by"],
            row["result_version"],
        )

    def list_changes(
        self, conn: Connection, status: ChangeStatus | None = None
    ) -> list[ChangeRecord]:
        query = select(changes_table.c.id).order_by(changes_table.c.id)
        if status is not None:
            query = query.where(changes_table.c.status == status.value)
        ids = list(conn.execute(query).scalars())
        return [r for r in (self.get_change(conn, i) for i in ids) if r is not None]

    def finish_change(
        self,
        conn: Connection,
        change_id: str,
        status: ChangeStatus,
        decided_by: str,
        result_version: str | None,
    ) -> bool:
        """Move a pending change to ``status``. Conditional on it still being pending, so a
        change is decided at most once even if two approvers race; ``False`` if it was not."""
        query = (
            update(changes_table)
            .where(changes_table.c.id == change_id)
            .where(changes_table.c.status == ChangeStatus.PENDING.value)
            .values(status=status.value, decided_by=decided_by, result_version=result_version)
        )
        return conn.execute(query).rowcount == 1
