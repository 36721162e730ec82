"""A department served from its department file, end to end: a legacy-style database on
SQLite, PostgreSQL and MariaDB, two files (health and police) replacing the built-in
departments, real adapter cores behind a real gateway, and one real ``tongban adapter
serve --department-file`` process.

Asserted: checks answer per the data; an UPDATE changes the very next answer; a renamed
table is ``undetermined`` (never ``no``, never a 500) and renaming it back heals without a
restart; every answer carries ``as_of``; /healthz (adapter and gateway) shows the source
kind and readiness, also for a source unreachable at start-up; claims are validated
against the files; a file without statistics refuses them cleanly, one declaring a
registered statistic contributes it; no ID number reaches a log line.

PostgreSQL and MariaDB must be up (``service mariadb start``): these tests fail rather
than skip without them."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, create_engine, text

from tests.conftest import PG_URL
from tests.gateway_harness import CLIENTS, PUBLIC_URL, Harness, jws_parts
from tongban.adapters.client import DepartmentClient, HttpTransport, InProcessTransport
from tongban.adapters.deptfile import load_department_file
from tongban.adapters.file_source import FileSource
from tongban.adapters.protocol import AdapterCore, RequestSigner, seal_request
from tongban.adapters.service import create_app as create_adapter_app
from tongban.boundary import CommandFailed, UsageError
from tongban.config import Settings
from tongban.gateway.app import create_app
from tongban.keys import KeyRing
from tongban.primitives.envelope import Sealer
from tongban.primitives.gm import SM2PrivateKey, save_private_key
from tongban.primitives.idnumber import make_id
from tongban.primitives.wire import PredicateCall, Tri
from tongban.provision import init_data_dir, migrate
from tongban.wiring import build_file_adapter, build_gateway

MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
BACKENDS = ("sqlite", "postgresql", "mariadb")
KIND = {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mysql"}
REGION = "110105"
DISTRICTS = ["150102", "150105", "150203", "150403", "150602", "150622", "110105", "110108"]


def fifteen(number: str) -> str:
    return number[:6] + number[8:17]


# The people, and how the legacy systems stored them.
MOTHER = make_id(REGION, dt.date(1988, 2, 3), 31)  # household records: 15 digits (1980s)
CHILD = make_id(REGION, dt.date(2021, 3, 4), 32)  # certificate and household: a "yes"
CHILD_NO_CERT = make_id(REGION, dt.date(2022, 5, 6), 33)  # household only: a "no"
CHILD_ELSEWHERE = make_id(REGION, dt.date(2023, 7, 8), 34)  # certificate only: a "no"
EVERYONE = (MOTHER, CHILD, CHILD_NO_CERT, CHILD_ELSEWHERE)

CREATE = (
    """CREATE TABLE {cert} (
  ID INTEGER PRIMARY KEY,
  XSESFZH VARCHAR(18) NOT NULL,
  MQSFZH VARCHAR(18) NOT NULL,
  CSRQ CHAR(8) NOT NULL,
  QFRQ CHAR(8) NOT NULL,
  ZT CHAR(1) NOT NULL,
  SCBZ CHAR(1) NOT NULL
)""",
    """CREATE TABLE {hh} (
  ID INTEGER PRIMARY KEY,
  GMSFHM VARCHAR(18) NOT NULL,
  HH VARCHAR(12) NOT NULL,
  XZQH CHAR(6) NOT NULL,
  YHZGX CHAR(2) NOT NULL,
  ZXBZ CHAR(1) NOT NULL
)""",
)
CERTS = [
    (1, CHILD, fifteen(MOTHER), "20210304", "20210310", "1", "0"),
    (2, CHILD_ELSEWHERE, fifteen(MOTHER), "20230708", "20230712", "1", "0"),
]
HOUSEHOLD = [
    (1, fifteen(MOTHER), "H0001", "150102", "01", "0"),
    (2, CHILD, "H0001", "150102", "03", "0"),
    (3, CHILD_NO_CERT, "H0001", "150102", "03", "0"),
]

HEALTH = """\
name = "health"
title = "卫健委 Health commission (legacy birth registry)"
source = "{url}"
statement_timeout_ms = 3000

[predicates.birth_certificate_issued]
description = "The subject, as a child, has a medical birth certificate."
sql = '''
SELECT COUNT(*) FROM {cert}
 WHERE XSESFZH IN (:subject, :subject15) AND ZT = '1' AND SCBZ = '0'
   AND QFRQ <> '' AND QFRQ <= :today_yyyymmdd
'''

