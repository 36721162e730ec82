"""Generated department stores for the training tests: the training table is read from
them through the department files (``tongban.federation.features``)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from tongban.adapters.synthetic.generate import generate


def generated(out: Path, population: int, seed: int) -> Path:
    """``tongban generate --population N --seed S --out OUT``, quietly; returns ``out``."""
    generate(out, population, seed, workers=1, console=Console(file=io.StringIO()))
    return out
