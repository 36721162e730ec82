"""A newcomer's first hour: every command run without what it needs exits non-zero with
ONE line naming what is missing and how to get it, and creates nothing on the way;
``--debug`` shows the traceback instead. Real processes, so what a user sees is tested."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tongban.boundary import (
    EXIT_FAILURE,
    EXIT_PREREQUISITE,
    MissingPrerequisite,
    describe,
    run_command,
)
from tongban.cli import main
from tongban.keys import KeyRing
from tongban.primitives.extras import MissingExtra
from tongban.provision import init_data_dir

VALID = "11010519491231002X"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _run(
    argv: list[str], *, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def tongban(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "tongban", *args], cwd=cwd)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed on stderr (and nothing else there)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tongban: "), proc.stderr
    return lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory after `tongban keys init` (keys, demo requesters), without data."""
    data = tmp_path_factory.mktemp("keyed") / "data"
    init_data_dir(data)
    return data


# --- serving without keys or data -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["gateway", "serve", "--port", "{port}"],
        ["adapter", "serve", "--department", "health", "--port", "{port}"],
    ],
    ids=["gateway", "adapter"],
)
def test_serve_without_keys_names_the_command_that_makes_them(tmp_path: Path, argv: list[str]):
    data = tmp_path / "data"
    data.mkdir()
    args = [a.replace("{port}", str(_free_port())) for a in argv]

    proc = tongban(*args, "--data-dir", str(data))

    assert proc.returncode == EXIT_PREREQUISITE
    assert one_line(proc) == (
        f"tongban: no keys in {data}/keys: run `tongban keys init --data-dir {data}`"
    )
    assert _tree(data) == []  # nothing created on the way


def test_adapter_serve_without_data_names_generate(keyed: Path):
    proc = tongban(
        "adapter", "serve", "--department", "police", "--port", str(_free_port()),
        "--data-dir", str(keyed),
    )  # fmt: skip

    assert proc.returncode == EXIT_PREREQUISITE
    line = one_line(proc)
    assert f"no police data at {keyed}/departments/police.db" in line
    assert "tongban generate" in line
    assert not (keyed / "departments").exists()


def test_gateway_serve_on_a_port_in_use_says_so_before_starting(keyed: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = tongban("gateway", "serve", "--port", str(port), "--data-dir", str(keyed))

    assert proc.returncode == EXIT_FAILURE
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(proc)
    # The gateway never started its log (`keys init` made its tables: no entry).
    with closing(sqlite3.connect(keyed / "audit.db")) as db:
        assert db.execute("SELECT count(*) FROM audit_entries").fetchone() == (0,)


# --- audit verify -----------------------------------------------------------------------


def test_audit_verify_on_an_empty_directory(tmp_path: Path):
    proc = tongban("audit", "verify", "--data-dir", str(tmp_path))

    assert proc.returncode == EXIT_PREREQUISITE
    line = one_line(proc)
    assert f"no audit log at {tmp_path}/audit.db" in line
    assert "tongban gateway serve" in line and "tongban demo" in line
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path: Path, where: str):
    argv = ["audit", "verify", "--data-dir", str(tmp_path)]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]

    proc = tongban(*argv)

    assert proc.returncode == 1
    assert "Traceback" in proc.stderr
    assert "MissingPrerequisite" in proc.stderr


# --- citizen-token ----------------------------------------------------------------------


def test_citizen_token_refuses_without_the_idp_key(tmp_path: Path):
    """Run from a directory that is not the demo's: no key is made, nothing is signed."""
    proc = tongban("citizen-token", VALID, cwd=tmp_path)

    assert proc.returncode == EXIT_PREREQUISITE
    assert proc.stdout == ""
    line = one_line(proc)
    assert f"{tmp_path.resolve()}/demo-data/keys" in line
    assert "--data-dir" in line
    assert VALID not in line
    assert _tree(tmp_path) == []


def test_citizen_token_signs_with_the_data_dirs_idp_key(keyed: Path, tmp_path: Path):
    from tongban.primitives.jws import verify_compact

    before = _tree(keyed)
    refused = tongban("citizen-token", VALID, "--data-dir", str(keyed))
    assert refused.returncode == EXIT_PREREQUISITE and refused.stdout == ""
    assert "not a production login" in one_line(refused)  # no gateway trusts the demo IdP
    config = tmp_path / "gateway.toml"  # a gateway configured as `tongban demo` runs it
    config.write_text("citizen_idp_demo = true\n")
    proc = tongban("--config", str(config), "citizen-token", VALID, "--data-dir", str(keyed))

    assert proc.returncode == 0, proc.stderr
    idp = KeyRing(keyed / "keys").public("idp")
    header, payload = verify_compact(
        proc.stdout.strip(),
        {idp.key_id: idp}.get,
        typ="tongban-citizen+jwt",
        algorithms=["SM2"],
    )
    assert header["kid"] == idp.key_id and payload["sub"] == VALID
    assert _tree(keyed) == before


