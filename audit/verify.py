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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import make_url

from tongban.primitives.errors import NotFound, TongbanError
from tongban.primitives.gm import SM2PublicKey

from . import schema
from .log import stored_origin
from .merkle import MerkleTree, verify_consistency
from .note import NoteError, SignedNote
from .rows import ROW_FIELDS, check_row

__all__ = [
    "AuditLogMissing",
    "Finding",
    "VerifyReport",
    "ask_witnesses",
    "verify_rows",
    "verify_store",
]

MAX_FINDINGS = 20


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
    #: The size each witness says it cosigned last (when the witnesses were asked).
    witnessed: dict[str, int] = field(default_factory=dict)
    #: Findings beyond the first MAX_FINDINGS (counted, not listed).
    more: int = 0

    def add(self, finding: Finding) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.more += 1

    def explained(self, size: int) -> bool:
        """A checkpoint over ``size`` entries fails because of an entry already reported."""
        return any(f.index is not None and f.index < size for f in self.findings)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def cause(self) -> str | None:
        """One line: the finding at the first bad index (else the first finding)."""
        if not self.findings:
            return None
        first = self.first_bad_index
        for f in self.findings:
            if f.index == first:
                return f.problem
        return self.findings[0].problem

    @property
    def first_bad_index(self) -> int | None:
        indexes = [f.index for f in self.findings if f.index is not None]
        return min(indexes) if indexes else None


def _leaves(rows: Iterable[tuple[Any, ...]], report: VerifyReport) -> bytearray:
    """Every row checked against its own entry (rows.py), without stopping at the first
    bad one: the tree is built from the entries' bytes, so one edited entry is one finding
    and the checkpoints after it are "explained" rather than each reported. Only a gap in
    the indexes ends the walk (nothing after it has a place in the tree)."""
    hashes = bytearray()
    expected = 0
    for row in rows:
        idx, stored_hash, body = int(row[0]), bytes(row[1]), row[2]
        columns = dict(zip(ROW_FIELDS, row[3:], strict=False)) if len(row) > 3 else None
        if idx != expected:
            report.add(Finding(expected, f"entry {expected} is missing"))
            break
        leaf, _doc, problem = check_row(idx, body, stored_hash, columns)
        if problem is not None:
            report.add(Finding(idx, problem))
        hashes += leaf
        expected += 1
    report.entries = expected
    return hashes


def _witnessed(
    notes: Mapping[str, str],
    tree: MerkleTree,
    report: VerifyReport,
    gateway: tuple[str, SM2PublicKey],
    witnesses: Mapping[str, SM2PublicKey],
    origin: str | None,
) -> None:
    """The checkpoints each witness says it cosigned last: the log must reach and match
    each, whatever the store's own checkpoint table says (a truncated log whose
    checkpoints were deleted with its tail is caught here)."""
    for name, text in sorted(notes.items()):
        try:
            note = SignedNote.parse(text)
        except NoteError as exc:
            report.add(Finding(None, f"witness {name}'s checkpoint: {exc}"))
            continue
        cp = note.checkpoint
        checks = note.verified_by({gateway[0]: gateway[1], name: witnesses[name]})
        if not (checks[gateway[0]] and checks[name]) or (origin and cp.origin != origin):
            report.add(Finding(None, f"witness {name}'s checkpoint does not verify"))
            continue
        report.witnessed[name] = cp.size
        if cp.size > tree.size:
            report.add(
                Finding(
                    tree.size,
                    f"log truncated: witness {name} cosigned {cp.size} entries, the log has "
                    f"{tree.size}",
                )
            )
        elif tree.root(cp.size) != cp.root and not report.explained(cp.size):
            report.add(Finding(0, f"the log does not match what witness {name} cosigned"))


def _signatures(
    note: SignedNote,
    start: int,
    gateway: tuple[str, SM2PublicKey],
    witnesses: Mapping[str, SM2PublicKey],
    report: VerifyReport,
) -> bool:
    """Count the good cosignatures, report the bad; False if the gateway's own is bad."""
    size = note.checkpoint.size
    checks = note.verified_by({gateway[0]: gateway[1], **witnesses})
    if not checks.pop(gateway[0]):
        report.add(Finding(start, f"checkpoint at size {size}: gateway signature invalid"))
        return False
    for name, good in checks.items():
        if good:
            report.cosignatures[name] = report.cosignatures.get(name, 0) + 1
        elif any(s.name == name for s in note.signatures):
            report.add(Finding(None, f"checkpoint at size {size}: {name} cosignature invalid"))
    return True


