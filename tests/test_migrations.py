"""Schema migrations (tongban.migrations, ``tongban db``), on SQLite and PostgreSQL: from
empty, and from the schema the stores' ``create_all`` made before there were migrations
(what a deployment of the previous release holds); the models and the migrated schema
agree; a gateway refuses a database that is not at the code's revision."""

from __future__ import annotations

import importlib
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Engine, Text, create_engine, insert, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import PG_URL
from tongban import migrations
from tongban.cli import main
from tongban.config import Settings
from tongban.keys import KeyRing
from tongban.migrations import NotAtHead, SchemaRefused
from tongban.wiring import build_gateway

CHAINS = ["gateway", "audit"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def new_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes empty databases: SQLite files, or PostgreSQL databases of their own (dropped
    at the end)."""
    made: list[str] = []
    admin = None
    if request.param == "postgresql":
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)

    def make() -> str:
        name = f"tongban_test_{secrets.token_hex(4)}_mig"
        if admin is None:
            return f"sqlite:///{tmp_path / f'{name}.db'}"
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            pytest.fail(f"PostgreSQL at {PG_URL} is required for these tests: {exc}")
        made.append(name)
        return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    yield make
    if admin is not None:
        with admin.connect() as conn:
            for name in made:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)


def _create_all(url: str, *chains: str) -> None:
    """What the stores did before migrations: ``metadata.create_all`` of each module's
    models (their own MetaData: a copy may order a table's constraints otherwise)."""
    engine = _engine(url)
    for chain in chains:
        for name in migrations.CHAINS[chain].models:
            importlib.import_module(name).metadata.create_all(engine)
    engine.dispose()


def _schema(url: str, tables: set[str]) -> dict[str, Any]:
    """Every table's columns, keys, indexes and constraints as the database reports them
    (and on SQLite the DDL it stores)."""
    engine = _engine(url)
    out: dict[str, Any] = {}
    with engine.connect() as conn:
        insp = inspect(conn)
        for t in sorted(tables):
            out[t] = {
                "columns": [_column(c) for c in insp.get_columns(t)],
                "pk": insp.get_pk_constraint(t),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), i["unique"]) for i in insp.get_indexes(t)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"])) for u in insp.get_unique_constraints(t)
                ),
                "checks": sorted((c["name"], c["sqltext"]) for c in insp.get_check_constraints(t)),
            }
        if conn.dialect.name == "sqlite":
            rows = conn.execute(
                text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
            ).all()
            out["sqlite_master"] = [tuple(r) for r in rows if r[2] in tables]
    engine.dispose()
    return out


def _column(c: Any) -> tuple[Any, ...]:
    return (c["name"], str(c["type"]), c["nullable"], str(c.get("default")), c.get("autoincrement"))


def _tables(url: str) -> set[str]:
    engine = _engine(url)
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names())
    engine.dispose()
    return names


# --- from empty: the models and the migrations agree ----------------------------------


@pytest.mark.parametrize("chain", CHAINS)
def test_the_migrated_schema_is_what_the_models_say(new_db: Callable[[], str], chain: str):
    """What fails when a model changes without a revision: Alembic's comparison of the
    models with a database migrated from empty finds nothing."""
    url = new_db()
    done = migrations.upgrade(url, chain)
    assert (done.before, done.after, done.adopted) == (None, migrations.head(chain), False)
    engine = _engine(url)
    with engine.connect() as conn:
        assert migrations.differences(conn, migrations.model_metadata(chain)) == []
    engine.dispose()


def test_a_model_changed_without_a_revision_is_found(new_db: Callable[[], str]):
    """The comparison above can fail: a column the models gain (here on a copy of them) and
    no revision adds is reported."""
    url = new_db()
    migrations.upgrade(url, "gateway")
    models = migrations.model_metadata("gateway")
    models.tables["oauth_clients"].append_column(Column("note", Text, nullable=True))
    engine = _engine(url)
    with engine.connect() as conn:
        diffs = migrations.differences(conn, models)
    engine.dispose()
    assert [(d[0], d[2], d[3].name) for d in diffs] == [("add_column", "oauth_clients", "note")]


