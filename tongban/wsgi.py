"""WSGI factories for production servers (gunicorn): one gateway or adapter per worker.

    gunicorn -c python:tongban.gunicorn_conf -w 2 -b 0.0.0.0:8080 'tongban.wsgi:gateway()'

(the shipped configuration, :mod:`tongban.gunicorn_conf`: the deadline worker, the logs,
and one ``/metrics`` for all workers), or by hand (several workers then count each alone)::

    gunicorn --workers 2 --threads 16 --worker-class gthread 'tongban.wsgi:gateway()'
    gunicorn --workers 1 --threads 8 --worker-class gthread 'tongban.wsgi:adapter("health")'
    TONGBAN_DEPARTMENT_FILE=/etc/tongban/health.toml \
    gunicorn --workers 1 --threads 8 --worker-class gthread 'tongban.wsgi:department_file()'

Settings come from ``TONGBAN_*`` variables. Each worker builds its own cores after the
fork (no preload): threads and database connections do not survive a fork. Workers on
one host build one at a time (a file lock in the data directory), so their first starts
do not race to create the same tables. The production topology, with PostgreSQL shared
by the gateway workers, is in docs/operations.md ("Production topology").
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask

from tongban.primitives.locks import exclusive_lock

from .boundary import UsageError
from .config import Settings

if TYPE_CHECKING:
    from tongban.gateway.services import Gateway

__all__ = ["DEPARTMENT_FILE_VAR", "adapter", "department_file", "gateway", "route_logs"]

#: The department file :func:`department_file` serves when it is given none.
DEPARTMENT_FILE_VAR = "TONGBAN_DEPARTMENT_FILE"

log = logging.getLogger("tongban.wsgi")


@contextlib.contextmanager
def _one_at_a_time(settings: Settings, name: str) -> Iterator[None]:
    with exclusive_lock(settings.data_dir / f".{name}-start.lock"):
        yield


def _wait_for_stores(*urls: str) -> None:
    """Block until every store answers. gunicorn halts altogether when a worker fails to
    boot, so a worker respawned while PostgreSQL is away (after a crash or --max-requests)
    waits for it here instead of taking the other, still-serving workers down with it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    delay = 0.5
    for url in urls:
        if not url.startswith("postgresql"):
            continue  # SQLite files need no server
        engine = create_engine(url, pool_pre_ping=True)
        try:
            while True:
                try:
                    with engine.connect() as conn:
                        conn.execute(text("SELECT 1"))
                    break
                except SQLAlchemyError as exc:
                    log.warning("store unavailable (%s); worker waits", type(exc).__name__)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            engine.dispose()


def route_logs() -> None:
    """tongban's log records under a WSGI server: under gunicorn, to where its error log
    goes (its handlers, its format, its ``--log-level``), which otherwise drops every
    ``tongban.*`` record below WARNING; elsewhere, if nothing is configured, to stderr.
    Called by every app factory of this module; a configured ``tongban`` logger is kept."""
    from .boundary import make_log_handler

    ours = logging.getLogger("tongban")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if ours.handlers:
        return
    server = logging.getLogger("gunicorn.error")
    if server.handlers:
        for handler in server.handlers:
            ours.addHandler(handler)
        ours.setLevel(server.level or logging.INFO)
    elif not logging.getLogger().handlers:
        import sys

        ours.addHandler(make_log_handler(sys.stderr))
        ours.setLevel(logging.INFO)
    else:
        return  # the host (a test runner) configured logging: records propagate to it
    ours.propagate = False


def gateway() -> Flask:
    from tongban.gateway.app import create_app

    from .wiring import build_gateway

    route_logs()
    settings = Settings.from_env()
    _wait_for_stores(settings.gateway_store_url(), settings.audit_store_url())
    with _one_at_a_time(settings, "gateway"):
        built = build_gateway(settings)
    atexit.register(built.close)
    _follow_policy(built, settings)
    audit = built.audit
    log.info(
        "gateway ready (pid %d): %d department(s) connected, audit log of %d entries",
        os.getpid(),
        len(built.departments.departments),
        audit.size if audit is not None else 0,
    )
    return create_app(built)


def _follow_policy(built: Gateway, settings: Settings) -> None:
    """A policy change approved in one worker is committed to the shared store but loaded
    only by that worker's enforcer: every worker polls the store's head version and
    reloads when it moved, so all workers enforce one policy within the poll interval."""
    from tongban.policies import PolicyStore

    admin, checker = built.policy_admin, built.checker
    if admin is None or checker is None or settings.policy_poll_interval <= 0:
        return
    store = PolicyStore.from_url(settings.gateway_store_url())

    def follow() -> None:
        while True:
            time.sleep(settings.policy_poll_interval)
            try:
                head = store.head_version()
                if head is not None and head != checker.enforcer.version:
                    log.info("policy %s approved elsewhere: reloading", head[:12])
                    admin.reload()
            except Exception as exc:  # the store is away: keep the policy we have, retry
                log.warning("policy poll failed: %s", type(exc).__name__)

    threading.Thread(target=follow, name="policy-follower", daemon=True).start()


def adapter(department: str) -> Flask:
    from tongban.adapters.service import create_app
    from tongban.primitives.metrics_auth import ensure_metrics_token

    from .wiring import build_adapter

    route_logs()
    settings = Settings.from_env()
    with _one_at_a_time(settings, f"adapter-{department}"):
        core, witness = build_adapter(settings, department)
    log.info("adapter %s ready (pid %d)", department, os.getpid())
    return create_app(core, witness, metrics=ensure_metrics_token(settings.keys_dir))


def department_file(path: str | None = None, *, env: Mapping[str, str] | None = None) -> Flask:
    """An adapter serving a department file (docs/departments.md), as `tongban adapter
    serve --department-file` does: ``path``, else the file ``TONGBAN_DEPARTMENT_FILE``
    names. Its ``${VAR}`` references are resolved from the environment; a file over the
    managed store (``source = "managed"``) reads ``TONGBAN_STORE_URL_<DEPT>``. A file the
    adapter would refuse stops the worker before it serves anything; a source that
    cannot be reached does not (the adapter answers unknown and is not ready until it
    is back)."""
    from tongban.adapters.deptfile import load_department_file
    from tongban.adapters.service import create_app
    from tongban.primitives.metrics_auth import ensure_metrics_token

    from .wiring import build_file_adapter

    route_logs()
    env = os.environ if env is None else env
    where = path or env.get(DEPARTMENT_FILE_VAR, "")
    if not where:
        raise UsageError(
            "tongban.wsgi:department_file(): name the department file, "
            f"or set {DEPARTMENT_FILE_VAR}"
        )
    dept = load_department_file(Path(where), env=env)
    settings = Settings.from_env(env)
    with _one_at_a_time(settings, f"adapter-{dept.name}"):
        core, witness = build_file_adapter(settings, dept)
    atexit.register(core.evaluator.dispose)
    return create_app(core, witness, metrics=ensure_metrics_token(settings.keys_dir))
