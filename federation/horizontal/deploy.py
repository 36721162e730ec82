"""``tongban federation up``: a SuperLink and one SuperNode per bureau, on loopback.

The supervisor owns the whole tree. Each child dies with it (PR_SET_PDEATHSIG), and the
supervisor is a child subreaper (PR_SET_CHILD_SUBREAPER): Flower's SuperExec and the
per-message ``flwr-clientapp``/``flwr-serverapp`` processes are started detached, so when
their parent exits they would be re-parented to init; with the subreaper they come back to
the supervisor instead, which terminates every descendant on SIGTERM and reaps them.

Everything runs offline: telemetry is off, the SuperLink does not install app dependencies
(the app's code is this installed package), and ``FLWR_HOME`` is private to the deployment.
``deployment.json`` in the state directory tells ``tongban federation train`` where the
SuperLink is and which CA certificate verifies it.

Transport (docs/federation.md, "Transport"): every Flower connection is TLS with
certificates from the deployment's PKI (:mod:`tongban.pki`, ``DIR/pki``). The SuperLink
serves its Fleet, Control and Runtime APIs with the ``superlink`` certificate; each
SuperNode verifies it against the CA and serves its own Runtime API (what its SuperExec
and ClientApps reach) with ``supernode-<i>``. SuperNode authentication is on: each
SuperNode signs its requests with its own ECDSA key (``DIR/federation/node-auth``), the
supervisor registers the public keys through the Control API before the SuperNodes
start, and the SuperLink refuses any node whose key it does not know. No process of the
deployment runs with ``--insecure``. Inside that TLS every message is signed and sealed to
its recipient's SM2 key (sealing.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
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

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tongban import pki
from tongban.tls import TLSFiles

from .data import partition_rows

__all__ = [
    "SUPERLINK_NAME",
    "Deployment",
    "DeploymentError",
    "NodeInfo",
    "NodeKey",
    "Supervisor",
    "control_client",
    "descendants",
    "flower_env",
    "node_auth_dir",
    "node_key",
    "node_name",
    "read_deployment",
    "register_node",
    "state_dir",
    "superlink_argv",
    "supernode_argv",
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


#: The SuperLink's certificate name in the PKI.
SUPERLINK_NAME = "superlink"


def node_name(partition_id: int) -> str:
    """SuperNode ``partition_id``'s name: its certificate's and its auth key's."""
    return f"supernode-{partition_id}"


def node_auth_dir(data_dir: Path) -> Path:
    """Where the SuperNodes' authentication keys live: ``DIR/federation/node-auth``."""
    return state_dir(data_dir) / "node-auth"


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair: the private key (OpenSSH format, mode
    0600, what ``flower-supernode --auth-supernode-private-key`` reads), the public key
    beside it (OpenSSH, what ``flwr supernode register`` reads) and the public key as the
    Control API's ``RegisterNode`` takes it (PEM SubjectPublicKeyInfo)."""

    private: Path
    public: Path
    public_pem: bytes


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    tmp.replace(path)


def node_key(directory: Path, name: str) -> NodeKey:
    """SuperNode ``name``'s ECDSA P-384 key pair in ``directory``, made if missing (a key
    that does not load is replaced). Flower's SuperNode authentication takes any NIST
    curve; P-384 is the one Flower's documentation uses."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    key: ec.EllipticCurvePrivateKey | None = None
    if private.exists():
        with contextlib.suppress(ValueError, TypeError):
            loaded = serialization.load_ssh_private_key(private.read_bytes(), password=None)
            if isinstance(loaded, ec.EllipticCurvePrivateKey):
                key = loaded
    if key is None:
        key = ec.generate_private_key(ec.SECP384R1())
        raw = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        _write_private(private, raw, 0o600)
    pub = key.public_key()
    ssh = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if not public.exists() or public.read_bytes().split()[:2] != ssh.split()[:2]:
        _write_private(public, ssh + f" tongban-{name}\n".encode(), 0o644)
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return NodeKey(private, public, pem)


def superlink_argv(port: int, tls: TLSFiles) -> list[str]:
    """``flower-superlink`` on loopback ``port``: TLS with ``tls`` (the CA is handed on
    to its SuperExec, which verifies the Runtime API with it) and SuperNode
    authentication."""
    return [
        "flower-superlink",
        "--ssl-ca-certfile", str(tls.ca),
        "--ssl-certfile", str(tls.cert),
        "--ssl-keyfile", str(tls.key),
        "--enable-supernode-auth",
        "--host", HOST,
        "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip


def supernode_argv(
    superlink: str,
    port: int,
    tls: TLSFiles,
    auth_key: Path,
    node_config: str | None = None,
    *,
    root_certificates: Path | None = None,
    max_retries: int | None = None,
) -> list[str]:
    """``flower-supernode`` reaching ``superlink`` over TLS (verified against
    ``root_certificates``, by default the CA of ``tls``), signing with ``auth_key``, and
    serving its own Runtime API on loopback ``port`` with ``tls``."""
    argv = [
        "flower-supernode",
        "--superlink", superlink,
        "--root-certificates", str(root_certificates or tls.ca),
        "--auth-supernode-private-key", str(auth_key),
        "--host", HOST,
        "--port", str(port),
        "--ssl-certfile", str(tls.cert),
        "--ssl-keyfile", str(tls.key),
        "--ssl-ca-certfile", str(tls.ca),
    ]  # fmt: skip
    if node_config is not None:
        argv += ["--node-config", node_config]
    if max_retries is not None:
        argv += ["--max-retries", str(max_retries)]
    return argv


def control_client(superlink: str, ca: Path) -> Any:
    """A client of the SuperLink's Control API (what ``flwr run`` and ``flwr supernode
    register`` use) over TLS, verifying the SuperLink's certificate against ``ca`` and
    its address (the certificate names 127.0.0.1)."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    conn = SuperLinkConnection(name="tongban", address=superlink, root_certificates=str(ca))
    with contextlib.redirect_stdout(io.StringIO()):  # "Using SuperLink: …" is for flwr's CLI
        return init_http_client_from_connection(conn)


