"""The Flower app: a ServerApp beside the gateway, a ClientApp in each county bureau.

Both are the 1.41 Message-API apps (``flwr.serverapp.ServerApp``, ``flwr.clientapp.ClientApp``
with an ``@app.train()`` handler). SecAgg+ exists in 1.41 only as the legacy
``SecAggPlusWorkflow`` (there is no Message-API secure aggregation), so the ServerApp's main
runs the legacy ``DefaultWorkflow`` over the Grid, with or without SecAgg+ as its fit
workflow; that keeps the two modes identical except for the aggregation. The ClientApp's
train handler reads and writes the legacy FitIns/FitRes record layout that the workflow,
``secaggplus_mod`` and ``fixedclipping_mod`` speak.

Run config (``[tool.flwr.app.config]``, overridable per run): ``num-server-rounds``,
``local-epochs``, ``learning-rate``, ``l2``, ``num-partitions``, ``secagg``, ``dp-noise``,
``dp-clip``, ``eval-data-dir`` (held-out rows, read by the evaluator beside the gateway),
``out-dir`` (progress events and the final model), ``record-received`` (write what the server
received, for the SecAgg+ test). Node config (``flower-supernode --node-config``):
``data-dir``, ``partition-id``, ``num-partitions``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

from tongban.primitives.extras import extra_imports

from .data import Partition, held_out_mask, load_partition
from .model import TrainConfig, auc, init_params, log_loss, predict, train_local
from .sealing import SealedGrid, sealed_mod
from .settings import RunSettings

with extra_imports("federation", "Flower training"):
    from flwr.app import Context, Message
    from flwr.client.mod import fixedclipping_mod, secaggplus_mod
    from flwr.clientapp import ClientApp
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.common import (
        Code,
        FitRes,
        Metrics,
        NDArrays,
        Scalar,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import Grid, LegacyContext, ServerConfig
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg, Strategy
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.server.workflow.constant import Key as WorkflowKey
    from flwr.serverapp import ServerApp
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

__all__ = [
    "build_strategy",
    "client_app",
    "main",
    "server_app",
    "train",
]

# --- ClientApp ------------------------------------------------------------------------------

client_app = ClientApp()
_PARTITIONS: dict[tuple[str, int, int], Partition] = {}


def _partition(context: Context) -> Partition:
    cfg = context.node_config
    key = (str(cfg["data-dir"]), int(cfg["partition-id"]), int(cfg["num-partitions"]))
    if key not in _PARTITIONS:
        _PARTITIONS[key] = load_partition(Path(key[0]), key[1], key[2])
    return _PARTITIONS[key]


def _secagg_if_requested(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """``secaggplus_mod`` when the server runs SecAgg+ (its messages carry the protocol's
    config record), a pass-through otherwise."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _clip_if_requested(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """``fixedclipping_mod`` when the server's DP wrapper sent a clipping norm."""
    if KEY_CLIPPING_NORM in compat.recorddict_to_fitins(msg.content, keep_input=True).config:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def _process_age() -> float:
    """Seconds since this ClientApp process started (Flower starts one per message): the
    process start, imports, FAB install and task pull before the handler runs."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


@client_app.train(mods=[sealed_mod, _secagg_if_requested, _clip_if_requested])
def train(msg: Message, context: Context) -> Message:
    """Local full-batch training on this bureau's rows; only the parameters leave."""
    process_start = _process_age()
    fit_ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    part = _partition(context)
    started = time.perf_counter()
    params = parameters_to_ndarrays(fit_ins.parameters)[0]
    decode = time.perf_counter() - started
    cfg = fit_ins.config
    config = TrainConfig(
        local_epochs=int(cfg["local-epochs"]),
        learning_rate=float(cfg["learning-rate"]),
        l2=float(cfg["l2"]),
    )
    started = time.perf_counter()
    new, loss = train_local(params, part.x, part.y, config)
    train_seconds = time.perf_counter() - started
    started = time.perf_counter()
    parameters = ndarrays_to_parameters([new])
    encode = time.perf_counter() - started
    # Under DP every bureau weighs the same, so that one bureau's influence on the mean is
    # bounded by the clipping norm over the (public) number of bureaus.
    weight = 1 if bool(cfg.get("uniform-weights", False)) else len(part.y)
    metrics: dict[str, Scalar] = {
        "train_loss": loss,
        "rows": len(part.y),
        "train_seconds": train_seconds,
        "serialize_seconds": decode + encode,
        "process_start_seconds": process_start,
    }
    res = FitRes(Status(Code.OK, "ok"), parameters, weight, metrics)
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)


