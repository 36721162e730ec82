"""How the training table is split among county bureaus, and the held-out set.

Horizontal partitions are districts: each county bureau holds every column, and the hrss
label, for its own families. For ``n`` nodes, the districts are split (largest first, into
halves: two offices of one county) or merged (smallest first) until there are ``n`` groups,
so 8 nodes are the 8 districts and 10 nodes split the two largest.

The held-out set is one family in five, chosen by a CRC of the mother's ID number, so it is
the same whatever the partitioning and whoever computes it: bureaus never train on it, and
the evaluator (beside the gateway) scores both the federated and the centralised model on
exactly these rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..features import FeatureTable, load_training_table

__all__ = ["HELD_OUT_MOD", "Partition", "held_out_mask", "load_partition", "partition_rows"]

HELD_OUT_MOD = 5
Rows = npt.NDArray[np.int64]


def held_out_mask(table: FeatureTable) -> npt.NDArray[np.bool_]:
    crc = np.fromiter(
        (zlib.crc32(s.encode("ascii")) for s in table.id_number.tolist()),
        dtype=np.int64,
        count=table.rows,
    )
    return np.asarray(crc % HELD_OUT_MOD == 0)


def partition_rows(table: FeatureTable, num_partitions: int) -> list[Rows]:
    """Row indices of each partition, in a fixed order (by district code)."""
    if num_partitions < 1:
        raise ValueError("num_partitions must be at least 1")
    groups: list[Rows] = [
        np.flatnonzero(table.district == d).astype(np.int64) for d in sorted(set(table.district))
    ]
    groups = [g for g in groups if len(g)]
    if num_partitions > table.rows:
        raise ValueError(f"cannot split {table.rows} rows into {num_partitions} partitions")
    while len(groups) < num_partitions:
        i = max(range(len(groups)), key=lambda k: len(groups[k]))
        g = groups.pop(i)
        groups[i:i] = [g[: len(g) // 2], g[len(g) // 2 :]]
    while len(groups) > num_partitions:
        a, b = sorted(range(len(groups)), key=lambda k: len(groups[k]))[:2]
        merged = np.sort(np.concatenate([groups[a], groups[b]]))
        groups = [g for k, g in enumerate(groups) if k not in (a, b)]
        groups.insert(min(a, b), merged)
    return groups


@dataclass(frozen=True)
class Partition:
    """One bureau's training rows (held-out rows removed)."""

    partition_id: int
    districts: tuple[str, ...]
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.int8]


def load_partition(data_dir: Path, partition_id: int, num_partitions: int) -> Partition:
    table = load_training_table(data_dir)
    rows = partition_rows(table, num_partitions)[partition_id]
    train = rows[~held_out_mask(table)[rows]]
    return Partition(
        partition_id,
        tuple(sorted(set(table.district[rows].tolist()))),
        table.X[train],
        table.label[train],
    )
