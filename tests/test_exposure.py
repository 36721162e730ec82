"""The requester side (issue 15, item 4): no plaintext listener beyond loopback unless
asked, HTTPS with a certificate, HSTS over TLS, and the CA bundle clients honour."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tongban.boundary import UsageError
from tongban.exposure import (
    CA_FILE_ENV,
    HSTS,
    ca_bundle,
    check_public_binding,
    is_loopback,
    public_server_context,
)

from .conftest import Generated
from .gateway_harness import Harness, build_harness


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_may_be_plain_http(host: str) -> None:
    assert is_loopback(host)
    check_public_binding(host, tls=False, insecure_http=False, name="gateway")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "no-such-host.invalid"])
def test_anything_else_needs_tls_or_insecure_http(host: str) -> None:
    with pytest.raises(UsageError) as info:
        check_public_binding(host, tls=False, insecure_http=False, name="gateway")
    message = str(info.value)
    assert "\n" not in message
    assert f"refusing plain HTTP on {host}" in message and "--certfile" in message
    check_public_binding(host, tls=True, insecure_http=False, name="gateway")
    check_public_binding(host, tls=False, insecure_http=True, name="gateway")


def _self_signed(tmp: Path, *, days: int = 30) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = tmp / "gateway.crt", tmp / "gateway.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certfile, keyfile


def test_public_server_context_is_tls_12_or_later(tmp_path: Path) -> None:
    certfile, keyfile = _self_signed(tmp_path)
    context = public_server_context(certfile, keyfile)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE  # requesters authenticate with OAuth


def test_a_certificate_that_cannot_be_loaded_is_one_line(tmp_path: Path) -> None:
    _certfile, keyfile = _self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    other, _ = _self_signed(tmp_path / "other", days=1)  # another key's certificate
    for cert, key in ((tmp_path / "missing.crt", keyfile), (other, keyfile)):
        with pytest.raises(UsageError) as info:
            public_server_context(cert, key)
        assert "\n" not in str(info.value)
        assert "BEGIN" not in str(info.value)  # never key material


def test_clients_honour_the_ca_bundle(tmp_path: Path) -> None:
    certfile, _ = _self_signed(tmp_path)
    assert ca_bundle({}) is True
    assert ca_bundle({CA_FILE_ENV: str(certfile)}) == str(certfile)
    with pytest.raises(UsageError, match=CA_FILE_ENV):
        ca_bundle({CA_FILE_ENV: str(tmp_path / "nope.pem")})


@pytest.fixture(scope="module")
def harness(
    small_population: Generated, party_keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Harness]:
    h = build_harness(tmp_path_factory.mktemp("hsts"), small_population.urls, party_keys)
    yield h
    h.close()


def test_hsts_is_sent_over_tls_only(harness: Harness) -> None:
    secure = harness.client.get("/healthz", base_url="https://gateway.example")
    assert secure.headers["Strict-Transport-Security"] == HSTS
    plain = harness.client.get("/healthz")
    assert "Strict-Transport-Security" not in plain.headers


@pytest.mark.parametrize(
    ("method", "path", "kind"),
    [
        ("GET", "/healthz", "application/json"),
        ("GET", "/v1/claims", "application/problem+json"),  # no token: 401
        ("POST", "/v1/checks", "application/problem+json"),
        ("GET", "/no-such-page", "application/problem+json"),
        ("GET", "/docs", "text/html"),
        ("GET", "/me/login", "text/html"),
        ("GET", "/officer/", None),  # a redirect to the login page
        ("GET", "/.well-known/jwks.json", "application/json"),
    ],
)
def test_every_response_carries_the_security_headers(
    harness: Harness, method: str, path: str, kind: str | None
) -> None:
    resp = harness.client.open(path, method=method)
    if kind is not None:
        assert resp.mimetype == kind, (path, resp.status_code)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    if resp.mimetype == "text/html":
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src" in csp and "frame-ancestors 'none'" in csp


def test_html_without_a_policy_of_its_own_gets_the_locked_down_one() -> None:
    from flask import Flask

    from tongban.exposure import DEFAULT_HTML_CSP, install_security_headers

    app = Flask("t")
    install_security_headers(app)
    app.add_url_rule("/", "x", lambda: "<p>hi</p>")
    resp = app.test_client().get("/")
    assert resp.headers["Content-Security-Policy"] == DEFAULT_HTML_CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
