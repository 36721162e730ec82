"""Alembic's environment for this chain: everything is in :mod:`tongban.migrations`."""

from __future__ import annotations

from tongban.migrations import run_environment

run_environment()
