"""The five departments. Importing this package registers them all."""

from __future__ import annotations

from ..department import Department
from . import civil, health, hrss, medins, police

__all__ = ["DEPARTMENTS", "get"]

DEPARTMENTS: dict[str, Department] = {}


def _register(dept: Department) -> None:
    if dept.name in DEPARTMENTS:
        raise ValueError(f"department {dept.name!r} registered twice")
    DEPARTMENTS[dept.name] = dept


for _module in (health, police, civil, hrss, medins):
    _register(_module.DEPARTMENT)


def get(name: str) -> Department:
    try:
        return DEPARTMENTS[name]
    except KeyError:
        raise KeyError(f"unknown department {name!r}; known: {sorted(DEPARTMENTS)}") from None
