"""The command line: ``tongban id check`` in-process and as a real process, and
``tongban generate`` end to end."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from tongban.cli import build_parser, main
from tongban.config import DEPARTMENTS

VALID = "11010519491231002X"
INVALID = {
    "bad length": "1101051949123100",
    "bad date": "110105194913310020",
    "bad check digit": "110105194912310021",
    "bad format": "11010519491231002Y",
    "bad region": "990105194912310028",
}
# Anything shaped like a full ID number: 17 digits and a digit or X.
FULL_ID = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dXx])")
# reStructuredText that would show up verbatim in --help: ``literals`` and :roles:.
RAW_RST = re.compile(r"``|:(func|class|mod|meth|attr|data):")


def _env() -> dict[str, str]:
    """The caller's environment without TONGBAN_* settings, so the CLI sees only its flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TONGBAN_")}
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def _tongban(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tongban", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=_env(),
        timeout=timeout,
        check=False,
    )


# --- tongban id check -------------------------------------------------------------------


def test_id_check_prints_the_parsed_fields(capsys: pytest.CaptureFixture[str]):
    code = main(["id", "check", VALID])

    out, err = capsys.readouterr()
    assert code == 0
    assert err == ""
    fields = json.loads(out)
    assert fields["valid"] is True
    assert fields["region"] == "110105"
    assert fields["region_name"] == "北京市朝阳区"
    assert fields["province"] == "北京市"
    assert fields["birth_date"] == "1949-12-31"
    assert fields["sex"] == "female"  # sequence 002 is even
    assert fields["sequence"] == "002"
    assert fields["check"] == "X"
    assert fields["masked"] == "110105********002X"


def test_id_check_accepts_a_lowercase_x(capsys: pytest.CaptureFixture[str]):
    assert main(["id", "check", VALID.lower()]) == 0

    assert json.loads(capsys.readouterr().out)["check"] == "X"


@pytest.mark.parametrize("reason", sorted(INVALID))
def test_id_check_refuses_invalid_numbers(capsys: pytest.CaptureFixture[str], reason: str):
    number = INVALID[reason]

    code = main(["id", "check", number])

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.startswith("invalid: ")
    assert reason in err
    assert number not in err


def test_id_check_needs_a_number(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as info:
        main(["id", "check"])

    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_id_check_as_a_real_process():
    ok = _tongban("id", "check", VALID)
    bad = _tongban("id", "check", INVALID["bad check digit"])

    assert ok.returncode == 0, ok.stderr
    fields = json.loads(ok.stdout)
    assert (fields["region"], fields["birth_date"], fields["sex"]) == (
        "110105",
        "1949-12-31",
        "female",
    )
    assert bad.returncode == 1
    assert bad.stdout == ""
    assert "bad check digit" in bad.stderr
    assert INVALID["bad check digit"] not in bad.stderr


# --- tongban generate -------------------------------------------------------------------


def test_generate_as_a_real_process(tmp_path: Path):
    out = tmp_path / "data"
    truth = tmp_path / "truth" / "truth.jsonl"
    truth.parent.mkdir()

    proc = _tongban(
        "generate",
        "--population",
        "500",
        "--seed",
        "3",
        "--out",
        str(out),
        "--truth",
        str(truth),
        timeout=120,
    )

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "departments").glob("*.db")) == sorted(
        f"{d}.db" for d in DEPARTMENTS
    )
    manifest = json.loads((out / "generation.json").read_text(encoding="utf-8"))
    assert manifest["population"] == 500
    assert manifest["seed"] == 3
    rows = [json.loads(line) for line in truth.read_text(encoding="utf-8").splitlines()]
    numbers = {r["id_number"] for r in rows if "id_number" in r}
    assert len(numbers) == 500
    # The report goes to the terminal; it must not repeat anyone's ID number.
    output = proc.stdout + proc.stderr
    assert "validation report" in output
    assert not FULL_ID.search(output)
    assert not any(n in output for n in numbers)


# --- --help and --version ---------------------------------------------------------------


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every parser of the command line, with its command path."""
    todo = [("tongban", build_parser())]
    while todo:
        path, parser = todo.pop()
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{path} {name}", p) for name, p in action.choices.items())


def test_every_option_has_help_and_shows_its_default():
    seen, paths = 0, set()
    for path, parser in _parsers():
        paths.add(path)
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            name = "/".join(action.option_strings) or action.dest
            assert action.help, f"{path} {name}: no help"
            seen += 1
            if not action.option_strings or isinstance(action, argparse._VersionAction):
                continue
            shown = formatter._expand_help(action)
            assert "(default" in shown or "(required)" in shown, f"{path} {name}: {shown!r}"
        for summary in (parser.description, parser.epilog):
            assert not RAW_RST.search(summary or ""), f"{path}: raw RST in {summary!r}"
    assert seen > 50  # the walk reached the subcommands
    assert {"tongban keys init", "tongban federation train", "tongban stats run"} <= paths


def test_top_level_help_is_plain_text_and_names_both_kinds_of_training(
    capsys: pytest.CaptureFixture[str],
):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert not RAW_RST.search(out)
    federation = next(line for line in out.splitlines() if "federation" in line)
    rest = out[out.index(federation) :]
    assert "horizontal" in rest[:300] and "vertical" in rest[:300]
    assert "tongban keys init --data-dir" in out  # the first-run sequence


def test_version_prints_the_installed_version():
    proc = _tongban("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"tongban {version('tongban')}\n"
