"""The repository's folders and the installed packages they become, read from pyproject's
``[tool.setuptools.package-dir]`` (the one place the mapping is written)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: folder -> package, e.g. "gateway" -> "tongban.gateway"
FOLDERS = {
    folder: package for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()
}
