"""Horizontal training with Flower: 10 SuperNodes, 100,000 citizens, on loopback.

The generated department stores (100,000 citizens) give the eligible families' feature
table, read through the health, hrss and civil department files, split into 10 bureaus
(8 districts, the two largest split in two). Phases:

* process start: ``Supervisor.start`` (a SuperLink and 10 SuperNodes, each with its
  SuperExec) until every node is registered; and per round, the age of each ClientApp
  process when its handler runs (Flower 1.41 starts one process per message);
* a Flower run without SecAgg+ (``ROUNDS`` rounds): wall time per round, the bureaus' local
  training and (de)serialisation of the parameters, the rest being messaging and polling;
* a Flower run with SecAgg+ (``SECAGG_ROUNDS`` rounds): the same plus the time of each
  SecAgg+ stage (setup, key sharing, masked-vector collection, unmasking);
* baseline in the same run: FedAvg in this process on the same partitions (no Flower,
  no processes, no messages), and central training, all scored on the same held-out rows;
* DP trade-off: the Flower client-side clipping wrapper
  (``DifferentialPrivacyClientSideFixedClipping``, the server-side aggregation the
  ServerApp runs) applied in process to the same local updates, at several noise levels,
  AUC averaged over seeds, with the epsilon of :mod:`federation.horizontal.accounting`;
  one noise level is also run on the deployment.

Run: ``python -m bench.bench_flower`` (prints JSON).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from rich.console import Console

import tongban.federation.horizontal  # noqa: F401  (imports Flower quietly)
from bench.common import machine
from tongban.adapters.synthetic.generate import generate
from tongban.federation.features import load_training_table
from tongban.federation.horizontal.accounting import gaussian_epsilon
from tongban.federation.horizontal.data import held_out_mask, partition_rows
from tongban.federation.horizontal.deploy import Supervisor
from tongban.federation.horizontal.model import (
    TrainConfig,
    auc,
    fedavg_in_process,
    init_params,
    predict,
    train_centralized,
    train_local,
)
from tongban.federation.horizontal.runner import run_training
from tongban.federation.horizontal.settings import RunSettings

POPULATION = 100_000
SEED = 7
NODES = 10
ROUNDS = 5
SECAGG_ROUNDS = 2
DP_ROUNDS = 5
DP_CLIP = 0.5
DP_LEVELS = (0.5, 1.0, 2.0, 4.0)
DP_SEEDS = 5


def _per_round(events: list[dict[str, Any]]) -> list[dict[str, float]]:
    out = []
    last = 0.0
    for ev in events:
        row = {"round": ev["round"], "seconds": round(ev["t"] - last, 3), "auc": ev["auc"]}
        last = ev["t"]
        for key in (
            "client_process_start_seconds",
            "client_train_seconds",
            "client_serialize_seconds",
            "secagg_setup",
            "secagg_share_keys",
            "secagg_collect_masked",
            "secagg_unmask",
        ):
            if key in ev:
                row[key] = round(float(ev[key]), 4)
        out.append(row)
    return out


def _summary(rounds: list[dict[str, float]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rounds if key in r]
        return round(statistics.fmean(vals), 4) if vals else None

    secagg = [
        k
        for k in ("secagg_setup", "secagg_share_keys", "secagg_collect_masked", "secagg_unmask")
        if mean(k) is not None
    ]
    return {
        "seconds_per_round": mean("seconds"),
        "clientapp_process_start_max": mean("client_process_start_seconds"),
        "local_training_max": mean("client_train_seconds"),
        "serialization_max": mean("client_serialize_seconds"),
        "secagg_stages": {k: mean(k) for k in secagg} or None,
        "secagg_total": round(sum(mean(k) or 0.0 for k in secagg), 4) if secagg else None,
        "rounds": rounds,
    }


def _dp_in_process(
    parts: list[tuple[Any, Any]], x_eval: Any, y_eval: Any, config: TrainConfig, z: float, seed: int
) -> float:
    """DP FedAvg through Flower's server-side wrapper, clipping as fixedclipping_mod does."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.supercore.differential_privacy import compute_clip_model_update

    from tongban.federation.horizontal.apps import build_strategy

    np.random.seed(seed)  # Flower's noise uses numpy's global generator
    strategy = build_strategy(
        RunSettings(num_partitions=len(parts), dp_noise=z, dp_clip=DP_CLIP),
        lambda *_: None,
        lambda _r: {},
    )
    params = init_params(x_eval.shape[1])
    for _ in range(DP_ROUNDS):
        results = []
        for x, y in parts:
            new = [train_local(params, x, y, config)[0]]
            compute_clip_model_update(new, [params], DP_CLIP)
            res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(new), 1, {})
            results.append((None, res))
        agg = strategy.aggregate_fit(1, results, [])[0]  # type: ignore[arg-type]
        assert agg is not None
        params = np.asarray(parameters_to_ndarrays(agg)[0], dtype=np.float64)
    return auc(predict(params, x_eval), y_eval)


