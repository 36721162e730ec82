"""The offline verifier and ``tongban audit verify``: a clean log passes; each kind of
tampering (altered, deleted, swapped, truncated entries; forged checkpoints) is reported
with the first bad index."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_audit_merkle import sm3
from tongban.adapters.client import InProcessTransport
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.store import DepartmentStore
from tongban.adapters.witness import MetaWitnessState, Witness
from tongban.audit.canonical import canonical_json
from tongban.audit.log import AuditLog
from tongban.audit.note import Checkpoint, SignedNote, sign_line
from tongban.audit.vault import Pseudonymizer
from tongban.audit.verify import VerifyReport, verify_store
from tongban.cli import main
from tongban.config import Settings
from tongban.gateway.checkpoints import Checkpointer
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id

ENTRIES = 300
CHECKPOINTS_AT = (50, 120, 200, 300)
WITNESSES = ("health", "police")
SUBJECT = make_id("110105", dt.date(1990, 5, 17), 42)


def build_data_dir(data_dir: Path) -> None:
    """A data directory laid out like the demo's: DIR/keys, DIR/audit.db, witnesses'
    state in DIR/departments/<name>.db."""
    settings = Settings(data_dir=data_dir)
    keys = KeyRing(settings.keys_dir)
    gateway_key = keys.ensure("gateway")
    for name in WITNESSES:
        keys.ensure(name)
    pseudonyms = Pseudonymizer(keys.secret("pseudonym", 32), keys.secret("vault", 16))
    log = AuditLog(
        settings.audit_store_url(), pseudonyms, origin=settings.origin, create=True
    ).open()
    (data_dir / "departments").mkdir()
    stores = {
        name: DepartmentStore(DEPARTMENTS[name], settings.store_url(name)) for name in WITNESSES
    }
    witnesses = {}
    for name, store in stores.items():
        store.create_schema(indexes=False)
        witnesses[name] = Witness(
            name,
            keys.private(name),
            origin=settings.origin,
            gateway_name=settings.gateway_issuer,
            gateway_key=gateway_key.public_key,
            state=MetaWitnessState(store),
        )
    checkpointer = Checkpointer(
        log,
        gateway_key,
        name=settings.gateway_issuer,
        witnesses={n: keys.public(n) for n in WITNESSES},
        transport=InProcessTransport({}, witnesses),
    )
    try:
        for i in range(ENTRIES):
            log.append(
                {
                    "kind": ("check", "consent", "policy_change")[i % 3],
                    "time": f"2025-03-01T{i // 60:02d}:{i % 60:02d}:00.000Z",
                    "requester": f"insurer-{i % 4}",
                    "claim": "alive",
                    "decision": {"allowed": i % 5 != 0, "reason": "ok"},
                    "note": "审计",
                },
                subject_id=SUBJECT if i % 7 == 0 else None,
            )
            if i + 1 in CHECKPOINTS_AT:
                note = checkpointer.checkpoint()
                assert len(note.signatures) == 1 + len(WITNESSES)
    finally:
        log.close()
        for store in stores.values():
            store.dispose()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("audit-verify") / "data"
    data_dir.mkdir()
    build_data_dir(data_dir)
    return data_dir


@pytest.fixture
def data_dir(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(template, target)
    return target


def verify(data_dir: Path, *, witnesses: tuple[str, ...] = WITNESSES) -> VerifyReport:
    settings = Settings(data_dir=data_dir)
    keys = KeyRing(settings.keys_dir)
    return verify_store(
        settings.audit_store_url(),
        gateway=(settings.gateway_issuer, keys.public("gateway")),
        witnesses={w: keys.public(w) for w in witnesses},
    )


def sql(data_dir: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(data_dir / "audit.db") as conn:
        conn.execute(statement, params)


def row(data_dir: Path, index: int) -> tuple[str, bytes]:
    with sqlite3.connect(data_dir / "audit.db") as conn:
        entry, leaf = conn.execute(
            "SELECT entry, leaf_hash FROM audit_entries WHERE idx = ?", (index,)
        ).fetchone()
    return entry, bytes(leaf)


def note_at(data_dir: Path, size: int) -> SignedNote:
    with sqlite3.connect(data_dir / "audit.db") as conn:
        (text,) = conn.execute(
            "SELECT note FROM audit_checkpoints WHERE size = ?", (size,)
        ).fetchone()
    return SignedNote.parse(text)


def set_note(data_dir: Path, size: int, note: SignedNote) -> None:
    sql(data_dir, "UPDATE audit_checkpoints SET note = ? WHERE size = ?", note.text(), size)


def problems(report: VerifyReport) -> str:
    return " | ".join(f.problem for f in report.findings)


# --- a clean log -----------------------------------------------------------------------


def test_clean_log_verifies(data_dir: Path):
    report = verify(data_dir)
    assert report.ok, problems(report)
    assert report.entries == ENTRIES
    assert report.checkpoints == len(CHECKPOINTS_AT)
    assert report.cosignatures == {w: len(CHECKPOINTS_AT) for w in WITNESSES}
    assert report.first_bad_index is None


def test_erasing_the_vault_keeps_the_log_verifiable(data_dir: Path):
    sql(data_dir, "DELETE FROM pseudonym_vault")
    assert verify(data_dir).ok


# --- tampered entries ------------------------------------------------------------------


def _alter_requester(data_dir: Path, index: int, *, rehash: bool) -> None:
    entry, _ = row(data_dir, index)
    doc = json.loads(entry)
    doc["requester"] = "someone-else"
    altered = canonical_json(doc)
    leaf = sm3(b"\x00" + altered) if rehash else row(data_dir, index)[1]
    sql(
        data_dir,
        "UPDATE audit_entries SET entry = ?, leaf_hash = ?, requester = ? WHERE idx = ?",
        altered.decode(),
        leaf,
        "someone-else",
        index,
    )


def _swap(data_dir: Path, a: int, b: int) -> None:
    (ea, ha), (eb, hb) = row(data_dir, a), row(data_dir, b)
    sql(data_dir, "UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE idx = ?", eb, hb, a)
    sql(data_dir, "UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE idx = ?", ea, ha, b)


def _swap_and_reindex(data_dir: Path, a: int, b: int) -> None:
    """A careful forger: swaps two entries, rewrites their embedded indexes and leaf
    hashes so every row is self-consistent. Only the signed checkpoint catches it."""
    (ea, _), (eb, _) = row(data_dir, a), row(data_dir, b)
    for index, text in ((a, eb), (b, ea)):
        doc = json.loads(text)
        doc["index"] = index
        body = canonical_json(doc)
        sql(
            data_dir,
            "UPDATE audit_entries SET entry = ?, leaf_hash = ? WHERE idx = ?",
            body.decode(),
            sm3(b"\x00" + body),
            index,
        )


TAMPERS: dict[str, tuple[Callable[[Path], None], int, str]] = {
    "altered entry": (lambda d: _alter_requester(d, 137, rehash=False), 137, "leaf hash"),
    "altered entry, rehashed": (
        lambda d: _alter_requester(d, 137, rehash=True),
        120,
        "do not match the checkpoint",
    ),
    "altered last entry": (lambda d: _alter_requester(d, 299, rehash=False), 299, "leaf hash"),
    "non-canonical entry": (
        lambda d: sql(
            d, "UPDATE audit_entries SET entry = replace(entry, ',', ', ') WHERE idx = 64"
        ),
        64,
        "not canonical",
    ),
    "entry not JSON": (
        lambda d: sql(d, "UPDATE audit_entries SET entry = 'garbage' WHERE idx = 3"),
        3,
        "not canonical",
    ),
    "altered leaf hash": (
        lambda d: sql(d, "UPDATE audit_entries SET leaf_hash = ? WHERE idx = 42", sm3(b"x")),
        42,
        "leaf hash",
    ),
    "deleted entry": (
        lambda d: sql(d, "DELETE FROM audit_entries WHERE idx = 100"),
        100,
        "missing",
    ),
    "deleted first entry": (
        lambda d: sql(d, "DELETE FROM audit_entries WHERE idx = 0"),
        0,
        "missing",
    ),
    "swapped entries": (lambda d: _swap(d, 50, 80), 50, "carries index 80"),
    "swapped adjacent entries": (lambda d: _swap(d, 211, 210), 210, "carries index 211"),
    # Re-indexed and rehashed, but the query columns still describe the old rows.
    "swapped and re-indexed": (
        lambda d: _swap_and_reindex(d, 60, 90),
        60,
        "requester column differs",
    ),
    "renumbered entry": (
        lambda d: sql(d, "UPDATE audit_entries SET idx = 1000 WHERE idx = 7"),
        7,
        "missing",
    ),
    "truncated log": (
        lambda d: sql(d, "DELETE FROM audit_entries WHERE idx >= 250"),
        250,
        "truncated",
    ),
    "truncated below two checkpoints": (
        lambda d: sql(d, "DELETE FROM audit_entries WHERE idx >= 150"),
        150,
        "truncated",
    ),
}


@pytest.mark.parametrize("case", TAMPERS)
def test_tampering_is_reported_at_the_first_bad_index(data_dir: Path, case: str):
    tamper, first_bad, message = TAMPERS[case]
    tamper(data_dir)
    report = verify(data_dir)
    assert not report.ok
    assert report.first_bad_index == first_bad, problems(report)
    assert message in problems(report)


# --- forged checkpoints ----------------------------------------------------------------


def _resign(note: SignedNote, body: str, name: str, key: SM2PrivateKey) -> SignedNote:
    """The note with ``name``'s signature replaced by ``key``'s over ``body``."""
    sigs = tuple(sign_line(body, name, key) if s.name == name else s for s in note.signatures)
    return SignedNote(body, sigs)


def test_checkpoint_signed_by_another_key(data_dir: Path):
    intruder = SM2PrivateKey.generate()
    note = note_at(data_dir, 200)
    set_note(data_dir, 200, _resign(note, note.body, "tongban-gateway", intruder))
    report = verify(data_dir)
    assert not report.ok
    assert "checkpoint at size 200: gateway signature invalid" in problems(report)
    assert report.first_bad_index == 120  # the entries since the last good checkpoint


def test_checkpoint_with_a_modified_root(data_dir: Path):
    note = note_at(data_dir, 120)
    cp = note.checkpoint
    body = Checkpoint(cp.origin, cp.size, sm3(b"another root")).body()
    set_note(data_dir, 120, SignedNote(body, note.signatures))  # old signatures, new body
    report = verify(data_dir)
    assert not report.ok
    assert "checkpoint at size 120: gateway signature invalid" in problems(report)
    assert report.first_bad_index == 50


def test_checkpoint_with_a_modified_size(data_dir: Path):
    text = note_at(data_dir, 300).text()
    sql(
        data_dir,
        "UPDATE audit_checkpoints SET note = ? WHERE size = 300",
        text.replace("\n300\n", "\n299\n"),
    )
    report = verify(data_dir)
    assert not report.ok and report.first_bad_index == 200


def test_checkpoint_signed_by_the_gateway_over_a_wrong_root(data_dir: Path):
    """A genuinely signed note that disagrees with the log (evidence of a split view)."""
    gateway = KeyRing(data_dir / "keys").private("gateway")
    note = note_at(data_dir, 200)
    body = Checkpoint(note.checkpoint.origin, 200, sm3(b"the other view")).body()
    set_note(data_dir, 200, SignedNote(body, (sign_line(body, "tongban-gateway", gateway),)))
    report = verify(data_dir)
    assert not report.ok
    assert "entries 120..199 do not match the checkpoint" in problems(report)
    assert report.first_bad_index == 120


def test_forged_cosignature_is_reported(data_dir: Path):
    note = note_at(data_dir, 50)
    set_note(data_dir, 50, _resign(note, note.body, "police", SM2PrivateKey.generate()))
    report = verify(data_dir)
    assert not report.ok
    assert problems(report) == "checkpoint at size 50: police cosignature invalid"
    assert report.cosignatures == {"health": 4, "police": 3}
    assert report.first_bad_index is None


def test_malformed_checkpoint_is_reported(data_dir: Path):
    sql(data_dir, "UPDATE audit_checkpoints SET note = 'not a note' WHERE size = 120")
    report = verify(data_dir)
    assert not report.ok
    assert "checkpoint 2:" in problems(report)


def test_unknown_witness_signatures_are_not_counted(data_dir: Path):
    report = verify(data_dir, witnesses=("health",))
    assert report.ok and report.cosignatures == {"health": 4}


def test_every_checkpoint_must_name_the_origin_stored_with_the_log(data_dir: Path):
    """Even the first checkpoint: the log's name is the one stored when it was created,
    not whatever the first note says (a genuinely signed note for another log)."""
    gateway = KeyRing(data_dir / "keys").private("gateway")
    note = note_at(data_dir, 50)
    cp = note.checkpoint
    body = Checkpoint("127.0.0.1:8090/audit", cp.size, cp.root).body()
    set_note(data_dir, 50, SignedNote(body, (sign_line(body, "tongban-gateway", gateway),)))

    report = verify(data_dir)

    assert not report.ok
    assert problems(report) == "checkpoint at size 50: for another log (127.0.0.1:8090/audit)"


def test_a_log_without_a_stored_origin_is_named_by_its_first_checkpoint(data_dir: Path):
    sql(data_dir, "DROP TABLE audit_meta")  # a log from before origins were stored
    assert verify(data_dir).ok


# --- the command line ------------------------------------------------------------------


def _cli(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["audit", "verify", "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "TONGBAN_DATA_DIR",
        "TONGBAN_AUDIT_URL",
        "TONGBAN_PUBLIC_URL",
        "TONGBAN_LOG_ORIGIN",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_env")
def test_cli_clean_then_tampered(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    code, summary = _cli(data_dir, capsys)
    assert code == 0, summary
    assert summary["ok"] is True
    assert summary["entries"] == ENTRIES
    assert summary["checkpoints"] == len(CHECKPOINTS_AT)
    assert summary["cosignatures"] == {w: len(CHECKPOINTS_AT) for w in WITNESSES}
    assert summary["first_bad_index"] is None and summary["findings"] == []

    _swap(data_dir, 77, 78)
    code, summary = _cli(data_dir, capsys)
    assert code == 1
    assert summary["ok"] is False and summary["first_bad_index"] == 77
    assert any("77" in f for f in summary["findings"])


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("case", ["deleted entry", "truncated log", "altered entry"])
def test_cli_names_the_first_bad_index(
    data_dir: Path, capsys: pytest.CaptureFixture[str], case: str
):
    tamper, first_bad, _ = TAMPERS[case]
    tamper(data_dir)
    code, summary = _cli(data_dir, capsys)
    assert (code, summary["first_bad_index"]) == (1, first_bad)


@pytest.mark.usefixtures("clean_env")
def test_cli_reports_a_forged_checkpoint(data_dir: Path, capsys: pytest.CaptureFixture[str]):
    note = note_at(data_dir, 300)
    blob = base64.b64decode(note.signatures[0].line().split(" ")[2])
    forged_sig = blob[:4] + bytes(64)
    text = note.text().replace(
        note.signatures[0].line(),
        f"\u2014 tongban-gateway {base64.b64encode(forged_sig).decode()}\n",
    )
    sql(data_dir, "UPDATE audit_checkpoints SET note = ? WHERE size = 300", text)
    code, summary = _cli(data_dir, capsys)
    assert code == 1 and summary["ok"] is False
    assert summary["first_bad_index"] == 200
    assert "gateway signature invalid" in " ".join(summary["findings"])


@pytest.mark.usefixtures("clean_env")
def test_cli_on_an_empty_directory_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    code = main(["audit", "verify", "--data-dir", str(tmp_path)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"tongban: no audit log at {tmp_path}/audit.db: ")
    assert "tongban gateway serve --data-dir" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("clean_env")
def test_cli_without_the_gateway_key_names_keys_init(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
):
    (data_dir / "keys" / "gateway.jwk.json").unlink()

    code = main(["audit", "verify", "--data-dir", str(data_dir)])

    assert code == 2
    assert capsys.readouterr().err == (
        f"tongban: no key for gateway in {data_dir}/keys: "
        f"run `tongban keys init --data-dir {data_dir}`\n"
    )
