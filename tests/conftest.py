"""Shared fixtures. Slow things (a generated population, PostgreSQL databases, keys) are
session-scoped and built once."""

from __future__ import annotations

import copy
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tongban.adapters.builtin import builtin_names
from tongban.adapters.synthetic.generate import GenerationResult, generate
from tongban.primitives.gm import SM2PrivateKey

if TYPE_CHECKING:
    from tongban.gateway.catalog import Catalog
    from tongban.policies import PolicyAdmin, PolicyEnforcer, PolicyStore

PG_URL = os.environ.get("TONGBAN_TEST_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test")
DEPARTMENT_NAMES = builtin_names()
SMALL_POPULATION = 3000
SMALL_SEED = 11


@dataclass(frozen=True)
class Generated:
    """A generated population: where it is and what the generator says is true."""

    dir: Path
    truth_path: Path
    result: GenerationResult
    urls: dict[str, str]

    def subjects(self) -> list[dict[str, object]]:
        rows = []
        with self.truth_path.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "id_number" in row:
                    rows.append(row)
        return rows

    def cells(self) -> list[dict[str, object]]:
        with self.truth_path.open(encoding="utf-8") as fh:
            return [r for r in map(json.loads, fh) if "aggregate" in r]


@pytest.fixture(scope="session")
def small_population(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    out = tmp_path_factory.mktemp("population")
    truth = out / "truth.jsonl"
    result = generate(out, SMALL_POPULATION, SMALL_SEED, truth=truth, workers=2)
    return Generated(out, truth, result, dict(result.urls))


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[dict[str, str]]:
    """One fresh PostgreSQL database per department, dropped afterwards. PostgreSQL must be
    up (``.ci/run`` starts it); these tests fail rather than skip when it is not."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    tag = secrets.token_hex(4)
    names = {d: f"tongban_test_{tag}_{d}" for d in DEPARTMENT_NAMES}
    try:
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(text(f'CREATE DATABASE "{db}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is required for these tests: {exc}")
    base = make_url(PG_URL)
    urls = {
        d: base.set(database=db).render_as_string(hide_password=False) for d, db in names.items()
    }
    try:
        yield urls
    finally:
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_population(
    tmp_path_factory: pytest.TempPathFactory, pg_databases: dict[str, str]
) -> Generated:
    """The same population as ``small_population``, loaded into PostgreSQL."""
    out = tmp_path_factory.mktemp("pg-population")
    truth = out / "truth.jsonl"
    result = generate(out, SMALL_POPULATION, SMALL_SEED, truth=truth, urls=pg_databases, workers=2)
    return Generated(out, truth, result, dict(pg_databases))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def population(request: pytest.FixtureRequest) -> Generated:
    """Parametrised over both stores: tests using it run on SQLite and on PostgreSQL."""
    name = "small_population" if request.param == "sqlite" else "pg_population"
    generated: Generated = request.getfixturevalue(name)
    return generated


@pytest.fixture(scope="session")
def party_keys() -> dict[str, SM2PrivateKey]:
    """SM2 keys for the gateway and each department."""
    return {p: SM2PrivateKey.generate() for p in ("gateway", *DEPARTMENT_NAMES)}


@pytest.fixture(scope="session")
def claim_catalog() -> Catalog:
    """The shipped claim catalog, validated against the shipped departments. Imported here,
    not at the top, so a change in flight elsewhere in ``gateway`` cannot break collection."""
    from tongban.adapters.departments import DEPARTMENTS
    from tongban.gateway.catalog import Catalog

    return Catalog.load(DEPARTMENTS)


@pytest.fixture(scope="session")
def pg_scratch_url() -> Iterator[str]:
    """One fresh, empty PostgreSQL database for the session, for components that create
    their own tables (policy store, audit log). Tests share it, so each test resets the
    tables it uses. PostgreSQL must be up; these tests fail rather than skip without it."""
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"tongban_test_{secrets.token_hex(4)}_scratch"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is required for these tests: {exc}")
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def gateway_stores(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Settings for a gateway's own stores: ``{}`` (SQLite files in the data directory), or
    ``gateway_db_url`` and ``audit_url`` on one fresh PostgreSQL database for this test."""
    if request.param == "sqlite":
        yield {}
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"tongban_test_{secrets.token_hex(4)}_gw"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {PG_URL} is required for these tests: {exc}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield {"gateway_db_url": url, "audit_url": url}
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def reset_chain(engine_or_url: Any, chain: str) -> None:
    """A database shared by several tests (``pg_scratch_url``) emptied of one migration
    chain (tongban.migrations): its tables and its version table dropped, so that the next
    upgrade (a store's ``create_schema()``, ``create=True``) starts from empty."""
    from sqlalchemy import Engine

    from tongban.migrations import CHAINS, model_metadata

    engine = engine_or_url if isinstance(engine_or_url, Engine) else create_engine(engine_or_url)
    try:
        model_metadata(chain).drop_all(engine)
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {CHAINS[chain].version_table}"))
    finally:
        if engine is not engine_or_url:
            engine.dispose()


class RecordingAudit:
    """The one fake audit sink (``tongban.audit.sink.AuditSink``), for every core: keeps
    the events it is given with their subjects, checking each is canonical-JSON-able, or
    raises ``failure``."""

    def __init__(self) -> None:
        self.records: list[tuple[dict[str, Any], str | None]] = []
        self.failure: Exception | None = None

    def append(self, event: Mapping[str, Any], subject_id: str | None = None) -> int:
        if self.failure is not None:
            raise self.failure
        json.dumps(event, sort_keys=True, allow_nan=False)
        self.records.append((copy.deepcopy(dict(event)), subject_id))
        return len(self.records) - 1

    @property
    def events(self) -> list[dict[str, Any]]:
        """The events, in order (without their subjects)."""
        return [event for event, _ in self.records]

    entries = events


@dataclass
class PolicyEnv:
    """A seeded policy store with its enforcer, administration and audit fake."""

    store: PolicyStore
    enforcer: PolicyEnforcer
    admin: PolicyAdmin
    audit: RecordingAudit
    catalog: Catalog

    def fresh_version(self) -> str:
        """The version another process starting on this store now would enforce."""
        from tongban.policies import open_enforcer

        return open_enforcer(self.store, self.catalog).version


@pytest.fixture(params=["sqlite", "postgresql"])
def policy_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PolicyStore]:
    """An empty policy store, on SQLite (a file, so threads share it) and on PostgreSQL."""
    from tongban.policies import PolicyStore

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'policy.db'}"
    else:
        url = request.getfixturevalue("pg_scratch_url")
    store = PolicyStore.from_url(url, create=True)
    reset_chain(store.engine, "gateway")
    yield store
    store.engine.dispose()


