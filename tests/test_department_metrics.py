"""The adapter's ``GET /metrics``: a department file's defects (several rows, text) are
answered ``unknown`` over the adapter's HTTP API, logged without the subject and counted in
``tongban_department_file_defects_total``; the source's readiness is
``tongban_department_source_ready``. Only the metrics token reads them: without it, neither
``/metrics`` (401) nor ``/healthz`` changes when a request hits a defect. On SQLite,
PostgreSQL and MariaDB, through a real loopback server, and under gunicorn through
``tongban.wsgi:department_file()``.

The legacy tables, the health file and the key directory are those of
tests/test_department_file_serving.py. PostgreSQL and MariaDB must be up: these tests fail
rather than skip without them."""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Generated
from tests.test_adapter_http import serving
from tests.test_department_file_serving import (
    BACKENDS,
    CHILD,
    CHILD_NO_CERT,
    EVERYONE,
    HEALTH,
    KIND,
    MOTHER,
    UNREACHABLE,
    Legacy,
    _env,
    _free_port,
    _wait_up,
    close_legacy,
    fifteen,
    keyed_dir,
    open_legacy,
)
from tongban.adapters.client import DepartmentClient, HttpTransport
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.deptfile import load_department_file
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.protocol import AdapterCore, RequestSigner
from tongban.adapters.service import create_app
from tongban.adapters.store import DepartmentStore
from tongban.boundary import UsageError
from tongban.config import Settings
from tongban.keys import KeyRing
from tongban.primitives.errors import PROBLEM_BASE
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.metrics_auth import TOKEN_FILE, MetricsCredential
from tongban.primitives.wire import PredicateCall, Tri
from tongban.provision import init_data_dir
from tongban.wiring import build_file_adapter
from tongban.wsgi import DEPARTMENT_FILE_VAR, department_file

DEFECTS = "tongban_department_file_defects_total"
READY = "tongban_department_source_ready"
# Two predicates whose SQL is a defect of the file: MOTHER has two certificates (two rows);
# CHILD's status is text.
DEFECTIVE = """
[predicates.children_rows]
description = "A defect: one row per child instead of one value."
sql = "SELECT XSESFZH FROM {cert} WHERE MQSFZH IN (:subject, :subject15)"

[predicates.status_text]
description = "A defect: text instead of a number."
sql = "SELECT 'yes' FROM {cert} WHERE XSESFZH IN (:subject, :subject15)"
"""
FORMS = {n for p in EVERYONE for n in (p, fifteen(p))}
# The operator's metrics token: /metrics answers nobody else.
TOKEN = secrets.token_urlsafe(32)
METRICS = MetricsCredential(TOKEN)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LONG_DIGITS = re.compile(r"[0-9]{11,}")


def defective_file(db: Legacy, *, url: str | None = None) -> Path:
    """The legacy health file, with the two defective predicates added."""
    body = HEALTH.format(url=url or db.url, cert=db.cert) + DEFECTIVE.format(cert=db.cert)
    return db.write("health-defective", body)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def assert_nothing_personal(text: str) -> None:
    assert not any(n in text for n in FORMS)
    for (_name, labels), _value in samples(text).items():
        for _label, v in labels:
            assert not LONG_DIGITS.search(v), v


@pytest.fixture(params=BACKENDS)
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Legacy]:
    db = open_legacy(request.param, tmp_path)
    try:
        yield db
    finally:
        close_legacy(db)


def _adapter(
    tmp: Path, party_keys: dict[str, SM2PrivateKey], path: Path
) -> tuple[AdapterCore, Flask]:
    settings = Settings(data_dir=keyed_dir(tmp, party_keys))
    core, witness = build_file_adapter(settings, load_department_file(path))
    return core, create_app(core, witness, metrics=METRICS)


def _auth_for(data: Path) -> dict[str, str]:
    """The bearer header for the token the adapter of ``data`` made or found."""
    token = (data / "keys" / TOKEN_FILE).read_text(encoding="utf-8").strip()
    return {"Authorization": f"Bearer {token}"}


