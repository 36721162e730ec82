"""Alembic's environment for this chain: everything is in :mod:`tongban.migrations`."""

from __future__ import annotations

from tongban.migrations import run_environment

__all__: list[str] = []

run_environment()
