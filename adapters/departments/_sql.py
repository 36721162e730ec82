"""Small SQL helpers shared by the department modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Executable

__all__ = ["exists"]


def exists(conn: Connection, stmt: Executable, params: Mapping[str, Any]) -> bool:
    return conn.execute(stmt, dict(params)).first() is not None
