"""``tongban demo``: synthetic data, one adapter process per department, and the gateway.

The supervisor owns its children: they die with it (PR_SET_PDEATHSIG, so even a
``kill -9`` of the demo leaves no orphans), a child that exits early stops the demo with
its exit code, and Ctrl-C or SIGTERM stops them all cleanly.

Keys and the demo requesters come from :func:`tongban.provision.init_data_dir` (what
``tongban keys init`` runs), so a restart keeps every key and every client secret. A
restart on another ``--port`` keeps the audit log's origin too: the log stores the one it
was created with, and the supervisor hands that one to the gateway and to every witness.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import httpx
from rich.console import Console

from .access_log import gunicorn_access_args
from .config import DEPARTMENTS, Settings
from .provision import DEMO_CLIENTS, init_data_dir, write_private_json
from .tls import TLSFiles, client_context

__all__ = [
    "DEMO_CLIENTS",
    "build_training_table",
    "demo_log_origin",
    "encrypt_at_rest",
    "gateway_argv",
    "needs_generation",
    "register_demo_clients",
    "run_demo",
]

_PR_SET_PDEATHSIG = 1
_STARTUP_TIMEOUT = 60.0


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port(host: str, preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def needs_generation(data_dir: Path, population: int, seed: int) -> bool:
    manifest = data_dir / "generation.json"
    if not manifest.exists() or not (data_dir / "truth.jsonl").exists():
        return True
    if not all((data_dir / "departments" / f"{d}.db").exists() for d in DEPARTMENTS):
        return True
    meta = json.loads(manifest.read_text())
    return bool(meta.get("population") != population or meta.get("seed") != seed)


class _Supervisor:
    def __init__(self, console: Console, tls: TLSFiles | None = None) -> None:
        self.console = console
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.stop = threading.Event()
        # The adapters accept only the gateway's client certificate: the supervisor, the
        # gateway's operator, probes them with it.
        self._tls = None if tls is None else client_context(tls.cert, tls.key, tls.ca)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        # The supervisor runs no threads while spawning, so preexec_fn is safe here.
        self.children[name] = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509

    def wait_healthy(self, name: str, url: str) -> None:
        """Until the child answers /healthz: 200, or (an adapter up over a source it
        cannot reach yet) 503 with ``"ready": false``, which is said and not waited for:
        that department answers ``undetermined`` until its database is back."""
        deadline = time.monotonic() + _STARTUP_TIMEOUT
        while time.monotonic() < deadline and not self.stop.is_set():
            code = self.children[name].poll()
            if code is not None:
                raise RuntimeError(f"{name} exited with code {code} during start-up")
            try:
                verify = self._tls if url.startswith("https://") and self._tls else True
                resp = httpx.get(url + "/healthz", timeout=1.0, trust_env=False, verify=verify)
                if resp.status_code == 200:
                    return
                body = resp.json() if resp.status_code == 503 else None
                if isinstance(body, dict) and body.get("ready") is False:
                    kind = (body.get("source") or {}).get("kind", "its")
                    self.console.print(
                        f"[yellow]{name}: up, but its {kind} source is not reachable yet: "
                        "its answers are undetermined until it is[/yellow]"
                    )
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not become healthy")

    def watch(self) -> int:
        while not self.stop.wait(0.5):
            for name, proc in self.children.items():
                code = proc.poll()
                if code is not None:
                    self.console.print(f"[red]{name} exited with code {code}; stopping[/red]")
                    return code or 1
        return 0

    def shutdown(self) -> None:
        for proc in self.children.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def build_training_table(data_dir: Path, console: Console) -> None:
    """Read the training table through the department files while the stores are plain
    (DIR/training/table.npz): sealed at rest, they hold blind-index tokens, from which no
    feature can be computed."""
    from tongban.federation.features import load_training_table

    table = load_training_table(data_dir)
    console.print(f"training table read through the department files: {table.rows:,} families")


def encrypt_at_rest(data_dir: Path, console: Console) -> None:
    """SM4-encrypt the sensitive columns of every department store (``tongban keys
    encrypt --all``): each department gets its own key-encryption key under DIR/keys."""
    from rich.progress import Progress

    from tongban.adapters.at_rest import create_kek, load_kek
    from tongban.adapters.departments import DEPARTMENTS as DECLARED
    from tongban.adapters.rekey import encrypt_store
    from tongban.adapters.store import DepartmentStore

    settings = Settings(data_dir=data_dir)
    with Progress(console=console, transient=True) as progress:
        for department in DEPARTMENTS:
            kek = load_kek(settings.keys_dir, department) or create_kek(
                settings.keys_dir, department
            )
            store = DepartmentStore(DECLARED[department], settings.store_url(department), kek=kek)
            try:
                encrypt_store(store, progress=progress)
            finally:
                store.dispose()
    console.print("department stores encrypted at rest (SM4-GCM, one KEK per department)")


def _department_files(paths: Sequence[Path]) -> dict[str, Path]:
    """The files that replace built-in departments, by name, checked before anything
    starts: each loads (its ``${VAR}`` set here, as its adapter will need them), names a
    built-in department, and the claims still find every predicate they use."""
    from tongban.adapters.deptfile import load_department_file

    from .wiring import department_files, load_catalog

    files = department_files([p.resolve() for p in paths])
    for dept in files.values():
        assert dept.path is not None
        load_department_file(dept.path)  # with the environment: an unset ${VAR} is refused
    load_catalog(files)
    return {name: dept.path for name, dept in files.items() if dept.path is not None}


def run_demo(
    data_dir: Path,
    port: int,
    population: int,
    seed: int,
    *,
    host: str = "127.0.0.1",
    department_files: Sequence[Path] = (),
    https: bool = False,
) -> int:
    """``department_files``: departments served from their files (docs/departments.md),
    each replacing the built-in department of its name. ``https``: the gateway's public
    side is HTTPS too, with the gateway's certificate of ``DIR/pki`` (it names 127.0.0.1
    and localhost); the adapters are on mutual TLS either way."""
    from .exposure import check_public_binding
    from .serve import check_can_listen

    console = Console(stderr=True)
    check_can_listen(host, port, "the demo's gateway")  # before minutes of generation
    check_public_binding(host, tls=https, insecure_http=False, name="the demo's gateway")
    files = _department_files(department_files)
    data_dir = data_dir.resolve()
    if needs_generation(data_dir, population, seed):
        from tongban.adapters.synthetic.generate import generate

        console.print(f"generating {population:,} citizens (seed {seed}) into {data_dir}")
        generate(data_dir, population, seed, truth=data_dir / "truth.jsonl", console=console)
        build_training_table(data_dir, console)
        encrypt_at_rest(data_dir, console)
    # The supervisor's children see no TONGBAN_* variable but these: neither does it.
    scheme = "https" if https else "http"
    settings = Settings(data_dir=data_dir, public_url=f"{scheme}://{host}:{port}")
    clients = init_data_dir(data_dir, settings).clients
    # The deployment PKI: the gateway and every adapter speak mutual TLS 1.3 (renewed
    # here when a certificate is within 30 days of its end).
    from . import pki

    pki.ensure(pki.pki_dir(data_dir), ["gateway", *DEPARTMENTS])
    gateway_tls = pki.files(pki.pki_dir(data_dir), "gateway")

    sup = _Supervisor(console, gateway_tls)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        sup.stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["TONGBAN_DATA_DIR"] = str(data_dir)
    gateway_url = settings.public_url
    env["TONGBAN_PUBLIC_URL"] = gateway_url
    # Adapters witness the gateway's log under the name it was created with, whatever
    # port this run uses.
    env["TONGBAN_LOG_ORIGIN"] = demo_log_origin(settings)
    cli = [sys.executable, "-m", "tongban"]
    adapters: dict[str, str] = {}
    code = 0
    try:
        adapters = _spawn_adapters(sup, [*cli, "adapter", "serve"], host, port, env, files)
        for dept, url in adapters.items():
            sup.wait_healthy(dept, url)
        gateway_env = _gateway_env(env, adapters, files)
        # The gateway runs as production runs it: gunicorn with the deadline worker, so a
        # slow client is cut off after TONGBAN_REQUEST_READ_TIMEOUT instead of holding a
        # thread (werkzeug's development server held one thread per slow connection).
        sup.spawn(
            "gateway",
            gateway_argv(host, port, gateway_tls if https else None, data_dir),
            gateway_env,
        )
        sup.wait_healthy("gateway", gateway_url)
        _write_demo_json(data_dir, gateway_url, adapters, clients, files, ca=gateway_tls.ca)
        if not sup.stop.is_set():
            console.print(
                f"[green]tongban demo is up[/green]: gateway {gateway_url} "
                f"(health: {gateway_url}/healthz), adapters {', '.join(adapters.values())}\n"
                f"details in {data_dir / 'demo.json'}; Ctrl-C stops everything"
            )
            code = sup.watch()
    except RuntimeError as exc:
        console.print(f"[red]demo failed: {exc}[/red]")
        code = 1
    finally:
        sup.shutdown()
    console.print("demo stopped")
    return code


#: The demo gateway's gunicorn threads (one worker, so the demo's rate limits and caches are
#: those of one process, as in `tongban gateway serve`).
GATEWAY_THREADS = 32


def _gateway_env(
    env: dict[str, str], adapters: dict[str, str], files: dict[str, Path]
) -> dict[str, str]:
    """The demo's environment, plus where the adapters and the department files are, and
    the demo identity provider enabled: the demo's gateway, and only it, trusts the key
    `tongban citizen-token` signs with (DIR/keys/idp.key)."""
    out = dict(env)
    out["TONGBAN_CITIZEN_IDP_DEMO"] = "true"
    for dept, url in adapters.items():
        out[f"TONGBAN_ADAPTER_URL_{dept.upper()}"] = url
    if files:
        out["TONGBAN_DEPARTMENT_FILES"] = os.pathsep.join(str(p) for p in files.values())
    return out


def gateway_argv(host: str, port: int, tls: TLSFiles | None, data_dir: Path) -> list[str]:
    """The demo gateway's command line: gunicorn, gthread with tongban's read deadline."""
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    argv = [
        gunicorn,
        "-k", "tongban.gunicorn_worker.DeadlineThreadWorker",
        "-b", f"{host}:{port}",
        "-w", "1",
        "--threads", str(GATEWAY_THREADS),
        "--timeout", "60",
        "--graceful-timeout", "5",
        "--log-level", "warning",
        # One line per request, its query string and ID-shaped digits masked (they may
        # carry what no log should keep); the demo's log shows it beside the adapters'.
        *gunicorn_access_args(),
        # On the command line, so that ps (and the demo's tests) see whose gateway it is.
        "-e", f"TONGBAN_DATA_DIR={data_dir}",
    ]  # fmt: skip
    if tls is not None:
        argv += ["--certfile", str(tls.cert), "--keyfile", str(tls.key)]
    return [*argv, "tongban.wsgi:gateway()"]


def _spawn_adapters(
    sup: _Supervisor,
    serve: list[str],
    host: str,
    port: int,
    env: dict[str, str],
    files: dict[str, Path],
) -> dict[str, str]:
    """One adapter per department, on the ports after the gateway's; their URLs."""
    from tongban.adapters.file_source import referenced_variables

    data_dir = env["TONGBAN_DATA_DIR"]
    adapters: dict[str, str] = {}
    for offset, dept in enumerate(DEPARTMENTS, start=1):
        dept_port = _free_port(host, port + offset)
        adapters[dept] = f"https://{host}:{dept_port}"
        which = ["--department", dept]
        child_env = env
        if dept in files:
            which = ["--department-file", str(files[dept])]
            # The file's ${VAR}s (its source URL), and only those, besides the demo's.
            child_env = dict(env)
            for var in referenced_variables(files[dept]):
                if var in os.environ:
                    child_env[var] = os.environ[var]
            sup.console.print(f"{dept}: served from {files[dept]}")
        sup.spawn(
            dept,
            [*serve, *which, "--port", str(dept_port), "--data-dir", data_dir, "--host", host],
            child_env,
        )
    return adapters


