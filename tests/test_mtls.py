"""Mutual TLS 1.3 between the gateway's department client and an adapter, over real
loopback sockets with real certificates (tongban/pki.py, tongban/tls.py, tongban/serve.py,
adapters/client.py).

The adapter is police's, over the small SQLite population, served by tongban.serve with
its certificate and the client pinned to ``gateway``. Refusals are checked on both ends:
what the peer sees, and the one line the refusing side logs."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Generated
from tests.test_adapter_http import DEPT, _call, _client, _core, _expected
from tongban import pki
from tongban.adapters.client import HttpTransport
from tongban.adapters.client import health as adapter_health
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.protocol import AdapterCore, RequestSigner
from tongban.adapters.service import create_app
from tongban.adapters.store import DepartmentStore
from tongban.primitives.errors import DepartmentUnavailable
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.metrics_auth import MetricsCredential
from tongban.serve import Server, make_server
from tongban.tls import (
    TLSFiles,
    client_context,
    reloading_client_context,
    server_context,
)


@dataclass(frozen=True)
class Pki:
    dir: Path  # the deployment's CA, gateway, police, civil
    other: Path  # another CA, with its own "gateway"
    stale: Path  # the deployment's CA, expired gateway and police certificates

    def files(self, name: str, where: Path | None = None) -> TLSFiles:
        return pki.files(where or self.dir, name)


def _copy_ca(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in ("ca.pem", "ca.key"):
        shutil.copy2(src / name, dst / name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    made = Pki(root / "pki", root / "other", root / "stale")
    pki.ensure(made.dir, ["gateway", DEPT, "civil"])
    pki.ensure(made.other, ["gateway"])
    _copy_ca(made.dir, made.stale)
    ended = dt.datetime.now(dt.UTC) - dt.timedelta(days=40)
    for name in ("gateway", DEPT):
        pki.issue(made.stale, name, days=10, valid_from=ended)
    return made


@pytest.fixture(scope="module")
def core(small_population: Generated, party_keys: dict[str, SM2PrivateKey]) -> Iterator[Any]:
    store = DepartmentStore(DEPARTMENTS[DEPT], small_population.urls[DEPT])
    yield _core(store, party_keys[DEPT], party_keys["gateway"])
    store.dispose()


@pytest.fixture(scope="module")
def row(small_population: Generated) -> dict[str, Any]:
    return small_population.subjects()[0]


@pytest.fixture(scope="module")
def signer(party_keys: dict[str, SM2PrivateKey]) -> RequestSigner:
    return RequestSigner(party_keys["gateway"])


@pytest.fixture
def tls_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="tongban")
    return caplog


@contextmanager
def adapter(
    app: Flask, files: TLSFiles, *, check_every: float = 1.0, keepalive: float = 5.0
) -> Iterator[tuple[str, Server]]:
    """``app`` served over mutual TLS by tongban.serve, the client pinned to gateway."""
    context = server_context(
        files.cert, files.key, files.ca, pinned_client="gateway", check_every=check_every
    )
    server = make_server("127.0.0.1", 0, app, tls=context, name=DEPT, keepalive_timeout=keepalive)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}", server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _wait_for(caplog: pytest.LogCaptureFixture, *parts: str, timeout: float = 3.0) -> str:
    """The first log line holding every one of ``parts`` (the server logs from its thread)."""
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            line = record.getMessage()
            if all(p in line for p in parts):
                return line
        if time.monotonic() > deadline:
            lines = "\n".join(r.getMessage() for r in caplog.records)
            raise AssertionError(f"no log line with {parts}; got:\n{lines}")
        time.sleep(0.02)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw_tls(url: str, context: ssl.SSLContext, server_hostname: str = DEPT) -> bytes:
    """Connect, send a request, return what came back (b"" when the server hung up)."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=3) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: police\r\n\r\n")
                return tls.recv(4096)
        except (ssl.SSLError, ConnectionError):
            return b""


