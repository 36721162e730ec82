"""The built distribution: one top-level package, complete, and at home beside others.

The repository keeps its folders (gateway/, adapters/, ...) and setuptools' package-dir maps
each to a subpackage of ``tongban``. These tests build the real wheel from a copy of the
sources, install it into a folder of its own, and use it from a process where a different
package called ``adapters`` (a popular PyPI name) comes first on the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from .layout import FOLDERS, ROOT

pytestmark = pytest.mark.slow


def _tracked_sources() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    return [p for p in out.split("\0") if p]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built without network from a copy of the tracked files (the checkout
    stays clean: no build/ or egg-info appears in it)."""
    src = tmp_path_factory.mktemp("src")
    for rel in _tracked_sources():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    (built,) = out.glob("tongban-*.whl")
    return built


def test_wheel_has_one_top_level_package(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
        top_level = next(n for n in zf.namelist() if n.endswith(".dist-info/top_level.txt"))
        declared = zf.read(top_level).decode().split()

    assert {t for t in tops if not t.endswith(".dist-info")} == {"tongban"}
    assert declared == ["tongban"]


def test_every_package_folder_is_in_the_wheel(wheel: Path):
    """A subpackage added to a folder but not to pyproject's list would silently be missing."""
    expected = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            expected.add(".".join([package, *rel.parts]))
    declared = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    with zipfile.ZipFile(wheel) as zf:
        inits = {n.removesuffix("/__init__.py").replace("/", ".") for n in zf.namelist()
                 if n.endswith("/__init__.py")}  # fmt: skip

    assert declared == expected
    assert inits == expected


def test_wheel_carries_data_files_license_and_marker(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for needed in (
        "tongban/py.typed",
        "tongban/gateway/claims.json",
        "tongban/gateway/static/docs.html",
        "tongban/gateway/pages/templates/officer.html",
        "tongban/gateway/pages/static/sm3.js",
        "tongban/policies/model.conf",
        "tongban/policies/default.csv",
        "tongban/policies/legal_bases.json",
    ):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


SMOKE = """
import adapters
assert adapters.WHO == "someone else's adapters", adapters.__file__
import tongban, tongban.adapters.protocol, tongban.gateway.app
assert tongban.__file__.startswith(TARGET), tongban.__file__
from tongban.adapters.departments import DEPARTMENTS
from tongban.gateway.catalog import Catalog
from tongban.policies.rules import default_model_text, default_rules
catalog = Catalog.load(DEPARTMENTS)
assert "birth_registered" in catalog.claims
assert default_rules() and "[matchers]" in default_model_text()
from tongban.cli import main
raise SystemExit(main(["id", "check", "11010519491231002X"]))
"""


def test_installed_wheel_works_beside_a_package_named_adapters(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    other = tmp_path / "other"
    (other / "adapters").mkdir(parents=True)
    (other / "adapters" / "__init__.py").write_text('WHO = "someone else\'s adapters"\n')
    assert not (target / "adapters").exists()

    env = {**os.environ, "PYTHONPATH": f"{other}{os.pathsep}{target}"}
    done = subprocess.run(
        [sys.executable, "-c", f"TARGET = {str(target)!r}\n{SMOKE}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert '"valid": true' in done.stdout
