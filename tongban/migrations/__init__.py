"""Schema migrations (Alembic), run by the operator: ``tongban db upgrade``.

Two chains of revisions, one per kind of database the gateway host has:

* ``gateway``, the gateway database (``gateway_db_url``, default ``DIR/gateway.db``): every
  table of the requesters, policies, consents, rate limits, statistics jobs, parameter asks
  and page sessions, because those stores always share that one URL;
* ``audit``, the audit database (``audit_url``, default ``DIR/audit.db``).

Each chain keeps its revision in a version table of its own (``alembic_version_gateway``,
``alembic_version_audit``), so the two databases may also be one (both URLs the same) and
each chain still sees only its own tables. The scripts are plain modules in
``tongban/migrations/<chain>/versions/`` and spell out every ``op.create_table``; the
models are never used to create a table, so a model that changes needs a new revision
(tests/test_migrations.py compares the migrated schema with the models).

Nothing here runs when a gateway starts: it only checks (:func:`require_head`) and refuses
to start on a database behind, or ahead of, the code. A database made by ``create_all``
before migrations existed (no version table, the baseline's tables) is recognised, compared
with the baseline revision, and stamped at it without touching a row; a database holding
only some of a chain's tables, or tables that differ from the baseline, is refused.

A department's own store (``tongban generate``) is not migrated here: it is rebuilt, with
its data, every time it is generated or ingested.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, Index, MetaData, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from tongban.boundary import CommandFailed, MissingPrerequisite, display_url, missing_sqlite_file
from tongban.primitives.db import make_engine
from tongban.primitives.errors import StoreUnavailable
from tongban.primitives.locks import exclusive_lock

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from tongban.config import Settings

__all__ = [
    "AUDIT",
    "CHAINS",
    "GATEWAY",
    "Chain",
    "NotAtHead",
    "SchemaRefused",
    "Store",
    "Upgraded",
    "baseline_metadata",
    "current",
    "differences",
    "head",
    "model_metadata",
    "require_head",
    "run_environment",
    "stores",
    "upgrade",
    "upgrade_on",
]

_HERE = Path(__file__).parent
# Alembic logs every step at INFO ("Context impl SQLiteImpl", "Running upgrade ..."): the
# commands say what happened in one line per store instead. Set before Alembic is first
# imported (its plugins log when they load), which is why it is imported where it is used.
logging.getLogger("alembic").setLevel(logging.WARNING)


@dataclass(frozen=True, slots=True)
class Chain:
    """One chain of revisions: its scripts' folder and the table holding its revision."""

    name: str
    #: Modules whose ``metadata`` holds some of the chain's models.
    models: tuple[str, ...]

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.name}"

    @property
    def location(self) -> Path:
        return _HERE / self.name


GATEWAY = Chain(
    "gateway",
    (
        "tongban.gateway.oauth._schema",
        "tongban.gateway.ratelimit",
        "tongban.gateway.consent",
        "tongban.gateway.statistics_store",
        "tongban.gateway.enumeration",
        "tongban.gateway.pages.store",
        "tongban.policies.store",
    ),
)
AUDIT = Chain("audit", ("tongban.audit.schema",))
CHAINS: dict[str, Chain] = {c.name: c for c in (GATEWAY, AUDIT)}


class NotAtHead(MissingPrerequisite):
    """A database behind the code (or not migrated at all): the operator runs the
    upgrade. One line: ``database X is at revision R, the code needs H: run …``."""

    slug = "schema-not-current"
    title = "A database is not at the revision the code needs"


class SchemaRefused(CommandFailed):
    """A database the upgrade will not touch: ahead of the code, at a revision it does not
    know, or holding tables that are not a chain's baseline."""

    slug = "schema-refused"


@dataclass(frozen=True, slots=True)
class Store:
    """A database of the configuration and the chain it follows."""

    name: str  # "gateway", "audit"
    url: str
    chain: Chain

    @property
    def shown(self) -> str:
        return f"{self.name} ({display_url(self.url)})"


def stores(settings: Settings) -> list[Store]:
    """The databases ``tongban db`` migrates, from the configuration's URLs."""
    return [
        Store("gateway", settings.gateway_store_url(), GATEWAY),
        Store("audit", settings.audit_store_url(), AUDIT),
    ]


def _chain(chain: Chain | str) -> Chain:
    return CHAINS[chain] if isinstance(chain, str) else chain


@functools.cache
def _script(chain: Chain) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(chain.location))


def head(chain: Chain | str) -> str:
    """The revision the code needs."""
    found = _script(_chain(chain)).get_current_head()
    assert found is not None, "a chain has at least its baseline"
    return found


def _baseline(chain: Chain) -> str:
    base = _script(chain).get_base()
    assert base is not None
    return base


def _known(chain: Chain) -> set[str]:
    return {s.revision for s in _script(chain).walk_revisions()}