@pytest.fixture
def policy_env(policy_store: PolicyStore, claim_catalog: Catalog) -> PolicyEnv:
    """The demo policy seeded into ``policy_store``, with two-person administration."""
    from tongban.policies import PolicyAdmin, open_enforcer

    enforcer = open_enforcer(policy_store, claim_catalog)
    audit = RecordingAudit()
    admin = PolicyAdmin(policy_store, enforcer, claim_catalog, audit)
    return PolicyEnv(policy_store, enforcer, admin, audit, claim_catalog)


# --- consent (gateway/consent.py) ------------------------------------------------------

CONSENT_NOW = "2026-03-01T08:00:00+00:00"


class FakeClock:
    """A settable clock for the consent store (aware UTC datetimes)."""

    def __init__(self, now: str = CONSENT_NOW) -> None:
        import datetime as dt

        self.now = dt.datetime.fromisoformat(now)

    def __call__(self) -> Any:
        return self.now


class FakeGuardians:
    """``guardian_check`` fake: answers ``verdict`` and records who asked about whom."""

    def __init__(self) -> None:
        from tongban.primitives.wire import Tri

        self.verdict = Tri.TRUE
        self.calls: list[tuple[str, str]] = []

    def __call__(self, guardian: str, child: str) -> Any:
        self.calls.append((guardian, child))
        return self.verdict


@dataclass
class ConsentEnv:
    """A consent store with fakes for the audit sink, the guardian check and the clock."""

    store: Any  # gateway.consent.ConsentStore
    audit: RecordingAudit
    guardians: FakeGuardians
    clock: FakeClock
    key: SM2PrivateKey


def pairwise_for_tests(requester: str, id_number: str) -> str:
    """The answers' pairwise subject (AnswerSigner.pairwise), with a fixed test key."""
    from tongban.primitives.gm import hmac_sm3

    return hmac_sm3(b"w" * 32, f"{requester}\n{id_number}".encode()).hex()[:32]


def make_consent_env(url: str, catalog: Catalog, key: SM2PrivateKey) -> ConsentEnv:
    """Build a fresh store on ``url`` (its consent table dropped and re-created), with an
    in-memory requester registry holding ``insurer-a``, ``edu-bureau`` and a disabled
    ``retired-client``."""
    from tongban.audit.vault import Pseudonymizer
    from tongban.gateway.consent import ConsentStore
    from tongban.gateway.oauth import ClientRegistry

    registry = ClientRegistry("sqlite://", scrypt_n=2**4)
    registry.create_schema()
    registry.register_client("insurer-a", "Insurer A", scopes=["checks"])
    registry.register_client("edu-bureau", "Education Bureau", scopes=["checks"])
    registry.register_client("retired-client", "Retired", scopes=["checks"], enabled=False)
    env = ConsentEnv(None, RecordingAudit(), FakeGuardians(), FakeClock(), key)
    env.store = ConsentStore(
        url,
        pseudonyms=Pseudonymizer(b"p" * 32, b"v" * 16),
        catalog=catalog,
        registry=registry,
        signing_key=key,
        audit=env.audit,
        pairwise=pairwise_for_tests,
        guardian_check=env.guardians,
        clock=env.clock,
    )
    reset_chain(env.store.engine, "gateway")
    env.store.create_schema()
    return env


@pytest.fixture(params=["sqlite", "postgresql"])
def consent_env(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    claim_catalog: Catalog,
    party_keys: dict[str, SM2PrivateKey],
) -> Iterator[ConsentEnv]:
    """A consent store on SQLite (a file, so threads share it) and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
    else:
        url = request.getfixturevalue("pg_scratch_url")
    env = make_consent_env(url, claim_catalog, party_keys["gateway"])
    yield env
    env.store.engine.dispose()
    env.store.registry.engine.dispose()
