"""``tongban stats run``: an analyst's whole encrypted-statistics flow, client side.

The key pair is made here and the private key never leaves this process. The gateway
returns summed ciphertexts; they are decrypted and unpacked here. Small cells: a sole
contributing department has already zeroed them before encrypting; for sums over several
departments, and for noisy (DP) results, cells are suppressed here, at the threshold the
job names (default 10). For statistics with a count companion (sums of yuan) the rule
applies to the number of contributing records, not to the amount. With ``--epsilon``, each
department adds its share of discrete Laplace noise and its offset; the offsets are
subtracted here, and the values printed are the noisy ones.

The gateway is the one ``--gateway`` names, else the demo's (``DIR/demo.json``), else
``TONGBAN_PUBLIC_URL``; the analyst's credentials come from ``DIR/clients.json``
(``tongban keys init``) or the demo's copy in ``DIR/demo.json``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from phe import PaillierPrivateKey, PaillierPublicKey
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from tongban.federation.paillier import decrypt_vector, generate_keypair, public_key_to_jwk
from tongban.federation.statistics import REGISTRY, Release

from .boundary import CommandFailed, MissingPrerequisite, describe, scrub
from .config import Settings
from .exposure import ca_bundle
from .provision import read_credentials

__all__ = [
    "Cell",
    "StatsError",
    "StatsResult",
    "gateway_url",
    "parse_params",
    "render_csv",
    "render_table",
    "run_from_demo",
    "run_statistic",
    "statistic_from_dir",
    "write_result",
]

ANALYST = "analyst"
_POLL_SECONDS = 0.2
_RUNNING = ("queued", "running")


class StatsError(CommandFailed):
    """The flow could not complete; the message says where."""


@dataclass(frozen=True)
class Cell:
    district: str
    year: str
    value: int | None  # None: suppressed


@dataclass(frozen=True)
class StatsResult:
    job: str
    statistic: str
    params: dict[str, str]
    threshold: int
    cells: list[Cell]
    epsilon: float | None = None


def _check(resp: httpx.Response, what: str) -> Any:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail", resp.text)
        except ValueError:
            detail = resp.text
        raise StatsError(f"{what} failed: HTTP {resp.status_code}: {detail}")
    return resp.json()


def _token(http: httpx.Client, gateway: str, client_id: str, secret: str) -> str:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    resp = http.post(
        gateway + "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "statistics"},
        headers={"Authorization": f"Basic {basic}"},
    )
    return str(_check(resp, "token")["access_token"])


def run_statistic(
    http: httpx.Client,
    gateway: str,
    client_id: str,
    secret: str,
    name: str,
    params: Mapping[str, str],
    *,
    console: Console | None = None,
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None,
    timeout: float = 60.0,
    epsilon: float | None = None,
) -> StatsResult:
    """Key → submit → wait → fetch → decrypt → unpack → suppress."""
    console = console or Console(stderr=True)
    gateway = gateway.rstrip("/")
    statistic = REGISTRY.get(name)  # the analyst knows the registry it asks against
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:

        def step(text: str, fn: Callable[[], Any]) -> Any:
            task = progress.add_task(text, total=1)
            out = fn()
            progress.update(task, completed=1, description=f"[green]✓[/green] {text}")
            return out

        public, private = keypair or step("generating a 2048-bit Paillier key", generate_keypair)
        token = step(
            "authenticating as " + client_id, lambda: _token(http, gateway, client_id, secret)
        )
        auth = {"Authorization": f"Bearer {token}"}
        body: dict[str, Any] = {
            "statistic": name,
            "params": dict(params),
            "public_key": public_key_to_jwk(public),
        }
        if epsilon is not None:
            body["dp"] = {"epsilon": epsilon}
        submitted = step(
            "submitting the job",
            lambda: _check(
                http.post(gateway + "/v1/statistics", json=body, headers=auth), "submit"
            ),
        )
        job_id = str(submitted["id"])

        def wait() -> Any:
            deadline = time.monotonic() + timeout
            while True:
                job = _check(http.get(f"{gateway}/v1/statistics/{job_id}", headers=auth), "fetch")
                if job["status"] not in _RUNNING:
                    return job
                if time.monotonic() > deadline:
                    raise StatsError(f"job {job_id}: still running after {timeout:.0f} s")
                time.sleep(_POLL_SECONDS)

        job = step("waiting for the departments' encrypted contributions", wait)
        if job["status"] != "done":
            failed = ", ".join(f"{f['department']} ({f['problem']})" for f in job.get("failed", []))
            raise StatsError(f"job {job_id} {job['status']}: {failed or 'no detail'}")
        if (job["release"]["dp"] or {}).get("epsilon") != epsilon:
            raise StatsError(f"job {job_id}: the release is not the one asked for")
        release = Release(int(job["threshold"]), epsilon)
        parties = int(job["layout"]["parties"])
        layout = statistic.layout(public.n, parties, release)
        offsets = statistic.offsets(release, parties)
        for field in ("counters", "value_bound", "ciphertexts"):
            if job["layout"][field] != getattr(layout, field):
                raise StatsError(f"job {job_id}: layout.{field} does not match the registry")
        ciphertexts = [int(h, 16) for h in job["ciphertexts"]]
        values = step(
            "decrypting locally",
            lambda: decrypt_vector(private, ciphertexts, layout),
        )
        values = [v - parties * o for v, o in zip(values, offsets, strict=True)]
    threshold = int(job["threshold"])
    k = len(statistic.cells)
    basis = values[k : 2 * k] if not statistic.counts_records else values[:k]
    cells = [
        Cell(c["district"], str(c["year"]), None if basis[i] < threshold else values[i])
        for i, c in enumerate(job["cells"])
    ]
    return StatsResult(job_id, name, dict(job["params"]), threshold, cells, epsilon)


def render_csv(result: StatsResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["district", "year", "value"])
    for cell in result.cells:
        writer.writerow([cell.district, cell.year, "" if cell.value is None else cell.value])
    return out.getvalue()


def render_table(result: StatsResult) -> Table:
    params = ", ".join(f"{k}={v}" for k, v in result.params.items())
    noise = "" if result.epsilon is None else f" · ε = {result.epsilon:g} discrete Laplace noise"
    table = Table(
        title=result.statistic,
        caption=f"{params} · cells below {result.threshold} suppressed (—){noise}",
    )
    for col in ("district", "year", "value"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for cell in result.cells:
        table.add_row(cell.district, cell.year, "—" if cell.value is None else f"{cell.value:,}")
    return table


def parse_params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StatsError(f"--param {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def gateway_url(data_dir: Path, explicit: str | None = None) -> str:
    """Where the gateway is: ``explicit``, else the demo's, else TONGBAN_PUBLIC_URL."""
    if explicit:
        return explicit.rstrip("/")
    try:
        demo = json.loads((data_dir / "demo.json").read_text(encoding="utf-8"))
        return str(demo["gateway"]).rstrip("/")
    except (OSError, ValueError, KeyError, TypeError):
        return Settings.from_env(data_dir=data_dir).public_url.rstrip("/")