def verify_rows(
    rows: Iterable[tuple[Any, ...]],
    notes: Iterable[str],
    *,
    gateway: tuple[str, SM2PublicKey],
    witnesses: Mapping[str, SM2PublicKey],
    origin: str | None = None,
    witnessed: Mapping[str, str] | None = None,
) -> VerifyReport:
    """``rows`` are ``(index, leaf hash, entry[, query columns in ROW_FIELDS order])``;
    ``notes`` the stored checkpoints by size; ``witnessed`` each witness's last cosigned
    checkpoint, as it reports it (``GET /v1/witness/checkpoint``)."""
    report = VerifyReport()
    tree = MerkleTree.from_leaf_hashes(_leaves(rows, report))
    previous: tuple[int, bytes] | None = None
    truncated: tuple[int, int] | None = None  # (largest checkpoint size, log size)
    for text in notes:
        report.checkpoints += 1
        try:
            note = SignedNote.parse(text)
            cp = note.checkpoint
        except NoteError as exc:
            report.add(Finding(None, f"checkpoint {report.checkpoints}: {exc}"))
            continue
        start = previous[0] if previous else 0
        if origin is None:
            origin = cp.origin  # every checkpoint must name the same log
        if cp.origin != origin:
            report.add(
                Finding(None, f"checkpoint at size {cp.size}: for another log ({cp.origin})")
            )
            continue
        if not _signatures(note, start, gateway, witnesses, report):
            continue
        if cp.size > tree.size:
            truncated = (cp.size, tree.size)
            continue
        if tree.root(cp.size) != cp.root:
            if not report.explained(cp.size):
                report.add(
                    Finding(start, f"entries {start}..{cp.size - 1} do not match the checkpoint")
                )
            continue
        if previous is not None and not verify_consistency(
            previous[0], cp.size, previous[1], cp.root, tree.consistency_proof(previous[0], cp.size)
        ):
            report.add(Finding(start, f"checkpoint {cp.size} inconsistent"))
        previous = (cp.size, cp.root)
    if truncated is not None:
        report.add(
            Finding(
                truncated[1],
                f"log truncated: a checkpoint covers {truncated[0]} entries, the log has "
                f"{truncated[1]}",
            )
        )
    if witnessed:
        _witnessed(witnessed, tree, report, gateway, witnesses, origin)
    return report


def ask_witnesses(
    names: Iterable[str], fetch: Callable[[str], tuple[int, bytes]]
) -> tuple[dict[str, str], dict[str, str]]:
    """Each witness's last cosigned checkpoint, through ``fetch(name) -> (status, body)``
    (``GET /v1/witness/checkpoint``): ``(notes by witness, why not by witness)``. A
    witness that has cosigned nothing answers 404, which is no note and no failure."""
    notes: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name in names:
        try:
            status, body = fetch(name)
        except TongbanError as exc:
            missing[name] = exc.detail or exc.title
            continue
        if status == 404:
            continue
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        note = doc.get("note") if isinstance(doc, dict) else None
        if status != 200 or not isinstance(note, str):
            missing[name] = f"answered {status} without a checkpoint"
            continue
        notes[name] = note
    return notes, missing


def verify_store(
    url: str,
    *,
    gateway: tuple[str, SM2PublicKey],
    witnesses: Mapping[str, SM2PublicKey],
    origin: str | None = None,
    witnessed: Mapping[str, str] | None = None,
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
                tuple(r)
                for r in conn.execution_options(yield_per=20_000).execute(
                    select(
                        e.c.idx, e.c.leaf_hash, e.c.entry, *(e.c[f] for f in ROW_FIELDS)
                    ).order_by(e.c.idx)
                )
            )
            notes = conn.execute(
                select(schema.checkpoints.c.note).order_by(schema.checkpoints.c.size)
            ).scalars()
            report = verify_rows(
                rows,
                list(notes),
                gateway=gateway,
                witnesses=witnesses,
                origin=origin,
                witnessed=witnessed,
            )
    finally:
        engine.dispose()
    return report
