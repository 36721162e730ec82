"""Backups (issue 18, part 8): ``tongban backup`` while the gateway serves, ``tongban
restore`` into a fresh directory, then ``audit verify`` passes, the restored gateway answers
and its next checkpoint is cosigned by the same witnesses. A backup older than what a
witness cosigned is refused naming the witness; a corrupt, truncated, foreign, newer or
wrongly unlocked file is refused in one line with nothing written; no key in clear."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import secrets
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tongban.adapters.client import witnessed
from tongban.adapters.departments import DEPARTMENTS
from tongban.audit import schema as audit_schema
from tongban.audit.log import AuditLog
from tongban.audit.verify import ask_witnesses
from tongban.backup import (
    Backup,
    BackupRefused,
    create_backup,
    open_backup,
    read_passphrase,
    restore_backup,
)
from tongban.cli import main
from tongban.config import Settings
from tongban.gateway.app import create_app
from tongban.gateway.checkpoints import Checkpointer
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PrivateKey, hmac_sm3, sm3
from tongban.wiring import build_gateway

from .conftest import PG_URL, Generated
from .gateway_harness import PUBLIC_URL, Harness, build_harness

PASSPHRASE = "correct horse battery staple"
Made = tuple[Path, Harness, dict[str, Any]]
FAST = 2**10  # scrypt cost for backups made by the tests' own calls (the CLI uses the real one)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [k for k in os.environ if k.startswith("TONGBAN_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("TONGBAN_BACKUP_PASSPHRASE", PASSPHRASE)


def _serving(tmp: Path, population: Generated, keys: dict[str, SM2PrivateKey],
             stores: dict[str, str]) -> Harness:  # fmt: skip
    """A gateway with its witnesses' public keys in DIR/keys (so cosignatures are checked
    on restore and by audit verify), some checks done and one cosigned checkpoint."""
    h = build_harness(tmp, population.urls, keys, **stores)
    ring = KeyRing(h.settings.keys_dir)
    ring.ensure("gateway")  # its public JWK too, as `tongban keys init` leaves it
    for name in DEPARTMENTS:
        jwk = keys[name].public_key.to_jwk(kid=keys[name].public_key.key_id)
        (ring.directory / f"{name}.jwk.json").write_text(json.dumps(jwk))
    for row in population.subjects()[:5]:
        assert _check(h, h.client, row).status_code == 200
    _cp(h).checkpoint()
    return h


def _cp(h: Harness) -> Checkpointer:
    assert h.gateway.checkpointer is not None
    return h.gateway.checkpointer


def _log(h: Harness) -> AuditLog:
    assert h.gateway.audit is not None
    return h.gateway.audit


def _check(h: Harness, client: Any, row: dict[str, Any]) -> Any:
    body = {"subject": {"id_number": row["id_number"]}, "claim": "birth_registered",
            "purpose": "school_enrollment", "params": {}}  # fmt: skip
    return client.post("/v1/checks", json=body, headers=h.auth("edu-bureau"))


def _env_for(monkeypatch: pytest.MonkeyPatch, stores: dict[str, str]) -> None:
    """TONGBAN_* as a deployment on these stores would have them (for the CLI)."""
    for name in ("TONGBAN_GATEWAY_DB_URL", "TONGBAN_AUDIT_URL"):
        monkeypatch.delenv(name, raising=False)
    if stores:
        monkeypatch.setenv("TONGBAN_GATEWAY_DB_URL", stores["gateway_db_url"])
        monkeypatch.setenv("TONGBAN_AUDIT_URL", stores["audit_url"])


def _verify(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    code = main(["audit", "verify", "--data-dir", str(data_dir), "--offline"])
    printed = capsys.readouterr()
    assert printed.out, printed.err
    summary: dict[str, Any] = json.loads(printed.out)
    assert code == 0, summary
    return summary


def _restored(data_dir: Path, h: Harness) -> Harness:
    """A gateway on the restored directory, reaching the original's departments and
    witnesses (their memory of what they cosigned included)."""
    config = Settings(
        data_dir=data_dir, public_url=PUBLIC_URL, checkpoint_interval=3600, citizen_idp_demo=True
    )
    gateway = build_gateway(
        config,
        transport=_cp(h).transport,
        department_keys=_cp(h).witnesses,
        start=False,
    )
    app = create_app(gateway)
    return Harness(gateway, app, app.test_client(), config, h.idp, h.secrets, {})


# --- while serving, and back ------------------------------------------------------------


def test_backup_while_serving_restores_verifies_and_serves(
    tmp_path: Path,
    small_population: Generated,
    party_keys: dict[str, SM2PrivateKey],
    gateway_stores: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    h = _serving(tmp_path / "gw", small_population, party_keys, gateway_stores)
    rows = small_population.subjects()[5:45]
    h.token("edu-bureau")
    answers: dict[Any, Any] = {}
    started, backed_up = threading.Event(), threading.Event()
    failures: list[Any] = []

    def serve() -> None:  # until the backup is done, and at least once through the rows
        client = h.app.test_client()
        i = 0
        while i < len(rows) or not backed_up.is_set():
            row = rows[i % len(rows)]
            resp = _check(h, client, row)
            if resp.status_code != 200:
                failures.append(resp.get_json())
            answers[row["id_number"]] = resp.get_json().get("result")
            i += 1
            if i == 6:
                started.set()

    worker = threading.Thread(target=serve)
    worker.start()
    try:
        assert started.wait(30)
        _env_for(monkeypatch, gateway_stores)
        out = tmp_path / "backup.tar"
        code = main(["backup", "--data-dir", str(h.settings.data_dir), "--out", str(out)])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        made = json.loads(printed.out)
    finally:
        backed_up.set()
        worker.join(60)
    try:
        assert not failures
        # Taken mid-stream: after the first checks, before the last.
        assert 5 + 6 <= made["audit_entries"] < _log(h).size
        assert made["latest_checkpoint"] is not None
        # Restored into SQLite files of a fresh directory: from PostgreSQL, across dialects.
        _env_for(monkeypatch, {})
        new = tmp_path / "new"
        code = main(["restore", "--from", str(out), "--data-dir", str(new)])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        restored = json.loads(printed.out)
        assert restored["audit_entries"] == made["audit_entries"]
        summary = _verify(new, capsys)
        assert summary["entries"] == made["audit_entries"]
        assert summary["cosignatures"] == {d: summary["checkpoints"] for d in DEPARTMENTS}

        r = _restored(new, h)
        try:
            row = rows[0]
            resp = _check(r, r.client, row)
            assert resp.status_code == 200, resp.get_json()
            assert resp.get_json()["result"] == answers[row["id_number"]]
            assert resp.get_json()["audit_index"] == made["audit_entries"]
            note = _cp(r).checkpoint()
            assert note.checkpoint.size == made["audit_entries"] + 1
            assert {s.name for s in note.signatures} >= set(DEPARTMENTS)
            assert _cp(r).diverged is None
        finally:
            r.gateway.close()
        assert _verify(new, capsys)["entries"] == made["audit_entries"] + 1
        if gateway_stores:  # the serving gateway's PostgreSQL database: never, even forced
            config = tmp_path / "over.toml"
            url = gateway_stores["gateway_db_url"]
            config.write_text(f'gateway_db_url = "{url}"\naudit_url = "{url}"\n')
            argv = ["restore", "--from", str(out), "--data-dir", str(tmp_path / "over"),
                    "--config", str(config), "--force"]  # fmt: skip
            line = _one_line_refusal(capsys, argv)
            assert "has other sessions: is a gateway running on it?" in line
            assert not (tmp_path / "over").exists()
    finally:
        h.close()


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"tongban_test_{secrets.token_hex(4)}_restore"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def engine_of(url: str) -> Iterator[Any]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def _counts(gateway_url: str, audit_url: str) -> dict[str, int]:
    from tongban.migrations import model_metadata

    out = {}
    for chain, url in (("gateway", gateway_url), ("audit", audit_url)):
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                for t in model_metadata(chain).sorted_tables:
                    out[t.name] = int(
                        conn.execute(select(func.count()).select_from(t)).scalar_one()
                    )
        finally:
            engine.dispose()
    return out


def test_a_sqlite_backup_restores_into_postgresql(
    backup_file: Made,
    tmp_path: Path,
    fresh_pg: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    out, h, subject = backup_file
    config = tmp_path / "restored.toml"
    config.write_text(f'gateway_db_url = "{fresh_pg}"\naudit_url = "{fresh_pg}"\n')
    new = tmp_path / "new"
    argv = ["restore", "--from", str(out), "--data-dir", str(new), "--config", str(config)]
    assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    original = _counts(h.settings.gateway_store_url(), h.settings.audit_store_url())
    assert _counts(fresh_pg, fresh_pg) == original
    assert original["audit_entries"] > 0 and original["oauth_clients"] > 0
    monkeypatch.setenv("TONGBAN_AUDIT_URL", fresh_pg)
    assert _verify(new, capsys)["entries"] == original["audit_entries"]
    # The PostgreSQL copy serves too (the serial of policy_rules carried over).
    monkeypatch.delenv("TONGBAN_AUDIT_URL")
    settings = Settings(
        data_dir=new, public_url=PUBLIC_URL, gateway_db_url=fresh_pg, audit_url=fresh_pg,
        checkpoint_interval=3600, citizen_idp_demo=True,
    )  # fmt: skip
    gateway = build_gateway(
        settings,
        transport=_cp(h).transport,
        department_keys=_cp(h).witnesses,
        start=False,
    )
    try:
        app = create_app(gateway)
        r = Harness(gateway, app, app.test_client(), settings, h.idp, h.secrets, {})
        assert _check(r, r.client, subject).status_code == 200
    finally:
        gateway.close()
    assert _counts(fresh_pg, fresh_pg)["audit_entries"] == original["audit_entries"] + 1
    # Again over it, stopped (--force): dropped and reloaded in one transaction.
    assert _one_line_refusal(capsys, argv)  # not without --force
    assert main([*argv, "--force"]) == 0, capsys.readouterr().err
    assert _counts(fresh_pg, fresh_pg) == original
    # A failure after the databases are loaded, before anything is committed: nothing moves.
    with engine_of(fresh_pg) as pg:  # a row the failed restore must not take away
        pg.execute(text("INSERT INTO audit_meta (key, value) VALUES ('marker', 'kept')"))
    before = _digests(new)

    def fail(staging: Path, backup: Any) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr("tongban.backup._write_files", fail)
        line = _one_line_refusal(capsys, [*argv, "--force"])
    assert "No space left on device" in line
    assert _counts(fresh_pg, fresh_pg) == {**original, "audit_meta": original["audit_meta"] + 1}
    assert _digests(new) == before
    assert not list(new.glob(".restore-*"))


# --- one good backup, and what is done to it ---------------------------------------------


@pytest.fixture(scope="module")
def backup_file(
    tmp_path_factory: pytest.TempPathFactory,
    small_population: Generated,
    party_keys: dict[str, SM2PrivateKey],
) -> Iterator[tuple[Path, Harness, dict[str, Any]]]:
    """A backup of a serving gateway (still serving), and a subject it checked."""
    tmp = tmp_path_factory.mktemp("backup")
    h = _serving(tmp / "gw", small_population, party_keys, {})
    out = tmp / "backup.tar"
    create_backup(h.settings, out, PASSPHRASE.encode(), scrypt_n=FAST)
    try:
        yield out, h, dict(small_population.subjects()[0])
    finally:
        h.close()


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            assert fh is not None
            out[m.name] = fh.read()
        return out


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _rewritten(src: Path, dst: Path, change: Any, *, mac_key: bytes | None = None) -> None:
    """``src`` with its manifest changed by ``change`` and its digest recomputed (and its
    MAC, given the key): what a newer tongban, or a careful forger, would write."""
    members = _members(src)
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    body = json.dumps(manifest).encode()
    mac = json.loads(members["manifest.mac"])
    mac["sm3"] = sm3(body).hex()
    if mac_key is not None:
        mac["hmac_sm3"] = hmac_sm3(mac_key, body).hex()
    members["manifest.json"] = body
    members["manifest.mac"] = json.dumps(mac).encode()
    if isinstance(manifest.get("format"), str):
        members["tongban-backup"] = (manifest["format"] + "\n").encode()
    _write_tar(dst, members)


def _flip(src: Path, dst: Path, at: int) -> None:
    raw = bytearray(src.read_bytes())
    raw[at] ^= 0x01
    dst.write_bytes(bytes(raw))


def _bad(case: str, src: Path, dst: Path) -> None:
    raw = src.read_bytes()
    if case == "a flipped byte in a sealed member":
        members = _members(src)
        sealed = max((n for n in members if n.startswith("audit/")), key=lambda n: len(members[n]))
        _flip(src, dst, raw.index(members[sealed][:64]) + 40)
    elif case == "a flipped byte in the manifest":
        _flip(src, dst, raw.index(b'"format"') + 3)
    elif case == "truncated":
        dst.write_bytes(raw[: len(raw) * 2 // 3])
    elif case == "a foreign tar":
        _write_tar(dst, {"README": b"hello", "data.bin": secrets.token_bytes(5000)})
    elif case == "a zip":
        with zipfile.ZipFile(dst, "w") as z:
            z.writestr("manifest.json", "{}")
    elif case == "random bytes":
        dst.write_bytes(secrets.token_bytes(20000))
    elif case == "a newer format":
        _rewritten(src, dst, lambda m: m.update(format="tongban-backup/2"))
    elif case == "a manifest without its key derivation":
        _rewritten(src, dst, lambda m: m.pop("kdf"))
    elif case == "a forged manifest":  # digest recomputed, MAC not: the passphrase's key
        _rewritten(src, dst, lambda m: m["audit"].update(size=1))
    else:
        raise AssertionError(case)


BAD = {
    "a flipped byte in a sealed member": "corrupt",
    "a flipped byte in the manifest": "corrupt (its manifest does not match its digest)",
    "truncated": "truncated",
    "a foreign tar": "not a tongban backup",
    "a zip": "not a tongban backup",
    "random bytes": "not a tongban backup",
    "a newer format": "format tongban-backup/2 is not tongban-backup/1",
    "a manifest without its key derivation": "not a tongban backup (its manifest is malformed)",
    "a forged manifest": "wrong passphrase or not a tongban backup",
}


def _one_line_refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tongban: "), err
    return lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_backup_is_refused_in_one_line_and_nothing_is_written(
    backup_file: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    case: str,
):  # fmt: skip
    bad = tmp_path / "bad.tar"
    _bad(case, backup_file[0], bad)
    new = tmp_path / "new"
    line = _one_line_refusal(capsys, ["restore", "--from", str(bad), "--data-dir", str(new)])
    assert BAD[case] in line
    assert not new.exists()


def test_a_wrong_passphrase_is_one_line(
    backup_file: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):  # fmt: skip
    monkeypatch.setenv("TONGBAN_BACKUP_PASSPHRASE", "not the passphrase at all")
    new = tmp_path / "new"
    argv = ["restore", "--from", str(backup_file[0]), "--data-dir", str(new)]
    assert _one_line_refusal(capsys, argv) == "tongban: wrong passphrase or not a tongban backup"
    assert not new.exists()


def test_a_backup_from_newer_code_is_refused(backup_file: Made, tmp_path: Path):
    from tongban.backup import _Keys

    src = backup_file[0]
    manifest = json.loads(_members(src)["manifest.json"])
    keys = _Keys.derive(PASSPHRASE.encode(), manifest["kdf"])
    newer = tmp_path / "newer.tar"
    _rewritten(
        src, newer, lambda m: m["chains"]["audit"].update(revision="audit_9999"), mac_key=keys.mac
    )
    with pytest.raises(BackupRefused, match="revision audit_9999, which this code does not know"):
        restore_backup(newer, Settings(data_dir=tmp_path / "new"), PASSPHRASE.encode())
    assert not (tmp_path / "new").exists()


def test_an_audit_entry_altered_under_the_passphrase_is_refused(backup_file: Made, tmp_path: Path):
    """Someone holding the passphrase re-seals a changed entry and fixes every digest and
    the MAC: the entries no longer recompute to the log, and the restore says where."""
    from tongban.backup import _ad, _Keys
    from tongban.primitives.gm import sm4_decrypt, sm4_encrypt

    members = _members(backup_file[0])
    manifest = json.loads(members["manifest.json"])
    keys = _Keys.derive(PASSPHRASE.encode(), manifest["kdf"])
    name = "audit/audit_entries.00000"
    ad = _ad(manifest["backup_id"], name)
    lines = gzip.decompress(sm4_decrypt(keys.seal, members[name], ad)).splitlines()
    row = json.loads(lines[2])
    row[2] = row[2].replace('"edu-bureau"', '"insurer-a"')  # the entry's requester
    lines[2] = json.dumps(row).encode()
    members[name] = sm4_encrypt(keys.seal, gzip.compress(b"\n".join(lines) + b"\n"), ad)
    manifest["files"][name] = {"sm3": sm3(members[name]).hex(), "bytes": len(members[name])}
    members["manifest.json"] = body = json.dumps(manifest).encode()
    members["manifest.mac"] = json.dumps(
        {"sm3": sm3(body).hex(), "hmac_sm3": hmac_sm3(keys.mac, body).hex()}
    ).encode()
    altered = tmp_path / "altered.tar"
    _write_tar(altered, members)
    with pytest.raises(BackupRefused, match="audit log does not verify at entry 2"):
        restore_backup(altered, Settings(data_dir=tmp_path / "new"), PASSPHRASE.encode())
    assert not (tmp_path / "new").exists()


def test_no_key_or_personal_data_in_clear(backup_file: Made):
    out, h, subject = backup_file
    raw = out.read_bytes()
    keys = h.settings.keys_dir
    assert b"-----BEGIN" not in raw and b"PRIVATE KEY" not in raw
    for name in ("pseudonym", "client-pepper", "pairwise"):
        secret = (keys / f"{name}.secret").read_text().strip()
        assert secret.encode() not in raw and bytes.fromhex(secret) not in raw
    for vault in keys.glob("vault*.secret"):
        assert vault.read_text().strip().encode() not in raw
    assert KeyRing(keys).private("gateway").to_hex().encode() not in raw
    assert str(subject["id_number"]).encode() not in raw
    # Compressed rows are sealed too: nothing in the file gunzips.
    for data in _members(out).values():
        with pytest.raises((OSError, EOFError)):
            gzip.decompress(data)


def test_the_passphrase_is_never_an_argument_and_has_a_minimum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit):
        main(["backup", "--out", str(tmp_path / "b.tar"), "--passphrase", PASSPHRASE])
    monkeypatch.setenv("TONGBAN_BACKUP_PASSPHRASE", "short")
    line = _one_line_refusal(capsys, ["backup", "--data-dir", str(tmp_path), "--out",
                                      str(tmp_path / "b.tar")])  # fmt: skip
    assert "at least 12 characters" in line and "short" not in line
    monkeypatch.delenv("TONGBAN_BACKUP_PASSPHRASE")
    passfile = tmp_path / "pass"
    passfile.write_text(PASSPHRASE + "\n")
    assert read_passphrase(passfile) == PASSPHRASE.encode()
    with pytest.raises(Exception, match="TONGBAN_BACKUP_PASSPHRASE"):
        read_passphrase(None)
    assert not (tmp_path / "b.tar").exists()


def test_a_backup_of_a_directory_without_a_gateway_creates_nothing(
    backup_file: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out" / "b.tar"
    argv = ["backup", "--data-dir", str(empty), "--out", str(out)]
    assert "no keys in" in _one_line_refusal(capsys, argv)
    (empty / "keys").mkdir()
    assert f"no database at {empty}/gateway.db" in _one_line_refusal(capsys, argv)
    served = str(backup_file[1].settings.data_dir)
    line = _one_line_refusal(capsys, ["backup", "--data-dir", served, "--out", str(out)])
    assert "no such directory for the backup" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty", "keys"]
    # And an existing file is never overwritten.
    existing = tmp_path / "existing.tar"
    existing.write_bytes(b"keep")
    argv = ["backup", "--data-dir", served, "--out", str(existing)]
    assert "exists: a backup never overwrites a file" in _one_line_refusal(capsys, argv)
    assert existing.read_bytes() == b"keep"


def test_a_failed_forced_restore_leaves_the_sqlite_target_as_it_was(
    backup_file: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):  # fmt: skip
    new = tmp_path / "new"
    argv = ["restore", "--from", str(backup_file[0]), "--data-dir", str(new)]
    assert main(argv) == 0
    capsys.readouterr()
    with engine_of(f"sqlite:///{new / 'audit.db'}") as db:
        db.execute(text("INSERT INTO audit_meta (key, value) VALUES ('marker', 'kept')"))
    before = _digests(new)

    def fail(staging: Path, backup: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("tongban.backup._write_files", fail)
    assert "No space left on device" in _one_line_refusal(capsys, [*argv, "--force"])
    assert _digests(new) == before
    assert sorted(p.name for p in new.iterdir()) == ["audit.db", "gateway.db", "keys"]


def test_a_non_empty_target_needs_force(
    backup_file: Made, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    new = tmp_path / "new"
    new.mkdir()
    (new / "something").write_text("kept")
    line = _one_line_refusal(capsys, ["restore", "--from", str(backup_file[0]), "--data-dir",
                                      str(new)])  # fmt: skip
    assert "is not empty" in line and "--force" in line
    assert [p.name for p in new.iterdir()] == ["something"]


def test_never_over_a_running_gateway(backup_file: Made, capsys: pytest.CaptureFixture[str]):
    out, h, _subject = backup_file  # h serves: its SQLite files are open
    before = _digests(h.settings.data_dir)
    argv = ["restore", "--from", str(out), "--data-dir", str(h.settings.data_dir), "--force"]
    line = _one_line_refusal(capsys, argv)
    assert "is open in a running process: is a gateway running on it?" in line
    assert _digests(h.settings.data_dir) == before


# --- witnesses ---------------------------------------------------------------------------


def _digests(data_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(data_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm", "checkpoint-lock"))
    }


class _Closing:
    """An in-process transport where the command line expects an HttpTransport."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def handle_request(self, department: str, request: Any, timeout: float) -> Any:
        return self.inner.handle_request(department, request, timeout)

    def close(self) -> None:
        pass


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_restore_older_than_a_witness_cosigned_is_refused(
    tmp_path: Path,
    small_population: Generated,
    party_keys: dict[str, SM2PrivateKey],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    h = _serving(tmp_path / "gw", small_population, party_keys, {})
    gw = str(h.settings.data_dir)
    # A PKI, so that a checked restore reaches the witnesses with the backup's certificate.
    assert main(["pki", "init", "--data-dir", gw]) == 0
    assert main(["pki", "issue", "gateway", "--data-dir", gw]) == 0
    capsys.readouterr()
    try:
        out = tmp_path / "old.tar"
        old = create_backup(h.settings, out, PASSPHRASE.encode(), scrypt_n=FAST)
        for row in small_population.subjects()[10:14]:
            assert _check(h, h.client, row).status_code == 200
        later = _cp(h).checkpoint().checkpoint.size
        assert later > old.entries
        transport = _cp(h).transport
        assert transport is not None

        # Asked directly (--witness-check): each witness remembers the larger tree.
        def ask(_backup: Backup) -> tuple[dict[str, str], dict[str, str]]:
            return ask_witnesses(list(DEPARTMENTS), lambda n: witnessed(transport, n, 5.0))

        fresh = tmp_path / "fresh"
        with pytest.raises(BackupRefused) as refused:
            restore_backup(out, Settings(data_dir=fresh), PASSPHRASE.encode(), witnessed=ask)
        detail = refused.value.detail
        assert f"witness civil has cosigned {later} entries" in detail
        assert f"the backup holds {old.entries}" in detail and "rollback" in detail
        assert not fresh.exists()
        # A newer backup passes the same check.
        newer = tmp_path / "newer.tar"
        create_backup(h.settings, newer, PASSPHRASE.encode(), scrypt_n=FAST)
        done = restore_backup(newer, Settings(data_dir=fresh), PASSPHRASE.encode(), witnessed=ask)
        assert done.witnesses_checked == dict.fromkeys(DEPARTMENTS, later)
        # The same through the command line, the witnesses reached over the transport.
        adapters = [f"--adapter={d}=http://{d}.test" for d in DEPARTMENTS]
        argv = ["restore", "--from", str(out), "--data-dir", str(tmp_path / "cli"),
                "--witness-check", *adapters]  # fmt: skip
        certs: list[bytes] = []

        def over_tls(urls: Any, tls: Any = None) -> _Closing:
            certs.append(tls.cert.read_bytes())
            return _Closing(transport)

        with monkeypatch.context() as patch:
            patch.setattr("tongban.adapters.client.HttpTransport", over_tls)
            line = _one_line_refusal(capsys, argv)
        assert certs == [(h.settings.data_dir / "pki" / "gateway.pem").read_bytes()]
        assert f"witness civil has cosigned {later} entries of the log (the witness itself)" in line
        assert not (tmp_path / "cli").exists()
    finally:
        h.close()
    # A witness that cannot be asked refuses a checked restore; without URLs, no check.
    argv = ["restore", "--from", str(out), "--data-dir", str(tmp_path / "cli"), "--witness-check"]
    assert "--witness-check needs the witnesses' URLs" in _one_line_refusal(capsys, argv)
    line = _one_line_refusal(
        capsys, [*argv, "--adapter", f"health=http://127.0.0.1:{_closed_port()}"]
    )
    assert line.startswith("tongban: witness health could not be asked what it cosigned")
    assert not (tmp_path / "cli").exists()
    # Over the stopped deployment itself (--force): its store records the cosignatures.
    before = _digests(h.settings.data_dir)
    line = _one_line_refusal(
        capsys, ["restore", "--from", str(out), "--data-dir", str(h.settings.data_dir), "--force"]
    )
    assert f"witness civil has cosigned {later} entries" in line
    assert "the target's audit store" in line and f"holds {old.entries}" in line
    assert _digests(h.settings.data_dir) == before


def test_open_backup_recomputes_the_log(backup_file: Made):
    out, h, _subject = backup_file
    backup = open_backup(out, PASSPHRASE.encode())
    assert backup.size == _log(h).size  # nothing was appended since
    assert backup.tree.root() == _log(h).root()
    assert backup.tree.root().hex() == backup.manifest["audit"]["root"]
    assert backup.manifest["format"] == "tongban-backup/1"
    assert set(backup.manifest["chains"]) == {"gateway", "audit"}
    entries = backup.manifest["chains"]["audit"]["tables"][audit_schema.entries.name]
    assert entries["rows"] == backup.size
