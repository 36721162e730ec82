"""Horizontal training without a deployment: the features, the split, the model's quality
against central training, differential privacy (Flower's wrapper and mod, and epsilon), and
the gateway's job core (validation, policy, audit)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tongban.federation.horizontal  # noqa: F401  (imports Flower quietly)
from tests.conftest import RecordingAudit
from tongban.adapters.synthetic.population import build_population
from tongban.federation.features import CACHE_FILE, FeatureTable, load_training_table
from tongban.federation.horizontal.accounting import gaussian_epsilon
from tongban.federation.horizontal.data import held_out_mask, load_partition, partition_rows
from tongban.federation.horizontal.model import (
    TrainConfig,
    auc,
    fedavg_in_process,
    predict,
    train_centralized,
)
from tongban.federation.horizontal.settings import RunSettings
from tongban.gateway.models import FederationJobRequest
from tongban.primitives.bodies import parse_body
from tongban.primitives.errors import BadRequest, NotFound

from .federation_data import generated


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory.mktemp("features"), 60_000, 5)


@pytest.fixture(scope="module")
def table(data_dir: Path) -> FeatureTable:
    return load_training_table(data_dir)


# --- features ---------------------------------------------------------------------------


def test_features_are_standardised_and_spread_over_departments(table: FeatureTable):
    assert table.X.shape == (table.rows, len(table.columns)) and len(table.columns) >= 10
    assert set(table.owners) == {"health", "hrss", "civil"}
    assert all(table.owners.count(o) >= 3 for o in ("health", "hrss", "civil"))
    np.testing.assert_allclose(table.X.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(table.X.std(axis=0), 1, atol=1e-9)
    assert 0.2 < table.label.mean() < 0.6
    assert len(set(table.id_number.tolist())) == table.rows  # one row per family


def test_label_agrees_with_hrss_payments_and_is_learnable_not_trivial(table: FeatureTable):
    pop = build_population(60_000, 5)
    paid_mothers = set(pop.id_number[pop.childcare_applicant].tolist())
    label = np.array([m not in paid_mothers for m in table.id_number.tolist()], dtype=np.int8)
    np.testing.assert_array_equal(label, table.label)
    held = held_out_mask(table)
    params, _ = train_centralized(table.X[~held], table.label[~held], 5, TrainConfig())
    score = auc(predict(params, table.X[held]), table.label[held])
    assert 0.7 < score < 0.95


def test_the_cached_table_is_the_table_read_through_the_files(table: FeatureTable, data_dir: Path):
    assert (data_dir / CACHE_FILE).exists()
    back = load_training_table(data_dir)  # from the cache
    fresh = load_training_table(data_dir, cache=False)  # from the department stores
    for other in (back, fresh):
        assert other.columns == table.columns and other.owners == table.owners
        np.testing.assert_array_equal(other.X, table.X)
        np.testing.assert_array_equal(other.id_number, table.id_number)
        np.testing.assert_array_equal(other.label, table.label)
        np.testing.assert_array_equal(other.district, table.district)
    with pytest.raises(FileNotFoundError, match="run tongban generate"):
        load_training_table(data_dir / "nowhere")


# --- partitions --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3, 8, 10])
def test_partitions_cover_every_row_once(table: FeatureTable, n: int):
    parts = partition_rows(table, n)
    assert len(parts) == n and all(len(p) for p in parts)
    rows = np.sort(np.concatenate(parts))
    np.testing.assert_array_equal(rows, np.arange(table.rows))
    if n == 8:  # one bureau per district
        assert all(len(set(table.district[p].tolist())) == 1 for p in parts)


def test_bureaus_never_train_on_held_out_rows(table: FeatureTable, data_dir: Path):
    held = held_out_mask(table)
    assert 0.15 < held.mean() < 0.25
    part = load_partition(data_dir, 0, 3)
    rows = partition_rows(table, 3)[0]
    assert len(part.y) == int((~held[rows]).sum())


# --- quality: federated against centralised -------------------------------------------------


def test_federated_auc_within_001_of_centralised(table: FeatureTable):
    """FedAvg over the 8 district bureaus (the algorithm the ServerApp runs; the deployment
    test checks the deployed model equals it) against pooled training, on the same
    held-out rows."""
    held = held_out_mask(table)
    parts = [(table.X[r[~held[r]]], table.label[r[~held[r]]]) for r in partition_rows(table, 8)]
    config = TrainConfig()
    rounds = 10
    fed = fedavg_in_process(parts, rounds, config)
    central, _ = train_centralized(table.X[~held], table.label[~held], rounds, config)
    x, y = table.X[held], table.label[held]
    auc_fed, auc_central = auc(predict(fed, x), y), auc(predict(central, x), y)
    assert auc_central > 0.7
    assert abs(auc_fed - auc_central) < 0.01


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # with ties
    y = (rng.random(300) < 0.4).astype(np.int8)
    pos, neg = scores[y == 1], scores[y == 0]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(scores, y) == pytest.approx(pairs)


# --- differential privacy --------------------------------------------------------------


def test_epsilon_follows_the_rdp_formula():
    for z, t in [(0.8, 5), (1.5, 10), (4.0, 20)]:
        closed = t / (2 * z * z) + math.sqrt(2 * t * math.log(1e5)) / z
        assert gaussian_epsilon(z, t) == pytest.approx(closed, rel=1e-3)
    assert gaussian_epsilon(2.0, 10) < gaussian_epsilon(1.0, 10)
    assert gaussian_epsilon(1.0, 20) > gaussian_epsilon(1.0, 10)
    assert gaussian_epsilon(0.0, 3) == math.inf
    assert RunSettings(dp_noise=0.0).epsilon(5) is None
    assert RunSettings(dp_noise=1.0).epsilon(5) == pytest.approx(gaussian_epsilon(1.0, 5))


@pytest.fixture
def task_identity() -> Iterator[None]:
    """A ClientApp called in process needs the ids Flower's runtime would set."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None  # type: ignore[assignment]


