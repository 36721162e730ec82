"""Mutual TLS 1.3 between the gateway and the department adapters.

* :func:`server_context` (an adapter): TLS 1.3 only, a client certificate from the
  deployment's CA required, and that certificate pinned to one party by name (CN or a
  DNS subject alternative name; ``sha256:<hex>`` pins a fingerprint instead).
* :func:`client_context` (the gateway): TLS 1.3 only, the server verified against the CA
  and against the name it is reached by (``server_hostname=<department>``, checked by
  OpenSSL), the gateway's certificate presented, TLS sessions kept per server name and
  offered again on the next connection (TLS 1.3 tickets).

Python's ``ssl`` cannot pin a certificate or explain an expired one during the handshake
(it has no verify callback, and a failed verification leaves no certificate to name). So
OpenSSL verifies the chain to the CA but not the dates (``X509_V_FLAG_NO_CHECK_TIME``),
and the sockets these contexts make check right after the handshake, before one byte of
application data is read or written: the peer certificate's dates, its CA's dates, and
the pin. A failure raises :class:`CertificateRefused` (an ``ssl.SSLError``) whose text
names the certificate (CN and serial) and, for an expired one, when it expired. The check
lives in the socket class of the context (``sslsocket_class``), so whoever wraps a socket
with these contexts (tongban.serve, werkzeug, gunicorn, urllib3) gets it, also when the
handshake happens implicitly on the first read.

Hot reload: :class:`ReloadingContext` watches the certificate, key and CA files (inode,
mtime, size; at most once a second) and builds a fresh context when they change. A server
context swaps a connection to the fresh one in its SNI callback, which runs on every
ClientHello (with or without SNI) before the certificate is chosen: new connections get
the new certificate, established ones keep theirs, nothing restarts. A pair that does not
load (the key renamed, the certificate not yet) is ignored until it does.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "CertificateRefused",
    "ReloadingContext",
    "TLSFiles",
    "client_context",
    "describe_tls_error",
    "gunicorn_ssl_context",
    "reloading_client_context",
    "server_context",
]

log = logging.getLogger("tongban.tls")

#: Seconds a server waits for a client to complete its TLS handshake.
HANDSHAKE_TIMEOUT = 5.0
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: dates are checked after the handshake (below).
_NO_CHECK_TIME = 0x200000
_CHECK_EVERY = 1.0


@dataclass(frozen=True)
class TLSFiles:
    """A party's certificate and key, and the CA it trusts (PEM files)."""

    cert: Path
    key: Path
    ca: Path


