"""Offline verification of a whole audit log, trusting nothing the operator stored.

It re-reads every entry, checks indexes are contiguous and embedded in the hashed bytes,
recomputes every leaf hash from the canonical entry, rebuilds the tree, and checks every
stored checkpoint: the gateway's signature, each witness cosignature, its root against
the recomputed tree, and consistency with the checkpoint before it. The first failure is
reported with the first index it implicates.

Checkpoints must all name one log: the origin stored with the log when it was created
(``audit_meta``), unless the caller names the origin it expects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import make_url

from tongban.primitives.errors import NotFound
from tongban.primitives.gm import SM2PublicKey

from . import schema
from .canonical import canonical_bytes
from .log import stored_origin
from .merkle import MerkleTree, leaf_hash, verify_consistency
from .note import NoteError, SignedNote

__all__ = ["AuditLogMissing", "Finding", "VerifyReport", "verify_rows", "verify_store"]


class AuditLogMissing(NotFound):
    """There is no audit log at the URL: nothing to verify (and nothing was created)."""

    slug = "audit-log-missing"
    title = "No audit log"


@dataclass(frozen=True, slots=True)
class Finding:
    index: int | None  # first entry index implicated, if any
    problem: str


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    findings: list[Finding] = field(default_factory=list)
    cosignatures: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_bad_index(self) -> int | None:
        indexes = [f.index for f in self.findings if f.index is not None]
        return min(indexes) if indexes else None


def _no_float(text: str) -> Any:
    raise ValueError("floats are not allowed in audit entries")


def _leaves(rows: Iterable[tuple[int, bytes, str]], report: VerifyReport) -> bytearray:
    hashes = bytearray()
    expected = 0
    for idx, stored_hash, body in rows:
        if idx != expected:
            report.findings.append(Finding(expected, f"entry {expected} is missing"))
            return hashes
        raw = body.encode("utf-8")
        try:
            # Floats and NaN are refused while decoding, so re-encoding needs no walk.
            doc = json.loads(raw, parse_float=_no_float, parse_constant=_no_float)
            canonical = canonical_bytes(doc) == raw
        except (ValueError, TypeError):
            doc, canonical = None, False
        if not canonical or not isinstance(doc, dict):
            report.findings.append(Finding(idx, f"entry {idx} is not canonical JSON"))
            return hashes
        if doc.get("index") != idx:
            report.findings.append(Finding(idx, f"entry {idx} carries index {doc.get('index')}"))
            return hashes
        h = leaf_hash(raw)
        if h != stored_hash:
            report.findings.append(Finding(idx, f"entry {idx} does not match its leaf hash"))
            return hashes
        hashes += h
        expected += 1
    report.entries = expected
    return hashes


def verify_rows(
    rows: Iterable[tuple[int, bytes, str]],
    notes: Iterable[str],
    *,
    gateway: tuple[str, SM2PublicKey],
    witnesses: Mapping[str, SM2PublicKey],
    origin: str | None = None,
) -> VerifyReport:
    report = VerifyReport()
    tree = MerkleTree.from_leaf_hashes(_leaves(rows, report))
    previous: tuple[int, bytes] | None = None
    for text in notes:
        report.checkpoints += 1
        try:
            note = SignedNote.parse(text)
            cp = note.checkpoint
        except NoteError as exc:
            report.findings.append(Finding(None, f"checkpoint {report.checkpoints}: {exc}"))
            continue
        start = previous[0] if previous else 0
        if origin is None:
            origin = cp.origin  # every checkpoint must name the same log
        if cp.origin != origin:
            report.findings.append(
                Finding(None, f"checkpoint at size {cp.size}: for another log ({cp.origin})")
            )
            continue
        checks = note.verified_by({gateway[0]: gateway[1], **witnesses})
        if not checks.pop(gateway[0]):
            report.findings.append(
                Finding(start, f"checkpoint at size {cp.size}: gateway signature invalid")
            )
            continue
        for name, good in checks.items():
            if good:
                report.cosignatures[name] = report.cosignatures.get(name, 0) + 1
            elif any(s.name == name for s in note.signatures):
                report.findings.append(
                    Finding(None, f"checkpoint at size {cp.size}: {name} cosignature invalid")
                )
        if cp.size > tree.size:
            report.findings.append(
                Finding(tree.size, f"log truncated: checkpoint covers {cp.size} entries")
            )
            continue
        if tree.root(cp.size) != cp.root:
            report.findings.append(
                Finding(start, f"entries {start}..{cp.size - 1} do not match the checkpoint")
            )
            continue
        if previous is not None and not verify_consistency(
            previous[0], cp.size, previous[1], cp.root, tree.consistency_proof(previous[0], cp.size)
        ):
            report.findings.append(Finding(start, f"checkpoint {cp.size} inconsistent"))
        previous = (cp.size, cp.root)
    return report


def verify_store(
    url: str,
    *,
    gateway: tuple[str, SM2PublicKey],
    witnesses: Mapping[str, SM2PublicKey],
    origin: str | None = None,
) -> VerifyReport:
    """Verify the log at ``url``. Checkpoints must name ``origin``, by default the origin
    stored with the log. Raises :class:`AuditLogMissing` if there is no log at ``url``."""
    parsed = make_url(url)
    shown = parsed.render_as_string(hide_password=True)
    if (
        parsed.get_backend_name() == "sqlite"
        and parsed.database not in (None, "", ":memory:")
        and not Path(parsed.database).exists()
    ):
        raise AuditLogMissing(f"no audit log at {parsed.database}")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(schema.entries.name):
                raise AuditLogMissing(f"no audit log in {shown}")
            if origin is None:
                origin = stored_origin(conn)
            e = schema.entries
            rows = (
                (int(i), bytes(h), body)
                for i, h, body in conn.execution_options(yield_per=20_000).execute(
                    select(e.c.idx, e.c.leaf_hash, e.c.entry).order_by(e.c.idx)
                )
            )
            notes = conn.execute(
                select(schema.checkpoints.c.note).order_by(schema.checkpoints.c.size)
            ).scalars()
            report = verify_rows(
                rows, list(notes), gateway=gateway, witnesses=witnesses, origin=origin
            )
    finally:
        engine.dispose()
    return report
