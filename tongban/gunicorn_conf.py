"""gunicorn's configuration for tongban: the gateway, and an adapter under gunicorn.

    gunicorn -c python:tongban.gunicorn_conf -w 2 -b 0.0.0.0:443 'tongban.wsgi:gateway()'

or an operator's file that starts with ``from tongban.gunicorn_conf import *`` and adds
the host's own settings (docs/deploy/gunicorn.conf.py). Options on the command line
override this module. What it sets:

* the worker class, :class:`tongban.gunicorn_worker.DeadlineThreadWorker` (gthread that
  cuts off slow clients and honours connection holds), and its threads;
* the logs: the masked access log (:mod:`tongban.access_log`) on stdout, the error log on
  stderr at ``info``. Each app factory of :mod:`tongban.wsgi` hands ``tongban.*`` records
  to the error log's handlers at its level (:func:`tongban.wsgi.route_logs`), so INFO
  lines such as "gateway ready" show; a ``logconfig_dict`` that configures a ``tongban``
  logger is kept as it is;
* Prometheus multiprocess mode (:mod:`tongban.http_metrics`). With more than one worker
  (or with ``PROMETHEUS_MULTIPROC_DIR`` set by the operator), the master, before it forks
  any worker, makes an empty directory private to the service's user (mode 0700),
  ``<data dir>/run/metrics-<master pid>``, and puts it in ``PROMETHEUS_MULTIPROC_DIR``;
  the workers inherit it and import prometheus_client only after the fork (no
  ``preload_app``), so every worker writes its values there and ``/metrics`` serves the
  deployment's totals. When a worker exits, ``child_exit`` drops its live gauges
  (``mark_process_dead``); its counters stay in the totals. The master removes the
  directory when it stops; one left by a master that was killed is removed by the next
  start. With one worker nothing is set: metrics stay in the process, as under
  ``tongban gateway serve``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tongban.access_log import ACCESS_LOG_FORMAT
from tongban.config import Settings
from tongban.metrics_dir import MULTIPROC_VAR, prepare_metrics_dir

__all__ = [
    "access_log_format",
    "accesslog",
    "child_exit",
    "errorlog",
    "logger_class",
    "loglevel",
    "on_exit",
    "on_starting",
    "preload_app",
    "threads",
    "timeout",
    "worker_class",
]


worker_class = "tongban.gunicorn_worker.DeadlineThreadWorker"
threads = 16
timeout = 60
# Each worker builds its own gateway after the fork (tongban.wsgi), and prometheus_client
# must first be imported there, after on_starting set PROMETHEUS_MULTIPROC_DIR.
preload_app = False
logger_class = "tongban.access_log.MaskedAccessLogger"
accesslog = "-"
access_log_format = ACCESS_LOG_FORMAT
errorlog = "-"
loglevel = "info"


_made: list[Path] = []  # the directory this master made, removed by on_exit


def on_starting(server: Any) -> None:
    """In the master, before any worker is forked: the multiprocess directory."""
    client = sys.modules.get("prometheus_client.values")
    if client is not None and not getattr(client.ValueClass, "_multiprocess", False):
        # prometheus_client is already imported in the master (preload_app): the workers
        # inherit its single-process choice, whatever the variable says from now on.
        server.log.warning("metrics: prometheus_client loaded before the fork; per worker")
        return
    named = os.environ.get(MULTIPROC_VAR)
    path = prepare_metrics_dir(int(server.cfg.workers), Settings.from_env().data_dir)
    if path is None:
        return
    if str(path) != named:
        _made.append(path)
    server.log.info("metrics: workers share %s (Prometheus multiprocess mode)", path)


def child_exit(server: Any, worker: Any) -> None:
    """In the master, once a worker has exited: its live gauges leave the merge."""
    if MULTIPROC_VAR not in os.environ:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    """The master stops: the directory it made goes (the next start makes a new one)."""
    for path in _made:
        with contextlib.suppress(OSError):
            shutil.rmtree(path)
