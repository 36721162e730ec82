"""What the gateway answers, as frozen dataclasses. None of them holds an ID number."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BatchItem",
    "BatchResult",
    "CheckResult",
    "ClaimInfo",
    "ConsistencyResult",
    "InclusionResult",
    "PurposeInfo",
    "Subject",
]

_TRI = {"yes": True, "no": False}


@dataclass(frozen=True)
class CheckResult:
    """One check: ``result`` is ``yes``, ``no`` or ``undetermined``; ``answer`` the signed
    compact JWS (verify it with :func:`~tongban_client.verify_answer`); ``audit_index``
    the check's entry in the audit log (prove it with ``Client.verify_inclusion``)."""

    result: str
    answer: str = field(repr=False)
    audit_index: int

    @property
    def value(self) -> bool | None:
        """``yes`` -> True, ``no`` -> False, anything else -> None."""
        return _TRI.get(self.result)


@dataclass(frozen=True)
class BatchItem:
    """One subject of a batch, by its position in the request: ``result`` is ``yes``,
    ``no``, ``undetermined``, ``denied`` (``reason``: a problem slug) or ``invalid``
    (``reason``: why the ID number is not valid)."""

    index: int
    result: str
    audit_index: int
    reason: str | None = None

    @property
    def value(self) -> bool | None:
        return _TRI.get(self.result)


@dataclass(frozen=True)
class BatchResult:
    items: tuple[BatchItem, ...]
    answer: str = field(repr=False)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> BatchItem:
        return self.items[index]


@dataclass(frozen=True, repr=False)
class Subject:
    """A batch subject. ``repr`` hides the ID number, so a logged list of subjects does
    not leak one."""

    id_number: str
    consent_id: str | None = None

    def __repr__(self) -> str:
        return f"Subject(id_number=[redacted], consent_id={self.consent_id!r})"


@dataclass(frozen=True)
class PurposeInfo:
    name: str
    consent_required: bool
    legal_basis: str | None
    title: str | None = None
    title_zh: str | None = None


@dataclass(frozen=True)
class ClaimInfo:
    """A claim this client may ask, and for which purposes."""

    name: str
    title: str | None
    title_zh: str | None
    params: Mapping[str, tuple[str, ...]]
    purposes: tuple[PurposeInfo, ...]
    departments: tuple[str, ...]
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class InclusionResult:
    """Entry ``index`` (whose leaf hash is ``leaf_hash``) is in the tree of ``tree_size``
    entries whose root ``root`` the pinned gateway key signed."""

    index: int
    tree_size: int
    leaf_hash: bytes
    root: bytes


@dataclass(frozen=True)
class ConsistencyResult:
    """The tree of ``new_size`` entries (root ``new_root``) extends the one of
    ``old_size`` (root ``old_root``): nothing that was logged was changed or removed."""

    old_size: int
    old_root: bytes
    new_size: int
    new_root: bytes
