"""``tongban federation up|train``: federated training on loopback.

Horizontal (Flower, the ``federation`` extra): ``up`` starts a SuperLink and one SuperNode
per county bureau and runs until SIGTERM/SIGINT; ``train`` runs the Flower app against the
deployment ``up`` published for the same ``--data-dir``, or brings one up for the run.
Vertical (``train --kind vertical``): PSI on SM2, then Paillier logistic regression across
health, hrss and civil, which hold different columns about the same families.

Without the extra, the command stops with one line naming it (``MissingExtra``).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.console import Console

from tongban.primitives.extras import require_extra

from .boundary import MissingPrerequisite, UsageError
from .parsing import DATA_DIR_HELP, command

if TYPE_CHECKING:
    from tongban.federation.horizontal.deploy import Supervisor

__all__ = [
    "add_federation",
    "federation_train",
    "federation_up",
    "require_federation_extra",
]

_DEFAULT_NODES = 8  # one per district in primitives.regions.DISTRICTS


def _supervisor(data_dir: Path, nodes: int, console: Console) -> Supervisor:
    """A deployment supervisor, or a one-line refusal: no features (exit 2), bad usage."""
    from tongban.federation.horizontal.deploy import Supervisor

    try:
        return Supervisor(data_dir, nodes, log=console.print)
    except FileNotFoundError as exc:
        raise MissingPrerequisite(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def require_federation_extra(args: argparse.Namespace, feature: str) -> None:
    """Flower for horizontal training, matplotlib for a report's PNG."""
    if getattr(args, "kind", "horizontal") == "horizontal":
        require_extra("flwr", "federation", feature)
    if getattr(args, "report", None):
        require_extra("matplotlib", "federation", f"{feature} --report")


def federation_up(args: argparse.Namespace) -> int:
    require_federation_extra(args, "tongban federation up")
    from tongban.federation.horizontal.deploy import DeploymentError

    console = Console(stderr=True)
    sup = _supervisor(args.data_dir, args.nodes, console)

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


def federation_train(args: argparse.Namespace) -> int:
    require_federation_extra(args, "tongban federation train")
    if getattr(args, "kind", "horizontal") == "vertical":
        from tongban.federation.vertical.cli import train_command

        return train_command(args)
    from tongban.federation.horizontal.deploy import DeploymentError, read_deployment
    from tongban.federation.horizontal.runner import (
        TrainingFailed,
        build_report,
        progress_line,
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
        sup = _supervisor(data_dir, args.nodes, console)
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
        result = run_training(dep, settings, on_event=lambda ev: console.print(progress_line(ev)))
        report = build_report(result, data_dir)
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
    from tongban.federation.features import load_training_table

    return len(load_training_table(data_dir).columns)


def add_federation(sub: Any) -> None:
    fed = command(
        sub,
        "federation",
        "federated training: horizontal (Flower, bureaus with the same columns) and vertical "
        "(PSI + Paillier LR, departments with different columns)",
    )
    fed_sub = fed.add_subparsers(dest="federation_command", required=True, metavar="COMMAND")

    up = command(
        fed_sub, "up", "horizontal: start a SuperLink and one SuperNode per bureau, until stopped"
    )
    up.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    up.add_argument("--nodes", type=int, default=_DEFAULT_NODES, help="SuperNodes (bureaus)")
    up.set_defaults(func=federation_up)

    train = command(
        fed_sub,
        "train",
        "train the childcare-subsidy outreach model, horizontally across bureaus or "
        "vertically across departments (--kind)",
    )
    train.add_argument("--data-dir", type=Path, required=True, metavar="DIR", help=DATA_DIR_HELP)
    train.add_argument(
        "--rounds", type=int, required=True, help="federated rounds (vertical: epochs)"
    )
    train.add_argument("--secagg", action="store_true", help="SecAgg+ secure aggregation")
    train.add_argument("--dp-noise", type=float, default=0.0, help="DP noise multiplier z")
    train.add_argument("--dp-clip", type=float, default=0.5, help="DP L2 clipping norm C")
    train.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the JSON report here and a PNG beside it (default: no report)",
    )
    train.add_argument("--local-epochs", type=int, default=20, help="epochs per round on a node")
    train.add_argument(
        "--nodes", type=int, default=_DEFAULT_NODES, help="SuperNodes to start if none is running"
    )
    train.add_argument(
        "--out",
        type=Path,
        metavar="JOB_DIR",
        help="job directory for progress and model (default: DIR/federation/jobs/<time>)",
    )
    train.add_argument(
        "--kind",
        choices=("horizontal", "vertical"),
        default="horizontal",
        help="horizontal: Flower across bureaus; vertical: PSI + Paillier LR across health, "
        "hrss, civil",
    )
    train.add_argument("--batch-size", type=int, default=1024, help="vertical only: batch size")
    train.set_defaults(func=federation_train)
