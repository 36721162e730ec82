"""Horizontal federated training with Flower: county bureaus co-train the childcare-subsidy
outreach model without pooling their records.

Flower is imported once here with click's deprecation warnings (raised by the typer that
``flwr`` imports at start-up) silenced, so that ``-W error`` runs keep working.
"""

from __future__ import annotations

import contextlib
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*click\.utils\..*", category=DeprecationWarning)
    with contextlib.suppress(ImportError):  # without the `federation` extra
        import flwr  # noqa: F401

__all__: list[str] = []