def model_metadata(chain: Chain | str) -> MetaData:
    """The models of ``chain``'s tables (what the code reads and writes), merged into one
    MetaData: what the migrated schema must equal."""
    import importlib

    merged = MetaData()
    for name in _chain(chain).models:
        meta: MetaData = importlib.import_module(name).metadata
        for table in meta.tables.values():
            if table.name not in merged.tables:
                table.to_metadata(merged)
    return merged


@functools.cache
def baseline_metadata(chain: Chain) -> MetaData:
    """The tables ``chain``'s baseline revision creates, read from its script (run against
    a recorder, no database): what a database made before migrations must hold."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    tables: list[Any] = []
    indexes: list[Index] = []
    ctx = MigrationContext.configure(
        dialect_name="sqlite", opts={"as_sql": True, "output_buffer": io.StringIO()}
    )
    impl: Any = ctx.impl
    impl.create_table = lambda table, **kw: tables.append(table)
    impl.create_index = lambda index, **kw: indexes.append(index)
    module = _script(chain).get_revision(_baseline(chain))
    assert module is not None
    with Operations.context(ctx):
        module.module.upgrade()
    out = MetaData()
    for table in tables:
        table.to_metadata(out)
    for index in indexes:
        assert index.table is not None
        target = out.tables[index.table.name]
        Index(index.name, *(target.c[c.name] for c in index.columns), unique=index.unique)
    return out


# --- running Alembic ---------------------------------------------------------------------


def run_environment() -> None:
    """The body of every chain's ``env.py``: run on the connection :func:`upgrade` passes
    (no alembic.ini, no URL of its own)."""
    from alembic import context

    config = getattr(context, "config", None)
    if config is None:  # imported outside Alembic (tests import every module): no run
        return
    conn = config.attributes["connection"]
    chain: Chain = config.attributes["chain"]
    context.configure(connection=conn, version_table=chain.version_table)
    with context.begin_transaction():
        context.run_migrations()


def _config(chain: Chain, conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config(stdout=io.StringIO())
    cfg.set_main_option("script_location", str(chain.location))
    cfg.attributes["connection"] = conn
    cfg.attributes["chain"] = chain
    return cfg


@contextmanager
def _engine(engine_or_url: Engine | str) -> Iterator[Engine]:
    if isinstance(engine_or_url, Engine):
        yield engine_or_url
        return
    engine = make_engine(engine_or_url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _sqlite_lock(engine: Engine, chain: Chain) -> Iterator[None]:
    """One upgrade of a chain at a time on a SQLite file (PostgreSQL takes an advisory
    lock inside the transaction; SQLite's DDL is not transactional, so two processes
    starting at once, a demo and a test, say, must not interleave): an exclusive lock on
    ``<file>.<chain>.migrate.lock`` beside the database. In-memory databases need none."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    with exclusive_lock(
        Path(database).with_name(f"{Path(database).name}.{chain.name}.migrate.lock")
    ):
        yield


def _shown(chain: Chain, engine_or_url: Engine | str) -> str:
    url = engine_or_url if isinstance(engine_or_url, str) else str(engine_or_url.url)
    return f"{chain.name} ({display_url(url)})"


def _revision(conn: Connection, chain: Chain) -> str | None:
    from alembic.migration import MigrationContext

    ctx = MigrationContext.configure(conn, opts={"version_table": chain.version_table})
    return ctx.get_current_revision()


def current(
    engine_or_url: Engine | str, chain: Chain | str, *, name: str | None = None
) -> str | None:
    """The database's revision of ``chain``; None for one never migrated (or, for a
    SQLite URL, a file that does not exist: it is not created)."""
    chain = _chain(chain)
    if isinstance(engine_or_url, str) and missing_sqlite_file(engine_or_url):
        return None
    try:
        with _engine(engine_or_url) as engine, engine.connect() as conn:
            return _revision(conn, chain)
    except SQLAlchemyError as exc:
        shown = name or _shown(chain, engine_or_url)
        raise StoreUnavailable(f"database {shown} is unavailable ({type(exc).__name__})") from exc


