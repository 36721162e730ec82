"""Running a vertical job in process: PSI, then hetero-LR epochs, then the report.

The coordinator (this module, beside the gateway) only schedules and relays: it sees the
plan, sizes, public keys, masked vectors and ciphertexts (see the table in
docs/federation.md, "What each party receives"), never features, labels or residuals. Evaluation
happens at the label holder, the only party that can compute an AUC.
"""

from __future__ import annotations

import secrets
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tongban.federation.horizontal.data import HELD_OUT_MOD
from tongban.federation.horizontal.model import auc
from tongban.federation.psi import PsiParty, Transcript, run_psi
from tongban.primitives.gm import sm3

from ..features import FeatureTable, load_training_table
from .data import LABEL_HOLDER, DepartmentView, fit_centralized, split_departments
from .messages import Plan, Relay, VKind
from .parties import FeatureHolder, LabelHolder, Randomness

__all__ = [
    "Job",
    "evaluate",
    "held_out",
    "run_on_table",
    "run_vertical",
    "setup_job",
    "train",
]

Event = dict[str, Any]
Progress = Callable[[Event], None]
Positions = npt.NDArray[np.int64]


def held_out(ids: npt.NDArray[np.str_]) -> npt.NDArray[np.bool_]:
    """One family in five by a CRC of the ID: the horizontal job's held-out rule."""
    crc = np.fromiter((zlib.crc32(s.encode("ascii")) for s in ids.tolist()), np.int64, len(ids))
    return np.asarray(crc % HELD_OUT_MOD == 0)


class Job:
    """The parties of one job after PSI, with the plan and the relay."""

    def __init__(
        self,
        guest: LabelHolder,
        hosts: list[FeatureHolder],
        plan: Plan,
        relay: Relay,
        train_positions: Positions,
        test_positions: Positions,
        guest_ids: npt.NDArray[np.str_],
    ) -> None:
        self.guest, self.hosts, self.plan, self.relay = guest, hosts, plan, relay
        self.train_positions, self.test_positions = train_positions, test_positions
        self.guest_ids = guest_ids  # the label holder's own aligned IDs (stay with it)

    @property
    def parties(self) -> list[LabelHolder | FeatureHolder]:
        return [self.guest, *self.hosts]

    def close(self) -> None:
        for party in self.parties:
            party.close()


def setup_job(
    views: Mapping[str, DepartmentView],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    l2: float,
    seed: int = 0,
    key_bits: int = 2048,
    workers: int = 2,
    relay: Relay | None = None,
    psi_transcript: Transcript | None = None,
    progress: Progress | None = None,
    already_aligned: bool = False,
    randomness: Randomness = "djn",
    feature_bits: int = 12,
) -> Job:
    """PSI over the departments' IDs, then the parties on their aligned rows, keys agreed.

    ``already_aligned`` skips PSI for views that hold the same IDs in the same order (the
    training benchmark, which times PSI separately).
    """
    if LABEL_HOLDER not in views or len(views) < 3:
        raise ValueError("views: expected the label holder and at least two feature holders")
    relay = relay or Relay()
    session = secrets.token_bytes(16)
    started = time.perf_counter()
    if already_aligned:
        first = views[LABEL_HOLDER].ids
        if any(not np.array_equal(v.ids, first) for v in views.values()):
            raise ValueError("views: already_aligned needs the same IDs in the same order")
        aligned = {name: np.arange(len(first), dtype=np.int64) for name in views}
    else:
        psi = [PsiParty(v.name, v.ids.tolist(), session, workers=workers) for v in views.values()]
        rows = run_psi(psi, coordinator=relay.name, transcript=psi_transcript)
        aligned = {p.name: rows[p.name] for p in psi}
    ids = views[LABEL_HOLDER].ids[aligned[LABEL_HOLDER]]
    if progress:
        progress({"event": "psi", "rows": len(ids), "t": time.perf_counter() - started})
    test_mask = held_out(ids)  # every party computes this from its own aligned IDs
    plan = Plan(
        session=session,
        rows=len(ids),
        train=int((~test_mask).sum()),
        held_out=int(test_mask.sum()),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        l2=l2,
        seed=seed,
        feature_bits=feature_bits,
    )
    label_view = views[LABEL_HOLDER]
    assert label_view.labels is not None
    guest = LabelHolder(
        LABEL_HOLDER,
        label_view.X[aligned[LABEL_HOLDER]],
        label_view.labels[aligned[LABEL_HOLDER]],
        session,
        key_bits=key_bits,
        workers=workers,
        randomness=randomness,
    )
    hosts = [
        FeatureHolder(v.name, v.X[aligned[v.name]], session, workers=workers)
        for v in views.values()
        if v.name != LABEL_HOLDER
    ]
    job = Job(
        guest,
        hosts,
        plan,
        relay,
        np.flatnonzero(~test_mask).astype(np.int64),
        np.flatnonzero(test_mask).astype(np.int64),
        ids,
    )
    for party in job.parties:
        party.receive_plan(relay.send(VKind.PLAN, relay.name, party.name, plan))
    for party in job.parties:
        public = party.masks.public()
        for peer in job.parties:
            if peer is not party:
                peer.masks.agree(
                    party.name, relay.send(VKind.PAIRWISE_KEY, party.name, peer.name, public)
                )
    jwk = guest.public_key_jwk()
    for host in hosts:
        host.receive_public_key(relay.send(VKind.PUBLIC_KEY, guest.name, host.name, jwk))
    return job


