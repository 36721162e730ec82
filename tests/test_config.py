"""Configuration (tongban/config.py): every field settable as TONGBAN_<FIELD>, validated,
and a wrong value refused in one line naming its variable, never its value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tongban.config import DEPARTMENTS, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
MAPS = {"store_urls": "TONGBAN_STORE_URL_<DEPT>", "adapter_urls": "TONGBAN_ADAPTER_URL_<DEPT>"}


def _variable(field: str) -> str:
    return MAPS.get(field, "TONGBAN_" + field.upper())


def test_every_field_is_settable_from_its_variable() -> None:
    samples = {
        "data_dir": ("/srv/tongban", Path("/srv/tongban")),
        "department_files": ("a.toml:b.toml", (Path("a.toml"), Path("b.toml"))),
        "adapter_timeout": ("3.5", 3.5),
        "gateway_issuer": ("gw-province", "gw-province"),
        "public_url": ("https://gw.example", "https://gw.example"),
        "log_origin": ("gw.example/audit", "gw.example/audit"),
        "audit_url": ("postgresql+psycopg://db/audit", "postgresql+psycopg://db/audit"),
        "gateway_db_url": ("postgresql+psycopg://db/gw", "postgresql+psycopg://db/gw"),
        "checkpoint_interval": ("5", 5.0),
        "witness_quorum": ("3", 3),
        "audit_startup_check": ("1000", 1000),
        "policy_poll_interval": ("1.5", 1.5),
        "idp_issuer": ("https://idp.gov.example", "https://idp.gov.example"),
        "sm2_backend": ("gmssl", "gmssl"),
        "dp_budget": ("4", 4.0),
        "stats_require_dp": ("true", True),
        "stats_threshold": ("20", 20),
        "rate_requester_burst": ("100", 100.0),
        "rate_requester_per_second": ("10", 10.0),
        "rate_subject_burst": ("5", 5.0),
        "rate_subject_per_second": ("0.1", 0.1),
        "request_read_timeout": ("7", 7.0),
        "citizen_idp_demo": ("false", False),
        "citizen_idp_issuer": ("https://idp.gov.example/oidc", "https://idp.gov.example/oidc"),
        "citizen_idp_audience": ("tongban-gw", "tongban-gw"),
        "citizen_idp_algorithms": ("SM2,ES256", ("SM2", "ES256")),
        "citizen_idp_subject_claim": ("id_number", "id_number"),
        "citizen_idp_jwks_ttl": ("60", 60.0),
        "citizen_idp_timeout": ("1.5", 1.5),
        "citizen_idp_jwks_url": ("https://idp.gov.example/jwks", "https://idp.gov.example/jwks"),
    }
    assert set(samples) | set(MAPS) == set(Settings.model_fields)
    env = {_variable(field): raw for field, (raw, _) in samples.items()}
    env["TONGBAN_STORE_URL_HEALTH"] = "mysql+pymysql://h/db"
    env["TONGBAN_ADAPTER_URL_POLICE"] = "https://police:8443"
    settings = Settings.from_env(env)
    for field, (_, value) in samples.items():
        assert getattr(settings, field) == value, field
    assert settings.store_urls == {"health": "mysql+pymysql://h/db"}
    assert settings.adapter_urls == {"police": "https://police:8443"}
    # A flag given beats the variable; None means not given.
    assert Settings.from_env(env, adapter_timeout=9.0, idp_issuer=None).adapter_timeout == 9.0


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"TONGBAN_ADAPTER_TIMEOUT": "fast"}, "TONGBAN_ADAPTER_TIMEOUT: expected a number"),
        ({"TONGBAN_WITNESS_QUORUM": "1.5"}, "TONGBAN_WITNESS_QUORUM: expected a whole number"),
        ({"TONGBAN_STATS_REQUIRE_DP": "maybe"}, "TONGBAN_STATS_REQUIRE_DP: expected true or false"),
    ],
)
def test_a_wrong_value_names_its_variable_and_not_its_value(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value) == line
    assert next(iter(env.values())) not in str(caught.value)


def test_a_typo_is_pointed_out() -> None:
    unknown = Settings.unknown_variables({"TONGBAN_ADAPTER_TIMOUT": "2", "TONGBAN_CA_FILE": "x"})
    assert unknown == ["TONGBAN_ADAPTER_TIMOUT (did you mean TONGBAN_ADAPTER_TIMEOUT?)"]


def test_settings_are_frozen_and_with_validates() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.adapter_timeout = 5
    assert settings.with_(adapter_timeout="4").adapter_timeout == 4.0
    with pytest.raises(ValueError):
        settings.with_(witness_quorum="many")


def test_the_operations_page_lists_every_variable() -> None:
    page = (ROOT / "docs" / "operations.md").read_text("utf-8")
    listed = set(re.findall(r"`(TONGBAN_[A-Z0-9_<>]+)`", page))
    missing = [v for v in map(_variable, Settings.model_fields) if v not in listed]
    missing = [v for v in missing if not v.endswith("<DEPT>") or v not in page]
    assert missing == []


def test_the_cli_says_it_in_one_line(tmp_path: Path) -> None:
    env = {"TONGBAN_ADAPTER_TIMEOUT": "fast", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "tongban", "keys", "init", "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "tongban: TONGBAN_ADAPTER_TIMEOUT: expected a number"
    ]


def test_the_cli_warns_of_a_misspelt_variable(tmp_path: Path) -> None:
    env = {"TONGBAN_ADAPTER_TIMOUT": "2", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "tongban", "keys", "init", "--data-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "TONGBAN_ADAPTER_TIMOUT (did you mean TONGBAN_ADAPTER_TIMEOUT?) is not a setting" in (
        proc.stderr
    )


CONFIG = """\
data_dir = "/srv/tongban"
public_url = "https://gateway.example"
adapter_timeout = 3
idp_issuer = "https://idp.gov.example"
department_files = ["a.toml", "b.toml"]

