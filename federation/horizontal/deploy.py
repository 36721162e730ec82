"""``tongban federation up``: a SuperLink and one SuperNode per bureau, on loopback.

The supervisor owns the whole tree. Each child dies with it (PR_SET_PDEATHSIG), and the
supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER): Flower's SuperExec and the
per-message ``flwr-clientapp``/``flwr-serverapp`` processes are started detached, so when
their parent exits they would be re-parented to init; with the subreaper they come back to
the supervisor instead, which terminates every descendant on SIGTERM and reaps them.

Everything runs offline: telemetry is off, the SuperLink does not install app dependencies
(the app's code is this installed package), and ``FLWR_HOME`` is private to the deployment.
``deployment.json`` in the state directory tells ``tongban federation train`` where the
SuperLink is.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .data import partition_rows

__all__ = [
    "Deployment",
    "DeploymentError",
    "Supervisor",
    "descendants",
    "flower_env",
    "read_deployment",
    "state_dir",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_STARTUP_TIMEOUT = 90.0
HOST = "127.0.0.1"


class DeploymentError(RuntimeError):
    """The SuperLink or a SuperNode did not start, or no deployment is running."""


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(option, arg)


def _die_with_parent() -> None:
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def state_dir(data_dir: Path) -> Path:
    return data_dir / "federation"


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower process: offline, quiet, private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLWR_", "TONGBAN_"))}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_HOME"] = str(home)
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = "0.1"
    env["NO_PROXY"] = env["no_proxy"] = HOST
    return env


@dataclass
class NodeInfo:
    partition_id: int
    districts: list[str]
    rows: int
    port: int
    pid: int = 0


@dataclass
class Deployment:
    """What ``federation up`` publishes in ``deployment.json``."""

    superlink: str
    data_dir: str
    num_partitions: int
    supervisor_pid: int
    flwr_home: str
    nodes: list[NodeInfo] = field(default_factory=list)
    superlink_pid: int = 0
    startup_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Deployment:
        nodes = [NodeInfo(**n) for n in raw.pop("nodes", [])]
        return cls(**raw, nodes=nodes)


def read_deployment(data_dir: Path) -> Deployment | None:
    """The running deployment for ``data_dir``, or ``None`` (no file, or its supervisor is
    gone)."""
    path = state_dir(data_dir) / "deployment.json"
    if not path.exists():
        return None
    dep = Deployment.from_json(json.loads(path.read_text(encoding="utf-8")))
    try:
        os.kill(dep.supervisor_pid, 0)
    except ProcessLookupError:
        return None
    return dep


def _children_of() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    """Live (non-zombie) descendants of ``pid``, from /proc."""
    tree = _children_of()
    out: list[int] = []
    stack = list(tree.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(tree.get(p, []))
    return out


class Supervisor:
    """Starts and stops one deployment. Use as a context manager or call start/stop."""

    def __init__(
        self,
        data_dir: Path,
        num_partitions: int,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from ..features import load_training_table

        self.data_dir = data_dir.resolve()
        self.num_partitions = num_partitions
        self.state = state_dir(self.data_dir)
        self.log = log or (lambda _msg: None)
        table = load_training_table(self.data_dir)
        self.parts = partition_rows(table, num_partitions)
        self.districts = [sorted(set(table.district[rows].tolist())) for rows in self.parts]
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []
        self.stop_event = threading.Event()
        self.deployment: Deployment | None = None

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.state / "logs" / f"{name}.log").open("ab")
        self._logs.append(log)
        # No threads run while spawning, so preexec_fn is safe here.
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )
        self.children[name] = proc
        return proc

    def start(self) -> Deployment:
        started = time.perf_counter()
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        home = self.state / "flwr-home"
        home.mkdir(exist_ok=True)
        env = flower_env(home)
        port = _free_port()
        superlink = f"{HOST}:{port}"
        link = self._spawn(
            "superlink",
            [
                "flower-superlink",
                "--insecure",
                "--host", HOST,
                "--port", str(port),
                "--disable-runtime-dependency-installation",
            ],
            env,
        )  # fmt: skip
        self._wait_port(port, "superlink")
        dep = Deployment(
            superlink=superlink,
            data_dir=str(self.data_dir),
            num_partitions=self.num_partitions,
            supervisor_pid=os.getpid(),
            flwr_home=str(home),
            superlink_pid=link.pid,
        )
        for pid in range(self.num_partitions):
            node_port = _free_port()
            node_config = (
                f'data-dir="{self.data_dir}" partition-id={pid} '
                f"num-partitions={self.num_partitions}"
            )
            proc = self._spawn(
                f"supernode-{pid}",
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink", superlink,
                    "--host", HOST,
                    "--port", str(node_port),
                    "--node-config", node_config,
                ],
                env,
            )  # fmt: skip
            dep.nodes.append(
                NodeInfo(pid, self.districts[pid], len(self.parts[pid]), node_port, proc.pid)
            )
        self._wait_nodes()
        dep.startup_seconds = round(time.perf_counter() - started, 3)
        tmp = self.state / "deployment.json.tmp"
        tmp.write_text(json.dumps(dep.to_json(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(self.state / "deployment.json")
        self.deployment = dep
        self.log(
            f"SuperLink {superlink}, {self.num_partitions} SuperNodes up "
            f"in {dep.startup_seconds:.1f}s"
        )
        return dep

    def _check_alive(self) -> None:
        for name, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                raise DeploymentError(f"{name} exited with code {code} during start-up")

    def _wait_port(self, port: int, name: str) -> None:
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline and not self.stop_event.is_set():
            self._check_alive()
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                if s.connect_ex((HOST, port)) == 0:
                    return
            time.sleep(0.1)
        raise DeploymentError(f"{name} did not open port {port}")

    def _wait_nodes(self) -> None:
        """Until the SuperLink has activated every SuperNode."""
        log = self.state / "logs" / "superlink.log"
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline and not self.stop_event.is_set():
            self._check_alive()
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            if text.count("Activated node_id") >= self.num_partitions:
                return
            time.sleep(0.1)
        raise DeploymentError("the SuperNodes did not register with the SuperLink")

    def watch(self) -> int:
        """Block until stopped (SIGTERM/SIGINT set ``stop_event``) or a child dies."""
        while not self.stop_event.wait(0.5):
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    self.log(f"{name} exited with code {code}; stopping")
                    return code or 1
        return 0

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate every descendant (children, SuperExecs, app processes) and reap them."""
        me = os.getpid()
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        own = {p.pid for p in self.children.values()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            stragglers = [p for p in descendants(me) if p not in own]
            for pid in stragglers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            end = time.monotonic() + 3.0
            while stragglers and time.monotonic() < end:
                self._reap()
                stragglers = [p for p in stragglers if p in descendants(me)]
                time.sleep(0.05)
        self._reap()
        for log in self._logs:
            log.close()
        (self.state / "deployment.json").unlink(missing_ok=True)

    @staticmethod
    def _reap() -> None:
        """Collect exit statuses of re-parented descendants (we are their subreaper)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def __enter__(self) -> Deployment:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
