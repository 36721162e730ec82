"""The built-in departments: each is its department file ``NAME.toml`` (what it answers)
over the managed store whose tables module ``NAME.py`` declares (``SCHEMA``).

The files are the registry (:mod:`tongban.adapters.builtin`): a department is built-in
because its file is here, and everything else finds it by the file's ``name``.
"""

from __future__ import annotations

import importlib

from ..at_rest import SealedTable
from ..builtin import builtin_files
from ..department import Department, StoreSchema
from ..deptfile import load_department_file

__all__ = ["DEPARTMENTS", "SEALED_TABLES", "get"]

DEPARTMENTS: dict[str, Department] = {}
# Per department: the tables whose sensitive columns are blind-indexed and sealed when the
# store is encrypted at rest.
SEALED_TABLES: dict[str, dict[str, SealedTable]] = {}


def _load(name: str) -> Department:
    file = load_department_file(builtin_files()[name])
    if not file.managed:
        raise ValueError(f'{file.path}: a built-in department reads source = "managed"')
    schema = importlib.import_module(f"{__name__}.{name}").SCHEMA
    if not isinstance(schema, StoreSchema):
        raise TypeError(f"{__name__}.{name}.SCHEMA is not a StoreSchema")
    return Department(file, schema)


for _name in builtin_files():
    _dept = _load(_name)
    DEPARTMENTS[_name] = _dept
    SEALED_TABLES[_name] = {
        table: SealedTable.of(_dept.table(table), dict(columns))
        for table, columns in _dept.schema.sealed.items()
    }


def get(name: str) -> Department:
    try:
        return DEPARTMENTS[name]
    except KeyError:
        raise KeyError(f"unknown department {name!r}; known: {sorted(DEPARTMENTS)}") from None