def statistic_from_dir(
    data_dir: Path,
    name: str,
    pairs: list[str],
    *,
    gateway: str | None = None,
    transport: httpx.BaseTransport | None = None,
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None,
    console: Console | None = None,
    epsilon: float | None = None,
) -> StatsResult:
    """Run a statistic as the analyst of ``data_dir``. Raises MissingPrerequisite without
    the analyst's credentials, StatsError naming the gateway's URL when it cannot be
    reached or answers unexpectedly."""
    params = parse_params(pairs)
    data_dir = data_dir.absolute()
    creds = read_credentials(data_dir).get(ANALYST)
    if creds is None:
        raise MissingPrerequisite(
            f"no credentials for the {ANALYST} in {data_dir / 'clients.json'}: run "
            f"`tongban keys init --data-dir {data_dir}` (or `tongban demo --data-dir "
            f"{data_dir}`)"
        )
    url = gateway_url(data_dir, gateway)
    try:
        bundle = ca_bundle()
        verify = ssl.create_default_context(cafile=bundle) if isinstance(bundle, str) else bundle
        with httpx.Client(
            transport=transport, trust_env=False, timeout=30.0, verify=verify
        ) as http:
            return run_statistic(
                http,
                url,
                creds["client_id"],
                creds["client_secret"],
                name,
                params,
                console=console,
                keypair=keypair,
                epsilon=epsilon,
            )
    except httpx.TransportError as exc:
        raise StatsError(
            f"cannot reach the gateway at {url} ({type(exc).__name__}): start it with "
            f"`tongban gateway serve --data-dir {data_dir}` or `tongban demo --data-dir "
            f"{data_dir}`, or pass --gateway URL"
        ) from exc
    except httpx.HTTPError as exc:
        raise StatsError(f"the gateway at {url} failed: {type(exc).__name__}") from exc
    except (KeyError, ValueError, TypeError) as exc:
        raise StatsError(
            f"the gateway at {url} answered unexpectedly ({type(exc).__name__})"
        ) from exc


def write_result(result: StatsResult, fmt: str, out: Callable[[str], None] = print) -> None:
    if fmt == "csv":
        out(render_csv(result).rstrip("\n"))
    else:
        buf = io.StringIO()
        Console(file=buf, width=100).print(render_table(result))
        out(buf.getvalue().rstrip("\n"))


def run_from_demo(
    data_dir: Path,
    name: str,
    pairs: list[str],
    fmt: str,
    *,
    transport: httpx.BaseTransport | None = None,
    keypair: tuple[PaillierPublicKey, PaillierPrivateKey] | None = None,
    out: Callable[[str], None] = print,
    console: Console | None = None,
    epsilon: float | None = None,
    gateway: str | None = None,
) -> int:
    """``tongban stats run`` as the demo's analyst: 0, or 1 with one line on stderr."""
    console = console or Console(stderr=True)
    try:
        result = statistic_from_dir(
            data_dir,
            name,
            pairs,
            gateway=gateway,
            transport=transport,
            keypair=keypair,
            console=console,
            epsilon=epsilon,
        )
    except Exception as exc:
        line = f"tongban: stats run failed: {scrub(describe(exc)[1])}"
        console.print(line, markup=False, highlight=False, soft_wrap=True)
        return 1
    write_result(result, fmt, out)
    return 0
