"""One stored audit row, checked against its own entry.

A row holds the entry (canonical JSON, the hashed bytes), its leaf hash, and copies of
some entry fields in columns for the officers' and citizens' queries. Only the entry is
evidence; the leaf hash and the columns are derived from it, and anything derived can be
edited without touching the entry. So every reader that trusts a row — the offline
verifier, the gateway at start-up, every query that returns rows — first checks that:

- the entry is canonical JSON (no floats) carrying its own index;
- its leaf hash, recomputed from the entry's bytes, is the stored one (and, where the
  reader holds a tree, the tree's leaf);
- every query column equals the field it copies.

A row whose ``subject`` column was changed to hide it from a citizen's access log is then
caught by the verifier and at start-up, although the query that it hides from cannot see
it (see docs/security.md, "The audit log").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .merkle import leaf_hash

__all__ = ["FILTER_FIELDS", "ROW_FIELDS", "check_row", "columns_of", "field_value"]

FILTER_FIELDS = ("kind", "requester", "claim", "purpose", "subject", "decision", "result")
ROW_FIELDS = (*FILTER_FIELDS, "time")


def field_value(value: Any) -> str | None:
    """What a query column holds for an entry field."""
    if isinstance(value, str):
        return value[:64]
    if isinstance(value, bool):
        return "allow" if value else "deny"
    if isinstance(value, Mapping) and isinstance(value.get("allowed"), bool):
        return "allow" if value["allowed"] else "deny"
    return None


def columns_of(entry: Mapping[str, Any]) -> dict[str, str | None]:
    return {name: field_value(entry.get(name)) for name in ROW_FIELDS}


def _columns_differ(doc: Mapping[str, Any], columns: Mapping[str, str | None]) -> str | None:
    for name, stored in columns.items():
        value = doc.get(name)
        derived = value[:64] if type(value) is str else field_value(value)
        if stored != derived:
            return name
    return None


def _no_float(_text: str) -> Any:
    raise ValueError("floats are not allowed in audit entries")


# One decoder and one encoder for every row (json.loads/dumps with options build new ones
# per call, which was a fifth of the start-up check). The encoder is canonical_bytes's.
_DECODER = json.JSONDecoder(parse_float=_no_float, parse_constant=_no_float)
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def check_row(
    index: int,
    body: str,
    stored_hash: bytes,
    columns: Mapping[str, str | None] | None = None,
) -> tuple[bytes, dict[str, Any] | None, str | None]:
    """``(leaf hash of the entry's bytes, the entry, problem)``; ``problem`` is None for a
    sound row, else one line naming the index and what is wrong (never a field's value).
    ``columns`` (by name, as stored) are checked when given."""
    raw = body.encode("utf-8")
    leaf = leaf_hash(raw)
    try:
        # Floats and NaN are refused while decoding, so re-encoding needs no walk.
        doc = _DECODER.decode(body)
        canonical = isinstance(doc, dict) and _ENCODER.encode(doc).encode("utf-8") == raw
    except (ValueError, TypeError):
        doc, canonical = None, False
    if not canonical or not isinstance(doc, dict):
        return leaf, None, f"entry {index} is not canonical JSON"
    if doc.get("index") != index:
        return leaf, doc, f"entry {index} carries index {doc.get('index')!r}"
    if leaf != bytes(stored_hash):
        return leaf, doc, f"entry {index} does not match its leaf hash"
    if columns is not None:
        name = _columns_differ(doc, columns)
        if name is not None:
            return leaf, doc, f"entry {index}: its {name} column differs from the entry"
    return leaf, doc, None
