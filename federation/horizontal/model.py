"""The outreach model: L2-regularised logistic regression in NumPy.

Parameters are one float64 vector, the weights followed by the bias, so that FedAvg,
SecAgg+ and DP clipping all see a single array. Local training is full-batch gradient
descent: with standardised features it converges in a few dozen steps, and it makes
federated and centralised training directly comparable (one round of ``epochs`` local
steps against ``epochs`` pooled steps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Floats",
    "TrainConfig",
    "auc",
    "fedavg_in_process",
    "init_params",
    "log_loss",
    "predict",
    "train_centralized",
    "train_local",
]

Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int = 20
    learning_rate: float = 0.5
    l2: float = 1e-3


def init_params(n_features: int) -> Floats:
    return np.zeros(n_features + 1, dtype=np.float64)


def _logits(params: Floats, x: Floats) -> Floats:
    return np.asarray(x @ params[:-1] + params[-1], dtype=np.float64)


def predict(params: Floats, x: Floats) -> Floats:
    """P(label = 1) for each row."""
    return np.asarray(1.0 / (1.0 + np.exp(-_logits(params, x))), dtype=np.float64)


def log_loss(params: Floats, x: Floats, y: npt.NDArray[np.int8]) -> float:
    z = _logits(params, x)
    # log(1 + e^z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if len(y) else 0.0


def train_local(
    params: Floats, x: Floats, y: npt.NDArray[np.int8], config: TrainConfig
) -> tuple[Floats, float]:
    """``local_epochs`` full-batch gradient steps from ``params``; returns the new parameters
    and the training loss before the first step."""
    w = params.astype(np.float64, copy=True)
    n = max(len(y), 1)
    loss = log_loss(w, x, y)
    for _ in range(config.local_epochs):
        err = predict(w, x) - y
        grad = np.empty_like(w)
        grad[:-1] = x.T @ err / n + config.l2 * w[:-1]
        grad[-1] = err.mean() if len(y) else 0.0
        w -= config.learning_rate * grad
    return w, loss


def auc(scores: Floats, y: npt.NDArray[np.int8]) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties get average ranks)."""
    pos = int(np.sum(y == 1))
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    ends = np.r_[starts[1:], len(s)]
    for lo, hi in zip(starts, ends, strict=True):
        ranks[lo:hi] = (lo + hi + 1) / 2.0
    full = np.empty_like(ranks)
    full[order] = ranks
    return float((full[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def train_centralized(
    x: Floats,
    y: npt.NDArray[np.int8],
    rounds: int,
    config: TrainConfig,
    x_eval: Floats | None = None,
    y_eval: npt.NDArray[np.int8] | None = None,
) -> tuple[Floats, list[dict[str, float]]]:
    """Pooled training, ``rounds`` blocks of ``local_epochs`` steps (the federated
    schedule), with held-out AUC and loss after each block."""
    params = init_params(x.shape[1])
    history: list[dict[str, float]] = []
    for r in range(1, rounds + 1):
        params, _ = train_local(params, x, y, config)
        if x_eval is not None and y_eval is not None:
            history.append(
                {
                    "round": r,
                    "loss": log_loss(params, x_eval, y_eval),
                    "auc": auc(predict(params, x_eval), y_eval),
                }
            )
    return params, history


def fedavg_in_process(
    parts: Sequence[tuple[Floats, npt.NDArray[np.int8]]], rounds: int, config: TrainConfig
) -> Floats:
    """The baseline without Flower: the same local training, averaged in this process
    weighted by rows."""
    params = init_params(parts[0][0].shape[1])
    sizes = np.array([len(y) for _, y in parts], dtype=np.float64)
    for _ in range(rounds):
        updates = [train_local(params, x, y, config)[0] for x, y in parts]
        params = np.average(np.stack(updates), axis=0, weights=sizes)
    return params