# --- stats run --------------------------------------------------------------------------


def test_stats_run_with_the_gateway_down_names_the_url(keyed: Path, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "clients.json").write_text((keyed / "clients.json").read_text())
    url = f"http://127.0.0.1:{_free_port()}"
    (data / "demo.json").write_text(json.dumps({"gateway": url}))

    proc = tongban(
        "stats", "run", "births_by_district_year", "--param", "year=2025", "--data-dir", str(data)
    )

    assert proc.returncode == EXIT_FAILURE
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tongban: ")]
    assert len(errors) == 1, proc.stderr
    assert f"cannot reach the gateway at {url}" in errors[0]


def test_stats_run_without_credentials_names_keys_init(tmp_path: Path):
    proc = tongban("stats", "run", "births_by_district_year", "--data-dir", str(tmp_path))

    assert proc.returncode == EXIT_PREREQUISITE
    line = one_line(proc)
    assert f"{tmp_path}/clients.json" in line and "tongban keys init" in line


# --- federation without its extra -------------------------------------------------------

# Runs the CLI in a fresh interpreter in which the `federation` extra is not installed:
# a meta-path finder ahead of all others makes `import flwr` / `import matplotlib` (and
# importlib.util.find_spec) fail the way they do when the packages are absent.
_WITHOUT_EXTRA = textwrap.dedent(
    """
    import sys

    class Absent:
        BLOCKED = ("flwr", "matplotlib")

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    from tongban.cli import main

    raise SystemExit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    ("argv", "feature"),
    [
        (["federation", "up", "--nodes", "3"], "tongban federation up"),
        (["federation", "train", "--rounds", "1"], "tongban federation train"),
        (
            ["federation", "train", "--rounds", "1", "--kind", "vertical", "--report", "r.json"],
            "tongban federation train --report",
        ),
    ],
    ids=["up", "train", "vertical-report"],
)
def test_federation_without_the_extra_is_one_line(tmp_path: Path, argv: list[str], feature: str):
    proc = _run([sys.executable, "-c", _WITHOUT_EXTRA, *argv, "--data-dir", str(tmp_path)])

    assert proc.returncode == EXIT_PREREQUISITE
    assert proc.stderr == (
        f"tongban: {feature} needs the 'federation' extra: pip install 'tongban[federation]'\n"
    )
    assert _tree(tmp_path) == []


# --- the boundary itself ----------------------------------------------------------------


def test_describe_names_what_is_missing_and_where():
    request = httpx.Request("GET", "http://127.0.0.1:9/v1/x")
    assert describe(httpx.ConnectError("refused", request=request)) == (
        EXIT_FAILURE,
        "cannot reach http://127.0.0.1:9 (ConnectError): is it running?",
    )
    assert describe(MissingExtra("postgres", "a PostgreSQL store")) == (
        EXIT_PREREQUISITE,
        "a PostgreSQL store needs the 'postgres' extra: pip install 'tongban[postgres]'",
    )
    assert describe(MissingPrerequisite("no keys in d/keys: run x")) == (
        EXIT_PREREQUISITE,
        "no keys in d/keys: run x",
    )
    code, sentence = describe(FileNotFoundError(2, "No such file or directory", "a/b.json"))
    assert (code, sentence) == (EXIT_PREREQUISITE, "a/b.json: No such file or directory")


def test_an_unexpected_error_is_one_line_unless_debug(capsys: pytest.CaptureFixture[str]):
    def boom() -> int:
        raise RuntimeError("the widget\nfell over")

    assert run_command(boom) == EXIT_FAILURE
    assert capsys.readouterr().err == (
        "tongban: unexpected RuntimeError: the widget (--debug shows where)\n"
    )
    with pytest.raises(RuntimeError):
        run_command(boom, debug=True)


def test_no_id_number_reaches_an_error_line(capsys: pytest.CaptureFixture[str]):
    def leaky() -> int:
        raise ValueError(f"cannot parse row {VALID} / {VALID[:6] + VALID[8:17]}")

    assert run_command(leaky) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert VALID not in err and VALID[:6] + VALID[8:17] not in err
    assert err == (
        "tongban: unexpected ValueError: cannot parse row <ID number> / <ID number> "
        "(--debug shows where)\n"
    )


def test_main_returns_the_code_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == EXIT_PREREQUISITE
    assert capsys.readouterr().err.startswith("tongban: no audit log at ")
    with pytest.raises(MissingPrerequisite):
        main(["--debug", "audit", "verify", "--data-dir", str(tmp_path)])
