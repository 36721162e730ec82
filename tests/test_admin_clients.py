"""``tongban admin clients``: the operator onboards and manages requesters from the gateway
host. Each change is audited; a secret is shown once and works at the token endpoint; a
disabled client's live token stops at its next request; mistakes are one line."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tongban.cli import main
from tongban.config import Settings
from tongban.gateway.app import create_app
from tongban.provision import init_data_dir
from tongban.wiring import build_gateway

ID = "110105199005171233"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def data(tmp_path: Path, gateway_stores: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory with the demo's clients, its stores on SQLite or PostgreSQL (the
    commands read them from the environment, as on a gateway host)."""
    for name, url in gateway_stores.items():
        monkeypatch.setenv("TONGBAN_" + name.upper(), url)
    init_data_dir(tmp_path, Settings.from_env(data_dir=tmp_path))
    return tmp_path


def _token(app: Any, client_id: str, secret: str) -> Any:
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return app.test_client().post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {basic}"},
    )


def test_add_then_use_disable_enable_rotate(data: Path, capsys: pytest.CaptureFixture[str]):
    d = ("--data-dir", str(data))
    code, out, err = _run(capsys, "admin", "clients", "add", "insurer-c", "--name", "Insurer C",
                          "--scopes", "checks", *d)  # fmt: skip
    assert code == 0, err
    added = json.loads(out)
    assert added["scopes"] == ["checks"] and added["enabled"] is True
    secret = added["client_secret"]

    gateway = build_gateway(Settings.from_env(data_dir=data), start=False)
    try:
        app = create_app(gateway)
        resp = _token(app, "insurer-c", secret)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        bearer = {"Authorization": f"Bearer {resp.get_json()['access_token']}"}
        assert app.test_client().get("/v1/claims", headers=bearer).status_code == 200

        code, out, err = _run(capsys, "admin", "clients", "disable", "insurer-c", *d)
        assert code == 0 and json.loads(out)["enabled"] is False
        refused = app.test_client().get("/v1/claims", headers=bearer)
        assert refused.status_code == 401  # the live token stops at its next request
        assert _token(app, "insurer-c", secret).status_code == 401

        assert _run(capsys, "admin", "clients", "enable", "insurer-c", *d)[0] == 0
        code, out, err = _run(capsys, "admin", "clients", "rotate-secret", "insurer-c", *d)
        assert code == 0, err
        fresh = json.loads(out)["client_secret"]
        assert fresh != secret
        assert _token(app, "insurer-c", secret).status_code == 401
        assert _token(app, "insurer-c", fresh).status_code == 200

        # Every change is in the audit log, with who made it, and no secret.
        audit = gateway.audit
        assert audit is not None
        rows, _ = audit.entries({"kind": "admin"}, limit=10, newest_first=False)
        events = [r.entry["event"] for r in rows]
        assert events == ["client_added", "client_disabled", "client_enabled",
                          "client_secret_rotated"]  # fmt: skip
        assert all(r.entry["client_id"] == "insurer-c" and "@" in r.entry["operator"]
                   for r in rows)  # fmt: skip
        assert not any(s in json.dumps([r.entry for r in rows]) for s in (secret, fresh))
    finally:
        gateway.close()

    code, out, _ = _run(capsys, "admin", "clients", "list", "--json", *d)
    listed = {c["client_id"]: c for c in json.loads(out)}
    assert listed["insurer-c"]["enabled"] is True and fresh not in out
    code, out, _ = _run(capsys, "admin", "clients", "show", "insurer-c", *d)
    assert json.loads(out)["name"] == "Insurer C" and "hash" not in out


def test_a_private_key_jwt_client_gets_no_secret(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    from tongban.primitives.gm import SM2PrivateKey
    from tongban.primitives.jws import jwks

    keys = tmp_path / "bank.jwks.json"
    keys.write_text(json.dumps(jwks({"sm-1": SM2PrivateKey.generate().public_key})))
    code, out, err = _run(capsys, "admin", "clients", "add", "bank-sm", "--name", "Bank",
                          "--scopes", "checks", "--jwks", str(keys), "--alg", "SM2",
                          "--data-dir", str(data))  # fmt: skip
    assert code == 0, err
    added = json.loads(out)
    assert added["auth_method"] == "private_key_jwt" and added["alg"] == "SM2"
    assert "client_secret" not in added and added["kids"] == ["sm-1"]


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["add", "insurer-c", "--name", "C", "--scopes", "nope"], "scopes: expected a non-empty"),
        (["add", "edu-bureau", "--name", "E", "--scopes", "checks"], "already registered"),
        (["add", "bank-x", "--name", "B", "--scopes", "checks", "--alg", "SM2"], "--alg: only"),
        (["show", "nobody-at-all"], "client_id: no such client"),
        (["disable", "nobody-at-all"], "client_id: no such client"),
        (["rotate-secret", "nobody-at-all"], "client_id: no such client"),
    ],
)
def test_mistakes_are_one_line(
    data: Path, capsys: pytest.CaptureFixture[str], argv: list[str], line: str
):
    code, out, err = _run(capsys, "admin", "clients", *argv, "--data-dir", str(data))
    assert code != 0 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tongban: ") and line in lines[0]
