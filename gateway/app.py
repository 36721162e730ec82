"""The gateway's HTTP shell (Flask). Views parse, call the core, and render."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flask import Flask, Response, jsonify

from adapters.client import DepartmentClient
from adapters.service import install_problem_handlers

from .catalog import Catalog

__all__ = ["MAX_BODY", "Gateway", "create_app"]

MAX_BODY = 64 * 1024
log = logging.getLogger("tongban.gateway")


@dataclass
class Gateway:
    """Everything the views need, built once by the caller (CLI, tests)."""

    catalog: Catalog
    departments: DepartmentClient

    def health(self) -> dict[str, object]:
        names = self.departments.departments
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            reports = dict(zip(names, pool.map(self.departments.health, names), strict=True))
        ready = all(r["reachable"] for r in reports.values())
        return {"status": "ok" if ready else "degraded", "departments": reports}


def create_app(gateway: Gateway) -> Flask:
    app = Flask("tongban.gateway")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    install_problem_handlers(app, MAX_BODY, log)

    @app.get("/healthz")
    def healthz() -> Response:
        # Liveness is "this process answers"; a department being down degrades answers to
        # `undetermined` but does not make the gateway unhealthy.
        return jsonify(gateway.health())

    return app