def differences(conn: Connection, metadata: MetaData) -> list[Any]:
    """What Alembic's comparison finds between the database and ``metadata``, limited to
    the tables ``metadata`` has (another chain's tables, or anyone else's, are not ours)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    names = set(metadata.tables)

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        return type_ != "table" or name in names

    ctx = MigrationContext.configure(
        conn, opts={"compare_type": True, "include_name": include_name}
    )
    return list(compare_metadata(ctx, metadata))


def _describe(diffs: Sequence[Any]) -> str:
    """The first few differences, in words: ``add_column oauth_clients.note``, …"""
    words = []
    for diff in diffs[:3]:
        d = diff[0] if isinstance(diff, list) else diff  # modify_* come in lists
        kind = str(d[0])
        if kind.endswith("_column") or kind.startswith("modify_"):
            column = getattr(d[3], "name", d[3])
            words.append(f"{kind} {d[2]}.{column}")
        else:
            words.append(f"{kind} {getattr(d[1], 'name', d[1])}")
    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return ", ".join(words) + more


def _adopt(conn: Connection, chain: Chain, shown: str) -> bool:
    """A database without this chain's version table: True if it holds the baseline's
    tables as ``create_all`` made them (then it is stamped at the baseline), False if it
    holds none of them; refused otherwise."""
    base = baseline_metadata(chain)
    ours = set(base.tables)
    present = ours & set(inspect(conn).get_table_names())
    if not present:
        return False
    if present != ours:
        missing = ", ".join(sorted(ours - present))
        raise SchemaRefused(
            f"database {shown} has {len(present)} of the {len(ours)} {chain.name} tables "
            f"(missing: {missing}) and no revision: not migrated; restore it, or move those "
            "tables away"
        )
    diffs = differences(conn, base)
    if diffs:
        raise SchemaRefused(
            f"database {shown} has the {chain.name} tables but no revision, and they differ "
            f"from revision {_baseline(chain)} ({_describe(diffs)}): not migrated"
        )
    return True


@dataclass(frozen=True, slots=True)
class Upgraded:
    before: str | None
    after: str
    adopted: bool  # stamped at the baseline first (tables made before migrations)


def upgrade(
    engine_or_url: Engine | str,
    chain: Chain | str = GATEWAY,
    *,
    revision: str = "head",
    name: str | None = None,
) -> Upgraded:
    """Bring the database to ``revision`` of ``chain``, in one transaction on PostgreSQL
    (one upgrade at a time: an advisory lock). Tests and the demo call it too."""
    chain = _chain(chain)
    shown = name or _shown(chain, engine_or_url)
    with _engine(engine_or_url) as engine, _sqlite_lock(engine, chain):
        try:
            with engine.begin() as conn:
                return _upgrade(conn, chain, revision, shown)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(
                f"database {shown} is unavailable ({type(exc).__name__})"
            ) from exc


def upgrade_on(conn: Connection, chain: Chain | str, revision: str = "head") -> Upgraded:
    """:func:`upgrade` on the caller's open transaction (a restore that creates a chain's
    schema, loads rows and migrates to head, committing once)."""
    found = _chain(chain)
    return _upgrade(conn, found, revision, found.name)


def _upgrade(conn: Connection, chain: Chain, revision: str, shown: str) -> Upgraded:
    from alembic import command

    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": chain.version_table})
    before = _revision(conn, chain)
    adopted = False
    if before is None:
        adopted = _adopt(conn, chain, shown)
        if adopted:
            command.stamp(_config(chain, conn), _baseline(chain))
            before = _baseline(chain)
    elif before not in _known(chain):
        raise SchemaRefused(
            f"database {shown} is at revision {before}, which this code does not know "
            f"(newer code migrated it? this code's head is {head(chain)}): not migrated"
        )
    target = head(chain) if revision == "head" else revision
    if target not in _known(chain):
        raise SchemaRefused(f"{chain.name}: no revision {target} (known: {_listing(chain)})")
    if before is not None and before != target and _is_ancestor(chain, target, before):
        raise SchemaRefused(
            f"database {shown} is at revision {before}, ahead of {target}: not downgraded"
        )
    command.upgrade(_config(chain, conn), target)
    after = _revision(conn, chain)
    assert after is not None
    return Upgraded(before, after, adopted)


def _listing(chain: Chain) -> str:
    return ", ".join(sorted(_known(chain)))


def _is_ancestor(chain: Chain, older: str, newer: str) -> bool:
    """Whether ``older`` comes before ``newer`` in the chain."""
    return any(s.revision == older for s in _script(chain).iterate_revisions(newer, "base"))


def require_head(
    engine_or_url: Engine | str, chain: Chain | str, *, name: str | None = None
) -> None:
    """Refuse, in one line, a database that is not at the head revision of ``chain``:
    ``database X is at revision R, the code needs H: run `tongban db upgrade```. Creates
    nothing: a SQLite file that does not exist is not made."""
    chain = _chain(chain)
    url = engine_or_url if isinstance(engine_or_url, str) else None
    shown = name or _shown(chain, engine_or_url)
    needed = head(chain)
    if url is not None and missing_sqlite_file(url) is not None:
        at: str | None = None
    else:
        try:
            with _engine(engine_or_url) as engine, engine.connect() as conn:
                at = _revision(conn, chain)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(
                f"database {shown} is unavailable ({type(exc).__name__})"
            ) from exc
    if at == needed:
        return
    if at is not None and at not in _known(chain):
        raise NotAtHead(
            f"database {shown} is at revision {at}, which this code does not know (the "
            f"code needs {needed}): run the code that migrated it"
        )
    raise NotAtHead(
        f"database {shown} is at revision {at or 'none'}, the code needs {needed}: "
        "run `tongban db upgrade`"
    )
