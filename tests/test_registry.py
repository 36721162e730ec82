"""Nothing about a department is written twice: the department files are the registry
(:mod:`tongban.adapters.builtin`), and every list of department names derives from it.

The first test reads every Python source of the repository and fails on a literal that
spells out all the built-in departments' names (a tuple, list or set, or a string of them
to split), since such a list drifts from the files the day a department is added. The
others check that what registers departments agrees with the files.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tongban.adapters.builtin import BUILTIN_DIR, builtin_names

ROOT = Path(__file__).resolve().parent.parent
# Not sources of the project: environments, build output, caches, installed node modules.
_SKIP_DIRS = {"build", "dist", "node_modules", "demo-data"}
# A dict keyed by every department is per-department logic (what to generate for each),
# not a list of names; only these modules hold such tables, and their keys are checked
# against the registry below.
PER_DEPARTMENT_TABLES = {"adapters/synthetic/records.py", "adapters/synthetic/generate.py"}


def _sources() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in _SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        yield path


def _strings(nodes: list[ast.expr | None]) -> set[str]:
    return {n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def literal_name_lists(source: str, names: set[str]) -> Iterator[tuple[int, str]]:
    """(line, kind) of each literal in ``source`` that names every one of ``names``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            if names <= _strings(list(node.elts)):
                yield node.lineno, type(node).__name__.lower()
        elif isinstance(node, ast.Dict):
            if names <= _strings(node.keys):
                yield node.lineno, "dict"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # "health police civil ..." (to be split): names and separators only.
            words = set(re.split(r"[\s,;|]+", node.value.strip()))
            if names <= words <= names:
                yield node.lineno, "string"


def test_the_scan_finds_a_literal_list() -> None:
    names = set(builtin_names())
    spelled = ", ".join(repr(n) for n in sorted(names))
    found = list(literal_name_lists(f"A = ({spelled})\nB = [{spelled}, 'x']\n", names))
    assert [kind for _, kind in found] == ["tuple", "list"]
    split = f"C = {' '.join(sorted(names))!r}.split()\n"
    assert [kind for _, kind in literal_name_lists(split, names)] == ["string"]
    # One department short is not a list of all of them.
    partial = ", ".join(repr(n) for n in sorted(names)[1:])
    assert not list(literal_name_lists(f"D = ({partial})\n", names))


def test_no_module_lists_the_departments() -> None:
    names = set(builtin_names())
    assert len(names) >= 2  # with one department any mention would be a "list"
    offenders = []
    scanned = 0
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        scanned += 1
        for line, kind in literal_name_lists(path.read_text(encoding="utf-8"), names):
            if kind == "dict" and rel in PER_DEPARTMENT_TABLES:
                continue
            offenders.append(f"{rel}:{line}: a {kind} of every department")
    assert scanned > 50, "the scan found no sources"
    assert not offenders, (
        "derive department names from tongban.adapters.builtin.builtin_names() "
        "(or tongban.config.DEPARTMENTS):\n" + "\n".join(offenders)
    )


# --- what registers departments agrees with the files --------------------------------


def test_the_store_modules_are_the_files() -> None:
    import tongban.adapters.departments as package
    from tongban.adapters.department import StoreSchema
    from tongban.adapters.departments import DEPARTMENTS

    modules = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg)
    assert modules == sorted(builtin_names())
    assert sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")) == modules
    assert tuple(DEPARTMENTS) == builtin_names()
    for name, dept in DEPARTMENTS.items():
        assert dept.name == name
        schema = importlib.import_module(f"{package.__name__}.{name}").SCHEMA
        assert isinstance(schema, StoreSchema)
        assert dept.schema is schema


def test_every_list_of_departments_is_the_registry() -> None:
    from tests import conftest, topology
    from tongban import config, keys
    from tongban.adapters.synthetic import records

    names = builtin_names()
    assert names == config.DEPARTMENTS
    assert names == records.DEPARTMENT_ORDER
    assert names == conftest.DEPARTMENT_NAMES
    assert names == topology.DEPARTMENTS
    assert keys.SIGNING_PARTIES[-len(names) :] == names
    # The generator knows how to build every department's records, and no other.
    assert set(records._BUILDERS) == set(names)


def test_the_bench_takes_the_registry() -> None:
    bench_gateway = pytest.importorskip("bench.bench_gateway")
    assert builtin_names() == bench_gateway.DEPARTMENTS