# --- ServerApp ------------------------------------------------------------------------------

server_app = ServerApp()


class _Events:
    """Appends progress events (JSON lines) for ``tongban federation train`` to follow."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "progress.jsonl"
        self.started = time.perf_counter()

    def emit(self, event: str, **fields: Any) -> None:
        fields = {"event": event, "t": round(time.perf_counter() - self.started, 4), **fields}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(fields) + "\n")


class _RecordingGrid:
    """Delegates to the Grid and keeps every reply, to show what the server received."""

    def __init__(self, grid: Grid, sink: list[Message]) -> None:
        self._grid = grid
        self._sink = sink

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self._sink.extend(replies)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


class _TimedSecAggPlus(SecAggPlusWorkflow):
    """SecAgg+ with the time of each stage, and optionally what the server received."""

    def __init__(self, timings: dict[str, float], record: Path | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timings = timings
        self.record = record

    def _timed(self, name: str, fn: Callable[[], bool]) -> bool:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def setup_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed(
            "secagg_setup",
            lambda: super(_TimedSecAggPlus, self).setup_stage(grid, context, state),
        )

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed(
            "secagg_share_keys",
            lambda: super(_TimedSecAggPlus, self).share_keys_stage(grid, context, state),
        )

    def collect_masked_vectors_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        received: list[Message] = []
        target = cast(Grid, _RecordingGrid(grid, received)) if self.record else grid
        ok = self._timed(
            "secagg_collect_masked",
            lambda: super(_TimedSecAggPlus, self).collect_masked_vectors_stage(
                target, context, state
            ),
        )
        if self.record is not None:
            _write_received(self.record, context, received)
        return ok

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: Any) -> bool:
        return self._timed(
            "secagg_unmask",
            lambda: super(_TimedSecAggPlus, self).unmask_stage(grid, context, state),
        )


def _write_received(out: Path, context: LegacyContext, replies: list[Message]) -> None:
    """Everything the server got in the masked-vector stage, per node: the masked vector
    and whatever parameter arrays the reply still carried."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    rnd = int(
        cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
    )
    out.mkdir(parents=True, exist_ok=True)
    for msg in replies:
        if msg.has_error():
            continue
        masked = cast(
            list[bytes], msg.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
        )
        arrays = [a.numpy() for rec in msg.content.array_records.values() for a in rec.values()]
        np.savez(
            out / f"round{rnd}-node{msg.metadata.src_node_id}.npz",
            masked=np.concatenate([bytes_to_ndarray(b).ravel() for b in masked]),
            n_param_arrays=np.array(len(arrays)),
        )


def _evaluator(
    settings: RunSettings,
    events: _Events,
    fit_seen: dict[int, dict[str, Any]],
    timings: dict[str, float],
) -> Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]:
    """Centralised evaluation on the held-out rows after every round."""
    if not settings.eval_data_dir:
        return lambda _r, _p, _c: None
    from ..features import load_training_table

    table = load_training_table(Path(settings.eval_data_dir))
    held = held_out_mask(table)
    x, y = table.X[held], table.label[held]

    def evaluate(
        server_round: int, parameters: NDArrays, _config: dict[str, Scalar]
    ) -> tuple[float, dict[str, Scalar]]:
        params = np.asarray(parameters[0], dtype=np.float64)
        loss = log_loss(params, x, y)
        score = auc(predict(params, x), y)
        if server_round > 0:
            fit = fit_seen.get(server_round, {})
            secagg = {k: round(v, 4) for k, v in timings.items()}
            timings.clear()
            events.emit(
                "round", round=server_round, loss=loss, auc=score, **fit, **secagg,
                epsilon=settings.epsilon(server_round),
            )  # fmt: skip
        return loss, {"auc": score}

    return evaluate


