"""The run configuration of one federated training job, parsed once from Flower's run config."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .accounting import DEFAULT_DELTA, gaussian_epsilon

__all__ = ["RunSettings"]


@dataclass(frozen=True)
class RunSettings:
    rounds: int = 3
    local_epochs: int = 20
    learning_rate: float = 0.5
    l2: float = 1e-3
    n_features: int = 13
    num_partitions: int = 3
    secagg: bool = False
    dp_noise: float = 0.0
    dp_clip: float = 0.5
    delta: float = DEFAULT_DELTA
    secagg_max_weight: float = 10000.0
    eval_data_dir: str = ""
    out_dir: str = "."
    record_received: bool = False
    #: ``DIR/federation/envelope``: the ServerApp's SM2 key and the nodes' public keys.
    envelope_dir: str = ""

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")
        if self.secagg and self.num_partitions < 3:
            raise ValueError("SecAgg+ needs at least 3 nodes")
        if self.dp_noise < 0 or self.dp_clip <= 0:
            raise ValueError("dp-noise must be >= 0 and dp-clip > 0")

    @classmethod
    def from_run_config(cls, cfg: Mapping[str, Any]) -> RunSettings:
        defaults = asdict(cls())
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            name = "rounds" if key == "num-server-rounds" else key.replace("-", "_")
            if name in defaults:
                kwargs[name] = type(defaults[name])(value)
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        out: dict[str, bool | int | float | str] = {}
        for name, value in asdict(self).items():
            key = "num-server-rounds" if name == "rounds" else name.replace("_", "-")
            out[key] = value
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def epsilon(self, rounds: int) -> float | None:
        """Epsilon spent after ``rounds`` (``None`` without DP)."""
        if self.dp_noise <= 0:
            return None
        eps = gaussian_epsilon(self.dp_noise, rounds, self.delta)
        return eps if math.isfinite(eps) else None
