"""``tongban federation train --kind vertical``: the command's body (the parser is shared)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console

__all__ = ["progress_line", "train_command"]

_SUMMARY = ("auc_federated", "auc_centralized", "epsilon", "model_sm3")


def progress_line(event: dict[str, Any]) -> str:
    if event["event"] == "psi":
        return f"PSI: {event['rows']} families common to all departments ({event['t']:.1f}s)"
    return (
        f"epoch {event['round']}: train loss {event['train_loss']:.4f}, held-out loss "
        f"{event['loss']:.4f}, AUC {event['auc']:.4f} ({event['seconds']:.1f}s)"
    )


def train_command(args: argparse.Namespace) -> int:
    """Run a vertical job on ``args.data_dir``; ``--rounds`` counts epochs."""
    from tongban.federation.horizontal.runner import write_report

    from .runner import run_vertical

    console = Console(stderr=True)
    report = run_vertical(
        args.data_dir.resolve(),
        epochs=args.rounds,
        batch_size=getattr(args, "batch_size", None) or 1024,
        progress=lambda event: console.print(progress_line(event)),
    )
    if args.report:
        png = write_report(report, args.report)
        console.print(f"report: {args.report} and {png}")
    print(json.dumps({k: report[k] for k in _SUMMARY}, indent=2))
    return 0
