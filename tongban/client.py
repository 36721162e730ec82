"""``tongban.client``: the requester SDK under the server's package name.

The SDK is a distribution of its own, ``tongban-client`` (``client/`` in this repository,
``pip install ./client``), importable as ``tongban_client`` without the server. This module
re-exports it, so code running beside the server may write ``from tongban.client import
Client``. In a checkout where the SDK is not installed, its source beside the server
(``client/src``) is put on the path, so the server's environment needs no second install.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("tongban_client") is None:  # pragma: no cover - a checkout
    _SOURCE = Path(__file__).resolve().parent.parent / "client" / "src"
    if (_SOURCE / "tongban_client" / "__init__.py").is_file():
        sys.path.append(str(_SOURCE))

try:
    import tongban_client as _sdk  # type: ignore[import-not-found,unused-ignore]
except ModuleNotFoundError as exc:  # pragma: no cover - an installed server without the SDK
    if exc.name != "tongban_client":
        raise
    raise ModuleNotFoundError(
        "tongban.client is the requester SDK, a distribution of its own: "
        "pip install ./client (tongban-client)",
        name="tongban_client",
    ) from None
from tongban_client import *  # type: ignore[import-not-found,unused-ignore]  # noqa: F403

__all__ = list(_sdk.__all__)
