"""The requester side of the gateway: HTTPS when given a certificate, and no plaintext
listener beyond loopback unless the operator says so.

``tongban gateway serve --certfile F --keyfile K`` serves HTTPS itself; gunicorn does the
same with its ``certfile``/``keyfile`` settings (docs/operations.md). A gateway bound to
an address other than loopback without TLS is refused, in one line, unless
``--insecure-http`` is given (a TLS-terminating proxy in front of it, for example). Clients
of the gateway (``tongban stats``, the demo's supervisor, the SDK) verify its certificate
against the CA bundle in ``TONGBAN_CA_FILE`` when that is set, the system's otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from pathlib import Path

from flask import Flask, Response, request

from .boundary import UsageError

__all__ = [
    "CA_FILE_ENV",
    "HSTS",
    "ca_bundle",
    "check_public_binding",
    "install_hsts",
    "install_security_headers",
    "is_loopback",
    "public_server_context",
]

CA_FILE_ENV = "TONGBAN_CA_FILE"

#: Sent on every response over TLS: browsers never come back in plain HTTP for a year.
HSTS = "max-age=31536000; includeSubDomains"


def install_hsts(app: Flask) -> None:
    """``Strict-Transport-Security`` on every response ``app`` sends over TLS (the gateway
    serving HTTPS itself, gunicorn with a certificate, or a terminator that says so)."""

    @app.after_request
    def _hsts(resp: Response) -> Response:
        if request.is_secure:
            resp.headers["Strict-Transport-Security"] = HSTS
        return resp


#: Every response of the API and of the pages (errors, 404s and JSON included).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: For any HTML the API itself sends without a policy of its own (the pages and the API
#: docs set stricter ones): nothing runs, nothing loads, nothing frames it.
DEFAULT_HTML_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def install_security_headers(app: Flask) -> None:
    """``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` on every
    response of ``app``, and a locked-down Content-Security-Policy on any HTML response
    that has none."""

    @app.after_request
    def _security_headers(resp: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            resp.headers.setdefault(name, value)
        if resp.mimetype == "text/html":
            resp.headers.setdefault("Content-Security-Policy", DEFAULT_HTML_CSP)
        return resp


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_public_binding(host: str, *, tls: bool, insecure_http: bool, name: str) -> None:
    """Refuse (one line) to listen in plain HTTP on anything but loopback."""
    if tls or insecure_http or is_loopback(host):
        return
    raise UsageError(
        f"{name}: refusing plain HTTP on {host}, which is not a loopback address: pass "
        "--certfile and --keyfile to serve HTTPS, or --insecure-http if a TLS-terminating "
        "proxy stands in front"
    )


def public_server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """The requester-facing TLS context: TLS 1.2 or later (browsers and requesters'
    systems), no client certificate (requesters authenticate with OAuth 2.0)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except FileNotFoundError as exc:
        raise UsageError(f"cannot read {exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"cannot load the certificate {certfile} with the key {keyfile}: "
            f"{getattr(exc, 'reason', None) or exc.strerror or type(exc).__name__}"
        ) from None
    return context


def ca_bundle(env: dict[str, str] | None = None) -> str | bool:
    """What an HTTPS client of the gateway verifies against: the file ``TONGBAN_CA_FILE``
    names, else the system's CAs (``True``, as httpx and urllib3 read it)."""
    value = (os.environ if env is None else env).get(CA_FILE_ENV, "").strip()
    if not value:
        return True
    if not Path(value).is_file():
        raise UsageError(f"{CA_FILE_ENV}={value}: no such file")
    return value