def test_a_defect_answers_unknown_over_http_and_is_counted_in_the_metric(
    legacy: Legacy,
    party_keys: dict[str, SM2PrivateKey],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    core, app = _adapter(tmp_path / "data", party_keys, defective_file(legacy))
    with ExitStack() as stack:
        stack.callback(core.evaluator.dispose)
        url = stack.enter_context(serving(app))
        transport = HttpTransport({"health": url})
        stack.callback(transport.close)
        client = DepartmentClient(
            RequestSigner(party_keys["gateway"]),
            transport,
            {"health": party_keys["health"].public_key},
        )
        http = stack.enter_context(httpx.Client(base_url=url, trust_env=False))

        def scrape() -> str:
            resp = http.get("/metrics", headers=AUTH)
            assert resp.status_code == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert resp.headers["Cache-Control"] == "no-store"
            return resp.text

        def ask(predicate: str, subject: str) -> Tri:
            return client.evaluate("health", PredicateCall(predicate, subject)).result

        def public() -> tuple[int, str, dict[str, object]]:
            """What anyone reaching the port reads: /metrics without the token, /healthz."""
            refused = http.get("/metrics")
            assert refused.json()["type"] == PROBLEM_BASE + "metrics-unauthenticated"
            health = http.get("/healthz").json()
            health.pop("as_of")  # the time of the read, for a live source
            return refused.status_code, refused.json()["detail"], health

        before, seen = scrape(), public()
        assert seen[0] == 401
        assert value(before, DEFECTS, department="health") == 0
        assert value(before, READY, department="health", kind=KIND[legacy.kind]) == 1

        assert ask("children_rows", MOTHER) is Tri.UNKNOWN  # two rows
        assert value(scrape(), DEFECTS, department="health") == 1
        assert ask("status_text", CHILD) is Tri.UNKNOWN  # text
        assert value(scrape(), DEFECTS, department="health") == 2
        # A well-formed answer, and no row at all (a "no"), are no defects.
        assert ask("birth_certificate_issued", CHILD) is Tri.TRUE
        assert ask("children_rows", CHILD_NO_CERT) is Tri.FALSE
        # A batch counts each subject whose answer is a defect.
        batch = client.evaluate_batch("health", "children_rows", {}, [MOTHER, CHILD_NO_CERT])
        assert batch == [Tri.UNKNOWN, Tri.FALSE]

        after = scrape()
        assert value(after, DEFECTS, department="health") == 3
        assert value(after, READY, department="health", kind=KIND[legacy.kind]) == 1
        evaluate = {"method": "POST", "route": "/v1/evaluate", "status": "200"}
        assert value(after, "tongban_http_requests_total", **evaluate) == 5
        assert value(after, "tongban_http_requests_total", method="GET", route="/metrics",
                      status="200") >= 3  # fmt: skip
        assert_nothing_personal(after)
        # Without the token nothing tells a defect (an unknown) from a yes or a no: the
        # refusal and /healthz read the same after the defects as before them.
        assert public() == seen
        assert "defects" not in seen[2]["source"]  # type: ignore[operator]

    messages = [r.getMessage() for r in caplog.get_records("call")]
    defects = [m for m in messages if "defect" in m]
    assert len(defects) == 3, messages
    assert "children_rows" in defects[0] and "several rows" in defects[0]
    assert "status_text" in defects[1]
    for message in messages:
        assert not any(n in message for n in FORMS), message


def test_an_unreachable_source_is_not_ready_in_the_metric(
    party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    path = tmp_path / "health.toml"
    body = HEALTH.format(url=UNREACHABLE["postgresql"], cert="csyxzm") + DEFECTIVE.format(
        cert="csyxzm"
    )
    path.write_text(body, encoding="utf-8")
    core, app = _adapter(tmp_path / "data", party_keys, path)
    try:
        assert app.test_client().get("/metrics").status_code == 401
        resp = app.test_client().get("/metrics", headers=AUTH)
        assert resp.status_code == 200
        text = resp.get_data(as_text=True)
        assert value(text, READY, department="health", kind="postgresql") == 0
        assert value(text, DEFECTS, department="health") == 0  # unreachable is no defect
        assert "s3cret" not in text and "reader" not in text
        # An unmatched path is counted by its template, never by what was sent.
        app.test_client().get(f"/v1/people/{MOTHER}")
        text = app.test_client().get("/metrics", headers=AUTH).get_data(as_text=True)
        assert value(text, "tongban_http_requests_total", method="GET", route="<unmatched>",
                     status="404") == 1  # fmt: skip
        assert_nothing_personal(text)
    finally:
        core.evaluator.dispose()


def test_openmetrics_when_the_scraper_asks(
    party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    path = tmp_path / "health.toml"
    path.write_text(HEALTH.format(url=UNREACHABLE["sqlite"], cert="csyxzm"), encoding="utf-8")
    core, app = _adapter(tmp_path / "data", party_keys, path)
    try:
        resp = app.test_client().get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0", **AUTH},
        )
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.get_data(as_text=True).rstrip().endswith("# EOF")
    finally:
        core.evaluator.dispose()


def test_a_managed_store_exports_the_same_metrics(
    small_population: Generated, party_keys: dict[str, SM2PrivateKey]
) -> None:
    store = DepartmentStore(DEPARTMENTS["police"], small_population.urls["police"])
    gateway = party_keys["gateway"].public_key
    core = AdapterCore(Evaluator(store), party_keys["police"], {gateway.key_id: gateway})
    try:
        http = create_app(core, metrics=METRICS).test_client()
        assert http.get("/metrics").status_code == 401
        text = http.get("/metrics", headers=AUTH).get_data(as_text=True)
        assert value(text, READY, department="police", kind="managed") == 1
        assert value(text, DEFECTS, department="police") == 0
    finally:
        store.dispose()


# --- WSGI --------------------------------------------------------------------------------


@pytest.fixture
def sqlite_legacy(tmp_path: Path) -> Iterator[Legacy]:
    db = open_legacy("sqlite", tmp_path)
    try:
        yield db
    finally:
        close_legacy(db)


def test_wsgi_department_file_reads_the_file_from_the_environment(
    sqlite_legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    data = keyed_dir(tmp_path / "data", party_keys)
    path = defective_file(sqlite_legacy, url="${LEGACY_HEALTH_URL}")
    env = {
        "TONGBAN_DATA_DIR": str(data),
        DEPARTMENT_FILE_VAR: str(path),
        "LEGACY_HEALTH_URL": sqlite_legacy.url,
    }
    with pytest.raises(UsageError, match=DEPARTMENT_FILE_VAR):
        department_file(env={"TONGBAN_DATA_DIR": str(data)})
    named = department_file(str(path), env={**env, DEPARTMENT_FILE_VAR: ""})  # the argument
    for app in (department_file(env=env), named):
        try:
            client = app.test_client()
            health = client.get("/healthz").get_json()
            assert health["ready"] is True and health["source"]["kind"] == "sqlite"
            assert client.get("/metrics").status_code == 401
            text = client.get("/metrics", headers=_auth_for(data)).get_data(as_text=True)
            assert value(text, READY, department="health", kind="sqlite") == 1
        finally:
            app.extensions["tongban.adapter"].evaluator.dispose()


def test_gunicorn_serves_a_department_file_and_its_metrics(
    sqlite_legacy: Legacy, tmp_path: Path
) -> None:
    """The production way: gunicorn, one gthread worker, the file named by
    TONGBAN_DEPARTMENT_FILE and its source by a ``${VAR}`` the file references."""
    db = sqlite_legacy
    data = tmp_path / "data"
    init_data_dir(data)
    path = defective_file(db, url="${LEGACY_HEALTH_URL}")
    port, log = _free_port(), tmp_path / "gunicorn.log"
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    env = _env(
        TONGBAN_DATA_DIR=str(data), LEGACY_HEALTH_URL=db.url, **{DEPARTMENT_FILE_VAR: str(path)}
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [gunicorn, "--log-level", "warning", "--graceful-timeout", "5", "-k", "gthread",
             "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}",
             "tongban.wsgi:department_file()"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ring = KeyRing(data / "keys")
    transport = HttpTransport({"health": url})
    client = DepartmentClient(
        RequestSigner(ring.private("gateway")), transport, {"health": ring.public("health")}
    )
    try:
        health = _wait_up(proc, url, log)
        assert health.status_code == 200, health.text
        assert health.json()["source"]["kind"] == "sqlite"
        call = PredicateCall("birth_certificate_issued", CHILD)
        assert client.evaluate("health", call).result is Tri.TRUE
        call = PredicateCall("children_rows", MOTHER)
        assert client.evaluate("health", call).result is Tri.UNKNOWN
        refused = httpx.get(url + "/metrics", timeout=5, trust_env=False)
        assert refused.status_code == 401
        assert "defects" not in httpx.get(url + "/healthz", trust_env=False).json()["source"]
        text = httpx.get(url + "/metrics", headers=_auth_for(data), timeout=5, trust_env=False).text
        assert value(text, DEFECTS, department="health") == 1
        assert value(text, READY, department="health", kind="sqlite") == 1
        assert_nothing_personal(text)
    finally:
        transport.close()
        proc.terminate()
        proc.wait(timeout=15)
    output = log.read_text(encoding="utf-8")
    assert "children_rows: defect: returned several rows" in output, output
    assert not any(n in output for n in FORMS), output
