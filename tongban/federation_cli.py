"""``tongban federation up|train``: horizontal federated training with Flower on loopback.

``up`` starts a SuperLink and one SuperNode per county bureau and runs until SIGTERM/SIGINT.
``train`` runs the Flower app against the deployment ``up`` published for the same
``--data-dir``; if none is running it brings one up for the duration of the run.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

__all__ = ["add_federation", "federation_train", "federation_up"]

_DEFAULT_NODES = 8  # one per district in primitives.regions.DISTRICTS


def federation_up(args: argparse.Namespace) -> int:
    from tongban.federation.horizontal.deploy import DeploymentError, Supervisor

    console = Console(stderr=True)
    try:
        sup = Supervisor(args.data_dir, args.nodes, log=console.print)
    except (FileNotFoundError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        return 2

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        dep = sup.start()
        for node in dep.nodes:
            console.print(
                f"  SuperNode {node.partition_id}: districts {', '.join(node.districts)}, "
                f"{node.rows} families"
            )
        console.print("ready; stop with SIGTERM or Ctrl-C")
        code = sup.watch()
    except DeploymentError as exc:
        console.print(f"[red]{exc}[/red]")
        code = 1
    finally:
        sup.stop()
    return code


def _progress_line(ev: dict[str, Any]) -> str:
    if ev["event"] == "start":
        return (
            f"run started: {ev['rounds']} rounds, {ev['num_partitions']} nodes, "
            f"secagg={ev['secagg']}, dp_noise={ev['dp_noise']}"
        )
    if ev["event"] == "round":
        eps = f", epsilon {ev['epsilon']:.2f}" if ev.get("epsilon") is not None else ""
        return (
            f"round {ev['round']}: train loss {ev.get('train_loss', float('nan')):.4f}, "
            f"held-out loss {ev['loss']:.4f}, AUC {ev['auc']:.4f}{eps} ({ev['t']:.1f}s)"
        )
    return f"done after {ev['t']:.1f}s"


def federation_train(args: argparse.Namespace) -> int:
    if getattr(args, "kind", "horizontal") == "vertical":
        from tongban.federation.vertical.cli import train_command

        return train_command(args)
    from tongban.federation.horizontal.deploy import DeploymentError, Supervisor, read_deployment
    from tongban.federation.horizontal.runner import (
        TrainingFailed,
        build_report,
        run_training,
        write_report,
    )
    from tongban.federation.horizontal.settings import RunSettings

    console = Console(stderr=True)
    data_dir: Path = args.data_dir.resolve()
    dep = read_deployment(data_dir)
    sup: Supervisor | None = None
    if dep is None:
        console.print(f"no deployment running for {data_dir}; starting {args.nodes} SuperNodes")
        try:
            sup = Supervisor(data_dir, args.nodes, log=console.print)
        except (FileNotFoundError, ValueError) as exc:
            console.print(f"[red]{exc}[/red]")
            return 2
        try:
            dep = sup.start()
        except DeploymentError as exc:
            sup.stop()
            console.print(f"[red]{exc}[/red]")
            return 1
    out = args.out or data_dir / "federation" / "jobs" / time.strftime("%Y%m%dT%H%M%S")
    try:
        settings = RunSettings(
            rounds=args.rounds,
            local_epochs=args.local_epochs,
            num_partitions=dep.num_partitions,
            n_features=_n_features(data_dir),
            secagg=args.secagg,
            dp_noise=args.dp_noise,
            dp_clip=args.dp_clip,
            eval_data_dir=str(data_dir),
            out_dir=str(Path(out).resolve()),
        )
        result = run_training(dep, settings, on_event=lambda ev: console.print(_progress_line(ev)))
        report = build_report(result, data_dir, ["health"])
    except TrainingFailed as exc:
        console.print(f"[red]{exc}[/red] (logs: {data_dir / 'federation' / 'logs'})")
        return 1
    finally:
        if sup is not None:
            sup.stop()
    summary = {k: report[k] for k in ("auc_federated", "auc_centralized", "epsilon", "model_sm3")}
    if args.report:
        png = write_report(report, args.report)
        console.print(f"report: {args.report} and {png}")
    print(json.dumps(summary, indent=2))
    return 0


def _n_features(data_dir: Path) -> int:
    from tongban.adapters.synthetic.features import read_features

    return len(read_features(data_dir).columns)


def add_federation(sub: Any) -> None:
    fed = sub.add_parser("federation", help="horizontal federated training with Flower")
    fed_sub = fed.add_subparsers(dest="federation_command", required=True)

    up = fed_sub.add_parser("up", help="start a SuperLink and one SuperNode per bureau")
    up.add_argument("--data-dir", type=Path, required=True)
    up.add_argument("--nodes", type=int, default=_DEFAULT_NODES, help="SuperNodes (bureaus)")
    up.set_defaults(func=federation_up)

    train = fed_sub.add_parser("train", help="train the outreach model across the bureaus")
    train.add_argument("--data-dir", type=Path, required=True)
    train.add_argument("--rounds", type=int, required=True)
    train.add_argument("--secagg", action="store_true", help="SecAgg+ secure aggregation")
    train.add_argument("--dp-noise", type=float, default=0.0, help="noise multiplier z")
    train.add_argument("--dp-clip", type=float, default=0.5, help="L2 clipping norm C")
    train.add_argument("--report", type=Path, help="write the JSON report (and a PNG beside)")
    train.add_argument("--local-epochs", type=int, default=20)
    train.add_argument("--nodes", type=int, default=_DEFAULT_NODES, help="if none is running")
    train.add_argument("--out", type=Path, help="job directory (progress, model)")
    train.add_argument(
        "--kind",
        choices=("horizontal", "vertical"),
        default="horizontal",
        help="vertical: PSI + Paillier LR across health, hrss, civil (--rounds = epochs)",
    )
    train.add_argument("--batch-size", type=int, default=1024, help="vertical only")
    train.set_defaults(func=federation_train)
