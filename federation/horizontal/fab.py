"""The Flower App Bundle (FAB) for ``flwr run``, built in memory.

A FAB is a zip of a ``pyproject.toml`` (``[tool.flwr.app]``: publisher, components, default
run config) and the app's Python files. Ours carries a one-line shim module; the app's code
is the installed ``federation.horizontal`` package, which every SuperLink/SuperNode host of
this deployment has (the SuperLink runs with ``--disable-runtime-dependency-installation``,
so nothing is fetched at run time).
"""

from __future__ import annotations

import hashlib
import json
import warnings

from tongban.primitives.extras import extra_imports

from .settings import RunSettings

with extra_imports("federation", "the Flower app bundle"):
    from flwr.cli.build import build_fab_from_files

__all__ = ["APP_MODULE", "build_fab", "pyproject_toml"]

APP_MODULE = "tongban_horizontal_app"

_SHIM = b'''"""Entry points of the tongban horizontal-training Flower app."""

from tongban.federation.horizontal.apps import client_app, server_app

__all__ = ["client_app", "server_app"]
'''


def _toml_value(value: bool | int | float | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def pyproject_toml(defaults: RunSettings | None = None) -> str:
    config = (defaults or RunSettings()).to_run_config()
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "tongban-horizontal"',
        'version = "1.0.0"',
        'description = "Childcare-subsidy outreach model, trained across county bureaus"',
        'license = "Apache-2.0"',
        'dependencies = ["flwr==1.41.0"]',
        "",
        "[tool.hatch.build.targets.wheel]",
        'packages = ["."]',
        "",
        "[tool.flwr.app]",
        'publisher = "tongban"',
        "",
        "[tool.flwr.app.components]",
        f'serverapp = "{APP_MODULE}:server_app"',
        f'clientapp = "{APP_MODULE}:client_app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in config.items()),
        "",
    ]
    return "\n".join(lines)


def build_fab(defaults: RunSettings | None = None) -> tuple[bytes, str]:
    """The FAB bytes and their SHA-256 (hex), as ``flwr run`` computes them."""
    files = {"pyproject.toml": pyproject_toml(defaults).encode(), f"{APP_MODULE}.py": _SHIM}
    with warnings.catch_warnings():  # pathspec's 'gitwildmatch' deprecation, inside Flower
        warnings.filterwarnings("ignore", message=".*GitWildMatchPattern.*")
        fab, _ = build_fab_from_files(files)
    return fab, hashlib.sha256(fab).hexdigest()