def run() -> dict[str, Any]:
    started = time.perf_counter()
    # The departments' stores; the table is read through their files, as training does.
    data = tempfile.TemporaryDirectory(prefix="bench-flower-")
    data_dir = Path(data.name)
    generate(data_dir, POPULATION, SEED, console=Console(file=io.StringIO()))
    table = load_training_table(data_dir)
    model_seconds = time.perf_counter() - started
    held = held_out_mask(table)
    rows = partition_rows(table, NODES)
    parts = [(table.X[r[~held[r]]], table.label[r[~held[r]]]) for r in rows]
    x_eval, y_eval = table.X[held], table.label[held]
    config = TrainConfig()

    # Baselines: FedAvg in process and central training, the same schedule.
    t0 = time.perf_counter()
    fed_params = fedavg_in_process(parts, ROUNDS, config)
    inproc_round = (time.perf_counter() - t0) / ROUNDS
    train_rows = np.concatenate([r[~held[r]] for r in rows])
    central, _ = train_centralized(table.X[train_rows], table.label[train_rows], ROUNDS, config)
    baseline = {
        "seconds_per_round": round(inproc_round, 5),
        "auc": auc(predict(fed_params, x_eval), y_eval),
        "auc_centralized": auc(predict(central, x_eval), y_eval),
    }

    dp_table = []
    for z in DP_LEVELS:
        aucs = [_dp_in_process(parts, x_eval, y_eval, config, z, s) for s in range(DP_SEEDS)]
        dp_table.append(
            {
                "noise_multiplier": z,
                "clip": DP_CLIP,
                "rounds": DP_ROUNDS,
                "epsilon": round(gaussian_epsilon(z, DP_ROUNDS), 3),
                "delta": 1e-5,
                "auc_mean": round(statistics.fmean(aucs), 4),
                "auc_min": round(min(aucs), 4),
            }
        )

    with data:
        sup = Supervisor(data_dir, NODES)
        try:
            dep = sup.start()

            def flower(name: str, rounds: int, **kw: Any) -> dict[str, Any]:
                settings = RunSettings(
                    rounds=rounds,
                    num_partitions=NODES,
                    n_features=len(table.columns),
                    eval_data_dir=str(data_dir),
                    out_dir=str(data_dir / name),
                    **kw,
                )
                result = run_training(dep, settings, timeout=3600)
                summary = _summary(_per_round(result.rounds))
                summary["submit_seconds"] = round(result.submit_seconds, 3)
                summary["total_seconds"] = round(result.seconds, 3)
                summary["auc"] = auc(predict(result.params, x_eval), y_eval)
                summary["max_abs_diff_vs_in_process"] = float(
                    np.abs(result.params - fedavg_in_process(parts, rounds, config)).max()
                )
                return summary

            plain = flower("plain", ROUNDS)
            secagg = flower("secagg", SECAGG_ROUNDS, secagg=True)
            dp_deployed = flower("dp", DP_ROUNDS, dp_noise=1.0, dp_clip=DP_CLIP)
            dp_deployed["epsilon"] = round(gaussian_epsilon(1.0, DP_ROUNDS), 3)
            dp_deployed.pop("max_abs_diff_vs_in_process")
        finally:
            sup.stop()

    return {
        "machine": machine(),
        "population": POPULATION,
        "families": table.rows,
        "held_out": int(held.sum()),
        "supernodes": NODES,
        "rows_per_node": [len(p[1]) for p in parts],
        "model_seconds": round(model_seconds, 3),
        "process_start_seconds": dep.startup_seconds,
        "flower": plain,
        "flower_secagg": secagg,
        "in_process_fedavg": baseline,
        "dp_tradeoff": dp_table,
        "dp_on_deployment": dp_deployed,
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
