"""Canonical JSON for audit entries: sorted keys, no whitespace, UTF-8, no floats.

Floats are refused because their text form is not canonical across implementations; an
entry that needs a fraction stores it as a string or scaled integer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["canonical_bytes", "canonical_json", "check_values", "decimal_text"]


def decimal_text(value: float | None) -> str | None:
    """A fraction as an entry keeps it: fixed-point text to 6 places, trailing zeros dropped
    (``0.2`` → ``"0.2"``, ``1.0`` → ``"1"``); ``None`` stays ``None``."""
    return None if value is None else f"{value:.6f}".rstrip("0").rstrip(".")


def check_values(entry: Mapping[str, Any]) -> None:
    """Raise TypeError if ``entry`` holds anything canonical JSON cannot (floats, ...)."""
    _check(entry, "entry")


def canonical_bytes(value: Mapping[str, Any]) -> bytes:
    """Encode without re-validating (callers ran :func:`check_values`)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _check(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        raise TypeError(f"{path}: floats are not allowed in audit entries")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: object keys must be strings")
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, f"{path}[{i}]")
        return
    raise TypeError(f"{path}: {type(value).__name__} is not JSON")


def canonical_json(value: Mapping[str, Any]) -> bytes:
    _check(value, "entry")
    return canonical_bytes(value)