[predicates.children_at_least_youngest_under]
params = {{ min_children = ["2", "3"], youngest_under_years = ["3", "6"] }}
sql = '''
SELECT CASE WHEN COUNT(*) >= CAST(:min_children AS DECIMAL)
             AND MAX(CAST(CSRQ AS DECIMAL)) >
                 CAST(:today_yyyymmdd AS DECIMAL) - CAST(:youngest_under_years AS DECIMAL) * 10000
            THEN 1 ELSE 0 END
  FROM {cert}
 WHERE MQSFZH IN (:subject, :subject15) AND ZT = '1' AND SCBZ = '0'
'''
"""

POLICE = """\
name = "police"
title = "公安 Household registration (legacy)"
source = "{url}"

[predicates.registered_in_household]
sql = "SELECT COUNT(*) FROM {hh} WHERE GMSFHM IN (:subject, :subject15) AND ZXBZ = '0'"

[predicates.household_in_district]
params = {{ district = {districts} }}
sql = '''
SELECT COUNT(*) FROM {hh}
 WHERE GMSFHM IN (:subject, :subject15) AND ZXBZ = '0' AND XZQH = :district
'''

[predicates.household_in_province]
params = {{ province = ["15"] }}
sql = '''
SELECT COUNT(*) FROM {hh}
 WHERE GMSFHM IN (:subject, :subject15) AND ZXBZ = '0' AND SUBSTR(XZQH, 1, 2) = :province
'''

[predicates.guardian_of]
related = true
sql = '''
SELECT COUNT(*) FROM {hh} g JOIN {hh} c ON g.HH = c.HH
 WHERE g.GMSFHM IN (:subject, :subject15) AND g.YHZGX = '01' AND g.ZXBZ = '0'
   AND c.GMSFHM IN (:related, :related15) AND c.ZXBZ = '0'
'''
"""

UNREACHABLE = {
    "sqlite": "sqlite:////nonexistent/tongban/legacy.db",
    "postgresql": "postgresql+psycopg://reader:s3cret@127.0.0.1:1/test",
    "mariadb": "mysql+pymysql://reader:s3cret@127.0.0.1:1/test",
}


# --- the legacy database -----------------------------------------------------------------


@dataclass
class Legacy:
    """Both legacy tables on one backend, with an administrator's connection beside the
    adapters' read-only ones."""

    kind: str
    url: str
    admin: Engine
    cert: str
    hh: str
    dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def run(self, sql: str, params: dict[str, object] | None = None) -> None:
        with self.admin.begin() as conn:
            conn.execute(text(sql.format(cert=self.cert, hh=self.hh)), params or {})

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        with self.admin.connect() as conn:
            result = conn.execute(text(f"SELECT * FROM {table} ORDER BY ID"))
            return [tuple(r) for r in result]

    def write(self, name: str, body: str) -> Path:
        path = self.dir / f"{name}.toml"
        path.write_text(body, encoding="utf-8")
        return path

    def department_file(self, which: str, *, url: str | None = None) -> Path:
        template = HEALTH if which == "health" else POLICE
        body = template.format(
            url=url or self.url, cert=self.cert, hh=self.hh, districts=str(DISTRICTS)
        )
        return self.write(f"{which}-{secrets.token_hex(2)}", body)


def server_engine(kind: str, tmp_path: Path) -> tuple[str, Engine]:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
        return url, create_engine(url)
    url, what = (PG_URL, "PostgreSQL") if kind == "postgresql" else (MARIADB_URL, "MariaDB")
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        hint = " (service mariadb start)" if kind == "mariadb" else ""
        pytest.fail(f"{what} at {url} is required for these tests{hint}: {exc}")
    return url, engine


def open_legacy(kind: str, tmp_path: Path) -> Legacy:
    url, admin = server_engine(kind, tmp_path)
    tag = secrets.token_hex(4)
    db = Legacy(kind, url, admin, f"csyxzm_{tag}", f"hjxx_{tag}", tmp_path)
    for create in CREATE:
        db.run(create)
    with admin.begin() as conn:
        conn.execute(
            text(f"INSERT INTO {db.cert} VALUES (:a, :b, :c, :d, :e, :f, :g)"),
            [dict(zip("abcdefg", r, strict=True)) for r in CERTS],
        )
        conn.execute(
            text(f"INSERT INTO {db.hh} VALUES (:a, :b, :c, :d, :e, :f)"),
            [dict(zip("abcdef", r, strict=True)) for r in HOUSEHOLD],
        )
    return db


def close_legacy(db: Legacy) -> None:
    for table in (db.cert, db.hh, f"{db.cert}_gone"):
        db.run(f"DROP TABLE IF EXISTS {table}")
    db.admin.dispose()


