"""``python -m tongban_client``: the ``tongban-client`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
