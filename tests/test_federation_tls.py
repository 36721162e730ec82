"""Flower's transport: a real SuperLink with TLS from the deployment's PKI and SuperNode
authentication on (``deploy.superlink_argv``), and SuperNodes started the way ``tongban
federation up`` starts them (``deploy.supernode_argv``).

A registered SuperNode with the CA joins; one that trusts another CA, one that trusts no
CA (plain HTTP to the TLS port), and one whose key was never registered do not. The
Control API refuses a client that does not verify with the CA, and the SuperLink's key
pair must be the PKI's."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tongban import pki
from tongban.federation.horizontal.deploy import (
    HOST,
    SUPERLINK_NAME,
    DeploymentError,
    control_client,
    descendants,
    flower_env,
    node_key,
    node_name,
    register_node,
    superlink_argv,
    supernode_argv,
)

pytest.importorskip("flwr")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

_JOIN_TIMEOUT = 60.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class _Procs:
    """Flower processes this test started, stopped with their descendants."""

    def __init__(self, root: Path) -> None:
        self.root = root
        home = root / "flwr-home"
        home.mkdir(exist_ok=True)
        self.env = flower_env(home)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name}.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in self.procs:
            tree = descendants(proc.pid)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in tree:  # SuperExecs are started detached
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)


class _Link:
    def __init__(self, procs: _Procs, certs: Path) -> None:
        self.procs = procs
        self.certs = certs
        self.tls = pki.files(certs, SUPERLINK_NAME)
        port = _free_port()
        self.address = f"{HOST}:{port}"
        self.proc, self.log = procs.start("superlink", superlink_argv(port, self.tls))
        deadline = time.monotonic() + _JOIN_TIMEOUT
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                client = control_client(self.address, self.tls.ca)
                try:
                    client.ListRuns(_list_runs())
                finally:
                    client.close()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def activations(self) -> int:
        return self.log.read_text(errors="replace").count("Activated node_id")


def _list_runs() -> object:
    from flwr.proto.control_pb2 import ListRunsRequest

    return ListRunsRequest()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[_Link, _Procs, Path]]:
    root = tmp_path_factory.mktemp("flower-tls")
    certs = pki.pki_dir(root)
    pki.ensure(certs, [SUPERLINK_NAME, node_name(0), node_name(1), node_name(2)])
    other = root / "other-pki"
    pki.ensure(other, [SUPERLINK_NAME])
    procs = _Procs(root)
    try:
        link = _Link(procs, certs)
        yield link, procs, root
    finally:
        procs.stop()


def _supernode(
    link: _Link, procs: _Procs, root: Path, index: int, *, root_certificates: Path | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    name = node_name(index)
    key = node_key(root / "node-auth", name)
    argv = supernode_argv(
        link.address,
        _free_port(),
        pki.files(link.certs, name),
        key.private,
        root_certificates=root_certificates,
        max_retries=2,
    )
    return procs.start(f"{name}-{int(time.monotonic() * 1000)}", argv)


def _exits(proc: subprocess.Popen[bytes], log: Path) -> str:
    try:
        code = proc.wait(timeout=_JOIN_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the SuperNode was not refused:\n{log.read_text()}")
    assert code != 0
    return log.read_text(errors="replace")


def _register(link: _Link, root: Path, index: int) -> None:
    """Register SuperNode ``index``'s key with the SuperLink, as the supervisor does."""
    client = control_client(link.address, link.tls.ca)
    try:
        register_node(client, node_key(root / "node-auth", node_name(index)), node_name(index))
    finally:
        client.close()