@pytest.fixture(params=BACKENDS)
def legacy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Legacy]:
    db = open_legacy(request.param, tmp_path)
    try:
        yield db
    finally:
        close_legacy(db)


@pytest.fixture
def sqlite_legacy(tmp_path: Path) -> Iterator[Legacy]:
    db = open_legacy("sqlite", tmp_path)
    try:
        yield db
    finally:
        close_legacy(db)


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log line of the test, checked afterwards for anything about a person."""
    caplog.set_level(logging.DEBUG)
    yield caplog
    forms = {n for p in EVERYONE for n in (p, fifteen(p))}
    for record in caplog.records:
        message = record.getMessage()
        assert not any(n in message for n in forms), message
        assert "s3cret" not in message, message


# --- a gateway over file departments ------------------------------------------------------


def keyed_dir(tmp: Path, party_keys: dict[str, SM2PrivateKey]) -> Path:
    """A data directory holding the session's keys (gateway and departments)."""
    keys_dir = tmp / "keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    ring = KeyRing(keys_dir)
    for party in ("gateway", "health", "police"):
        save_private_key(party_keys[party], keys_dir / f"{party}.key")
        ring.ensure(party)  # publishes its JWK
    return tmp


@dataclass
class Served:
    harness: Harness
    cores: dict[str, AdapterCore[FileSource]]

    def check(self, subject: str, claim: str = "birth_registered") -> dict[str, Any]:
        body = {"subject": {"id_number": subject}, "claim": claim,
                "purpose": "school_enrollment", "params": {}}  # fmt: skip
        resp = self.harness.check("edu-bureau", body)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        return dict(resp.get_json())

    def result(self, subject: str) -> str:
        return str(self.check(subject)["result"])

    def close(self) -> None:
        self.harness.close()
        for core in self.cores.values():
            core.evaluator.dispose()


def serve_files(tmp: Path, party_keys: dict[str, SM2PrivateKey], files: dict[str, Path]) -> Served:
    """Adapters built from the files as `tongban adapter serve --department-file` builds
    them, in-process, and a gateway that validates its claims against the same files."""
    data = keyed_dir(tmp, party_keys)
    settings = Settings(
        data_dir=data,
        public_url=PUBLIC_URL,
        checkpoint_interval=3600,
        department_files=tuple(files.values()),
    )
    cores: dict[str, AdapterCore[FileSource]] = {}
    witnesses = {}
    for name, path in files.items():
        cores[name], witnesses[name] = build_file_adapter(settings, load_department_file(path))
    ring = KeyRing(settings.keys_dir)
    migrate(settings)
    gateway = build_gateway(
        settings,
        transport=InProcessTransport(cores, witnesses),
        department_keys={name: ring.public(name) for name in files},
        start=False,
    )
    app = create_app(gateway)
    assert gateway.oauth is not None
    registry = gateway.oauth.registry
    credentials = {
        client_id: str(registry.register_client(client_id, client_id, scopes=scopes).secret)
        for client_id, scopes in CLIENTS.items()
    }
    idp = ring.ensure("idp")
    harness = Harness(gateway, app, app.test_client(), settings, idp, credentials, {})
    return Served(harness, cores)