def register_demo_clients(data_dir: Path) -> dict[str, dict[str, str]]:
    """The demo requesters' credentials (``tongban keys init``): registered if missing,
    recorded secrets kept."""
    return init_data_dir(data_dir).clients


def demo_log_origin(settings: Settings) -> str:
    """The audit log's origin for the demo's processes: the one the log was created with,
    else (a new log) the one the gateway's URL gives. Gateway and witnesses get the same."""
    from tongban.audit.log import read_origin

    return read_origin(settings.audit_store_url()) or settings.origin


def _write_demo_json(
    data_dir: Path,
    gateway: str,
    adapters: dict[str, str],
    clients: dict[str, dict[str, str]],
    files: dict[str, Path],
    *,
    ca: Path,
) -> None:
    doc: dict[str, object] = {
        "gateway": gateway,
        "adapters": adapters,
        "ca": str(ca),
        "clients": clients,
        "truth": str(data_dir / "truth.jsonl"),
        # The gateway trusts the demo identity provider: `tongban citizen-token` mints for it.
        "citizen_idp": "demo",
        # /metrics (gateway and adapters) answers this file's token only.
        "metrics_token_file": str(data_dir / "keys" / "metrics.token"),
    }
    if files:  # the truth file does not describe these departments' answers
        doc["department_files"] = {name: str(path) for name, path in files.items()}
    # Client secrets live here too: readable by the demo's user only.
    write_private_json(data_dir / "demo.json", doc)
