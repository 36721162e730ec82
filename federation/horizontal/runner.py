"""Run the app against a deployment and build the training report.

``run_training`` builds the FAB, starts a run through the SuperLink's Control API (what
``flwr run`` does), follows the ServerApp's progress events, and waits for the run to finish.
``build_report`` then scores the final model and a centrally trained one on the same
held-out rows; ``write_report`` writes the JSON and the PNG curve beside it.

Times: the ServerApp stamps every event with ``t``, seconds since it started (cumulative).
Round events reach ``on_event`` and the report with both ``round_seconds`` (that round
alone: since the previous round ended, or since the run started for the first) and
``elapsed_seconds`` (cumulative, the same as ``t``); :func:`progress_line` prints both,
named as such.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tongban.primitives.gm import sm3

from ..features import load_training_table
from .data import held_out_mask, partition_rows
from .deploy import Deployment, control_client
from .model import Floats, TrainConfig, auc, predict, train_centralized
from .settings import RunSettings

__all__ = [
    "RunResult",
    "TrainingFailed",
    "build_report",
    "bureaus_of",
    "model_hash",
    "plot_report",
    "progress_line",
    "round_times",
    "run_training",
    "write_report",
]

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Event = dict[str, Any]


class TrainingFailed(RuntimeError):
    """The Flower run did not complete (the message names the run and its status)."""


@dataclass
class RunResult:
    run_id: int
    settings: RunSettings
    params: Floats
    rounds: list[Event] = field(default_factory=list)  # with times (:func:`round_times`)
    done: Event = field(default_factory=dict)
    seconds: float = 0.0
    submit_seconds: float = 0.0
    #: The SuperNodes (county bureaus) the run trained on (:func:`bureaus_of`).
    bureaus: list[dict[str, Any]] = field(default_factory=list)


def bureaus_of(deployment: Deployment) -> list[dict[str, Any]]:
    """Who takes part in a horizontal run: each SuperNode's partition, its districts and
    how many families it holds."""
    return [
        {"node": n.partition_id, "districts": list(n.districts), "rows": n.rows}
        for n in deployment.nodes
    ]


def round_times(events: Sequence[Event]) -> list[Event]:
    """``events`` (in order), each round event copied with ``round_seconds`` (that round
    alone) and ``elapsed_seconds`` (cumulative since the ServerApp started, its ``t``).
    A round starts where the previous round event, or else the ``start`` event, left off."""
    out: list[Event] = []
    last = 0.0
    for ev in events:
        if ev.get("event") == "start":
            last = float(ev.get("t", 0.0))
        elif ev.get("event") == "round":
            t = float(ev["t"])
            out.append(ev | {"round_seconds": round(t - last, 4), "elapsed_seconds": t})
            last = t
            continue
        out.append(ev)
    return out


def progress_line(ev: Event) -> str:
    """One line of ``tongban federation train`` progress for an event of
    :func:`run_training`: per-round time, and the cumulative time labelled as such."""
    if ev["event"] == "start":
        return (
            f"run started: {ev['rounds']} rounds, {ev['num_partitions']} nodes, "
            f"secagg={ev['secagg']}, dp_noise={ev['dp_noise']}"
        )
    if ev["event"] == "round":
        eps = f", epsilon {ev['epsilon']:.2f}" if ev.get("epsilon") is not None else ""
        elapsed = float(ev["elapsed_seconds"] if "elapsed_seconds" in ev else ev["t"])
        this_round = ev.get("round_seconds")
        took = f"{this_round:.1f}s this round, " if this_round is not None else ""
        return (
            f"round {ev['round']}: train loss {ev.get('train_loss', float('nan')):.4f}, "
            f"held-out loss {ev['loss']:.4f}, AUC {ev['auc']:.4f}{eps} "
            f"({took}{elapsed:.1f}s elapsed)"
        )
    return f"done after {ev['t']:.1f}s in total"


def model_hash(params: Floats) -> str:
    """SM3 of the final parameters (little-endian float64), as audited."""
    return sm3(np.ascontiguousarray(params, dtype="<f8").tobytes()).hex()


def _run_status(client: Any, run_id: int) -> tuple[str, str, str]:
    from flwr.proto.control_pb2 import ListRunsRequest

    res = client.ListRuns(ListRunsRequest(run_id=run_id))
    run = res.run_dict[run_id]
    return run.status.status, run.status.sub_status, run.status.details


def run_training(
    deployment: Deployment,
    settings: RunSettings,
    *,
    on_event: Callable[[Event], None] | None = None,
    timeout: float = 1800.0,
) -> RunResult:
    """Submit one run and block until it finishes; ``on_event`` sees every progress event."""
    from flwr.common.serde import fab_to_proto, user_config_to_proto
    from flwr.proto.control_pb2 import StartRunRequest
    from flwr.supercore.fab import Fab

    from .fab import build_fab

    out = Path(settings.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = out / "progress.jsonl"
    progress.unlink(missing_ok=True)
    (out / "model.npy").unlink(missing_ok=True)
    started = time.perf_counter()
    fab, fab_hash = build_fab()
    if not deployment.ca:
        raise TrainingFailed(
            "the deployment names no CA certificate (started before TLS): restart "
            "tongban federation up"
        )
    if not deployment.envelope:
        raise TrainingFailed(
            "the deployment has no envelope keys (started before sealed messages): restart "
            "tongban federation up"
        )
    settings = dataclasses.replace(settings, envelope_dir=deployment.envelope)
    client = control_client(deployment.superlink, Path(deployment.ca))
    try:
        res = client.StartRun(
            StartRunRequest(
                fab=fab_to_proto(Fab(fab_hash, fab, {})),
                override_config=user_config_to_proto(settings.to_run_config()),
            )
        )
        if not res.HasField("run_id"):
            raise TrainingFailed("the SuperLink did not start the run")
        result = RunResult(int(res.run_id), settings, np.zeros(0))
        result.bureaus = bureaus_of(deployment)
        result.submit_seconds = time.perf_counter() - started
        seen = 0
        deadline = time.monotonic() + timeout
        while True:
            events = round_times(_read_events(progress))
            for ev in events[seen:]:
                if ev["event"] == "round":
                    result.rounds.append(ev)
                elif ev["event"] == "done":
                    result.done = ev
                if on_event is not None:
                    on_event(ev)
            seen = len(events)
            status, sub_status, details = _run_status(client, result.run_id)
            if status == "finished":
                if sub_status != "completed" or not result.done:
                    raise TrainingFailed(
                        f"run {result.run_id} finished {sub_status or 'without result'}"
                        + (f": {details}" if details else "")
                    )
                break
            if time.monotonic() > deadline:
                raise TrainingFailed(f"run {result.run_id} timed out after {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        client.close()
    result.params = np.load(out / "model.npy")
    result.seconds = time.perf_counter() - started
    return result


def _read_events(path: Path) -> list[Event]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return out


def build_report(result: RunResult, data_dir: Path) -> dict[str, Any]:
    """The training report: per-round metrics, federated and centralised AUC on the same
    held-out rows, epsilon (``None`` without DP), the model's SM3 hash, and who trained:
    the ``bureaus`` (SuperNodes) of the run. No department adapter takes part in horizontal
    training, so the report names none."""
    s = result.settings
    table = load_training_table(data_dir)
    held = held_out_mask(table)
    parts = partition_rows(table, s.num_partitions)
    train_rows = np.sort(np.concatenate(parts))
    train_rows = train_rows[~held[train_rows]]
    config = TrainConfig(s.local_epochs, s.learning_rate, s.l2)
    x_eval, y_eval = table.X[held], table.label[held]
    central, central_rounds = train_centralized(
        table.X[train_rows], table.label[train_rows], s.rounds, config, x_eval, y_eval
    )
    return {
        "run_id": str(result.run_id),
        "rounds": [
            {k: v for k, v in ev.items() if k not in ("event", "t")} for ev in result.rounds
        ],
        "centralized_rounds": central_rounds,
        "auc_federated": auc(predict(result.params, x_eval), y_eval),
        "auc_centralized": auc(predict(central, x_eval), y_eval),
        "epsilon": s.epsilon(s.rounds),
        "delta": s.delta if s.dp_noise > 0 else None,
        "dp": {"noise_multiplier": s.dp_noise, "clipping_norm": s.dp_clip}
        if s.dp_noise > 0
        else None,
        "secagg": s.secagg,
        "bureaus": [dict(b) for b in result.bureaus],
        "partitions": s.num_partitions,
        "held_out_rows": int(held.sum()),
        "train_rows": len(train_rows),
        "model_sm3": model_hash(result.params),
        "model": [float(v) for v in result.params],
        "columns": list(table.columns),
        "total_seconds": round(result.seconds, 3),  # the whole run, submission included
    }


def write_report(report: dict[str, Any], path: Path) -> Path:
    """Write the JSON report and ``<stem>.png`` (:func:`plot_report`) beside it; returns
    the PNG path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    fig = plot_report(report)
    png = path.with_suffix(".png")
    fig.savefig(png, dpi=100)
    import matplotlib.pyplot as plt  # after plot_report chose the Agg backend

    plt.close(fig)
    return png


def plot_report(report: dict[str, Any]) -> Figure:
    """Held-out AUC per round, federated against centralised; rounds are whole numbers,
    so the x axis ticks only at integers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    fed = report["rounds"]
    cen = report["centralized_rounds"]
    ax.plot([r["round"] for r in fed], [r["auc"] for r in fed], "o-", label="federated (Flower)")
    ax.plot([r["round"] for r in cen], [r["auc"] for r in cen], "s--", label="centralised")
    title = "held-out AUC per round"
    if report.get("epsilon") is not None:
        title += f" (DP, epsilon={report['epsilon']:.2f})"
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one round: one tick
    ax.set_ylabel("AUC")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