def _fit_metrics(
    fit_seen: dict[int, dict[str, Any]], current: Callable[[], int]
) -> Callable[[list[tuple[int, Metrics]]], Metrics]:
    def aggregate(results: list[tuple[int, Metrics]]) -> Metrics:
        rows = [float(m.get("rows", 0)) for _, m in results]
        total = sum(rows) or 1.0
        train_loss = sum(
            float(m["train_loss"]) * r for (_, m), r in zip(results, rows, strict=True)
        )
        out: Metrics = {
            "train_loss": train_loss / total,
            "clients": len(results),
            "client_train_seconds": max(float(m["train_seconds"]) for _, m in results),
            "client_serialize_seconds": max(float(m["serialize_seconds"]) for _, m in results),
            "client_process_start_seconds": max(
                float(m.get("process_start_seconds", 0.0)) for _, m in results
            ),
        }
        fit_seen[current()] = dict(out)
        return out

    return aggregate


def build_strategy(
    settings: RunSettings,
    evaluate_fn: Callable[
        [int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None
    ],
    fit_metrics: Callable[[list[tuple[int, Metrics]]], Metrics],
) -> Strategy:
    def fit_config(_round: int) -> dict[str, Scalar]:
        return {
            "local-epochs": settings.local_epochs,
            "learning-rate": settings.learning_rate,
            "l2": settings.l2,
            "uniform-weights": settings.dp_noise > 0,
        }

    n = settings.num_partitions
    strategy: Strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=n,
        min_available_clients=n,
        min_evaluate_clients=0,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=fit_config,
        initial_parameters=ndarrays_to_parameters([init_params(settings.n_features)]),
        fit_metrics_aggregation_fn=fit_metrics,
        accept_failures=False,
    )
    if settings.dp_noise > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, settings.dp_noise, settings.dp_clip, n
        )
    return strategy


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    events = _Events(Path(settings.out_dir))
    # Every message leaves signed and sealed to its node, every reply is opened and checked
    # (sealing.py); there is no unsealed mode.
    grid = cast(Grid, SealedGrid.from_dir(grid, Path(settings.envelope_dir)))
    events.emit("start", **settings.to_json())
    fit_seen: dict[int, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    legacy: LegacyContext | None = None

    def current_round() -> int:
        assert legacy is not None
        return int(
            cast(int, legacy.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])
        )

    strategy = build_strategy(
        settings,
        _evaluator(settings, events, fit_seen, timings),
        _fit_metrics(fit_seen, current_round),
    )
    legacy = LegacyContext(
        context, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy
    )
    fit_workflow: Any = None
    if settings.secagg:
        n = settings.num_partitions
        record = Path(settings.out_dir) / "received" if settings.record_received else None
        fit_workflow = _TimedSecAggPlus(
            timings,
            record,
            num_shares=n,
            reconstruction_threshold=max(2, (n + 1) // 2),
            max_weight=settings.secagg_max_weight,
        )
    DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)

    arrays = legacy.state.array_records[MAIN_PARAMS_RECORD]
    final = np.asarray(next(iter(arrays.values())).numpy(), dtype=np.float64)
    np.save(Path(settings.out_dir) / "model.npy", final)
    events.emit(
        "done",
        rounds=settings.rounds,
        epsilon=settings.epsilon(settings.rounds),
    )