def _train_message(params: np.ndarray, config: dict[str, Any]) -> Any:
    from flwr.app import Message, MessageType
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    ins = FitIns(ndarrays_to_parameters([params]), config)
    return Message(
        compat.fitins_to_recorddict(ins, True), dst_node_id=7, message_type=MessageType.TRAIN
    )


def _call_client(data_dir: Path, config: dict[str, Any], keys_dir: Path) -> tuple[np.ndarray, int]:
    """The real ClientApp, its message sealed by the real ServerApp side (flower_loop)."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from tongban.federation.horizontal.apps import client_app

    from .flower_loop import LoopGrid, envelope_setup, sealed_grid

    node: dict[str, Any] = {
        "data-dir": str(data_dir),
        "partition-id": 1,
        "num-partitions": 3,
    }
    envelope = envelope_setup(keys_dir, {7: "supernode-1"})
    loop = LoopGrid(client_app, {7: node | envelope[7]})
    width = len(load_training_table(data_dir).columns) + 1  # weights and bias
    reply = sealed_grid(loop, keys_dir).send_and_receive([_train_message(np.zeros(width), config)])[
        0
    ]
    res = compat.recorddict_to_fitres(reply.content, False)
    return parameters_to_ndarrays(res.parameters)[0], res.num_examples


def test_client_clips_its_update_when_the_dp_wrapper_asks(
    data_dir: Path, task_identity: None, tmp_path: Path
):
    base = {"local-epochs": 20, "learning-rate": 0.5, "l2": 1e-3}
    free, rows = _call_client(data_dir, base, tmp_path / "envelope")
    assert np.linalg.norm(free) > 0.2 and rows > 1
    clipped, weight = _call_client(
        data_dir, base | {"clipping_norm": 0.05, "uniform-weights": True}, tmp_path / "envelope"
    )
    assert np.linalg.norm(clipped) == pytest.approx(0.05)
    np.testing.assert_allclose(clipped / 0.05, free / np.linalg.norm(free), atol=1e-9)
    assert weight == 1  # under DP every bureau weighs the same


def test_server_adds_gaussian_noise_scaled_to_clip_over_bureaus():
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from tongban.federation.horizontal.apps import build_strategy

    settings = RunSettings(num_partitions=3, dp_noise=1.5, dp_clip=0.4)
    strategy = build_strategy(settings, lambda *_: None, lambda _r: {})
    update = np.full(15, 0.1)
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([update]), 1, {}))
        for _ in range(3)
    ]
    draws = np.stack(
        [
            parameters_to_ndarrays(strategy.aggregate_fit(1, results, [])[0])[0]  # type: ignore[arg-type]
            for _ in range(200)
        ]
    )
    noise = draws - update
    assert abs(noise.mean()) < 0.02
    assert noise.std() == pytest.approx(1.5 * 0.4 / 3, rel=0.08)
    plain = build_strategy(RunSettings(num_partitions=3), lambda *_: None, lambda _r: {})
    agg = plain.aggregate_fit(1, results, [])[0]  # type: ignore[arg-type]
    np.testing.assert_allclose(parameters_to_ndarrays(agg)[0], update)  # type: ignore[arg-type]


# --- gateway job core ------------------------------------------------------------------


def _demo_policy(catalog: Any, audit: RecordingAudit) -> Any:
    """The demo policy (policies/default.csv): the analyst may train, nobody else."""
    from tongban.gateway.jobs import JobPolicy
    from tongban.policies import PolicyEnforcer, build_policy, default_legal_bases, default_rules

    enforcer = PolicyEnforcer(build_policy(default_rules(), default_legal_bases(), catalog))
    return JobPolicy(enforcer, audit)


def test_policy_denial_is_audited_and_nothing_runs(tmp_path: Path, claim_catalog: Any):
    from tongban.gateway.federation_jobs import FederationJobs
    from tongban.gateway.jobs import JobDenied

    audit = RecordingAudit()
    ran: list[Any] = []
    jobs = FederationJobs(
        tmp_path,
        audit,
        jobs=_demo_policy(claim_catalog, audit),
        trainer=lambda request, out, progress: ran.append(request) or {},  # type: ignore[func-returns-value]
    )
    try:
        with pytest.raises(JobDenied):
            jobs.submit(
                "insurer-a",
                parse_body(
                    FederationJobRequest, {"kind": "horizontal", "rounds": 2, "secagg": True}
                ),
            )
    finally:
        jobs.close()
    assert ran == []
    assert [e["kind"] for e in audit.entries] == ["job_denied"]
    denied = audit.entries[0]
    assert denied["requester"] == "insurer-a"
    assert denied["object"] == "federation:horizontal"
    assert denied["purpose"] == "model_training"


def test_allowed_job_is_audited_with_its_configuration(tmp_path: Path, claim_catalog: Any):
    """Policy allows the analyst; without a running deployment the job fails, audited."""
    from tongban.gateway.federation_jobs import FederationJobs

    audit = RecordingAudit()
    jobs = FederationJobs(tmp_path, audit, jobs=_demo_policy(claim_catalog, audit))
    try:
        body = {"kind": "horizontal", "rounds": 3, "dp_noise": 1.2, "dp_clip": 0.5}
        job = jobs.submit("analyst", parse_body(FederationJobRequest, body))
        jobs.wait(job["id"], timeout=30)
        state = jobs.get("analyst", job["id"])
        with pytest.raises(NotFound):
            jobs.get("insurer-a", job["id"])  # only the requester reads it
    finally:
        jobs.close()
    assert state["status"] == "failed" and "NoDeployment" in state["error"]
    started, failed = audit.entries
    assert started["kind"] == "federation_job" and started["event"] == "started"
    assert started["requester"] == "analyst"
    assert started["departments"] == ["health"]
    assert started["config"]["dp_noise"] == "1.2" and started["config"]["rounds"] == 3
    assert started["policy"]["rules"]
    assert failed["event"] == "failed" and failed["job"] == job["id"]


def test_jobs_are_kept_in_the_gateway_store_for_every_worker(tmp_path: Path):
    """Another worker (another FederationJobs on the same database) serves the job,
    with the rounds reported so far and the result."""
    from tongban.gateway.federation_jobs import FederationJobs
    from tongban.gateway.statistics_store import StatisticsStore

    url = f"sqlite:///{tmp_path / 'gateway.db'}"

    def trainer(request: Any, out_dir: Path, progress: Any) -> dict[str, Any]:
        progress({"event": "round", "round": 1, "loss": 0.5, "auc": 0.7})
        return {"model_sm3": "ab" * 32, "auc_federated": 0.8, "auc_centralized": 0.81}

    one = FederationJobs(
        tmp_path, RecordingAudit(), trainer=trainer, store=StatisticsStore(url, create=True)
    )
    other = FederationJobs(tmp_path, RecordingAudit(), store=StatisticsStore(url, create=True))
    try:
        job = one.submit(
            "analyst", parse_body(FederationJobRequest, {"kind": "horizontal", "rounds": 1})
        )
        one.wait(job["id"], timeout=30)
        seen = other.get("analyst", job["id"])
        with pytest.raises(NotFound):
            other.get("insurer-a", job["id"])
    finally:
        one.close()
        other.close()
    assert seen == one.get("analyst", job["id"])
    assert seen["status"] == "done" and seen["rounds"] == [{"round": 1, "loss": 0.5, "auc": 0.7}]
    assert seen["result"]["model_sm3"] == "ab" * 32


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rounds": 0}, "rounds"),
        ({"rounds": True}, "rounds"),
        ({"rounds": 2, "kind": "diagonal"}, "kind"),
        ({"rounds": 2, "kind": "vertical", "secagg": True}, "secagg"),
        ({"rounds": 2, "kind": "vertical", "batch_size": 8}, "batch_size"),
        ({"rounds": 2, "batch_size": 512}, "batch_size"),
        ({"rounds": 2, "dp_noise": -1}, "dp_noise"),
        ({"rounds": 2, "dp_clip": 0}, "dp_clip"),
        ({"rounds": 2, "secagg": "yes"}, "secagg"),
        ({"rounds": 2, "departments": []}, "departments"),
        ({"rounds": 2, "model": "gpt"}, "model"),
    ],
)
def test_job_requests_are_validated(tmp_path: Path, body: dict[str, Any], field: str):
    from tongban.gateway.federation_jobs import FederationJobs

    jobs = FederationJobs(tmp_path, RecordingAudit())
    try:
        with pytest.raises(BadRequest, match=field):
            jobs.submit("analyst", parse_body(FederationJobRequest, body))
    finally:
        jobs.close()


# --- command line ------------------------------------------------------------------------


def test_cli_refuses_a_data_dir_without_features(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from tongban.cli import main

    for argv in (
        ["federation", "up", "--data-dir", str(tmp_path), "--nodes", "3"],
        ["federation", "train", "--data-dir", str(tmp_path), "--rounds", "1", "--nodes", "3"],
    ):
        assert main(argv) == 2
    assert "run tongban generate" in " ".join(capsys.readouterr().err.split())


# --- progress and the report: per-round time, integer round ticks, who trained ---------


def _events() -> list[dict[str, Any]]:
    """What the ServerApp writes: ``t`` is seconds since it started, cumulative."""
    return [
        {"event": "start", "t": 0.5, "rounds": 3, "num_partitions": 3, "secagg": False,
         "dp_noise": 0.0},
        {"event": "round", "t": 12.5, "round": 1, "loss": 0.6, "auc": 0.70, "train_loss": 0.61},
        {"event": "round", "t": 20.0, "round": 2, "loss": 0.5, "auc": 0.74, "train_loss": 0.52},
        {"event": "round", "t": 31.25, "round": 3, "loss": 0.45, "auc": 0.76, "train_loss": 0.47,
         "epsilon": 1.5},
        {"event": "done", "t": 31.5, "rounds": 3, "epsilon": None},
    ]  # fmt: skip


def test_round_times_are_per_round_and_the_cumulative_time_is_named_so():
    from tongban.federation.horizontal.runner import round_times

    timed = round_times(_events())
    rounds = [e for e in timed if e["event"] == "round"]
    assert [r["round_seconds"] for r in rounds] == [12.0, 7.5, 11.25]
    assert [r["elapsed_seconds"] for r in rounds] == [12.5, 20.0, 31.25]
    assert timed[0] == _events()[0] and timed[-1] == _events()[-1]
    assert "round_seconds" not in _events()[1]  # copies, the input is left alone


def test_progress_lines_say_which_time_is_which():
    from tongban.federation.horizontal.runner import progress_line, round_times

    lines = [progress_line(e) for e in round_times(_events())]
    assert lines[0] == "run started: 3 rounds, 3 nodes, secagg=False, dp_noise=0.0"
    assert lines[2] == (
        "round 2: train loss 0.5200, held-out loss 0.5000, AUC 0.7400 "
        "(7.5s this round, 20.0s elapsed)"
    )
    assert "epsilon 1.50 (11.2s this round, 31.2s elapsed)" in lines[3]
    assert lines[-1] == "done after 31.5s in total"


def _report(rounds: int) -> dict[str, Any]:
    timed = [e for e in _events() if e["event"] == "round"][:rounds]
    return {
        "rounds": timed,
        "centralized_rounds": [{"round": r["round"], "auc": 0.77} for r in timed],
        "epsilon": None,
    }


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_the_report_curve_ticks_rounds_at_whole_numbers(rounds: int):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from tongban.federation.horizontal.runner import plot_report

    fig = plot_report(_report(rounds))
    try:
        ax = fig.axes[0]
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    finally:
        plt.close(fig)


def test_write_report_writes_json_and_png(tmp_path: Path):
    import json

    from tongban.federation.horizontal.runner import write_report

    png = write_report(_report(3), tmp_path / "r.json")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "r.json").read_text())["rounds"][0]["round"] == 1


def test_the_report_names_the_bureaus_that_trained_not_departments(data_dir: Path):
    from tongban.federation.horizontal.deploy import Deployment, NodeInfo
    from tongban.federation.horizontal.runner import (
        RunResult,
        build_report,
        bureaus_of,
        round_times,
    )

    dep = Deployment("127.0.0.1:1", str(data_dir), 2, 0, "")
    dep.nodes = [NodeInfo(0, ["150102"], 10, 1), NodeInfo(1, ["150105", "150203"], 12, 2)]
    settings = RunSettings(
        rounds=2, num_partitions=2, n_features=len(load_training_table(data_dir).columns)
    )
    rounds = [e for e in round_times(_events()) if e["event"] == "round"][:2]
    result = RunResult(1, settings, np.zeros(settings.n_features + 1), rounds, seconds=21.0)
    result.bureaus = bureaus_of(dep)
    report = build_report(result, data_dir)
    assert report["bureaus"] == [
        {"node": 0, "districts": ["150102"], "rows": 10},
        {"node": 1, "districts": ["150105", "150203"], "rows": 12},
    ]
    assert "departments" not in report
    assert [r["round_seconds"] for r in report["rounds"]] == [12.0, 7.5]
    assert [r["elapsed_seconds"] for r in report["rounds"]] == [12.5, 20.0]
    assert all("t" not in r for r in report["rounds"])
    assert report["total_seconds"] == 21.0 and "seconds" not in report
