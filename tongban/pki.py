"""The deployment's private PKI: one CA, and one certificate per party for mutual TLS.

Everything lives in ``DIR/pki`` (:func:`pki_dir`), beside ``DIR/keys`` (the SM2 key ring,
whose ``<party>.key`` names TLS keys would collide with)::

    DIR/pki/ca.pem        the CA certificate: what every party trusts
    DIR/pki/ca.key        the CA's private key (mode 0600): only `tongban pki issue` reads it
    DIR/pki/NAME.pem      NAME's certificate (the gateway, a department, a SuperNode)
    DIR/pki/NAME.key      NAME's private key (mode 0600)

Keys are ECDSA P-256 and signatures ECDSA-SHA256: Python's ``ssl`` (OpenSSL without
Tongsuo's NTLS) speaks neither SM2 certificates nor TLCP (GB/T 38636). docs/transport.md
says where a TLCP-capable terminator would stand.

A certificate :func:`issue` makes serves as a server's AND a client's (extended key usage
serverAuth and clientAuth): CN=NAME, subject alternative names DNS:NAME, DNS:localhost,
IP:127.0.0.1 and IP:::1 (so loopback works by address too), plus any extra names given.
A peer is verified by NAME (the gateway connects to a department with
``server_hostname=<department>``; an adapter pins the client certificate to ``gateway``).

Every write is atomic: a key or certificate is written to a temporary file in the same
directory (keys created 0600 before any byte is written), flushed to disk and renamed over
the old one, so no reader ever sees half a key. A running server that watches the files
(:mod:`tongban.tls`) picks the new pair up; :func:`issue` renames the key before the
certificate, and a reader that sees the new key with the old certificate keeps what it
has and tries again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .boundary import CommandFailed, MissingPrerequisite, UsageError
from .tls import TLSFiles

__all__ = [
    "CA_DAYS",
    "DEFAULT_DAYS",
    "WARN_BEFORE",
    "CertificateStatus",
    "Issued",
    "ensure",
    "files",
    "init",
    "issue",
    "names",
    "pki_dir",
    "status",
    "status_source",
    "write_atomic",
]

#: A leaf certificate's default lifetime, and the CA's.
DEFAULT_DAYS = 365
CA_DAYS = 3650
#: A certificate this close to its end is reported (``expires_soon``) and re-issued by
#: :func:`issue` and :func:`ensure`.
WARN_BEFORE = dt.timedelta(days=30)
# Clocks of the parties may differ a little: certificates start a few minutes early.
_BACKDATE = dt.timedelta(minutes=5)
_LOOPBACK_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
)
# A DNS label (or dotted labels), lower case: a department, "gateway", "supernode-1".
_NAME = re.compile(
    r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
_RESERVED = frozenset({"ca", "localhost"})
CA_SUBJECT = "tongban deployment CA"


def pki_dir(data_dir: Path) -> Path:
    """Where the PKI of a data directory lives: ``DIR/pki``."""
    return data_dir / "pki"


def files(pki: Path, name: str) -> TLSFiles:
    """The certificate, key and CA files of ``name`` in the PKI directory ``pki``."""
    return TLSFiles(cert=pki / f"{name}.pem", key=pki / f"{name}.key", ca=pki / "ca.pem")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _check_name(name: str) -> str:
    if len(name) > 253 or not _NAME.fullmatch(name) or name in _RESERVED:
        raise UsageError(
            f"{name!r} is not a certificate name: lower-case letters, digits and '-' (a "
            "DNS name such as gateway, police or supernode-1; not ca or localhost)"
        )
    return name


def write_atomic(path: Path, data: bytes, *, private: bool) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself is durable once the dir is
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise CommandFailed(f"{path}: not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CommandFailed(f"{path}: not an EC private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise CommandFailed(f"{path}: not a PEM certificate") from None


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _san(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    out = [str(v) for v in ext.get_values_for_type(x509.DNSName)]
    out += [str(v) for v in ext.get_values_for_type(x509.IPAddress)]
    return out


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        pass
    if len(text) > 253 or not _NAME.fullmatch(text.lower()):
        raise UsageError(f"{text!r} is neither an IP address nor a DNS name")
    if "." not in text:
        # Parties are verified by their single-label name (gateway, police): another one
        # in a certificate's names would let it pass for that party.
        raise UsageError(
            f"--san {text}: give a full DNS name (host.example) or an IP address; a single "
            "label is a party's name and only NAME's certificate may carry it"
        )
    return x509.DNSName(text.lower())


def _public_matches(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    return bool(key.public_key() == cert.public_key())


def _ca_paths(pki: Path) -> tuple[Path, Path]:
    return pki / "ca.pem", pki / "ca.key"


def _new_ca_cert(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    now = _utcnow()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_SUBJECT)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Issued:
    """What :func:`init` or :func:`issue` did: the files, and whether they are new."""

    name: str
    files: TLSFiles
    created: bool
    status: CertificateStatus

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created": self.created,
            "cert": str(self.files.cert),
            "key": str(self.files.key),
            "ca": str(self.files.ca),
            **{k: v for k, v in self.status.to_json().items() if k in ("not_after", "names")},
        }


def init(pki: Path, *, days: int = CA_DAYS) -> Issued:
    """Create the CA in ``pki`` if it is not there; never replace an existing CA key. A
    CA certificate that is missing, or does not match the key, is made again from the key
    (the certificates it signed stay valid)."""
    cert_path, key_path = _ca_paths(pki)
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    created = False
    if key_path.exists():
        key = _load_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_atomic(key_path, _key_pem(key), private=True)
        created = True
    if created or not cert_path.exists() or not _public_matches(key, _load_cert(cert_path)):
        write_atomic(
            cert_path,
            _new_ca_cert(key, days).public_bytes(serialization.Encoding.PEM),
            private=False,
        )
        created = True
    ca_files = TLSFiles(cert=cert_path, key=key_path, ca=cert_path)
    return Issued("ca", ca_files, created, status(cert_path))


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = _ca_paths(pki)
    if not (cert_path.exists() and key_path.exists()):
        data_dir = pki.absolute().parent
        raise MissingPrerequisite(
            f"no CA in {pki.absolute()}: run `tongban pki init --data-dir {data_dir}`"
        )
    return _load_cert(cert_path), _load_key(key_path)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _reusable(
    target: TLSFiles, name: str, wanted: Sequence[str], ca: x509.Certificate, now: dt.datetime
) -> bool:
    """Whether the existing pair of ``name`` can stay: from this CA, matching, naming
    every wanted name, and not within :data:`WARN_BEFORE` of its end."""
    if not (target.cert.exists() and target.key.exists()):
        return False
    try:
        cert = _load_cert(target.cert)
        key = _load_key(target.key)
    except CommandFailed:
        return False
    return (
        _issued_by(cert, ca)
        and _public_matches(key, cert)
        and _cn(cert.subject) == name
        and set(wanted) <= set(_san(cert))
        and cert.not_valid_before_utc <= now
        and cert.not_valid_after_utc - WARN_BEFORE > now
    )


def _leaf(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    alt: Sequence[x509.GeneralName],
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    start: dt.datetime,
    days: int,
) -> x509.Certificate:
    not_after = min(start + dt.timedelta(days=days), ca.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(list(alt)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def issue(
    pki: Path,
    name: str,
    *,
    days: int = DEFAULT_DAYS,
    extra_names: Iterable[str] = (),
    renew: bool = False,
    valid_from: dt.datetime | None = None,
) -> Issued:
    """A certificate and key for ``name``, signed by the CA of ``pki``.

    Idempotent: an existing pair from this CA that names everything asked for and is not
    within 30 days of its end is kept (``created`` False). Otherwise, or with ``renew``,
    a new key and certificate replace it (atomically, key first). ``valid_from`` (default:
    now, less five minutes) exists for tests that need an expired certificate; the end is
    never later than the CA's."""
    _check_name(name)
    if days < 1:
        raise UsageError(f"--days {days}: a certificate lives at least one day")
    alt = [x509.DNSName(name), *_LOOPBACK_NAMES]
    for extra in extra_names:
        general = _general_name(extra)
        if general not in alt:
            alt.append(general)
    wanted = [str(g.value) for g in alt]
    ca, ca_key = _load_ca(pki)
    target = files(pki, name)
    now = _utcnow()
    if not renew and valid_from is None and _reusable(target, name, wanted, ca, now):
        return Issued(name, target, False, status(target.cert))
    key = ec.generate_private_key(ec.SECP256R1())
    start = (now - _BACKDATE) if valid_from is None else valid_from
    cert = _leaf(name, key, alt, ca, ca_key, start, days)
    write_atomic(target.key, _key_pem(key), private=True)
    write_atomic(target.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return Issued(name, target, True, status(target.cert))


def ensure(pki: Path, parties: Iterable[str], *, days: int = DEFAULT_DAYS) -> list[Issued]:
    """The CA and a current certificate for each of ``parties`` (what ``tongban demo``
    needs at each start): creates what is missing, renews what is within 30 days of its
    end, keeps the rest. Returns the CA's report first, then one per party."""
    out = [init(pki)]
    out += [issue(pki, party, days=days) for party in parties]
    return out


def names(pki: Path) -> list[str]:
    """The parties with a certificate in ``pki`` (the CA not included)."""
    if not pki.is_dir():
        return []
    return sorted(p.stem for p in pki.glob("*.pem") if p.stem != "ca")


@dataclass(frozen=True)
class CertificateStatus:
    """One certificate as monitoring sees it (no key material, no personal data)."""

    path: Path
    subject: str  # the CN: a party's name
    names: tuple[str, ...]  # subject alternative names
    issuer: str
    serial: str  # hex
    fingerprint: str  # SHA-256 of the DER, hex
    not_before: dt.datetime
    not_after: dt.datetime
    seconds_left: float  # negative once expired
    issued_by_ca: bool | None = None  # None: not checked (no CA given)

    @property
    def expired(self) -> bool:
        return self.seconds_left <= 0

    @property
    def expires_soon(self) -> bool:
        """Within :data:`WARN_BEFORE` (30 days) of its end, or past it."""
        return self.seconds_left < WARN_BEFORE.total_seconds()

    @property
    def state(self) -> str:
        if self.issued_by_ca is False:
            return "other CA"
        if self.expired:
            return "expired"
        return "expires soon" if self.expires_soon else "ok"

    @property
    def warning(self) -> str | None:
        """The 30-day warning as one sentence, or None."""
        when = self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.expired:
            return f"certificate {self.subject} expired at {when}"
        if self.expires_soon:
            days = int(self.seconds_left // 86400)
            return f"certificate {self.subject} expires in {days} days, at {when}: renew it"
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "names": list(self.names),
            "issuer": self.issuer,
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint,
            "not_before": self.not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds_left": int(self.seconds_left),
            "expired": self.expired,
            "expires_soon": self.expires_soon,
            "warning": self.warning,
        }


def status(
    cert_path: Path, *, ca_path: Path | None = None, now: dt.datetime | None = None
) -> CertificateStatus:
    """The certificate at ``cert_path``: subject, names, validity and seconds left; with
    ``ca_path``, whether that CA issued it."""
    cert = _load_cert(cert_path)
    now = now or _utcnow()
    issued = None if ca_path is None else _issued_by(cert, _load_cert(ca_path))
    return CertificateStatus(
        path=cert_path,
        subject=_cn(cert.subject),
        names=tuple(_san(cert)),
        issuer=_cn(cert.issuer),
        serial=f"{cert.serial_number:x}",
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        seconds_left=(cert.not_valid_after_utc - now).total_seconds(),
        issued_by_ca=issued,
    )


def status_source(cert_path: Path) -> Callable[[], CertificateStatus | None]:
    """A callable for ``/healthz`` and ``/metrics``: the status of the certificate now at
    ``cert_path``, parsed again only when the file changed (a rotation shows at once);
    the last good status while the file cannot be read, None if it never could."""
    cache: dict[str, Any] = {"signature": None, "status": None}

    def current() -> CertificateStatus | None:
        try:
            st = cert_path.stat()
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
            if signature != cache["signature"]:
                cache["status"] = status(cert_path)
                cache["signature"] = signature
        except (OSError, CommandFailed):
            pass
        last: CertificateStatus | None = cache["status"]
        if last is None:
            return None
        left = (last.not_after - _utcnow()).total_seconds()
        return CertificateStatus(**{**last.__dict__, "seconds_left": left})

    return current