@pytest.fixture
def served(
    legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> Iterator[Served]:
    files = {
        "health": legacy.department_file("health"),
        "police": legacy.department_file("police"),
    }
    s = serve_files(tmp_path / "data", party_keys, files)
    try:
        yield s
    finally:
        s.close()


def _slug(exc: BaseException) -> str:
    return str(getattr(exc, "slug", type(exc).__name__))


# --- answers ------------------------------------------------------------------------------


def test_checks_answer_per_the_legacy_data(served: Served, quiet_logs: Any) -> None:
    assert served.result(CHILD) == "yes"
    assert served.result(CHILD_NO_CERT) == "no"  # registered, no certificate
    assert served.result(CHILD_ELSEWHERE) == "no"  # certificate, not registered
    # The mother's household record holds her 15-digit number: found through :subject15.
    body = {"subject": {"id_number": MOTHER}, "claim": "household_in_district",
            "purpose": "school_enrollment", "params": {"district": "150102"}}  # fmt: skip
    resp = served.harness.check("edu-bureau", body)
    assert resp.status_code == 200 and resp.get_json()["result"] == "yes"
    # A second district for the same subject is an enumeration (one value per 30 days).
    other = {**body, "params": {"district": "150105"}}
    refused = served.harness.check("edu-bureau", other)
    assert refused.status_code == 403
    assert refused.get_json()["type"].endswith("/parameter-enumeration")


def test_a_household_in_another_district_answers_no(served: Served, quiet_logs: Any) -> None:
    body = {"subject": {"id_number": MOTHER}, "claim": "household_in_district",
            "purpose": "school_enrollment", "params": {"district": "150105"}}  # fmt: skip
    resp = served.harness.check("edu-bureau", body)
    assert resp.status_code == 200 and resp.get_json()["result"] == "no"


def test_an_update_changes_the_very_next_answer(
    served: Served, legacy: Legacy, quiet_logs: Any
) -> None:
    assert served.result(CHILD) == "yes"

    legacy.run("UPDATE {cert} SET SCBZ = '1' WHERE XSESFZH = :c", {"c": CHILD})
    assert served.result(CHILD) == "no"

    legacy.run("UPDATE {cert} SET SCBZ = '0' WHERE XSESFZH = :c", {"c": CHILD})
    assert served.result(CHILD) == "yes"

    legacy.run("UPDATE {hh} SET ZXBZ = '1' WHERE GMSFHM = :c", {"c": CHILD})
    assert served.result(CHILD) == "no"  # the household registration was cancelled


def test_a_renamed_table_is_undetermined_and_heals_without_a_restart(
    served: Served, legacy: Legacy, quiet_logs: Any
) -> None:
    assert served.result(CHILD) == "yes"

    legacy.run("ALTER TABLE {cert} RENAME TO {cert}_gone")
    gone = served.check(CHILD)  # a 200, never a 500 ...
    assert gone["result"] == "undetermined"  # ... and never "no"
    assert served.result(CHILD_ELSEWHERE) == "no"  # police alone decides this one
    audit = served.harness.gateway.audit
    assert audit is not None
    stored = audit.get(gone["audit_index"])
    assert stored is not None
    assert ["health", "unknown"] in stored.entry["departments"]

    legacy.run("ALTER TABLE {cert}_gone RENAME TO {cert}")
    assert served.result(CHILD) == "yes"


def test_every_answer_carries_as_of(served: Served) -> None:
    client = served.harness.gateway.departments
    assert isinstance(client, DepartmentClient)
    before = dt.datetime.now(dt.UTC)
    answer = client.evaluate("health", PredicateCall("birth_certificate_issued", CHILD))
    after = dt.datetime.now(dt.UTC)

    assert answer.result is Tri.TRUE
    assert answer.as_of is not None
    as_of = dt.datetime.fromisoformat(answer.as_of)
    assert before - dt.timedelta(seconds=1) <= as_of <= after
    _, payload, _ = jws_parts(answer.token)
    assert payload["as_of"] == answer.as_of  # signed with the answer
    # Batches too (the gateway's batch checks go this way).
    results = client.evaluate_batch("police", "registered_in_household", {}, [CHILD, MOTHER])
    assert results == [Tri.TRUE, Tri.TRUE]


def test_calls_are_checked_against_the_file_before_any_sql(served: Served) -> None:
    source = served.cores["police"].evaluator
    refused = {
        "unknown-predicate": PredicateCall("no_such_predicate", CHILD),
        "unknown-parameter": PredicateCall("household_in_district", CHILD, {"district": "9"}),
        "invalid-id-number": PredicateCall("registered_in_household", CHILD[:-1] + "0"),
    }
    for slug, call in refused.items():
        with pytest.raises(Exception) as exc:
            source.evaluate(call)
        assert _slug(exc.value) == slug
    with pytest.raises(Exception) as no_related:
        source.evaluate(PredicateCall("guardian_of", MOTHER))
    assert _slug(no_related.value) == "unknown-parameter"
    with pytest.raises(Exception) as batched:
        source.evaluate_many("guardian_of", {}, [MOTHER])
    assert _slug(batched.value) == "unknown-parameter"

    assert source.evaluate(PredicateCall("guardian_of", MOTHER, {}, CHILD)) is Tri.TRUE
    assert source.evaluate(PredicateCall("guardian_of", CHILD, {}, MOTHER)) is Tri.FALSE


# --- health -------------------------------------------------------------------------------


def test_healthz_reports_the_source_kind_and_readiness(served: Served, legacy: Legacy) -> None:
    adapter = create_adapter_app(served.cores["health"]).test_client()
    resp = adapter.get("/healthz")
    body = resp.get_json()
    assert resp.status_code == 200
    assert body["ready"] is True and body["department"] == "health"
    assert body["source"]["kind"] == KIND[legacy.kind]
    assert body["source"]["reachable"] is True
    dt.datetime.fromisoformat(body["as_of"])

    listed = adapter.get("/v1/predicates").get_json()
    assert listed["department"] == "health"
    assert {p["name"] for p in listed["predicates"]} == {
        "birth_certificate_issued",
        "children_at_least_youngest_under",
    }

    gateway = served.harness.client.get("/healthz").get_json()
    assert gateway["status"] == "ok"
    for name in ("health", "police"):
        report = gateway["departments"][name]
        assert report["reachable"] is True and report["ready"] is True
        assert report["source"] == KIND[legacy.kind]


def test_an_unreachable_source_starts_not_ready_and_answers_unknown(
    legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path, quiet_logs: Any
) -> None:
    files = {
        "health": legacy.department_file("health", url=UNREACHABLE[legacy.kind]),
        "police": legacy.department_file("police"),
    }
    s = serve_files(tmp_path / "data", party_keys, files)  # starts all the same
    try:
        adapter = create_adapter_app(s.cores["health"]).test_client()
        resp = adapter.get("/healthz")
        problem = resp.get_json()
        assert resp.status_code == 503 and resp.mimetype == "application/problem+json"
        assert problem["type"].endswith("/store-unavailable")
        assert problem["ready"] is False
        assert problem["source"]["kind"] == KIND[legacy.kind]
        assert problem["source"]["reachable"] is False
        assert "s3cret" not in resp.get_data(as_text=True)

        assert s.result(CHILD) == "undetermined"
        assert s.result(CHILD_ELSEWHERE) == "no"  # police alone says no

        gateway = s.harness.client.get("/healthz").get_json()
        assert gateway["status"] == "degraded"
        health = gateway["departments"]["health"]
        assert health["reachable"] is True  # the adapter answers ...
        assert health["ready"] is False  # ... its database does not
        assert health["source"] == KIND[legacy.kind]
        assert gateway["departments"]["police"]["ready"] is True
    finally:
        s.close()


def test_a_file_department_contributes_to_no_statistic(served: Served) -> None:
    key = served.harness.gateway.signing_key
    assert key is not None
    token, _ = RequestSigner(key).sign_statistic(
        "health", "births_by_district_year", {"year": "2024"}, "job-1", {}, 1
    )
    core = served.cores["health"]
    sealed = seal_request(Sealer(), core.key.public_key, token).envelope
    resp = (
        create_adapter_app(core)
        .test_client()
        .post("/v1/evaluate", data=sealed, content_type="application/jose")
    )
    assert resp.status_code == 400
    problem = resp.get_json()
    assert problem["type"].endswith("/unknown-statistic")
    assert "does not contribute" in problem["detail"]


# --- the catalog is validated against the files ----------------------------------------


def _gateway_with(tmp_path: Path, party_keys: dict[str, SM2PrivateKey], *files: Path) -> None:
    settings = Settings(data_dir=keyed_dir(tmp_path, party_keys), department_files=files)
    migrate(settings)
    gateway = build_gateway(
        settings, transport=InProcessTransport({}), department_keys={}, start=False
    )
    gateway.close()


def test_a_claim_naming_a_predicate_the_file_does_not_declare_is_refused(
    sqlite_legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    full = sqlite_legacy.department_file("health").read_text(encoding="utf-8")
    partial = sqlite_legacy.write("partial", full.split("[predicates.children_at_least")[0])

    with pytest.raises(CommandFailed) as refused:
        _gateway_with(tmp_path, party_keys, partial)

    line = refused.value.detail
    assert "\n" not in line
    assert "health has no predicate children_at_least_youngest_under" in line
    assert str(partial) in line


def test_a_file_whose_parameters_miss_a_claims_value_is_refused(
    sqlite_legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    police = sqlite_legacy.department_file("police").read_text(encoding="utf-8")
    narrow = sqlite_legacy.write("narrow", police.replace(str(DISTRICTS), '["150102"]'))

    with pytest.raises(CommandFailed, match=r"household_in_district\.district outside"):
        _gateway_with(tmp_path, party_keys, narrow)


def test_a_file_naming_no_built_in_department_is_refused(
    sqlite_legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    health = sqlite_legacy.department_file("health").read_text(encoding="utf-8")
    tax = sqlite_legacy.write("tax", health.replace('name = "health"', 'name = "tax"'))

    with pytest.raises(UsageError, match="'tax' is not a built-in department"):
        _gateway_with(tmp_path, party_keys, tax)


# --- real processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    return {**env, "PYTHONIOENCODING": "utf-8", **extra}


def _tongban(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tongban", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(**env),
        timeout=60,
        check=False,
    )


def _wait_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> httpx.Response:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text(encoding="utf-8")
        try:
            return httpx.get(url + "/healthz", timeout=1, trust_env=False)
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "the adapter did not start"
            time.sleep(0.1)


def test_adapter_serve_department_file_as_a_real_process(
    sqlite_legacy: Legacy, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    init_data_dir(data)
    # The source from the environment, as a committed file would name it.
    path = sqlite_legacy.department_file("health")
    body = path.read_text(encoding="utf-8").replace(sqlite_legacy.url, "${LEGACY_HEALTH_URL}")
    path.write_text(body, encoding="utf-8")
    port, log = _free_port(), tmp_path / "adapter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tongban", "adapter", "serve", "--department-file",
             str(path), "--port", str(port), "--data-dir", str(data)],
            env=_env(LEGACY_HEALTH_URL=sqlite_legacy.url), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    ring = KeyRing(data / "keys")
    transport = HttpTransport({"health": url})
    client = DepartmentClient(
        RequestSigner(ring.private("gateway")), transport, {"health": ring.public("health")}
    )

    def ask(subject: str) -> Tri:
        return client.evaluate("health", PredicateCall("birth_certificate_issued", subject)).result

    try:
        health = _wait_up(proc, url, log)
        assert health.status_code == 200
        assert health.json()["source"]["kind"] == "sqlite" and health.json()["ready"] is True
        answer = client.evaluate("health", PredicateCall("birth_certificate_issued", CHILD))
        assert answer.result is Tri.TRUE and answer.as_of is not None
        assert ask(MOTHER) is Tri.FALSE

        sqlite_legacy.run("ALTER TABLE {cert} RENAME TO {cert}_gone")
        assert ask(CHILD) is Tri.UNKNOWN
        sqlite_legacy.run("ALTER TABLE {cert}_gone RENAME TO {cert}")
        assert ask(CHILD) is Tri.TRUE
        report = client.health("health")
        assert report["ready"] is True and report["source"] == "sqlite"
    finally:
        transport.close()
        proc.terminate()
        proc.wait(timeout=10)
    output = log.read_text(encoding="utf-8")
    assert "listening on" in output
    for number in EVERYONE:
        assert number not in output and fifteen(number) not in output


def test_adapter_serve_with_an_unreachable_source_starts_not_ready(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_data_dir(data)
    body = HEALTH.format(url=UNREACHABLE["postgresql"], cert="csyxzm", hh="hjxx")
    path = tmp_path / "health.toml"
    path.write_text(body, encoding="utf-8")
    port, log = _free_port(), tmp_path / "adapter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tongban", "adapter", "serve", "--department-file",
             str(path), "--port", str(port), "--data-dir", str(data)],
            env=_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        health = _wait_up(proc, f"http://127.0.0.1:{port}", log)
        assert health.status_code == 503
        assert health.json()["ready"] is False
        assert health.json()["source"]["kind"] == "postgresql"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    output = log.read_text(encoding="utf-8")
    assert "not reachable at start-up" in output
    assert "s3cret" not in output


def test_adapter_serve_refuses_a_delete_file_in_one_line(
    sqlite_legacy: Legacy, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    init_data_dir(data)
    body = sqlite_legacy.department_file("health").read_text(encoding="utf-8")
    bad = sqlite_legacy.write("delete", body.replace("SELECT COUNT(*) FROM", "DELETE FROM", 1))
    before = sqlite_legacy.rows(sqlite_legacy.cert)

    proc = _tongban(
        "adapter", "serve", "--department-file", str(bad), "--port", str(_free_port()),
        "--data-dir", str(data),
    )  # fmt: skip

    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # Line 9 of the file is the DELETE's own line inside the multi-line sql.
    assert lines[0] == (
        f"tongban: {bad}:9: predicates.birth_certificate_issued.sql: "
        "expected one SELECT or WITH ... SELECT, found DELETE"
    )
    assert sqlite_legacy.rows(sqlite_legacy.cert) == before


def test_demo_refuses_a_file_naming_no_built_in_department(
    sqlite_legacy: Legacy, tmp_path: Path
) -> None:
    health = sqlite_legacy.department_file("health").read_text(encoding="utf-8")
    tax = sqlite_legacy.write("tax", health.replace('name = "health"', 'name = "tax"'))
    data = tmp_path / "demo-data"

    proc = _tongban(
        "demo", "--data-dir", str(data), "--port", str(_free_port()), "--department-file", str(tax)
    )

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"tongban: {tax}: name = 'tax' is not a built-in department")
    assert not data.exists()  # refused before generating anything


@pytest.mark.slow
def test_demo_serves_a_department_from_its_file(tmp_path: Path) -> None:
    """`tongban demo --department-file`: health answers from a legacy SQLite database, the
    other four from the generated stores, through real processes."""
    data = tmp_path / "demo-data"
    generated = _tongban(
        "generate", "--population", "300", "--seed", "3", "--out", str(data),
        "--truth", str(data / "truth.jsonl"), "--workers", "1",
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    lines = (data / "truth.jsonl").read_text(encoding="utf-8").splitlines()
    truth = [json.loads(line) for line in lines]
    child = next(r["id_number"] for r in truth if r.get("claims", {}).get("birth_registered"))
    db = open_legacy("sqlite", tmp_path)
    db.run("INSERT INTO {cert} VALUES (9, :c, :m, '20200101', '20200105', '1', '0')",
           {"c": child, "m": fifteen(MOTHER)})  # fmt: skip
    path = db.department_file("health")
    body = path.read_text(encoding="utf-8").replace(db.url, "${LEGACY_HEALTH_URL}")
    path.write_text(body, encoding="utf-8")
    port, log = _free_port(), tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tongban", "demo", "--data-dir", str(data), "--port",
             str(port), "--population", "300", "--seed", "3", "--department-file", str(path)],
            env=_env(LEGACY_HEALTH_URL=db.url), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        doc = _wait_for_demo(proc, data, log)
        assert doc["department_files"] == {"health": str(path.resolve())}
        with httpx.Client(base_url=doc["gateway"], trust_env=False, timeout=5) as http:
            health = http.get("/healthz").json()
            assert health["status"] == "ok"
            assert health["departments"]["health"]["source"] == "sqlite"
            assert {health["departments"][d]["source"] for d in ("police", "civil")} == {"managed"}
            creds = doc["clients"]["edu-bureau"]
            token = http.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(creds["client_id"], creds["client_secret"]),
            ).json()["access_token"]

            def check() -> str:
                body = {"subject": {"id_number": child}, "claim": "birth_registered",
                        "purpose": "school_enrollment", "params": {}}  # fmt: skip
                resp = http.post(
                    "/v1/checks", json=body, headers={"Authorization": f"Bearer {token}"}
                )
                assert resp.status_code == 200, resp.text
                return str(resp.json()["result"])

            assert check() == "yes"
            db.run("UPDATE {cert} SET SCBZ = '1' WHERE XSESFZH = :c", {"c": child})
            assert check() == "no"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        close_legacy(db)
    assert child not in log.read_text(encoding="utf-8")


def _wait_for_demo(proc: subprocess.Popen[bytes], data: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    manifest = data / "demo.json"
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(encoding="utf-8")[-3000:]
        if manifest.exists():
            doc: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(doc["gateway"] + "/healthz", trust_env=False).status_code == 200:
                    return doc
        time.sleep(0.2)
    pytest.fail("the demo did not come up:\n" + log.read_text(encoding="utf-8")[-3000:])


# --- a file over the managed store ----------------------------------------------------------

MANAGED_POLICE = """\
name = "police"
title = "公安 Household registration (the generated store, read through a file)"
source = "managed"

[predicates.registered_in_household]
sql = '''
SELECT COUNT(*) FROM registrations WHERE person_id IN (:subject, :subject15) AND since <= :today
'''

[predicates.household_in_district]
params = {{ district = {districts} }}
sql = '''
SELECT COUNT(*) FROM registrations
 WHERE person_id IN (:subject, :subject15) AND since <= :today AND district = :district
'''
"""


def test_a_managed_file_answers_as_the_managed_store_does(
    small_population: Any, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    from tongban.adapters.departments import DEPARTMENTS
    from tongban.adapters.evaluate import Evaluator
    from tongban.adapters.store import DepartmentStore
    from tongban.primitives.regions import DISTRICTS as ALL_DISTRICTS

    path = tmp_path / "police.toml"
    path.write_text(MANAGED_POLICE.format(districts=str(list(ALL_DISTRICTS))), encoding="utf-8")
    settings = Settings(
        data_dir=keyed_dir(tmp_path / "data", party_keys),
        store_urls={"police": small_population.urls["police"]},
    )
    core, _ = build_file_adapter(settings, load_department_file(path))
    store = DepartmentStore(DEPARTMENTS["police"], small_population.urls["police"])
    managed = Evaluator(store)
    try:
        source = core.evaluator
        assert source.kind == "managed" and source.health()["reachable"] is True
        assert source.answer_as_of() == managed.as_of().isoformat()  # the reference date
        people = small_population.subjects()
        # Both answers of each predicate occur, whatever the seed: the first 200 people
        # (in and outside 150102) and some the truth finds no household for.
        outside = [r for r in people if r["claims"]["household_in_district"] is False]
        subjects = [r["id_number"] for r in people[:200] + outside[:20]]
        for predicate, params in (
            ("registered_in_household", {}),
            ("household_in_district", {"district": "150102"}),
        ):
            calls = [PredicateCall(predicate, s, params) for s in subjects]
            mine = [source.evaluate(c) for c in calls]
            assert mine == [managed.evaluate(c) for c in calls]
            assert len(set(mine)) == 2  # both answers occur
            assert source.evaluate_many(predicate, params, subjects) == mine
    finally:
        core.evaluator.dispose()
        store.dispose()


# --- statistics from a file ------------------------------------------------------------------

BIRTHS = """
[statistics.births_by_district_year]
params = {{ year = ["2021", "2023"] }}
record_bound = {bound}
sql = '''
SELECT '150102' AS cell, COUNT(*) AS value, COUNT(*) AS records FROM {cert}
 WHERE SUBSTR(CSRQ, 1, 4) = :year AND ZT = '1' AND SCBZ = '0'
'''
"""


@pytest.fixture(scope="module")
def analyst_key() -> tuple[Any, Any]:
    from tongban.federation.paillier import generate_keypair

    return generate_keypair()


def test_a_file_with_a_statistic_contributes_it(
    legacy: Legacy,
    party_keys: dict[str, SM2PrivateKey],
    tmp_path: Path,
    analyst_key: tuple[Any, Any],
) -> None:
    from tongban.adapters.file_source import FileStatistics
    from tongban.adapters.protocol import verify_statistic_answer
    from tongban.federation.paillier import decrypt_vector, key_fingerprint, public_key_to_jwk
    from tongban.federation.statistics import REGISTRY, Release

    body = legacy.department_file("health").read_text(encoding="utf-8")
    path = legacy.write("births", body + BIRTHS.format(bound=1, cert=legacy.cert))
    settings = Settings(data_dir=keyed_dir(tmp_path / "data", party_keys), stats_threshold=1)
    core, _ = build_file_adapter(settings, load_department_file(path))
    assert isinstance(core.statistics, FileStatistics)
    public, private = analyst_key
    signer = RequestSigner(party_keys["gateway"])
    statistic = REGISTRY.get("births_by_district_year")
    cell = statistic.cells.index("150102")
    release = {"threshold": 1, "epsilon": None}

    def contribute(year: str) -> list[int]:
        token, jti = signer.sign_statistic(
            "health", statistic.name, {"year": year}, "job-1", public_key_to_jwk(public), 1,
            release,
        )  # fmt: skip
        ciphertexts = verify_statistic_answer(
            core.handle_jws(token),
            department="health",
            department_key=party_keys["health"].public_key,
            request_jti=jti,
            statistic=statistic.name,
            job="job-1",
            key_fingerprint=key_fingerprint(public),
            release=release,
        )
        layout = statistic.layout(public.n, 1, Release(1, None))
        return decrypt_vector(private, ciphertexts, layout, statistic.counters)

    try:
        values = contribute("2021")
        assert values[cell] == 1 and sum(values) == 1  # CHILD, born 2021, in 150102
        legacy.run("UPDATE {cert} SET SCBZ = '1' WHERE XSESFZH = :c", {"c": CHILD})
        assert sum(contribute("2021")) == 0  # the very next contribution
        # A year the statistic has and the file does not enumerate: refused before SQL.
        token, _ = signer.sign_statistic(
            "health", statistic.name, {"year": "2024"}, "job-2", public_key_to_jwk(public), 1
        )
        with pytest.raises(Exception) as refused:
            core.handle_jws(token)
        assert _slug(refused.value) == "unknown-parameter"
    finally:
        core.evaluator.dispose()


def test_a_statistic_bound_above_the_registered_one_is_refused_at_start(
    sqlite_legacy: Legacy, party_keys: dict[str, SM2PrivateKey], tmp_path: Path
) -> None:
    from tongban.adapters.deptfile import DepartmentFileError

    body = sqlite_legacy.department_file("health").read_text(encoding="utf-8")
    path = sqlite_legacy.write("bound", body + BIRTHS.format(bound=5, cert=sqlite_legacy.cert))
    settings = Settings(data_dir=keyed_dir(tmp_path / "data", party_keys))

    with pytest.raises(DepartmentFileError) as refused:
        build_file_adapter(settings, load_department_file(path))

    line = body.count("\n") + 4  # the record_bound line of the appended section
    assert refused.value.detail == (
        f"{path}:{line}: statistics.births_by_district_year.record_bound: at most 1, the "
        "bound births_by_district_year is registered with"
    )