def test_registered_node_with_the_ca_joins(world: tuple[_Link, _Procs, Path]) -> None:
    link, procs, root = world
    _register(link, root, 0)
    before = link.activations()
    proc, log = _supernode(link, procs, root, 0)
    deadline = time.monotonic() + _JOIN_TIMEOUT
    while link.activations() == before:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the registered SuperNode did not join"
        time.sleep(0.2)
    # Its SuperExec reaches the SuperNode's Runtime API over TLS as well.
    cmdlines = [_cmdline(pid) for pid in [proc.pid, *descendants(proc.pid)]]
    assert any("flower-superexec" in " ".join(c) for c in cmdlines)
    for argv in cmdlines:
        assert "--insecure" not in argv
    superexecs = [c for c in cmdlines if any("flower-superexec" in a for a in c)]
    assert all("--root-certificates" in c for c in superexecs)


def test_node_trusting_another_ca_cannot_connect(world: tuple[_Link, _Procs, Path]) -> None:
    link, procs, root = world
    _register(link, root, 1)
    before = link.activations()
    proc, log = _supernode(link, procs, root, 1, root_certificates=root / "other-pki" / "ca.pem")
    text = _exits(proc, log)
    assert "CERTIFICATE_VERIFY_FAILED" in text
    assert link.activations() == before


def test_plain_http_to_the_tls_port_is_refused(world: tuple[_Link, _Procs, Path]) -> None:
    """A SuperNode that does not speak TLS (Flower's ``--insecure``, the one place it
    appears: this refusal) gets no answer from the SuperLink."""
    link, procs, _root = world
    before = link.activations()
    argv = [
        "flower-supernode", "--insecure", "--superlink", link.address,
        "--host", HOST, "--port", str(_free_port()), "--max-retries", "2",
    ]  # fmt: skip
    proc, log = procs.start("supernode-plain", argv)
    _exits(proc, log)
    assert link.activations() == before


def test_unregistered_key_is_refused(world: tuple[_Link, _Procs, Path]) -> None:
    link, procs, root = world
    before = link.activations()
    proc, log = _supernode(link, procs, root, 2)  # supernode-2's key was never registered
    text = _exits(proc, log)
    assert "Failed to initialize the connection to the SuperLink" in text
    assert "Failed to activate SuperNode" in text
    # The SuperLink logs why: it knows no SuperNode with that key.
    assert "No SuperNode found with the given public key" in link.log.read_text(errors="replace")
    assert link.activations() == before


def test_control_api_needs_the_ca(world: tuple[_Link, _Procs, Path]) -> None:
    import httpx

    link, _procs, root = world
    client = control_client(link.address, root / "other-pki" / "ca.pem")
    try:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            client.ListRuns(_list_runs())
    finally:
        client.close()


def test_superlink_runs_with_the_pki_and_node_auth(world: tuple[_Link, _Procs, Path]) -> None:
    link, _procs, _root = world
    argv = _cmdline(link.proc.pid)
    assert "--insecure" not in argv
    assert "--enable-supernode-auth" in argv
    assert argv[argv.index("--ssl-certfile") + 1] == str(link.tls.cert)
    assert argv[argv.index("--ssl-keyfile") + 1] == str(link.tls.key)
    assert argv[argv.index("--ssl-ca-certfile") + 1] == str(link.tls.ca)
    for pid in descendants(link.proc.pid):  # its SuperExec
        assert "--insecure" not in _cmdline(pid)


def test_node_key_is_private_and_stable(tmp_path: Path) -> None:
    first = node_key(tmp_path / "node-auth", "supernode-0")
    assert (first.private.stat().st_mode & 0o777) == 0o600
    assert (first.private.parent.stat().st_mode & 0o777) == 0o700
    assert first.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert node_key(tmp_path / "node-auth", "supernode-0") == first
    first.private.write_text("not a key")
    assert node_key(tmp_path / "node-auth", "supernode-0").public_pem != first.public_pem


def test_a_key_is_registered_once(world: tuple[_Link, _Procs, Path]) -> None:
    link, _procs, root = world
    key = node_key(root / "node-auth", "supernode-9")
    client = control_client(link.address, link.tls.ca)
    try:
        register_node(client, key, "supernode-9")
        with pytest.raises(
            DeploymentError, match="refused to register supernode-9: Public key already in use"
        ):
            register_node(client, key, "supernode-9")
    finally:
        client.close()


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
