"""``tongban init`` (issue 18, part 1): a production gateway host's data directory, on
SQLite and PostgreSQL: the gateway's keys and nothing of the demo, the PKI, a commented
configuration file generated from the Settings model that reads back as what init used,
the databases at head, a gateway that starts from it; idempotent; refusals in one line."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tongban.cli import main
from tongban.config import ConfigError, Settings
from tongban.init_cli import _DESCRIPTIONS, describe_fields, render_config

#: What a gateway host's DIR/keys holds after init: the gateway's keys, nothing else.
PRIVATE = {
    "gateway.key",
    "gateway-answers.key",
    "gateway-tokens.key",
    "gateway.p256.pem",
    "pseudonym.secret",
    "pairwise.secret",
    "client-pepper.secret",
    "vault.secret",
    "metrics.token",
}
PUBLIC = {"gateway.jwk.json", "gateway-answers.jwk.json", "gateway-tokens.jwk.json"}
PUBLIC_URL = "https://gw.example.org"


@pytest.fixture(autouse=True)
def _no_tongban_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # `tongban --config FILE` sets TONGBAN_CONFIG for the process: undone after each test.
    monkeypatch.setenv("TONGBAN_CONFIG", "")
    for var in list(os.environ):
        if var.startswith("TONGBAN_") and not var.startswith("TONGBAN_TEST_"):
            monkeypatch.delenv(var)


def _init(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = main(["init", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _stores_env(monkeypatch: pytest.MonkeyPatch, stores: dict[str, str]) -> None:
    for name, url in stores.items():
        monkeypatch.setenv(f"TONGBAN_{name.upper()}", url)


def test_init_sets_up_a_gateway_host(
    tmp_path: Path,
    gateway_stores: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tongban.wiring import build_gateway, build_registry

    data = tmp_path / "srv" / "tongban"
    _stores_env(monkeypatch, gateway_stores)
    code, report, err = _init(capsys, "--data-dir", str(data), "--public-url", PUBLIC_URL)
    assert code == 0, err
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    keys = data / "keys"
    # The gateway's keys, private ones 0600; no demo IdP key, no department key.
    assert {p.name for p in keys.iterdir()} == PRIVATE | PUBLIC
    for name in PRIVATE:
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600, name
    assert sorted(report["keys"]["created"]) == sorted(PRIVATE)
    assert report["keys"]["existing"] == []
    # The PKI: the CA and the gateway's certificate, naming the public host too.
    assert {p.name for p in (data / "pki").iterdir()} == {
        "ca.pem", "ca.key", "gateway.pem", "gateway.key"
    }  # fmt: skip
    assert report["pki"] == {"ca": "created", "gateway": "created"}
    from tongban import pki

    assert "gw.example.org" in pki.status(data / "pki" / "gateway.pem").names
    # No demo requester: no credentials file, an empty client table.
    assert not (data / "clients.json").exists()
    config = data / "gateway.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # The file reads back, with the project's own loader, as the settings init used.
    used = Settings.from_env({}, data_dir=data, public_url=PUBLIC_URL).with_(**gateway_stores)
    loaded = Settings.from_env({}, config=config)
    assert loaded == used
    registry = build_registry(loaded)
    try:
        assert registry.clients() == []
    finally:
        registry.engine.dispose()
    # The databases at head, as `tongban db current` sees them.
    assert main(["--config", str(config), "db", "current"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["gateway", "audit"]
    assert all(line.endswith(": current") for line in lines), out
    # A gateway starts from that directory and needs no key init did not make.
    before = _files(keys)
    gateway = build_gateway(loaded, start=False)
    gateway.close()
    assert _files(keys) == before
    # No key material in what init printed.
    printed = json.dumps(report) + err
    for name in PRIVATE:
        secret = (keys / name).read_bytes().strip()
        body = b"".join(line for line in secret.splitlines() if not line.startswith(b"-----"))
        assert body.decode() not in printed


def test_a_second_run_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert _init(capsys, "--data-dir", str(data))[0] == 0
    first = _files(data)
    code, report, err = _init(capsys, "--data-dir", str(data))
    assert code == 0, err
    secrets = {k: v for k, v in first.items() if not k.endswith(".db")}
    assert {k: v for k, v in _files(data).items() if not k.endswith(".db")} == secrets
    assert report["keys"]["created"] == []
    assert sorted(report["keys"]["existing"]) == sorted(PRIVATE)
    assert report["pki"] == {"ca": "existing", "gateway": "existing"}
    assert report["config"]["state"] == "existing"
    assert {d["state"] for d in report["databases"].values()} == {"already current"}
    assert "nothing to do" in err


def test_config_elsewhere_and_force_config_keeps_a_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, config = tmp_path / "data", tmp_path / "etc" / "tongban" / "gateway.toml"
    code, report, err = _init(capsys, "--data-dir", str(data), "--config", str(config))
    assert code == 0, err
    assert report["config"] == {"path": str(config), "state": "created"}
    assert not (data / "gateway.toml").exists()
    assert Settings.from_env({}, config=config).data_dir == data
    # An operator's edit is kept by a plain second run, replaced (with a .bak) on request.
    edited = config.read_text() + "adapter_timeout = 3.5\n"
    config.write_text(edited)
    assert _init(capsys, "--data-dir", str(data), "--config", str(config))[0] == 0
    assert config.read_text() == edited
    code, report, err = _init(
        capsys, "--data-dir", str(data), "--config", str(config), "--force-config"
    )
    assert code == 0, err
    assert report["config"]["state"] == "replaced"
    assert Path(report["config"]["backup"]).read_text() == edited
    assert "adapter_timeout = 3.5" not in config.read_text()
    assert Settings.from_env({}, config=config) == Settings.from_env({}, data_dir=data)


def test_the_global_config_option_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, config = tmp_path / "data", tmp_path / "etc" / "gateway.toml"
    assert main(["--config", str(config), "init", "--data-dir", str(data), "--no-pki"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"] == {"path": str(config), "state": "created"}
    assert Settings.from_env({}, config=config).data_dir == data


def test_an_existing_file_of_another_data_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "gateway.toml"
    assert _init(capsys, "--data-dir", str(tmp_path / "a"), "--config", str(config))[0] == 0
    before = config.read_bytes()
    code, report, err = _init(capsys, "--data-dir", str(tmp_path / "b"), "--config", str(config))
    assert code != 0 and report is None
    assert "is not --data-dir" in _one_line(err)
    assert config.read_bytes() == before and not (tmp_path / "b").exists()


def test_settings_from_variables_are_written_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("TONGBAN_ADAPTER_TIMEOUT", "3.5")
    monkeypatch.setenv("TONGBAN_ADAPTER_URL_HEALTH", "https://health.internal:8443")
    monkeypatch.setenv("TONGBAN_WITNESS_QUORUM", "3")
    code, report, err = _init(capsys, "--data-dir", str(data), "--no-pki")
    assert code == 0, err
    assert report["pki"] is None and not (data / "pki").exists()
    # The department's public key comes from its host: init says so, and makes no key.
    assert report["department_keys_missing"] == ["health"]
    assert not (data / "keys" / "health.key").exists()
    text = (data / "gateway.toml").read_text()
    assert "\nadapter_timeout = 3.5\n" in text and "\n[adapter_urls]\nhealth = " in text
    loaded = Settings.from_env({}, config=data / "gateway.toml")
    assert loaded == Settings.from_env(
        {}, data_dir=data, adapter_timeout=3.5, witness_quorum=3,
        adapter_urls={"health": "https://health.internal:8443"},
    )  # fmt: skip


# -- the generated file covers the model --------------------------------------------------


def _uncommented(text: str) -> str:
    """The file with every setting written out at its default (the ones that have a TOML
    form: an unset one stays a comment)."""
    fields = Settings.model_fields
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"# (\w+) = (.+)", line) or re.fullmatch(r"# \[(\w+)\]", line)
        out.append(line[2:] if m and m.group(1) in fields else line)
    return "\n".join(out) + "\n"


def _check_covers_the_model(text: str, tmp_path: Path) -> None:
    named = set(re.findall(r"^(?:# )?\[?(\w+)\]? ?=?", text, flags=re.M))
    missing = set(Settings.model_fields) - named
    assert not missing, f"settings missing from the file: {sorted(missing)}"
    path = tmp_path / "all.toml"
    path.write_text(_uncommented(text))
    loaded = Settings.from_env({}, config=path)
    expected = Settings.from_env({}, data_dir=Path("/srv/tongban"))
    assert loaded == expected
    set_in_file = set(re.findall(r"^\[?(\w+)\]? ?=?", _uncommented(text), flags=re.M))
    unset = {n for n in Settings.model_fields if getattr(expected, n) is None}
    assert set(Settings.model_fields) - unset <= set_in_file


def test_every_setting_is_in_the_file_with_its_default(tmp_path: Path) -> None:
    text = render_config(Settings.from_env({}, data_dir=Path("/srv/tongban")))
    _check_covers_the_model(text, tmp_path)


def test_the_coverage_check_catches_a_missing_setting(tmp_path: Path) -> None:
    text = render_config(Settings.from_env({}, data_dir=Path("/srv/tongban")))
    without = "\n".join(ln for ln in text.splitlines() if not ln.startswith("# stats_threshold"))
    with pytest.raises(AssertionError, match="stats_threshold"):
        _check_covers_the_model(without, tmp_path)
    wrong = text.replace("# adapter_timeout = 2.0", "# adapter_timeout = 2.5")
    with pytest.raises(AssertionError):
        _check_covers_the_model(wrong, tmp_path)


def test_every_setting_is_described() -> None:
    notes = describe_fields()
    assert set(notes) == set(Settings.model_fields)
    undescribed = [
        n for n, note in notes.items() if not (note.block or note.trailing or n in _DESCRIPTIONS)
    ]
    assert undescribed == []
    # A description here is only for a setting whose source says nothing.
    doubled = [n for n in _DESCRIPTIONS if n in notes and (notes[n].block or notes[n].trailing)]
    assert doubled == []


# -- refusals: one line, nothing written --------------------------------------------------


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tongban: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("content", "named"),
    [("adapter_timout = 3\n", "adapter_timout"), ('adapter_timeout = "soon"\n', "adapter_timeout")],
)
def test_an_invalid_config_file_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, named: str
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "gateway.toml").write_text(content)
    code, report, err = _init(capsys, "--data-dir", str(data))
    assert code != 0 and report is None
    line = _one_line(err)
    assert f"gateway.toml: {named}" in line
    assert sorted(p.name for p in data.iterdir()) == ["gateway.toml"]
    with pytest.raises(ConfigError):
        Settings.from_env({}, config=data / "gateway.toml")


def test_an_unwritable_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    code, report, err = _init(capsys, "--data-dir", str(blocker / "data"))
    assert code != 0 and report is None
    assert "cannot create the directory" in _one_line(err)


def test_a_database_that_is_down_is_one_line_and_nothing_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("TONGBAN_GATEWAY_DB_URL", "postgresql+psycopg://tongban:pw@127.0.0.1:1/x")
    code, report, err = _init(capsys, "--data-dir", str(data))
    assert code != 0 and report is None
    line = _one_line(err)
    assert "127.0.0.1:1" in line and "unavailable" in line and "pw" not in line
    assert not data.exists()


@pytest.fixture
def _cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    yield tmp_path


def test_a_relative_data_dir_is_written_absolute(
    _cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _init(capsys, "--data-dir", "data", "--no-pki")[0] == 0
    loaded = Settings.from_env({}, config=_cwd / "data" / "gateway.toml")
    assert loaded.data_dir == _cwd / "data"