def register_node(client: Any, key: NodeKey, name: str) -> int:
    """Register a SuperNode's public key with the SuperLink (``flwr supernode register``);
    the node id the SuperLink assigned."""
    import httpx
    from flwr.proto.control_pb2 import RegisterNodeRequest
    from flwr.supercore.error import FlowerError

    try:
        res = client.RegisterNode(RegisterNodeRequest(public_key=key.public_pem, name=name))
    except httpx.HTTPStatusError as exc:
        error = FlowerError.from_json(exc.response.text)
        reason = error.message if error is not None else str(exc)
        raise DeploymentError(f"the SuperLink refused to register {name}: {reason}") from exc
    if not res.node_id:
        raise DeploymentError(f"the SuperLink did not register {name}")
    return int(res.node_id)


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
    #: The CA certificate that verifies the SuperLink (``DIR/pki/ca.pem``).
    ca: str = ""
    #: The SM2 keys of the message envelope (sealing.py): ``DIR/federation/envelope``.
    envelope: str = ""

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
        from . import sealing

        started = time.perf_counter()
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        home = self.state / "flwr-home"
        home.mkdir(exist_ok=True)
        env = flower_env(home)
        certs = pki.pki_dir(self.data_dir)
        names = [node_name(i) for i in range(self.num_partitions)]
        pki.ensure(certs, [SUPERLINK_NAME, *names])
        keys = [node_key(node_auth_dir(self.data_dir), name) for name in names]
        seal_dir = sealing.envelope_dir(self.data_dir)
        seal_keys = sealing.ensure_keys(seal_dir, names)
        link_tls = pki.files(certs, SUPERLINK_NAME)
        port = _free_port()
        superlink = f"{HOST}:{port}"
        link = self._spawn("superlink", superlink_argv(port, link_tls), env)
        self._wait_port(port, "superlink")
        node_ids = self._register(superlink, link_tls.ca, keys, names)
        peers = sealing.write_peers(
            seal_dir,
            seal_keys["server"],
            {node_id: seal_keys[name] for node_id, name in zip(node_ids, names, strict=True)},
        )
        dep = Deployment(
            superlink=superlink,
            data_dir=str(self.data_dir),
            num_partitions=self.num_partitions,
            supervisor_pid=os.getpid(),
            flwr_home=str(home),
            superlink_pid=link.pid,
            ca=str(link_tls.ca),
            envelope=str(seal_dir),
        )
        for pid in range(self.num_partitions):
            node_port = _free_port()
            node_config = (
                f'data-dir="{self.data_dir}" partition-id={pid} '
                f"num-partitions={self.num_partitions} "
                f'envelope-key="{sealing.node_key_path(seal_dir, names[pid])}" '
                f'envelope-peers="{peers}"'
            )
            argv = supernode_argv(
                superlink, node_port, pki.files(certs, names[pid]), keys[pid].private, node_config
            )
            proc = self._spawn(names[pid], argv, env)
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
            f"SuperLink {superlink} (TLS, SuperNode authentication, sealed messages), "
            f"{self.num_partitions} SuperNodes up in {dep.startup_seconds:.1f}s"
        )
        return dep

    def _register(
        self, superlink: str, ca: Path, keys: list[NodeKey], names: list[str]
    ) -> list[int]:
        """Register every SuperNode's public key (the SuperLink's state is in memory, so
        at each start); the node ids the SuperLink assigned, in order. The Control API may
        answer a moment after the port opens: a connection error is tried again; a refusal
        (a TLS failure, a key in use) is not."""
        import httpx

        client = control_client(superlink, ca)
        ids: list[int] = []
        try:
            for key, name in zip(keys, names, strict=True):
                deadline = time.monotonic() + _STARTUP_TIMEOUT
                while True:
                    self._check_alive()
                    try:
                        ids.append(register_node(client, key, name))
                        break
                    except httpx.ConnectError as exc:
                        if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                            raise DeploymentError(f"the SuperLink's certificate: {exc}") from exc
                        if time.monotonic() > deadline:
                            raise DeploymentError(f"could not register {name}: {exc}") from exc
                        time.sleep(0.1)
                    except httpx.TransportError as exc:
                        raise DeploymentError(f"could not register {name}: {exc}") from exc
        finally:
            client.close()
        return ids

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
