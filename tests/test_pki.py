"""The deployment PKI (tongban/pki.py) and ``tongban pki``: a private ECDSA P-256 CA, one
certificate per party usable as server and client, idempotent and atomic writes, expiry
with the 30-day warning."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tongban import pki
from tongban.boundary import MissingPrerequisite, UsageError
from tongban.cli import main


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    where = pki.pki_dir(tmp_path)
    pki.init(where)
    return where


def test_init_creates_a_private_ca_once(tmp_path: Path):
    where = pki.pki_dir(tmp_path)
    first = pki.init(where)
    key, cert = where / "ca.key", where / "ca.pem"

    assert first.created
    assert _mode(key) == 0o600
    assert _mode(where) == 0o700
    ca = _cert(cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    before = key.read_bytes(), cert.read_bytes()

    again = pki.init(where)

    assert not again.created
    assert (key.read_bytes(), cert.read_bytes()) == before


def test_issue_makes_a_certificate_for_server_and_client_use(ca_dir: Path):
    issued = pki.issue(ca_dir, "police", extra_names=["adapter-police.internal", "10.0.0.7"])

    assert issued.created
    assert issued.files == pki.files(ca_dir, "police")
    assert _mode(issued.files.key) == 0o600
    cert = _cert(issued.files.cert)
    cert.verify_directly_issued_by(_cert(ca_dir / "ca.pem"))
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "police"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "police",
        "localhost",
        "adapter-police.internal",
    ]
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("10.0.0.7") in san.get_values_for_type(x509.IPAddress)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < left <= dt.timedelta(days=365)


def test_issue_is_idempotent_and_renews(ca_dir: Path):
    first = pki.issue(ca_dir, "gateway")
    again = pki.issue(ca_dir, "gateway")

    assert not again.created
    assert again.status.serial == first.status.serial

    renewed = pki.issue(ca_dir, "gateway", renew=True)

    assert renewed.created
    assert renewed.status.serial != first.status.serial
    # A certificate within 30 days of its end is renewed by a plain issue (the demo's).
    short = pki.issue(ca_dir, "civil", days=10)
    assert short.status.expires_soon
    assert pki.issue(ca_dir, "civil").created
    assert not pki.issue(ca_dir, "civil").status.expires_soon


def test_a_certificate_of_another_ca_is_replaced(ca_dir: Path, tmp_path: Path):
    other = tmp_path / "other"
    pki.init(other)
    pki.issue(other, "health")
    for suffix in (".pem", ".key"):
        (ca_dir / f"health{suffix}").write_bytes((other / f"health{suffix}").read_bytes())
    assert pki.status(ca_dir / "health.pem", ca_path=ca_dir / "ca.pem").state == "other CA"

    assert pki.issue(ca_dir, "health").created
    assert pki.status(ca_dir / "health.pem", ca_path=ca_dir / "ca.pem").state == "ok"


def test_issue_refuses_bad_names_and_a_missing_ca(ca_dir: Path, tmp_path: Path):
    for bad in ("Police", "ca", "localhost", "po lice", "-x", "a_b", ""):
        with pytest.raises(UsageError):
            pki.issue(ca_dir, bad)
    with pytest.raises(UsageError):
        pki.issue(ca_dir, "police", days=0)
    with pytest.raises(UsageError, match="single label is a party's name"):
        pki.issue(ca_dir, "civil", extra_names=["police"])  # civil passing for police
    with pytest.raises(MissingPrerequisite, match="tongban pki init"):
        pki.issue(tmp_path / "nothing", "police")


def test_a_failed_write_leaves_the_old_key_whole(ca_dir: Path, monkeypatch: pytest.MonkeyPatch):
    issued = pki.issue(ca_dir, "hrss")
    key, cert = issued.files.key.read_bytes(), issued.files.cert.read_bytes()

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        pki.issue(ca_dir, "hrss", renew=True)
    monkeypatch.undo()

    assert issued.files.key.read_bytes() == key
    assert issued.files.cert.read_bytes() == cert
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp")]


def test_status_reports_expiry_and_the_30_day_warning(ca_dir: Path):
    fresh = pki.issue(ca_dir, "medins").status
    assert fresh.state == "ok" and fresh.warning is None and not fresh.expires_soon
    assert fresh.subject == "medins" and "medins" in fresh.names

    soon = pki.issue(ca_dir, "medins", days=12, renew=True).status
    assert soon.expires_soon and not soon.expired and soon.state == "expires soon"
    assert soon.warning is not None and "expires in 11 days" in soon.warning
    assert soon.to_json()["expires_soon"] is True

    started = dt.datetime.now(dt.UTC) - dt.timedelta(days=20)
    gone = pki.issue(ca_dir, "medins", days=10, valid_from=started).status
    assert gone.expired and gone.state == "expired" and gone.seconds_left < 0
    assert gone.warning == f"certificate medins expired at {gone.to_json()['not_after']}"


def test_status_source_follows_a_replaced_certificate(ca_dir: Path):
    issued = pki.issue(ca_dir, "police")
    source = pki.status_source(issued.files.cert)
    first = source()
    assert first is not None and first.serial == issued.status.serial

    renewed = pki.issue(ca_dir, "police", renew=True)
    now = source()

    assert now is not None and now.serial == renewed.status.serial
    issued.files.cert.unlink()  # mid-rotation, unreadable: the last good status stays
    assert source() is not None
    assert pki.status_source(ca_dir / "absent.pem")() is None


def test_pki_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    d = str(tmp_path)
    assert main(["pki", "issue", "gateway", "--data-dir", d]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tongban: no CA in ") and "tongban pki init" in err
    assert "\n" not in err
    assert main(["pki", "show", "--data-dir", d]) == 2
    assert capsys.readouterr().err.startswith("tongban: no CA in ")

    assert main(["pki", "init", "--data-dir", d]) == 0
    assert '"created": true' in capsys.readouterr().out
    assert main(["pki", "issue", "gateway", "--data-dir", d]) == 0
    assert main(["pki", "issue", "police", "--data-dir", d, "--days", "10"]) == 0
    assert main(["pki", "issue", "gateway", "--data-dir", d]) == 0
    assert '"created": false' in capsys.readouterr().out.split("}\n{")[-1]

    assert main(["pki", "issue", "Not_A_Name", "--data-dir", d]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tongban: 'Not_A_Name' is not")

    assert main(["pki", "show", "--data-dir", d]) == 0
    out = capsys.readouterr().out
    assert "gateway" in out and "police" in out and "ca" in out
    assert "expires soon" in out and "ok" in out
