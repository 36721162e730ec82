"""Enumerated parameters: the one check claims, predicates and statistics share.

A parameter takes one of a declared list of values, so a refusal can say exactly what was
allowed: the problem names the parameter and lists its values (in ``detail`` and in the
``parameter`` and ``allowed`` extension members). It never repeats what the caller sent,
name or value, which could be personal data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import BadRequest, UnknownParameter

__all__ = ["check_enumerated", "not_enumerated"]

_LISTED = 12  # more values than this are abbreviated in detail (all are in ``allowed``)


def _listing(values: Sequence[str]) -> str:
    if len(values) <= _LISTED:
        return ", ".join(values)
    return f"{', '.join(values[:3])}, ..., {values[-1]} ({len(values)} values, in allowed)"


def _names(names: Sequence[str]) -> str:
    if not names:
        return "no parameters"
    if len(names) == 1:
        return f"only {names[0]}"
    return "only " + ", ".join(names[:-1]) + f" and {names[-1]}"


def not_enumerated(name: str, allowed: Sequence[str], why: str = "") -> UnknownParameter:
    """The problem for parameter ``name`` missing or outside ``allowed``."""
    lead = f"required by {why}, " if why else "expected "
    return UnknownParameter(
        f"params.{name}: {lead}one of {_listing(allowed)}", parameter=name, allowed=list(allowed)
    )


def check_enumerated(
    owner: str, params: object, declared: Mapping[str, Sequence[str]]
) -> dict[str, str]:
    """``params`` (``None`` for none) as exactly the parameters ``owner`` declares, each
    with one of its enumerated values; :class:`UnknownParameter` otherwise."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise BadRequest("params: expected an object")
    if any(key not in declared for key in params):
        raise UnknownParameter(f"params: {owner} takes {_names(list(declared))}")
    clean: dict[str, str] = {}
    for name, allowed in declared.items():
        value = params.get(name)
        if value is None:
            raise not_enumerated(name, allowed, owner)
        if not isinstance(value, str) or value not in allowed:
            raise not_enumerated(name, allowed)
        clean[name] = value
    return clean
