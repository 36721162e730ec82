"""One rule for the public surface, checked for every module of every tongban package (as
httpx checks its own): a module lists its public names in ``__all__``; every name listed
exists; every public class or function a module defines is listed (or the name starts
with ``_``). A package's ``__init__`` either re-exports a facade, listed in its
``__all__``, or exports nothing (``__all__ = []``)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

PACKAGES = (
    "tongban",
    "tongban.primitives",
    "tongban.gateway",
    "tongban.policies",
    "tongban.adapters",
    "tongban.audit",
    "tongban.federation",
)


def _modules() -> list[str]:
    names: list[str] = []
    for top in PACKAGES:
        package = importlib.import_module(top)
        names.append(top)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")]
    return sorted({n for n in names if not n.endswith("__main__")})


MODULES = _modules()


def _defined_here(module: ModuleType) -> list[str]:
    return sorted(
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    )


def test_every_package_is_walked() -> None:
    assert len(MODULES) > 150
    assert "tongban.gateway.checks" in MODULES and "tongban.audit.sink" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_all_is_present_complete_and_true(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list), f"{name} has no __all__"
    assert len(exported) == len(set(exported)), f"{name}: __all__ repeats a name"
    assert [n for n in exported if not hasattr(module, n)] == [], f"{name}: listed, not there"
    unlisted = [n for n in _defined_here(module) if n not in exported]
    assert unlisted == [], f"{name}: public but not in __all__"