def _anonymous(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


# --- the happy path ---------------------------------------------------------------------


def test_the_gateway_reaches_the_adapter_over_mutual_tls(
    core: AdapterCore,
    certs: Pki,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    with adapter(create_app(core), certs.files(DEPT)) as (url, server):
        transport = HttpTransport({DEPT: url}, tls=certs.files("gateway"))
        try:
            client = _client(signer, transport, party_keys)
            answer = client.evaluate(DEPT, _call(row))
            health = adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()

    assert answer.result == _expected(row)
    assert health["status"] == "ok"
    assert server.refusals == 0


# --- what the adapter refuses -------------------------------------------------------------


def test_the_adapter_refuses_a_client_without_a_certificate(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    with adapter(create_app(core), certs.files(DEPT)) as (url, server):
        assert _raw_tls(url, _anonymous(certs.dir / "ca.pem")) == b""
        line = _wait_for(tls_log, "police refused a TLS connection", "sent no certificate")
        assert server.refusals == 1
    assert line.startswith("police refused a TLS connection from 127.0.0.1:")


def test_the_adapter_refuses_a_certificate_from_another_ca(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    impostor = certs.files("gateway", certs.other)
    with adapter(create_app(core), certs.files(DEPT)) as (url, _):
        # The impostor trusts the deployment's CA (it verifies the adapter) but holds a
        # "gateway" certificate from its own.
        context = client_context(impostor.cert, impostor.key, certs.dir / "ca.pem")
        transport = HttpTransport({DEPT: url}, tls=context)
        try:
            with pytest.raises(DepartmentUnavailable):
                adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()
        _wait_for(tls_log, "the client's certificate was refused", "not issued by this")


def test_the_adapter_refuses_plain_http(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    with adapter(create_app(core), certs.files(DEPT)) as (url, _):
        with socket.create_connection(("127.0.0.1", _port(url)), timeout=3) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: police\r\n\r\n")
            try:
                answer = raw.recv(4096)
            except ConnectionResetError:
                answer = b""
        assert b"HTTP/1" not in answer  # nothing is served in the clear
        transport = HttpTransport({DEPT: url.replace("https://", "http://")})
        try:
            with pytest.raises(DepartmentUnavailable):
                adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()
        _wait_for(tls_log, "police refused a TLS connection", "plain HTTP sent to a TLS port")


def test_the_adapter_refuses_a_client_certificate_naming_another_party(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    # civil's certificate is genuine, from the right CA: it is not the gateway's.
    with adapter(create_app(core), certs.files(DEPT)) as (url, _):
        transport = HttpTransport({DEPT: url}, tls=certs.files("civil"))
        try:
            with pytest.raises(DepartmentUnavailable):
                adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()
        line = _wait_for(tls_log, "police refused", "is not the pinned client gateway")
    assert "the client's certificate CN=civil (serial " in line


def test_the_adapter_refuses_tls_below_1_3(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    gateway = certs.files("gateway")
    context = ssl.create_default_context(cafile=str(gateway.ca))
    context.load_cert_chain(gateway.cert, gateway.key)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with adapter(create_app(core), certs.files(DEPT)) as (url, _):
        assert _raw_tls(url, context) == b""
        _wait_for(tls_log, "police refused", "TLS 1.3")


def test_an_expired_client_certificate_is_refused_naming_it_and_its_expiry(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    stale = certs.files("gateway", certs.stale)
    ended = pki.status(stale.cert).to_json()["not_after"]
    with adapter(create_app(core), certs.files(DEPT)) as (url, _):
        transport = HttpTransport({DEPT: url}, tls=stale)
        try:
            with pytest.raises(DepartmentUnavailable):
                adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()
        line = _wait_for(tls_log, "police refused", "expired at")
    serial = pki.status(stale.cert).serial
    assert f"the client's certificate CN=gateway (serial {serial}) expired at {ended}" in line


# --- what the gateway refuses ---------------------------------------------------------------


def test_the_gateway_refuses_an_adapter_whose_certificate_names_another_department(
    core: AdapterCore,
    certs: Pki,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
    tls_log: pytest.LogCaptureFixture,
):
    # Whoever answers at police's address holds civil's (genuine) certificate.
    with adapter(create_app(core), certs.files("civil")) as (url, _):
        transport = HttpTransport({DEPT: url}, tls=certs.files("gateway"))
        try:
            client = _client(signer, transport, party_keys)
            with pytest.raises(DepartmentUnavailable):
                client.evaluate(DEPT, _call(row))
            assert client.health(DEPT) == {"reachable": False}
        finally:
            transport.close()
    line = _wait_for(tls_log, "refused the TLS connection to department police")
    assert "does not name the party asked for" in line and "'police'" in line


def test_the_gateway_refuses_an_expired_adapter_certificate(
    core: AdapterCore, certs: Pki, tls_log: pytest.LogCaptureFixture
):
    stale = certs.files(DEPT, certs.stale)
    status = pki.status(stale.cert)
    with adapter(create_app(core), stale) as (url, _):
        transport = HttpTransport({DEPT: url}, tls=certs.files("gateway"))
        try:
            with pytest.raises(DepartmentUnavailable):
                adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()
    line = _wait_for(tls_log, "refused the TLS connection to department police")
    assert (
        f"the server's certificate CN=police (serial {status.serial}) expired at "
        f"{status.to_json()['not_after']}"
    ) in line


# --- rotation, sessions, keep-alive ---------------------------------------------------------


def _served_serial(url: str, gateway: TLSFiles) -> str:
    context = client_context(gateway.cert, gateway.key, gateway.ca)
    with (
        socket.create_connection(("127.0.0.1", _port(url)), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname=DEPT) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def test_replacing_the_adapter_certificate_while_checks_run_loses_none(
    core: AdapterCore,
    certs: Pki,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    small_population: Generated,
    tmp_path: Path,
):
    rotating = tmp_path / "pki"
    _copy_ca(certs.dir, rotating)
    first = pki.issue(rotating, DEPT)
    rows = small_population.subjects()[:20]
    failures: list[BaseException] = []
    answers: list[bool] = []
    stop = threading.Event()

    with adapter(create_app(core), pki.files(rotating, DEPT), check_every=0.05) as (url, srv):
        # Without keep-alive reuse every check is a new connection and a new handshake,
        # so each rotation lands between, or during, handshakes.
        transports = [
            HttpTransport({DEPT: url}, tls=certs.files("gateway"), keepalive_expiry=expiry)
            for expiry in (0.0, 0.0, 60.0)
        ]

        def loop(transport: HttpTransport) -> None:
            client = _client(signer, transport, party_keys)
            i = 0
            while not stop.is_set():
                r = rows[i % len(rows)]
                i += 1
                try:
                    answers.append(client.evaluate(DEPT, _call(r)).result == _expected(r))
                except BaseException as exc:
                    failures.append(exc)

        threads = [threading.Thread(target=loop, args=(t,)) for t in transports]
        for t in threads:
            t.start()
        serials = {first.status.serial}
        try:
            for _ in range(5):
                time.sleep(0.25)
                serials.add(pki.issue(rotating, DEPT, renew=True).status.serial)
            time.sleep(0.3)
            served = _served_serial(url, certs.files("gateway"))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
            for transport in transports:
                transport.close()
        reloads = srv.tls.reloader.reloads  # type: ignore[union-attr]
        refusals = srv.refusals

    assert failures == []
    assert len(answers) > 50 and all(answers)
    assert served == pki.status(rotating / f"{DEPT}.pem").serial != first.status.serial
    assert reloads >= 2 and len(serials) == 6
    assert refusals == 0


def _echo_app() -> Flask:
    """An adapter stand-in whose /healthz says which client certificate it was shown."""
    app = Flask("echo")

    @app.get("/healthz")
    def healthz() -> Any:
        from cryptography import x509

        pem = request.environ.get("SSL_CLIENT_CERT", "")
        cert = x509.load_pem_x509_certificate(pem.encode())
        return jsonify(
            status="ok",
            client_serial=f"{cert.serial_number:x}",
            client_port=request.environ["REMOTE_PORT"],  # a new port: a new connection
        )

    return app


def test_the_gateway_picks_up_its_replaced_certificate(certs: Pki, tmp_path: Path):
    rotating = tmp_path / "pki"
    _copy_ca(certs.dir, rotating)
    first = pki.issue(rotating, "gateway")
    with adapter(_echo_app(), certs.files(DEPT)) as (url, _):
        context = reloading_client_context(pki.files(rotating, "gateway"), check_every=0.05)
        transport = HttpTransport({DEPT: url}, tls=context)
        try:
            assert adapter_health(transport, DEPT, 2.0)["client_serial"] == first.status.serial
            renewed = pki.issue(rotating, "gateway", renew=True)
            time.sleep(0.1)
            seen = adapter_health(transport, DEPT, 2.0)["client_serial"]
        finally:
            transport.close()
    assert seen == renewed.status.serial


def test_tls_sessions_are_resumed_on_new_connections(certs: Pki):
    gateway = certs.files("gateway")
    context = client_context(gateway.cert, gateway.key, gateway.ca)
    with adapter(_echo_app(), certs.files(DEPT)) as (url, _):
        transport = HttpTransport({DEPT: url}, tls=context, keepalive_expiry=0.0)
        try:
            for _ in range(3):
                adapter_health(transport, DEPT, 2.0)
        finally:
            transport.close()
    assert getattr(context, "resumed", 0) >= 2


class _KeepAliveHandler(BaseHTTPRequestHandler):
    """A server that keeps connections alive (werkzeug closes each after its response):
    /healthz answers with the client's port, so a new connection shows."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "client_port": self.client_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def keep_alive_server(context: ssl.SSLContext | None) -> Iterator[str]:
    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[socket.socket, Any]:
            sock, address = super().get_request()
            if context is not None:
                sock = context.wrap_socket(sock, server_side=True)
            return sock, address

    server = Server(("127.0.0.1", 0), _KeepAliveHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        scheme = "http" if context is None else "https"
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_idle_connections_are_dropped_before_the_server_would(certs: Pki, scheme: str):
    police = certs.files(DEPT)
    context = (
        server_context(police.cert, police.key, police.ca, pinned_client="gateway")
        if scheme == "https"
        else None
    )
    with keep_alive_server(context) as url:
        transport = HttpTransport({DEPT: url}, tls=certs.files("gateway"), keepalive_expiry=0.3)
        try:
            # Reused while fresh.
            first = adapter_health(transport, DEPT, 2.0)["client_port"]
            assert (
                adapter_health(transport, DEPT, 2.0)["client_port"] == first
            )  # reused while fresh
            time.sleep(0.4)
            # Idle past the expiry: closed by the client, a new connection instead.
            assert adapter_health(transport, DEPT, 2.0)["client_port"] != first
        finally:
            transport.close()


def test_the_server_closes_idle_connections_quietly(certs: Pki, tls_log: pytest.LogCaptureFixture):
    gateway = certs.files("gateway")
    context = client_context(gateway.cert, gateway.key, gateway.ca)
    with (
        adapter(_echo_app(), certs.files(DEPT), keepalive=0.3) as (url, _),
        socket.create_connection(("127.0.0.1", _port(url)), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname=DEPT) as tls,
    ):
        started = time.monotonic()
        assert tls.recv(4096) == b""  # nothing asked: the server hung up
        waited = time.monotonic() - started
    assert 0.2 < waited < 2.0
    assert not [r for r in tls_log.records if r.levelno >= logging.ERROR]


# --- expiry in /healthz and /metrics ----------------------------------------------------------


def test_healthz_and_metrics_show_the_certificate_expiry(
    core: AdapterCore, certs: Pki, tmp_path: Path
):
    short = tmp_path / "pki"
    _copy_ca(certs.dir, short)
    soon = pki.issue(short, DEPT, days=12)
    for cert, warned in ((soon.files.cert, True), (certs.files(DEPT).cert, False)):
        status = pki.status(cert)
        operator = MetricsCredential("m" * 43)  # the operator's metrics token
        http = create_app(core, tls_status=pki.status_source(cert), metrics=operator).test_client()

        body = http.get("/healthz").get_json()
        metrics = {
            (s.name, s.labels.get("certificate")): s.value
            for family in text_string_to_metric_families(
                http.get("/metrics", headers={"Authorization": "Bearer " + "m" * 43}).text
            )
            for s in family.samples
        }

        shown = body["certificate"]
        assert shown["subject"] == DEPT
        assert shown["not_after"] == status.to_json()["not_after"]
        assert shown["expires_soon"] is warned
        assert (shown["warning"] is not None) is warned
        if warned:
            assert "expires in 11 days" in shown["warning"]
        assert metrics[("tongban_tls_certificate_expires_soon", DEPT)] == (1.0 if warned else 0.0)
        not_after = metrics[("tongban_tls_certificate_not_after_seconds", DEPT)]
        assert not_after == status.not_after.timestamp()


# --- under gunicorn ---------------------------------------------------------------------

_GUNICORN_CONF = """\
from pathlib import Path

from tongban import pki
from tongban.tls import gunicorn_ssl_context

_files = pki.files(Path({pki!r}), {name!r})
certfile, keyfile = str(_files.cert), str(_files.key)
ssl_context = gunicorn_ssl_context(_files, pinned_client="gateway")
"""

_WSGI_APP = """\
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


@contextmanager
def _gunicorn(certs: Pki, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A gunicorn server configured as docs/transport.md ("Under gunicorn") says, with the
    police certificate; its URL and its log."""
    import os
    import subprocess
    import sys

    conf = tmp_path / "gunicorn_conf.py"
    conf.write_text(_GUNICORN_CONF.format(pki=str(certs.dir), name=DEPT))
    (tmp_path / "tiny_app.py").write_text(_WSGI_APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = tmp_path / "gunicorn.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    argv = [str(Path(sys.executable).parent / "gunicorn"), "-c", str(conf),
            "-b", f"127.0.0.1:{port}", "-w", "1", "-k", "gthread", "--threads", "2",
            "--error-logfile", str(log), "tiny_app:app"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.1)
        yield f"https://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_gunicorn_with_the_hook_pins_the_gateway_certificate(certs: Pki, tmp_path: Path):
    """The production gunicorn configuration: the gateway's certificate gets through; no
    certificate, another party's certificate of the same CA, and a "gateway" of another
    CA are refused at the handshake, and gunicorn's log says why."""
    ca = certs.dir / "ca.pem"
    own = certs.files("gateway")
    civil = certs.files("civil")
    impostor = certs.files("gateway", certs.other)
    with _gunicorn(certs, tmp_path) as (url, log):
        ok = _raw_tls(url, client_context(own.cert, own.key, ca))
        assert ok.startswith(b"HTTP/1.1 200"), ok
        assert _raw_tls(url, _anonymous(ca)) == b""
        assert _raw_tls(url, client_context(civil.cert, civil.key, ca)) == b""
        assert _raw_tls(url, client_context(impostor.cert, impostor.key, ca)) == b""
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "CERTIFICATE_VERIFY_FAILED" in text:
                break
            time.sleep(0.1)
        # gunicorn makes the handshake itself: OpenSSL's reason for the first and the
        # last, the pin's sentence for the certificate naming another party.
        assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in text, text
        assert "CN=civil" in text and "is not the pinned client gateway" in text, text
        assert "CERTIFICATE_VERIFY_FAILED" in text, text