def _step(job: Job, positions: Positions, label: str) -> None:
    guest, relay = job.guest, job.relay
    masked = {
        h.name: relay.send(
            VKind.MASKED_LOGITS, h.name, guest.name, h.masked_logits(positions, label)
        )
        for h in job.hosts
    }
    residuals = guest.encrypted_residuals(positions, label, masked)
    for host in job.hosts:
        received = relay.send(VKind.ENCRYPTED_RESIDUALS, guest.name, host.name, residuals)
        gradient = host.masked_gradient(positions, received)
        gradient = relay.send(VKind.MASKED_GRADIENT, host.name, guest.name, gradient)
        slots = guest.gradient_slots(host.name, gradient)
        host.apply_gradient(relay.send(VKind.GRADIENT_SLOTS, guest.name, host.name, slots))


def evaluate(job: Job) -> dict[str, float]:
    positions = job.test_positions
    masked = {
        h.name: job.relay.send(
            VKind.MASKED_SCORES, h.name, job.guest.name, h.masked_logits(positions, "score")
        )
        for h in job.hosts
    }
    return job.guest.evaluate(positions, masked)


def train(job: Job, progress: Progress | None = None) -> list[Event]:
    """``plan.epochs`` epochs of minibatch gradient descent; metrics after each."""
    rounds: list[Event] = []
    started = time.perf_counter()
    for epoch in range(1, job.plan.epochs + 1):
        epoch_start = time.perf_counter()
        losses: list[float] = []
        for index, positions in enumerate(job.plan.batches(epoch, job.train_positions)):
            _step(job, positions, f"train/{epoch}/{index}")
            losses.append(job.guest.last_loss)
        seconds = time.perf_counter() - epoch_start
        metrics = evaluate(job)
        event = {
            "event": "round",
            "round": epoch,
            "train_loss": float(np.mean(losses)),
            "loss": metrics["loss"],
            "auc": metrics["auc"],
            "seconds": round(seconds, 3),
            "t": round(time.perf_counter() - started, 3),
        }
        rounds.append(event)
        if progress:
            progress(event)
    return rounds


def _centralized_auc(table: FeatureTable, ids: npt.NDArray[np.str_], l2: float) -> float:
    """Newton LR on the joined columns of the intersection's train rows; held-out AUC."""
    index = {v: i for i, v in enumerate(table.id_number.tolist())}
    rows = np.fromiter((index[i] for i in ids.tolist()), np.int64, len(ids))
    test = held_out(ids)
    x, y = table.X[rows], table.label[rows]
    w, b = fit_centralized(x[~test], y[~test], l2)
    return auc(x[test] @ w + b, y[test])


def run_on_table(
    table: FeatureTable,
    *,
    epochs: int = 5,
    batch_size: int = 1024,
    learning_rate: float = 0.5,
    l2: float = 1e-4,
    missing: float = 0.05,
    seed: int = 0,
    key_bits: int = 2048,
    workers: int = 2,
    relay: Relay | None = None,
    psi_transcript: Transcript | None = None,
    progress: Progress | None = None,
    feature_bits: int = 12,
) -> dict[str, Any]:
    """The whole job on a feature table; returns the report (horizontal's keys)."""
    started = time.perf_counter()
    views = split_departments(table, missing=missing, seed=seed)
    job = setup_job(
        views,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        l2=l2,
        seed=seed,
        key_bits=key_bits,
        workers=workers,
        relay=relay,
        psi_transcript=psi_transcript,
        progress=progress,
        feature_bits=feature_bits,
    )
    psi_seconds = time.perf_counter() - started
    try:
        rounds = train(job, progress)
    finally:
        job.close()
    # The reference needs the joined table, which only this simulation holds: the label
    # holder's aligned IDs (its own rows) pick the intersection out of it. No party sends it.
    auc_centralized = _centralized_auc(table, job.guest_ids, l2)
    digest = sm3(b"".join(p.model_digest() for p in job.parties)).hex()
    return {
        "kind": "vertical",
        "rounds": rounds,
        "centralized_rounds": [{"round": r["round"], "auc": auc_centralized} for r in rounds],
        "auc_federated": rounds[-1]["auc"] if rounds else float("nan"),
        "auc_centralized": auc_centralized,
        "epsilon": None,
        "departments": [p.name for p in job.parties],
        "label_holder": LABEL_HOLDER,
        "psi": {
            "sizes": {name: len(v.ids) for name, v in views.items()},
            "intersection": job.plan.rows,
            "seconds": round(psi_seconds, 3),
        },
        "train_rows": job.plan.train,
        "held_out_rows": job.plan.held_out,
        "columns": {name: list(v.columns) for name, v in views.items()},
        "batch_size": batch_size,
        "feature_bits": feature_bits,
        "residuals_per_ciphertext": job.guest.layout.slots if job.guest.layout else None,
        "bytes_relayed": job.relay.bytes_relayed,
        "model_sm3": digest,
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_vertical(
    data_dir: Path,
    *,
    epochs: int = 5,
    batch_size: int = 1024,
    learning_rate: float = 0.5,
    l2: float = 1e-4,
    missing: float = 0.05,
    seed: int = 0,
    key_bits: int = 2048,
    workers: int = 2,
    progress: Progress | None = None,
    feature_bits: int = 12,
) -> dict[str, Any]:
    """Vertical training on ``tongban generate``'s feature table in ``data_dir``."""
    return run_on_table(
        load_training_table(data_dir),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        l2=l2,
        missing=missing,
        seed=seed,
        key_bits=key_bits,
        workers=workers,
        progress=progress,
        feature_bits=feature_bits,
    )
