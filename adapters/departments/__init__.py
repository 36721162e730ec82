"""The five departments. Importing this package registers them all."""

from __future__ import annotations

from ..at_rest import SealedTable
from ..department import Department
from . import civil, health, hrss, medins, police

__all__ = ["DEPARTMENTS", "SEALED_TABLES", "get"]

DEPARTMENTS: dict[str, Department] = {}
# Per department: the tables whose sensitive columns are blind-indexed and sealed when the
# store is encrypted at rest.
SEALED_TABLES: dict[str, dict[str, SealedTable]] = {}


def _register(dept: Department) -> None:
    if dept.name in DEPARTMENTS:
        raise ValueError(f"department {dept.name!r} registered twice")
    DEPARTMENTS[dept.name] = dept


for _module in (health, police, civil, hrss, medins):
    _register(_module.DEPARTMENT)
    SEALED_TABLES[_module.DEPARTMENT.name] = {
        table: SealedTable.of(_module.DEPARTMENT.table(table), columns)
        for table, columns in _module.AT_REST.items()
    }


def get(name: str) -> Department:
    try:
        return DEPARTMENTS[name]
    except KeyError:
        raise KeyError(f"unknown department {name!r}; known: {sorted(DEPARTMENTS)}") from None
