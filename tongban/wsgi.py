"""WSGI factories for production servers (gunicorn): one gateway or adapter per worker.

    gunicorn --workers 2 --threads 16 --worker-class gthread 'tongban.wsgi:gateway()'
    gunicorn --workers 1 --threads 8 --worker-class gthread 'tongban.wsgi:adapter("health")'

Settings come from ``TONGBAN_*`` variables. Each worker builds its own cores after the
fork (no preload): threads and database connections do not survive a fork.
"""

from __future__ import annotations

import atexit
import logging

from flask import Flask

from .config import Settings

__all__ = ["adapter", "gateway"]


def gateway() -> Flask:
    from gateway.app import create_app

    from .wiring import build_gateway

    logging.getLogger("httpx").setLevel(logging.WARNING)
    built = build_gateway(Settings.from_env())
    atexit.register(built.close)
    return create_app(built)


def adapter(department: str) -> Flask:
    from adapters.service import create_app

    from .wiring import build_adapter

    core, witness = build_adapter(Settings.from_env(), department)
    return create_app(core, witness)
