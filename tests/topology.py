"""The production topology on loopback, for the topology and fault tests and the soak bench.

One gunicorn gateway (several gthread workers) whose gateway store, audit log and replay
cache live in one PostgreSQL database, reached through :class:`PgProxy` — a TCP proxy the
test owns, so it can take PostgreSQL away from the gateway and give it back without
touching the shared server. Each department adapter is its own gunicorn process over its
own SQLite store. Every process is started with a parent-death signal, so a crashed test
run leaves no orphans, and in a session of its own, so ``kill -9`` reaches a gunicorn
master and all its workers at once.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tongban.access_log import gunicorn_access_args
from tongban.adapters.builtin import builtin_names
from tongban.gateway.answers import ANSWER_TYP
from tongban.primitives.jws import PublicKey, key_from_jwk, verify_compact

__all__ = [
    "CLIENTS",
    "DEPARTMENTS",
    "PG_URL",
    "Load",
    "Outcome",
    "PgProxy",
    "Topology",
    "answer_claims",
    "answer_keys",
    "assert_every_answer_audited",
    "connections_held",
    "free_port",
]

PG_URL = os.environ.get("TONGBAN_TEST_PG_URL", "postgresql+psycopg://127.0.0.1:5432/test")
DEPARTMENTS = builtin_names()
# The demo requesters the tests and the bench use, with their scopes.
CLIENTS: dict[str, tuple[str, ...]] = {
    "edu-bureau": ("checks", "checks:batch"),
    "allowance-office": ("checks", "checks:batch"),
    "privacy-officer": ("audit:read",),
    "admin-1": ("admin",),
    "admin-2": ("admin",),
}
ROOT = Path(__file__).resolve().parent.parent
STARTUP = 60.0
# exec the real program with PR_SET_PDEATHSIG (kept across execve): it gets SIGTERM when
# the thread that started it dies, however that happens.
_SHIM = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answer_claims(jws: str) -> dict[str, Any]:
    """The payload of a signed answer (the signature is checked elsewhere)."""
    part = jws.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


# --- a PostgreSQL the test can take away -----------------------------------------------


class PgProxy:
    """A loopback TCP proxy to PostgreSQL. :meth:`cut` drops every open connection and
    closes each new one at once (the client sees the server go away); :meth:`restore`
    lets connections through again. The listening port never changes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="pg-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._cut.is_set():
                _drop(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _drop(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _drop(src)
            _drop(dst)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            victims = list(self._open)
            self._open.clear()
        for sock in victims:
            _drop(sock)

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


def _drop(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# --- the processes ---------------------------------------------------------------------


@dataclass
class _Proc:
    popen: subprocess.Popen[bytes]
    log: Path


@dataclass
class Topology:
    """Build with :meth:`setup`, start with :meth:`start`, always :meth:`teardown`."""

    root: Path
    population: int = 1000
    seed: int = 5
    workers: int = 2
    threads: int = 16
    adapter_threads: int = 8
    adapter_timeout: float = 1.0
    checkpoint_interval: float = 1.0
    audit_url: str | None = None  # default: the gateway's PostgreSQL database
    via_proxy: bool = True  # the gateway reaches PostgreSQL through PgProxy (fault tests)
    gateway_port: int = field(default_factory=free_port)
    adapter_ports: dict[str, int] = field(
        default_factory=lambda: {d: free_port() for d in DEPARTMENTS}
    )
    procs: dict[str, _Proc] = field(default_factory=dict)
    client_secrets: dict[str, str] = field(default_factory=dict)
    proxy: PgProxy | None = None
    db_name: str = field(default_factory=lambda: f"tongban_topo_{secrets.token_hex(4)}")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def adapter_url(self, department: str) -> str:
        return f"http://127.0.0.1:{self.adapter_ports[department]}"

    @property
    def pg_direct(self) -> str:
        """The gateway database, straight to the server (for the test's own reads)."""
        url = make_url(PG_URL).set(database=self.db_name)
        return url.render_as_string(hide_password=False)

    @property
    def pg_gateway(self) -> str:
        """The gateway database as the gateway reaches it: through the proxy."""
        if not self.via_proxy:
            return self.pg_direct
        assert self.proxy is not None
        url = make_url(PG_URL).set(host="127.0.0.1", port=self.proxy.port, database=self.db_name)
        return url.render_as_string(hide_password=False)

    @property
    def audit_store(self) -> str:
        return self.audit_url or self.pg_direct

    # --- set-up ------------------------------------------------------------------------

    def setup(self) -> Topology:
        from tongban.adapters.synthetic.generate import generate
        from tongban.config import Settings
        from tongban.keys import KeyRing
        from tongban.provision import migrate
        from tongban.wiring import build_registry

        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.db_name}"'))
        finally:
            admin.dispose()
        if self.via_proxy:
            pg = make_url(PG_URL)
            self.proxy = PgProxy((pg.host or "127.0.0.1", pg.port or 5432))
        generate(self.data, self.population, self.seed, truth=self.data / "truth.jsonl", workers=1)
        keys = KeyRing(self.data / "keys")
        for party in ("gateway", "idp", "gateway-answers", "gateway-tokens", *DEPARTMENTS):
            keys.ensure(party)
        settings = Settings(
            data_dir=self.data, gateway_db_url=self.pg_direct, audit_url=self.audit_store
        )
        migrate(settings)  # the deployment's `tongban db upgrade`
        registry = build_registry(settings)
        for client_id, scopes in CLIENTS.items():
            self.client_secrets[client_id] = str(
                registry.register_client(client_id, client_id, scopes=scopes).secret
            )
        registry.engine.dispose()
        # `tongban audit verify --data-dir` names the log after the gateway in demo.json.
        (self.data / "demo.json").write_text(
            json.dumps({"gateway": self.gateway_url, "clients": {}}), encoding="utf-8"
        )
        (self.root / "logs").mkdir(exist_ok=True)
        return self

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
        env.update(
            TONGBAN_DATA_DIR=str(self.data),
            TONGBAN_PUBLIC_URL=self.gateway_url,
            TONGBAN_ADAPTER_TIMEOUT=str(self.adapter_timeout),
            TONGBAN_CHECKPOINT_INTERVAL=str(self.checkpoint_interval),
            TONGBAN_POLICY_POLL_INTERVAL="0.5",
            TONGBAN_GATEWAY_DB_URL=self.pg_gateway,
            TONGBAN_AUDIT_URL=self.audit_url or self.pg_gateway,
            PYTHONPATH=str(ROOT),
        )
        for d in DEPARTMENTS:
            env[f"TONGBAN_ADAPTER_URL_{d.upper()}"] = self.adapter_url(d)
        return env

    # --- processes ---------------------------------------------------------------------

    def gunicorn_argv(self, name: str) -> list[str]:
        """The gunicorn command line of one service, as documented for production."""
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        # The masked access log, as documented: the log scan reads these lines too.
        common = ["--log-level", "warning", "--graceful-timeout", "5", *gunicorn_access_args()]
        if name == "gateway":  # the production worker: gthread plus a read deadline
            return [gunicorn, *common, "-k", "tongban.gunicorn_worker.DeadlineThreadWorker",
                    "-b", f"127.0.0.1:{self.gateway_port}",
                    "-w", str(self.workers), "--threads", str(self.threads), "--timeout", "60",
                    "tongban.wsgi:gateway()"]  # fmt: skip
        return [gunicorn, *common, "-k", "gthread", "-b", f"127.0.0.1:{self.adapter_ports[name]}",
                "-w", "1", "--threads", str(self.adapter_threads),
                f'tongban.wsgi:adapter("{name}")']  # fmt: skip

    def spawn(self, name: str) -> None:
        log = self.root / "logs" / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [sys.executable, "-c", _SHIM, *self.gunicorn_argv(name)],
                env=self.env(),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = _Proc(popen, log)

    def wait_healthy(self, name: str, timeout: float = STARTUP) -> None:
        url = self.gateway_url if name == "gateway" else self.adapter_url(name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.procs[name].popen.poll()
            if code is not None:
                raise RuntimeError(f"{name} exited with {code}:\n{self.log_tail(name)}")
            with suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2, trust_env=False).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become healthy:\n{self.log_tail(name)}")

    def start(self) -> Topology:
        for d in DEPARTMENTS:
            self.spawn(d)
        for d in DEPARTMENTS:
            self.wait_healthy(d)
        self.start_gateway()
        return self

    def start_gateway(self) -> None:
        before = self.starts()
        self.spawn("gateway")
        self.wait_healthy("gateway")
        # Healthy means one worker answers; wait until every worker has opened the log.
        deadline = time.monotonic() + STARTUP
        while self.starts() < before + self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway workers did not start:\n{self.log_tail('gateway')}")
            time.sleep(0.1)

    def starts(self) -> int:
        """How many gateway workers have ever started on this log (their lifecycle entry)."""
        engine = create_engine(self.audit_store)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        text("SELECT count(*) FROM audit_entries WHERE kind = 'lifecycle'")
                    ).scalar_one()
                )
        except SQLAlchemyError:  # no table before the first start
            return 0
        finally:
            engine.dispose()

    def restart(self, name: str) -> None:
        if name == "gateway":
            self.start_gateway()
            return
        self.spawn(name)
        self.wait_healthy(name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Signal a service's whole process group (gunicorn master and workers)."""
        proc = self.procs[name].popen
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=15)
            if name == "gateway":  # orphaned workers notice their master is gone
                deadline = time.monotonic() + 10
                while _in_group(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.05)

    def worker_pids(self, name: str = "gateway") -> list[int]:
        master = self.procs[name].popen.pid
        return [pid for pid, ppid in _processes() if ppid == master]

    def log_tail(self, name: str, chars: int = 4000) -> str:
        return self.procs[name].log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def teardown(self) -> None:
        running = [p.popen for p in self.procs.values() if p.popen.poll() is None]
        for popen in running:  # all at once: each takes a moment to stop gracefully
            with suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
        for popen in running:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
        if self.proxy is not None:
            self.proxy.close()
        admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)'))
        finally:
            admin.dispose()

    # --- clients and evidence ----------------------------------------------------------

    def token(self, client_id: str) -> str:
        resp = httpx.post(
            self.gateway_url + "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client_id, self.client_secrets[client_id]),
            trust_env=False,
            timeout=10,
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])

    def subjects(self, limit: int = 500, determined: Sequence[str] = ()) -> list[str]:
        """ID numbers from the generator's truth file; with ``determined``, only people
        for whom each of those claims has a definite answer (no quarantined record)."""
        out = []
        with (self.data / "truth.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if "id_number" not in row:
                    continue
                if any(row["claims"].get(c) is None for c in determined):
                    continue
                out.append(str(row["id_number"]))
                if len(out) >= limit:
                    break
        return out

    def audit_entries(self) -> list[tuple[int, dict[str, Any]]]:
        """Every stored entry, in index order, read straight from the store."""
        engine = create_engine(self.audit_store)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT idx, entry FROM audit_entries ORDER BY idx"))
                return [(int(i), json.loads(e)) for i, e in rows]
        finally:
            engine.dispose()

    def checkpoints(self) -> list[str]:
        engine = create_engine(self.audit_store)
        try:
            with engine.connect() as conn:
                rows = conn.execute(text("SELECT note FROM audit_checkpoints ORDER BY size"))
                return [str(n) for (n,) in rows]
        finally:
            engine.dispose()

    def verify(self) -> dict[str, Any]:
        """``tongban audit verify`` on the gateway's store, as an operator would run it."""
        env = self.env()
        env["TONGBAN_AUDIT_URL"] = self.audit_store
        out = subprocess.run(
            [sys.executable, "-m", "tongban", "audit", "verify", "--data-dir", str(self.data)],
            env=env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        report: dict[str, Any] = json.loads(out.stdout)
        report["exit_code"] = out.returncode
        return report


def _processes() -> Iterator[tuple[int, int]]:
    """(pid, parent pid) of every live process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            yield int(entry.name), int(fields[1])


def connections_held(pid: int, port: int) -> int:
    """How many established TCP connections to local ``port`` process ``pid`` holds:
    which gunicorn worker is serving clients."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError), open(table, encoding="ascii") as fh:
            for line in list(fh)[1:]:
                cols = line.split()
                if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "01":
                    inodes.add(cols[9])
    held = 0
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    held += 1
    return held


def _in_group(pgid: int) -> bool:
    for pid, _ in _processes():
        with suppress(OSError):
            if os.getpgid(pid) == pgid:
                return True
    return False


def answer_keys(topo: Topology) -> dict[str, PublicKey]:
    doc = httpx.get(topo.gateway_url + "/.well-known/jwks.json", trust_env=False).json()
    return {k["kid"]: key_from_jwk(k) for k in doc["keys"]}


def assert_every_answer_audited(
    topo: Topology, outcomes: Sequence[Outcome], requester: str
) -> dict[str, Any]:
    """Every 200 the clients got is a verifiable answer whose index holds the matching
    entry; the log's indexes run 0..n-1 without a gap or a repeat; the log verifies."""
    entries = topo.audit_entries()
    indexes = [i for i, _ in entries]
    assert indexes == list(range(len(entries))), "audit indexes are not contiguous"
    assert all(e["index"] == i for i, e in entries)
    by_index = dict(entries)
    keys = answer_keys(topo)
    answered = [o for o in outcomes if o.status == 200]
    seen: set[int] = set()
    for o in answered:
        assert o.body is not None
        index = o.body["audit_index"]
        assert index not in seen, f"two answers carry audit index {index}"
        seen.add(index)
        _, claims = verify_compact(o.body["answer"], keys.get, typ=ANSWER_TYP, algorithms=("SM2",))
        assert claims["audit_index"] == index
        assert claims["result"] == o.body["result"]
        entry = by_index.get(index)
        assert entry is not None, f"answer with audit index {index} has no entry"
        assert entry["kind"] == "check"
        assert entry["requester"] == requester
        assert entry["claim"] == o.claim == claims["claim"]
        assert entry["result"] == o.body["result"]
    # The gateway may append (a worker starting) while we look: the verifier checks the
    # log as it finds it, which holds every entry read above and every answered index.
    report = topo.verify()
    assert report["ok"], report
    assert report["exit_code"] == 0
    assert len(entries) <= report["entries"]
    return report


# --- load ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One request as the client saw it: status (None: no HTTP answer), body, timing."""

    claim: str
    status: int | None
    body: dict[str, Any] | None
    content_type: str
    started: float
    seconds: float


class Load:
    """Threads sending ``POST /v1/checks`` in a loop until stopped, each with its own
    keep-alive connection; every outcome is kept."""

    def __init__(
        self,
        url: str,
        token: str,
        requests: Sequence[Mapping[str, Any]],
        *,
        threads: int = 4,
        timeout: float = 15.0,
        keepalive: bool = True,
    ) -> None:
        self.url = url
        # Without keep-alive each request is a new connection, which gunicorn's workers
        # take in turn; with it, one worker may hold every connection of a small client.
        self.limits = httpx.Limits(max_keepalive_connections=None if keepalive else 0)
        self.token = token
        self.requests = list(requests)
        self.timeout = timeout
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def _run(self, offset: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        i = offset
        with httpx.Client(
            trust_env=False, timeout=self.timeout, headers=headers, limits=self.limits
        ) as http:
            while not self._stop.is_set():
                body = self.requests[i % len(self.requests)]
                i += len(self._threads)
                started = time.monotonic()
                try:
                    resp = http.post(self.url + "/v1/checks", json=dict(body))
                except httpx.HTTPError:
                    self._add(Outcome(str(body["claim"]), None, None, "", started,
                                      time.monotonic() - started))  # fmt: skip
                    time.sleep(0.02)  # the gateway is down: do not spin
                    continue
                try:
                    doc = resp.json()
                except ValueError:
                    doc = None
                self._add(Outcome(str(body["claim"]), resp.status_code, doc,
                                  resp.headers.get("content-type", ""), started,
                                  time.monotonic() - started))  # fmt: skip

    def _add(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until ``count`` outcomes have been seen in all."""
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < count and time.monotonic() < deadline:
            time.sleep(0.02)


@contextmanager
def running(topology: Topology) -> Iterator[Topology]:
    """Set up and start a topology; tear it down whatever happens."""
    try:
        topology.setup().start()
        yield topology
    finally:
        topology.teardown()
