"""Optional features and the one-line error a missing extra gives.

Each optional feature lives behind a ``pip install 'tongban[EXTRA]'``. Modules that need one
call :func:`require_extra` before importing it, so a plain install fails with a sentence that
names the extra instead of an ``ImportError`` traceback from deep inside a service.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

__all__ = ["EXTRAS", "MissingExtra", "extra_imports", "require_extra"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "federation": ("flwr", "matplotlib"),
    "postgres": ("psycopg",),
    "mysql": ("pymysql",),
    "gmssl": ("gmssl",),
    "pyjwt": ("jwt",),
}
"""Each extra and the top-level modules it installs (pyproject's optional-dependencies)."""


class MissingExtra(ImportError):
    """An optional feature was used without its extra installed."""

    def __init__(self, extra: str, feature: str) -> None:
        self.extra = extra
        self.feature = feature
        super().__init__(f"{feature} needs the '{extra}' extra: pip install 'tongban[{extra}]'")


def require_extra(module: str, extra: str, feature: str) -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported."""
    if extra not in EXTRAS or module not in EXTRAS[extra]:
        raise ValueError(f"{module!r} is not part of the extra {extra!r}")
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise MissingExtra(extra, feature)


@contextlib.contextmanager
def extra_imports(extra: str, feature: str) -> Iterator[None]:
    """Wrap a module's imports of an extra: a missing one becomes :class:`MissingExtra`.

    Only a module of ``extra`` itself counts; any other ``ModuleNotFoundError`` (a broken
    install of a core dependency) propagates unchanged.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in EXTRAS[extra]:
            raise
        raise MissingExtra(extra, feature) from exc