class CertificateRefused(ssl.SSLError):
    """A peer's certificate was verified by OpenSSL but refused after the handshake:
    expired, not yet valid, from an expired CA, or not the pinned party."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason_text = reason

    def __str__(self) -> str:
        return self.reason_text


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _describe(cert: x509.Certificate) -> str:
    return f"CN={_cn(cert.subject)} (serial {cert.serial_number:x})"


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in ext.get_values_for_type(x509.DNSName)]


def _ca_validity(ca: Path) -> dict[x509.Name, tuple[dt.datetime, dt.datetime, str]]:
    """Each CA certificate of the file ``ca``: its subject, dates and CN."""
    out: dict[x509.Name, tuple[dt.datetime, dt.datetime, str]] = {}
    for cert in x509.load_pem_x509_certificates(ca.read_bytes()):
        out[cert.subject] = (cert.not_valid_before_utc, cert.not_valid_after_utc, _cn(cert.subject))
    return out


class _Context(ssl.SSLContext):
    """An SSLContext whose sockets check the peer after the handshake (:func:`_check`)."""

    role: str = "client"  # the side this context is: "server" or "client"
    pinned_client: str | None = None
    ca_dates: dict[x509.Name, tuple[dt.datetime, dt.datetime, str]]
    sessions: dict[str, ssl.SSLSession]
    resumed: int = 0  # client: handshakes that resumed a TLS session
    reloader: ReloadingContext | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        if session is None and not server_side and isinstance(server_hostname, str):
            session = self.sessions.get(server_hostname)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


def _pinned(cert: x509.Certificate, pin: str) -> bool:
    if pin.startswith("sha256:"):
        wanted = pin.removeprefix("sha256:").replace(":", "").lower()
        return cert.fingerprint(hashes.SHA256()).hex() == wanted
    return _cn(cert.subject) == pin or pin in _dns_names(cert)


def _check(sock: ssl.SSLSocket | ssl.SSLObject) -> None:
    """The checks OpenSSL could not make during the handshake; raise CertificateRefused."""
    ctx = sock.context
    if not isinstance(ctx, _Context):
        return
    whose = "the client's certificate" if ctx.role == "server" else "the server's certificate"
    der = sock.getpeercert(binary_form=True)
    if der is None:  # CERT_REQUIRED makes this unreachable; refuse rather than assume
        raise CertificateRefused(f"{whose} is missing")
    cert = x509.load_der_x509_certificate(der)
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        raise CertificateRefused(
            f"{whose} {_describe(cert)} expired at {_iso(cert.not_valid_after_utc)}"
        )
    if cert.not_valid_before_utc > now:
        raise CertificateRefused(
            f"{whose} {_describe(cert)} is not valid before {_iso(cert.not_valid_before_utc)}"
        )
    ca = ctx.ca_dates.get(cert.issuer)
    if ca is None:
        raise CertificateRefused(f"{whose} {_describe(cert)} was not issued by a trusted CA")
    if ca[1] <= now or ca[0] > now:
        raise CertificateRefused(
            f"{whose} {_describe(cert)} was issued by the CA {ca[2]}, which is valid only "
            f"from {_iso(ca[0])} to {_iso(ca[1])}"
        )
    if ctx.pinned_client is not None and not _pinned(cert, ctx.pinned_client):
        raise CertificateRefused(
            f"{whose} {_describe(cert)} is not the pinned client {ctx.pinned_client}"
        )
    if ctx.role == "client" and sock.session_reused:
        ctx.resumed += 1


class _CheckedSocket(ssl.SSLSocket):
    """Checks the peer (:func:`_check`) once, right after the handshake, whether the
    handshake is explicit or happens on the first read or write."""

    _tongban_checked = False
    _tongban_session_kept = False

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        if not self._tongban_checked:
            try:
                _check(self)
            except CertificateRefused:
                self.close()
                raise
            self._tongban_checked = True

    def _ensure_checked(self) -> None:
        if not self._tongban_checked:
            self.do_handshake()

    def _keep_session(self) -> None:
        # TLS 1.3 tickets arrive after the handshake; the first read has processed them.
        self._tongban_session_kept = True
        ctx = self.context
        if isinstance(ctx, _Context) and ctx.role == "client" and self.server_hostname:
            session = self.session
            if session is not None and session.has_ticket:
                ctx.sessions[str(self.server_hostname)] = session

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        self._ensure_checked()
        data = super().read(len, buffer)
        if not self._tongban_session_kept:
            self._keep_session()
        return data

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        self._ensure_checked()
        return super().recv(buflen, flags)

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int = 0) -> int:
        self._ensure_checked()
        return super().recv_into(buffer, nbytes, flags)

    def write(self, data: Any) -> int:
        self._ensure_checked()
        return super().write(data)

    def send(self, data: Any, flags: int = 0) -> int:
        self._ensure_checked()
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self._ensure_checked()
        super().sendall(data, flags)


class _CheckedObject(ssl.SSLObject):
    """The same check for memory-BIO TLS (asyncio)."""

    _tongban_checked = False

    def do_handshake(self) -> None:
        super().do_handshake()
        if not self._tongban_checked:
            _check(self)
            self._tongban_checked = True

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if not self._tongban_checked:
            self.do_handshake()
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        if not self._tongban_checked:
            self.do_handshake()
        return super().write(data)


_Context.sslsocket_class = _CheckedSocket
_Context.sslobject_class = _CheckedObject


def _base(files: TLSFiles, protocol: int) -> _Context:
    ctx = _Context(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=os.fspath(files.ca))
    ctx.load_cert_chain(os.fspath(files.cert), os.fspath(files.key))
    ctx.verify_flags = ctx.verify_flags | ssl.VERIFY_X509_STRICT | _NO_CHECK_TIME
    ctx.ca_dates = _ca_validity(files.ca)
    ctx.sessions = {}
    return ctx


def _server_once(files: TLSFiles, pinned_client: str) -> _Context:
    ctx = _base(files, ssl.PROTOCOL_TLS_SERVER)
    ctx.role = "server"
    ctx.pinned_client = pinned_client
    return ctx


def _client_once(files: TLSFiles) -> _Context:
    ctx = _base(files, ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True  # the server's certificate must name the department
    ctx.role = "client"
    return ctx


class ReloadingContext:
    """The context built from ``files`` as they are now: :meth:`current` looks at them at
    most every ``check_every`` seconds and builds a new context when they changed. The
    first build happens here and raises; a later one that fails is logged once and the
    previous context kept."""

    def __init__(
        self,
        build: Callable[[], ssl.SSLContext],
        watched: Sequence[Path],
        *,
        check_every: float = _CHECK_EVERY,
    ) -> None:
        self._build = build
        self._watched = tuple(watched)
        self.check_every = check_every
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._context = build()
        self._next = time.monotonic() + check_every
        self._failed: object = None
        self.reloads = 0

    def _stat(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        out: list[tuple[int, int, int, int] | None] = []
        for path in self._watched:
            try:
                st = path.stat()
            except OSError:
                out.append(None)
                continue
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def current(self) -> ssl.SSLContext:
        now = time.monotonic()
        if now < self._next:
            return self._context
        with self._lock:
            if now < self._next:
                return self._context
            self._next = now + self.check_every
            signature = self._stat()
            if signature == self._signature:
                return self._context
            try:
                fresh = self._build()
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                if signature != self._failed:
                    self._failed = signature
                    log.warning(
                        "%s changed but does not load (%s): the loaded certificate is kept",
                        self._watched[0],
                        getattr(exc, "reason", None) or type(exc).__name__,
                    )
                return self._context
            self._context, self._signature = fresh, signature
            self.reloads += 1
            log.info("%s changed: loaded for new connections", self._watched[0])
            return fresh


def server_context(
    cert: Path, key: Path, ca: Path, *, pinned_client: str, check_every: float = _CHECK_EVERY
) -> ssl.SSLContext:
    """An adapter's TLS 1.3 server context: ``cert``/``key`` presented, a client
    certificate from ``ca`` required and pinned to ``pinned_client`` (its CN or a DNS
    name; or ``sha256:<hex>``, the certificate's fingerprint), replaced files picked up."""
    if pinned_client in ("", "localhost"):
        raise ValueError("pinned_client: name the client party, e.g. gateway")
    files = TLSFiles(Path(cert), Path(key), Path(ca))
    reloader = ReloadingContext(
        lambda: _server_once(files, pinned_client),
        (files.cert, files.key, files.ca),
        check_every=check_every,
    )
    outer = reloader.current()
    assert isinstance(outer, _Context)
    outer.reloader = reloader

    def swap(sock: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        fresh = reloader.current()
        if fresh is not ctx:
            sock.context = fresh

    outer.sni_callback = swap
    return outer


def client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The gateway's TLS 1.3 client context: presents ``cert``/``key``, verifies the
    server against ``ca`` and the ``server_hostname`` it is given (the department's
    name), keeps TLS sessions for the next connection. Loaded once: see
    :func:`reloading_client_context` for one that follows the files."""
    return _client_once(TLSFiles(Path(cert), Path(key), Path(ca)))


def reloading_client_context(
    files: TLSFiles, *, check_every: float = _CHECK_EVERY
) -> ReloadingContext:
    """:func:`client_context` of ``files``, built again when they change."""
    return ReloadingContext(
        lambda: _client_once(files), (files.cert, files.key, files.ca), check_every=check_every
    )


def gunicorn_ssl_context(
    files: TLSFiles, *, pinned_client: str
) -> Callable[[Any, Any], ssl.SSLContext]:
    """gunicorn's ``ssl_context`` server hook for an adapter under gunicorn: in its config
    file, ``ssl_context = gunicorn_ssl_context(pki.files(DIR / "pki", "health"),
    pinned_client="gateway")`` with ``certfile``/``keyfile`` set to the same files
    (gunicorn turns TLS on only when they are). gunicorn asks for a context per
    connection; this returns one :func:`server_context`, built on first use."""
    made: list[ssl.SSLContext] = []
    lock = threading.Lock()

    def hook(conf: Any, default_factory: Any) -> ssl.SSLContext:
        if not made:
            with lock:
                if not made:
                    made.append(
                        server_context(files.cert, files.key, files.ca, pinned_client=pinned_client)
                    )
        return made[0]

    return hook


_VERIFY = {
    18: "it is self-signed, not issued by this deployment's CA",
    19: "it was not issued by this deployment's CA (self-signed CA in the chain)",
    20: "it was not issued by this deployment's CA",
    21: "it was not issued by this deployment's CA",
}
_REASONS = {
    "HTTP_REQUEST": "plain HTTP sent to a TLS port",
    "HTTPS_PROXY_REQUEST": "an HTTP proxy request sent to a TLS port",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust this side's certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused this side's certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says this side's certificate has expired",
    "UNSUPPORTED_PROTOCOL": "the peer does not speak TLS 1.3",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (or not TLS 1.3)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer does not speak TLS 1.3",
    "NO_SHARED_CIPHER": "no cipher in common",
}


def _ssl_error(exc: BaseException) -> BaseException:
    """The innermost ssl or OS error behind ``exc`` (urllib3 wraps them)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    found: BaseException = exc
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        if isinstance(current, OSError) and found is exc:
            found = current
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
        todo.extend(a for a in current.args if isinstance(a, BaseException))
    return found


def describe_tls_error(exc: BaseException, *, whose: str = "the peer's certificate") -> str:
    """One sentence for a failed TLS connection (no subject data: certificates here name
    parties, and OpenSSL's texts name none)."""
    err = _ssl_error(exc)
    if isinstance(err, CertificateRefused):
        return str(err)
    if isinstance(err, ssl.SSLCertVerificationError):
        code = err.verify_code
        message = err.verify_message or err.reason or "verification failed"
        if code in _VERIFY:
            return f"{whose} was refused: {_VERIFY[code]} ({message})"
        if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
            return f"{whose} does not name the party asked for ({message})"
        return f"{whose} was refused: {message}"
    if isinstance(err, ssl.SSLError):
        reason = err.reason or ""
        if reason in _REASONS:
            return _REASONS[reason]
        return f"TLS failed ({reason or type(err).__name__})"
    if isinstance(err, TimeoutError | socket.timeout):
        return "the TLS handshake did not complete in time"
    if isinstance(err, ConnectionError | EOFError):
        return "the peer closed the connection during the TLS handshake"
    if isinstance(err, OSError):
        return f"connection failed ({err.strerror or type(err).__name__})"
    return f"TLS failed ({type(err).__name__})"
