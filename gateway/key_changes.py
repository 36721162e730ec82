"""Signing-key rotation through the API, under the two-person rule (the ``key-rotation``
change kind): one administrator proposes rotating a key (``POST
/v1/admin/keys/{name}/rotate``), another approves it at ``POST
/v1/admin/changes/{id}/approve``. The approval's audit entry names the old and the new key
id and is committed first; the key file is replaced right after the commit
(:func:`~tongban.primitives.rotation.rotate_key`: the old public key published for
:data:`ROTATABLE` seconds), and every worker signs with the new key within a second.
``tongban keys rotate --signing NAME`` does the same on the gateway host."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from tongban.policies import Rule
from tongban.primitives.errors import NotFound
from tongban.primitives.gm import SM2PrivateKey, load_private_key
from tongban.primitives.rotation import rotate_key

__all__ = ["ROTATABLE", "KeyRotation"]

#: The signing keys that rotate, and for how many seconds the old public key stays
#: published: as long as what it signed may still be presented. Answers live 10 minutes,
#: but the answer key also signs consent artefacts, valid for up to a year (and a day's
#: margin); access tokens live at most an hour (and a minute).
ROTATABLE = {
    "gateway-answers": 366 * 24 * 3600,
    "gateway-tokens": 3600 + 60,
}


class KeyRotation:
    """The ``key-rotation`` change kind, on the gateway host's key directory."""

    name = "key-rotation"

    def __init__(self, keys_dir: Path) -> None:
        self._dir = keys_dir
        self._pending: dict[str, SM2PrivateKey] = {}

    def validate(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        key = spec.get("key")
        if not isinstance(key, str) or key not in ROTATABLE:
            raise NotFound(f"key: expected one of {sorted(ROTATABLE)}")
        if not (self._dir / f"{key}.key").exists():
            raise NotFound(f"key: {key} has no key file on this gateway")
        return {"key": key}

    def policy_delta(self, spec: Mapping[str, Any], rules: frozenset[Rule]) -> None:
        return None

    def apply(self, conn: Connection, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Choose the new key (recorded in the approval's audit entry by its id); the file
        changes after the commit."""
        name = str(spec["key"])
        old = load_private_key(self._dir / f"{name}.key").public_key.key_id
        new = SM2PrivateKey.generate()
        # Only the latest: a key chosen by an approval that then rolled back is dropped.
        self._pending = {new.public_key.key_id: new}
        return {"old_kid": old, "new_kid": new.public_key.key_id,
                "publish_old_for": ROTATABLE[name]}  # fmt: skip

    def after_commit(self, spec: Mapping[str, Any], done: Mapping[str, Any]) -> None:
        new = self._pending.pop(str(done["new_kid"]))
        name = str(spec["key"])
        rotate_key(self._dir / f"{name}.key", publish_old_for=ROTATABLE[name], new_key=new)