[adapter_urls]
health = "https://health.internal:8443"
"""


def test_a_configuration_file_then_variables_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "tongban.toml"
    path.write_text(CONFIG)
    settings = Settings.from_env({}, config=path)
    assert settings.data_dir == Path("/srv/tongban") and settings.adapter_timeout == 3.0
    assert settings.idp_issuer == "https://idp.gov.example"
    assert settings.adapter_urls == {"health": "https://health.internal:8443"}
    assert settings.department_files == (Path("a.toml"), Path("b.toml"))
    # TONGBAN_CONFIG names it too; a variable beats the file, a flag beats both.
    env = {"TONGBAN_CONFIG": str(path), "TONGBAN_ADAPTER_TIMEOUT": "5"}
    assert Settings.from_env(env).adapter_timeout == 5.0
    assert Settings.from_env(env, adapter_timeout=7.0).adapter_timeout == 7.0
    assert Settings.from_env(env).public_url == "https://gateway.example"
    assert Settings.unknown_variables(env) == []


CITIZEN_IDP = """\
citizen_idp_issuer = "https://idp.gov.example"
citizen_idp_audience = "tongban-gateway"
citizen_idp_jwks_url = "https://idp.gov.example/.well-known/jwks.json"
citizen_idp_algorithms = ["SM2"]
citizen_idp_subject_claim = "id_number"
"""


def test_a_citizen_idp_from_a_configuration_file(tmp_path: Path) -> None:
    """The example of docs/security.md, "Citizen login"."""
    path = tmp_path / "tongban.toml"
    path.write_text(CITIZEN_IDP)
    settings = Settings.from_env({}, config=path)
    assert settings.citizen_idp_jwks_url == "https://idp.gov.example/.well-known/jwks.json"
    assert settings.citizen_idp_algorithms == ("SM2",)
    assert settings.citizen_idp_subject_claim == "id_number" and not settings.citizen_idp_demo
    page = (ROOT / "docs" / "security.md").read_text("utf-8")
    assert CITIZEN_IDP in page
    path.write_text(CITIZEN_IDP.replace('["SM2"]', '["SM2", "HS256"]'))
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, config=path)
    assert str(caught.value) == (
        f"{path}: citizen_idp_algorithms: expected a list of SM2 and ES256"
    )


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("adapter_timout = 2\n", "adapter_timout: not a setting (did you mean adapter_timeout?)"),
        ('adapter_timeout = "fast"\n', "adapter_timeout: expected a number"),
        ("witness_quorum = 1.5\n", "witness_quorum: expected a whole number"),
        ('public_url = "x\n', "not valid TOML (line 1, column 16)"),
    ],
)
def test_a_wrong_file_names_the_file_and_the_key(tmp_path: Path, text: str, line: str) -> None:
    path = tmp_path / "tongban.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({}, config=path)
    assert str(caught.value) == f"{path}: {line}"


def test_the_cli_reads_the_file_once_and_says_a_fault_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "tongban", "--config", str(missing), "keys", "init",
         "--data-dir", str(tmp_path / "d")],
        env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120, cwd=ROOT,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [f"tongban: {missing}: no such configuration file"]


def test_the_deployment_example_is_a_valid_configuration() -> None:
    settings = Settings.from_env({}, config=ROOT / "docs" / "deploy" / "gateway.toml")
    assert settings.public_url == "https://gateway.example"
    assert set(settings.adapter_urls) == set(DEPARTMENTS)
    assert settings.witness_quorum == 3