@pytest.mark.parametrize("chain", CHAINS)
def test_the_baseline_is_what_create_all_made(new_db: Callable[[], str], chain: str):
    """Tables, column types, defaults, keys, indexes and constraints (on SQLite, the very
    DDL text) of the baseline revision are those the previous release's create_all made."""
    made, migrated = new_db(), new_db()
    _create_all(made, chain)
    migrations.upgrade(migrated, chain)
    tables = set(migrations.model_metadata(chain).tables)
    assert _tables(made) == tables
    assert _tables(migrated) == tables | {f"alembic_version_{chain}"}
    assert _schema(made, tables) == _schema(migrated, tables)


# --- from the previous release's schema: adopted, or refused -------------------------------


def _db_env(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("TONGBAN_GATEWAY_DB_URL", url)
    monkeypatch.setenv("TONGBAN_AUDIT_URL", url)


def test_a_create_all_database_is_adopted_without_touching_its_rows(
    new_db: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """Both stores in one database, as the previous release left it: recognised, stamped
    at the baseline, upgraded; its rows are still there; a second upgrade does nothing."""
    url = new_db()
    _create_all(url, "gateway", "audit")
    oauth = migrations.model_metadata("gateway").tables["oauth_clients"]
    meta = migrations.model_metadata("audit").tables["audit_meta"]
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(insert(oauth).values(client_id="edu-bureau", display_name="Edu",
                                          auth_method="client_secret_basic", scopes="checks",
                                          enabled=True))  # fmt: skip
        conn.execute(insert(meta).values(key="origin", value="gw.test/audit"))
    _db_env(monkeypatch, url)
    assert main(["db", "upgrade", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["gateway", "audit"]
    assert all(" adopted (tables made before migrations, stamped " in line for line in out)
    with engine.connect() as conn:
        assert conn.execute(select(oauth.c.display_name)).scalars().all() == ["Edu"]
        assert conn.execute(select(meta.c.value)).scalars().all() == ["gw.test/audit"]
    engine.dispose()
    for chain in CHAINS:
        assert migrations.current(url, chain) == migrations.head(chain)
        migrations.require_head(url, chain)
    assert main(["db", "upgrade", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("already current") == 2
    assert main(["db", "current", "--data-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{s}: {url_shown} at {migrations.head(s)}, code needs {migrations.head(s)}: current"
        for s, url_shown in (("gateway", _shown(url)), ("audit", _shown(url)))
    ]


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def test_a_database_with_some_of_the_tables_is_refused(new_db: Callable[[], str]):
    url = new_db()
    _create_all(url, "gateway")
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE consents"))
    engine.dispose()
    before = _schema(url, _tables(url))
    with pytest.raises(SchemaRefused) as refused:
        migrations.upgrade(url, "gateway")
    assert "has 13 of the 14 gateway tables (missing: consents) and no revision: not migrated" in (
        refused.value.detail
    )
    assert _schema(url, _tables(url)) == before  # nothing made, nothing stamped


def test_a_database_whose_tables_differ_from_the_baseline_is_refused(
    new_db: Callable[[], str],
):
    url = new_db()
    _create_all(url, "gateway")
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE oauth_clients ADD COLUMN extra TEXT"))
    engine.dispose()
    with pytest.raises(SchemaRefused) as refused:
        migrations.upgrade(url, "gateway")
    assert refused.value.detail.endswith(
        "has the gateway tables but no revision, and they differ from revision gateway_0001 "
        "(remove_column oauth_clients.extra): not migrated"
    )
    assert "alembic_version_gateway" not in _tables(url)


def test_a_database_ahead_of_the_code_is_refused(
    new_db: Callable[[], str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    """Migrated by newer code: the upgrade will not touch it, the gateway will not start,
    each said in one line."""
    url = new_db()
    migrations.upgrade(url, "gateway")
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version_gateway SET version_num = 'gateway_9999'"))
    engine.dispose()
    with pytest.raises(SchemaRefused, match="is at revision gateway_9999, which this code does"):
        migrations.upgrade(url, "gateway")
    with pytest.raises(NotAtHead, match="is at revision gateway_9999, which this code does not"):
        migrations.require_head(url, "gateway")
    _db_env(monkeypatch, url)
    assert main(["db", "upgrade", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"tongban: gateway: database {_shown(url)} is at revision gateway_9999, which this "
        "code does not know (newer code migrated it? this code's head is gateway_0001): "
        "not migrated\n"
    )
    assert captured.out.startswith("audit: ")  # the other store is still done


# --- tongban db, and a gateway that finds its database behind ------------------------------


def test_db_commands_on_a_new_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = tmp_path / "data"
    assert main(["db", "current", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"gateway: sqlite:///{data}/gateway.db at none, code needs gateway_0001: "
        "run `tongban db upgrade`",
        f"audit: sqlite:///{data}/audit.db at none, code needs audit_0001: "
        "run `tongban db upgrade`",
    ]
    assert not data.exists()  # looking creates nothing
    assert main(["db", "upgrade", "--data-dir", str(data)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"gateway: sqlite:///{data}/gateway.db at gateway_0001, upgraded from empty",
        f"audit: sqlite:///{data}/audit.db at audit_0001, upgraded from empty",
    ]


def test_a_database_that_is_down_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"postgresql+psycopg://postgres:secret@127.0.0.1:{port}/tongban"
    monkeypatch.setenv("TONGBAN_GATEWAY_DB_URL", down)
    for cmd in ("upgrade", "current"):
        assert main(["db", cmd, "--data-dir", str(tmp_path)]) == 1
        captured = capsys.readouterr()
        assert captured.err == (
            f"tongban: gateway: database postgresql+psycopg://postgres:***@127.0.0.1:{port}"
            "/tongban is unavailable (OperationalError)\n"
        )
        assert captured.out.startswith("audit: ")


def _keyed(data: Path) -> Path:
    ring = KeyRing(data / "keys")
    for party in ("gateway", "idp"):
        ring.ensure(party)
    return data


def test_the_gateway_refuses_to_start_on_a_database_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    """No table is made at start-up: the gateway names the command, and creates nothing."""
    data = _keyed(tmp_path / "data")
    with pytest.raises(NotAtHead) as refused:
        build_gateway(Settings(data_dir=data), start=False)
    assert refused.value.detail == (
        f"database gateway (sqlite:///{data}/gateway.db) is at revision none, the code "
        "needs gateway_0001: run `tongban db upgrade`"
    )
    assert not (data / "gateway.db").exists() and not (data / "audit.db").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["gateway", "serve", "--port", str(port), "--data-dir", str(data)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"tongban: {refused.value.detail}\n"


def test_the_gateway_refuses_a_create_all_database_until_it_is_upgraded(tmp_path: Path):
    """A data directory of the previous release: refused as it is, served once the
    operator has run the upgrade."""
    data = _keyed(tmp_path / "data")
    settings = Settings(data_dir=data)
    _create_all(settings.gateway_store_url(), "gateway")
    _create_all(settings.audit_store_url(), "audit")
    with pytest.raises(NotAtHead, match=r"at revision none, the code needs gateway_0001: run"):
        build_gateway(settings, start=False)
    assert main(["db", "upgrade", "--data-dir", str(data)]) == 0
    gateway = build_gateway(settings, start=False)
    gateway.close()


def test_no_production_module_creates_tables():
    """Tables come from the migrations only: no store of the gateway host calls
    ``create_all`` (a department's store, rebuilt by ``tongban generate``, is not one)."""
    found = []
    for folder in ("gateway", "policies", "audit", "tongban"):
        for path in (ROOT / folder).rglob("*.py"):
            if "create_all(" in path.read_text(encoding="utf-8"):
                found.append(str(path.relative_to(ROOT)))
    assert found == []


def test_an_operator_command_refuses_a_database_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    data = _keyed(tmp_path / "data")
    assert main(["admin", "clients", "list", "--data-dir", str(data)]) == 2
    assert capsys.readouterr().err == (
        f"tongban: database gateway (sqlite:///{data}/gateway.db) is at revision none, the "
        "code needs gateway_0001: run `tongban db upgrade`\n"
    )
    assert not (data / "gateway.db").exists()


def test_sqlite_upgrades_of_one_file_take_turns(tmp_path: Path) -> None:
    """Two processes upgrading one SQLite file at once (a demo and a test, say) take
    turns: both succeed and the schema is at head once (SQLite's DDL is not
    transactional, so interleaved upgrades would fail on tables the other made)."""
    import multiprocessing

    from tongban.migrations import GATEWAY, head, upgrade

    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=upgrade, args=(url, GATEWAY)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT version_num FROM alembic_version_gateway")).scalars()
        assert list(found) == [head(GATEWAY)]
    engine.dispose()
