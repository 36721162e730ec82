"""``tongban.client``: the requester SDK under the server's package name.

The SDK is a distribution of its own, ``tongban-client`` (``client/`` in this repository,
``pip install ./client``), importable as ``tongban_client`` without the server. This module
re-exports it, so code running beside the server may write ``from tongban.client import
Client``; ``make install`` installs both (``pip install -e . -e ./client``).
"""

from __future__ import annotations

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
