"""The real deployment: ``tongban federation up`` (a SuperLink and 3 SuperNodes on loopback,
offline, TLS from the deployment's PKI and SuperNode authentication), Flower runs against
it, the gateway's job core, and a clean SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RecordingAudit
from tongban.federation.features import load_training_table
from tongban.federation.horizontal.data import held_out_mask, partition_rows
from tongban.federation.horizontal.deploy import Deployment, descendants, read_deployment
from tongban.federation.horizontal.model import TrainConfig, fedavg_in_process, train_local
from tongban.federation.horizontal.runner import (
    build_report,
    model_hash,
    run_training,
    write_report,
)
from tongban.federation.horizontal.settings import RunSettings
from tongban.gateway.models import FederationJobRequest
from tongban.primitives.bodies import parse_body

from .federation_data import generated
from .test_federation_tls import _cmdline

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

NODES = 3


class _Up:
    def __init__(self, data_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_")}
        self.log = log = (data_dir / "up.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tongban", "federation", "up", "--data-dir", str(data_dir),
             "--nodes", str(NODES)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        dep = None
        while dep is None and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log.close()
                pytest.fail((data_dir / "up.log").read_text())
            dep = read_deployment(data_dir)
            time.sleep(0.2)
        assert dep is not None, "federation up did not publish its deployment"
        self.deployment = dep


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generated(tmp_path_factory.mktemp("fed"), 30_000, 11)


@pytest.fixture(scope="module")
def up(data_dir: Path) -> Iterator[_Up]:
    u = _Up(data_dir)
    yield u
    if u.proc.poll() is None:
        u.proc.send_signal(signal.SIGTERM)
        u.proc.wait(timeout=30)
    u.log.close()


def _settings(data_dir: Path, out: Path, **kw: object) -> RunSettings:
    return RunSettings(
        num_partitions=NODES,
        n_features=len(load_training_table(data_dir).columns),
        eval_data_dir=str(data_dir),
        out_dir=str(out),
        **kw,  # type: ignore[arg-type]
    )


def _flower_cmdlines(up: _Up) -> list[list[str]]:
    """The command lines of every process under ``federation up`` (SuperLink, SuperNodes,
    their SuperExecs, and the ServerApp/ClientApp processes of a run in progress)."""
    return [c for c in (_cmdline(p) for p in descendants(up.proc.pid)) if c]


def _assert_tls_everywhere(cmdlines: list[list[str]]) -> None:
    for argv in cmdlines:
        assert "--insecure" not in argv, argv
        # Every Flower client process verifies its server against the deployment's CA.
        if any(
            Path(a).name in ("flower-superexec", "flwr-clientapp", "flwr-serverapp")
            for a in argv[:2]
        ):
            assert "--root-certificates" in argv, argv


def test_up_publishes_one_supernode_per_bureau(up: _Up, data_dir: Path):
    dep: Deployment = up.deployment
    assert dep.superlink.startswith("127.0.0.1:")
    assert dep.ca == str(data_dir.resolve() / "pki" / "ca.pem")
    assert [n.partition_id for n in dep.nodes] == list(range(NODES))
    table = load_training_table(data_dir)
    assert sum(n.rows for n in dep.nodes) == table.rows
    assert len({n.port for n in dep.nodes}) == NODES


def test_deployment_runs_tls_and_node_auth_without_insecure(up: _Up, data_dir: Path):
    pki = data_dir.resolve() / "pki"
    auth = data_dir.resolve() / "federation" / "node-auth"
    cmdlines = _flower_cmdlines(up)
    _assert_tls_everywhere(cmdlines)
    link = [c for c in cmdlines if any(Path(a).name == "flower-superlink" for a in c[:2])]
    assert len(link) == 1
    argv = link[0]
    assert "--enable-supernode-auth" in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(pki / "superlink.pem")
    assert argv[argv.index("--ssl-keyfile") + 1] == str(pki / "superlink.key")
    assert argv[argv.index("--ssl-ca-certfile") + 1] == str(pki / "ca.pem")
    nodes = [c for c in cmdlines if any(Path(a).name == "flower-supernode" for a in c[:2])]
    assert len(nodes) == NODES
    for i, argv in enumerate(sorted(nodes, key=lambda c: c[c.index("--node-config") + 1])):
        assert argv[argv.index("--root-certificates") + 1] == str(pki / "ca.pem")
        key = argv[argv.index("--auth-supernode-private-key") + 1]
        assert key == str(auth / f"supernode-{i}.key")
        assert (Path(key).stat().st_mode & 0o777) == 0o600
        assert argv[argv.index("--ssl-certfile") + 1] == str(pki / f"supernode-{i}.pem")
    # The SuperLink activated exactly the registered SuperNodes.
    log = (data_dir / "federation" / "logs" / "superlink.log").read_text(errors="replace")
    assert log.count("Activated node_id") == NODES
    assert log.count("[ControlServicer.RegisterNode] Created node_id") == NODES
    # Every message inside that TLS is sealed: each node's config names its SM2 key and the
    # peer file, which holds a key for each node id the SuperLink created.
    envelope = data_dir.resolve() / "federation" / "envelope"
    assert up.deployment.envelope == str(envelope)
    peers = json.loads((envelope / "peers.json").read_text())
    created = re.findall(r"RegisterNode\] Created node_id[=: ]*(\d+)", log)
    assert sorted(peers["nodes"]) == sorted(created) and len(created) == NODES
    for i, argv in enumerate(sorted(nodes, key=lambda c: c[c.index("--node-config") + 1])):
        config = argv[argv.index("--node-config") + 1]
        assert f'envelope-key="{envelope / f"supernode-{i}.sm2"}"' in config
        assert f'envelope-peers="{envelope / "peers.json"}"' in config


def test_secagg_round_real_superlink(up: _Up, data_dir: Path, tmp_path: Path):
    """One SecAgg+ round on 3 SuperNodes: the report, the curve, and what the server saw.
    (Each SecAgg+ round is four message exchanges, each starting a ClientApp process per
    node; the two-round run below is without it.)"""
    settings = _settings(data_dir, tmp_path / "job", rounds=1, secagg=True, record_received=True)
    events: list[dict[str, object]] = []
    during: list[list[str]] = []

    def on_event(ev: dict[str, object]) -> None:
        events.append(ev)
        during.extend(_flower_cmdlines(up))  # with the ServerApp and ClientApps running

    result = run_training(up.deployment, settings, on_event=on_event, timeout=240)
    _assert_tls_everywhere(during)
    assert any(Path(a).name == "flwr-serverapp" for c in during for a in c[:2])
    assert [e["event"] for e in events] == ["start", "round", "done"]
    logs = data_dir / "federation" / "logs"
    assert not [
        p.name for p in logs.glob("*.log") if "tongban: refused" in p.read_text("utf-8", "replace")
    ]
    report = build_report(result, data_dir)
    png = write_report(report, tmp_path / "report.json")
    saved = json.loads((tmp_path / "report.json").read_text())
    for key in ("rounds", "auc_federated", "auc_centralized", "epsilon"):
        assert key in saved
    assert saved["epsilon"] is None
    assert [r["round"] for r in saved["rounds"]] == [1]
    assert all({"loss", "auc", "train_loss"} <= set(r) for r in saved["rounds"])
    assert 0 < saved["rounds"][0]["round_seconds"] <= saved["rounds"][0]["elapsed_seconds"]
    assert [b["node"] for b in saved["bureaus"]] == list(range(NODES))
    assert "departments" not in saved  # no department adapter trains
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["model_sm3"] == model_hash(result.params)
    assert saved["auc_federated"] > 0.65

    # The aggregate is FedAvg: the same as averaging in process (up to SecAgg+ quantisation).
    table = load_training_table(data_dir)
    held = held_out_mask(table)
    parts = [(table.X[r[~held[r]]], table.label[r[~held[r]]]) for r in partition_rows(table, NODES)]
    config = TrainConfig(settings.local_epochs, settings.learning_rate, settings.l2)
    expected = fedavg_in_process(parts, 1, config)
    np.testing.assert_allclose(result.params, expected, atol=2e-3)

    # What the server received from each bureau is its masked vector and no parameters: an
    # individual update is not recoverable from it. Round 1 starts from zeros, so each
    # bureau's true contribution is known here; the masked vectors are uniform in the
    # modulus ring and uncorrelated with it, while their sum unmasks to the mean.
    received = sorted((tmp_path / "job" / "received").glob("round1-node*.npz"))
    assert len(received) == NODES
    updates = [train_local(np.zeros(table.X.shape[1] + 1), x, y, config)[0] for x, y in parts]
    modulus = 4294967296
    for path in received:
        with np.load(path) as z:
            assert int(z["n_param_arrays"]) == 0  # the mod cleared the parameters
            masked = z["masked"].astype(np.float64)
        vector = masked[-(table.X.shape[1] + 1) :]
        assert vector.min() >= 0 and vector.max() < modulus
        # spread over the ring (a quantised update would sit in a narrow band)
        assert np.ptp(vector) > modulus / 8
        for update in updates:
            assert abs(np.corrcoef(vector, update)[0, 1]) < 0.9
    assert result.rounds[0]["secagg_setup"] > 0 and result.rounds[0]["secagg_unmask"] > 0


def test_gateway_job_two_rounds_audits_model_hash(up: _Up, data_dir: Path):
    """The job core against the real deployment, 3 SuperNodes x 2 rounds: audited at start
    and at the end with the model's SM3 hash; the model is FedAvg's."""
    from tongban.gateway.federation_jobs import FederationJobs

    audit = RecordingAudit()
    jobs = FederationJobs(data_dir, audit)
    try:
        job = jobs.submit(
            "analyst", parse_body(FederationJobRequest, {"kind": "horizontal", "rounds": 2})
        )
        jobs.wait(job["id"], timeout=200)
        body = jobs.get("analyst", job["id"])
    finally:
        jobs.close()
    assert body["status"] == "done", body.get("error")
    assert [r["round"] for r in body["rounds"]] == [1, 2]
    assert all(r["round_seconds"] <= r["elapsed_seconds"] for r in body["rounds"])
    assert [b["node"] for b in body["bureaus"]] == list(range(NODES))
    assert "departments" not in body
    assert abs(body["result"]["auc_federated"] - body["result"]["auc_centralized"]) < 0.01
    kinds = [(e["kind"], e["event"]) for e in audit.entries]
    assert kinds == [("federation_job", "started"), ("federation_job", "completed")]
    done = audit.entries[1]
    assert done["model_sm3"] == body["result"]["model_sm3"]
    assert len(str(done["model_sm3"])) == 64
    assert [b["node"] for b in done["bureaus"]] == list(range(NODES))
    assert audit.entries[0]["requester"] == "analyst"


def test_sigterm_stops_everything_without_orphans(up: _Up, data_dir: Path):
    pid = up.proc.pid
    tree = descendants(pid)
    assert len(tree) >= 1 + NODES  # SuperLink, SuperNodes (and their SuperExecs)
    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    alive = tree
    while alive and time.monotonic() < deadline:
        alive = [p for p in tree if _alive(p)]
        time.sleep(0.1)
    assert alive == [], "orphaned Flower processes"
    assert not (data_dir / "federation" / "deployment.json").exists()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
