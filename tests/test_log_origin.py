"""The audit log keeps the origin it was created with, on SQLite and PostgreSQL: a gateway
restarted on another port (as ``tongban demo --port`` does) keeps signing checkpoints for
one log, its witnesses keep cosigning, and ``tongban audit verify`` passes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import reset_chain
from tongban.adapters.client import InProcessTransport
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.store import DepartmentStore
from tongban.audit import schema
from tongban.audit.log import AuditLog, read_origin
from tongban.audit.note import Checkpoint, SignedNote, sign_line
from tongban.audit.vault import Pseudonymizer
from tongban.cli import main
from tongban.config import Settings
from tongban.demo import demo_log_origin
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PrivateKey
from tongban.provision import init_data_dir, migrate
from tongban.wiring import build_adapter, build_gateway

WITNESSES = ("health", "police")


def _pseudonyms() -> Pseudonymizer:
    return Pseudonymizer(b"p" * 32, b"v" * 16)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    url: str = request.getfixturevalue("pg_scratch_url")
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS audit_entries CASCADE"))
    reset_chain(engine, "audit")
    engine.dispose()
    yield url


def _entry(i: int) -> dict[str, object]:
    return {"kind": "check", "time": f"2025-03-01T00:00:{i:02d}.000Z", "requester": "edu"}


def test_a_reopened_log_keeps_its_origin(audit_url: str, caplog: pytest.LogCaptureFixture):
    assert read_origin(audit_url) is None  # no log yet, and looking creates none
    log = AuditLog(audit_url, _pseudonyms(), origin="127.0.0.1:8080/audit", create=True).open()
    log.append(_entry(0))
    log.close()

    with caplog.at_level(logging.WARNING, logger="tongban.audit"):
        reopened = AuditLog(
            audit_url, _pseudonyms(), origin="127.0.0.1:8090/audit", create=True
        ).open()
    try:
        assert reopened.origin == "127.0.0.1:8080/audit"
        assert reopened.size == 1
    finally:
        reopened.close()
    assert read_origin(audit_url) == "127.0.0.1:8080/audit"
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:8090/audit" in warning and "ignored" in warning


def test_a_log_from_before_stored_origins_takes_its_first_checkpoints(audit_url: str):
    key = SM2PrivateKey.generate()
    log = AuditLog(audit_url, _pseudonyms(), origin="old.example/audit", create=True).open()
    try:
        log.append(_entry(0))
        body = Checkpoint("old.example/audit", 1, log.root(1)).body()
        log.store_checkpoint(SignedNote(body, (sign_line(body, "tongban-gateway", key),)))
    finally:
        log.close()
    engine = create_engine(audit_url)
    with engine.begin() as conn:  # what a log made before this change looks like
        conn.execute(schema.meta.delete())
    engine.dispose()

    reopened = AuditLog(audit_url, _pseudonyms(), origin="new.example/audit", create=True).open()
    try:
        assert reopened.origin == "old.example/audit"
    finally:
        reopened.close()


def _department_stores(data: Path) -> None:
    (data / "departments").mkdir(parents=True, exist_ok=True)
    for name in WITNESSES:
        store = DepartmentStore(DEPARTMENTS[name], Settings(data_dir=data).store_url(name))
        store.create_schema(indexes=False)
        store.dispose()


def _run_gateway_once(data: Path, audit_url: str, port: int) -> str:
    """What one ``tongban demo --port PORT`` run does to the log: every process gets the
    log's origin as the demo decides it; the gateway starts (a checkpoint), serves an
    entry, checkpoints again, stops. Returns the origin its checkpoints named."""
    settings = Settings(
        data_dir=data,
        public_url=f"http://127.0.0.1:{port}",
        audit_url=audit_url,
        checkpoint_interval=3600,
    )
    settings = settings.with_(log_origin=demo_log_origin(settings))
    cores, witnesses = {}, {}
    for name in WITNESSES:
        cores[name], witnesses[name] = build_adapter(settings, name)
    keys = KeyRing(settings.keys_dir)
    migrate(settings)
    gateway = build_gateway(
        settings,
        transport=InProcessTransport(cores, witnesses),
        department_keys={name: keys.public(name) for name in WITNESSES},
    )
    try:
        assert gateway.audit is not None and gateway.checkpointer is not None
        gateway.audit.append(_entry(port % 60))
        note = gateway.checkpointer.checkpoint()
        assert {s.name for s in note.signatures} == {"tongban-gateway", *WITNESSES}
        return note.checkpoint.origin
    finally:
        gateway.close()
        for core in cores.values():
            core.evaluator.store.dispose()


def test_a_gateway_restarted_on_another_port_keeps_one_verifiable_log(
    audit_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    data = tmp_path / "data"
    first = init_data_dir(data, Settings(data_dir=data)).clients
    _department_stores(data)

    origins = [_run_gateway_once(data, audit_url, port) for port in (8080, 8090, 8091)]
    again = init_data_dir(data, Settings(data_dir=data)).clients

    assert origins == ["127.0.0.1:8080/audit"] * 3
    assert again == first  # a restart changes nobody's credentials
    for name in ("TONGBAN_DATA_DIR", "TONGBAN_PUBLIC_URL", "TONGBAN_LOG_ORIGIN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TONGBAN_AUDIT_URL", audit_url)
    capsys.readouterr()
    code = main(["audit", "verify", "--data-dir", str(data)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"ok": true' in out and "another log" not in out
