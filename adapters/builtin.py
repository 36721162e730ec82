"""The built-in departments: one department file each, in ``adapters/departments/``.

These files are the registry. Every list of department names (configuration, the
generator, the demo's topology, tests and benchmarks) derives from them, so adding a
built-in department is adding a file (and its store's tables beside it). Reading the
names is cheap (TOML only, no SQL), so configuration can import this module.
"""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

__all__ = ["BUILTIN_DIR", "builtin_file", "builtin_files", "builtin_names"]

BUILTIN_DIR = Path(__file__).resolve().parent / "departments"


@cache
def builtin_files() -> dict[str, Path]:
    """Department name → its file, in the order of the file names."""
    out: dict[str, Path] = {}
    for path in sorted(BUILTIN_DIR.glob("*.toml")):
        with path.open("rb") as fh:
            name = tomllib.load(fh)["name"]
        if name in out:
            raise ValueError(f"{path}: department {name!r} declared twice")
        out[name] = path
    return out


def builtin_names() -> tuple[str, ...]:
    """The built-in departments' names."""
    return tuple(builtin_files())


def builtin_file(name: str) -> Path:
    try:
        return builtin_files()[name]
    except KeyError:
        raise KeyError(f"unknown department {name!r}; known: {sorted(builtin_files())}") from None
