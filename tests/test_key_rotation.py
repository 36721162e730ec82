"""Signing keys rotate with an overlap (primitives/rotation.py, ``tongban keys rotate
--signing``): the old public key stays published until what it signed expires, every
process holding a :class:`FollowedKey` signs with the new key within its interval, and a
rotation is recorded in the audit log before it is made."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from tongban.cli import main
from tongban.config import Settings
from tongban.gateway.answers import AnswerSigner
from tongban.gateway.oauth import TokenIssuer
from tongban.primitives.gm import SM2PrivateKey, load_private_key, save_private_key
from tongban.primitives.jws import verify_compact
from tongban.primitives.rotation import (
    FollowedKey,
    KeyRotationError,
    read_history,
    rotate_key,
)
from tongban.provision import init_data_dir


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(tmp_path: Path) -> tuple[Path, SM2PrivateKey]:
    key = SM2PrivateKey.generate()
    path = tmp_path / "gateway-answers.key"
    save_private_key(key, path)
    return path, key


def test_a_followed_key_signs_with_the_new_key_and_publishes_the_old(tmp_path: Path):
    path, old = _key(tmp_path)
    mono, wall = Clock(), Clock()
    followed = FollowedKey(path, interval=1.0, clock=mono, wall=wall)
    signer = AnswerSigner(followed, issuer="https://gw", pairwise_key=b"p" * 32)
    before = signer.sign("edu", {"result": "yes"})
    done = rotate_key(path, publish_old_for=600, now=wall.now)
    assert done.old_kid == old.public_key.key_id != done.new_kid
    # Within the interval the process has not looked at the file yet: still the old key.
    assert signer.sm2_kid == old.public_key.key_id
    mono.now += 1.5
    assert signer.sm2_kid == done.new_kid
    after = signer.sign("edu", {"result": "no"})
    published = signer.public_keys()
    assert set(published) >= {done.old_kid, done.new_kid}
    # Both answers verify with what is published, each under its own kid.
    for token in (before, after):
        _, claims = verify_compact(
            token, published.get, typ="tongban-answer+jwt", algorithms=("SM2",)
        )
        assert claims["iss"] == "https://gw"
    # The old key is published until the overlap ends, then not.
    wall.now += 601
    assert set(signer.public_keys()) == {done.new_kid}
    # The private half of the old key is gone: only its public JWK is kept.
    history = json.loads((tmp_path / "gateway-answers.history.json").read_text())
    assert all("d" not in r["jwk"] for r in history["retired"])
    assert load_private_key(path).public_key.key_id == done.new_kid
    assert json.loads((tmp_path / "gateway-answers.jwk.json").read_text())["kid"] == done.new_kid


def test_tokens_issued_before_a_rotation_verify_during_the_overlap(tmp_path: Path):
    path = tmp_path / "gateway-tokens.key"
    save_private_key(SM2PrivateKey.generate(), path)
    mono = Clock()
    followed = FollowedKey(path, interval=0.5, clock=mono)
    issuer = TokenIssuer(followed, issuer="https://gw", audience="https://gw/v1")
    verifier = issuer.verifier()
    old_token = issuer.issue("edu", ["checks"]).access_token
    rotate_key(path, publish_old_for=3660)
    mono.now += 1
    new_token = issuer.issue("edu", ["checks"]).access_token
    assert issuer.kid == load_private_key(path).public_key.key_id
    for token in (old_token, new_token):
        assert verifier.authenticate_request(f"Bearer {token}").client_id == "edu"


def test_rotating_twice_keeps_both_old_keys_and_drops_expired_ones(tmp_path: Path):
    path, first = _key(tmp_path)
    one = rotate_key(path, publish_old_for=100, now=1000)
    two = rotate_key(path, publish_old_for=100, now=1050)
    assert [r.kid for r in read_history(path)] == [first.public_key.key_id, one.new_kid]
    three = rotate_key(path, publish_old_for=100, now=1200)  # the first has expired by now
    assert [r.kid for r in read_history(path)] == [two.new_kid]
    assert three.old_kid == two.new_kid


def _rotate_in_child(path: str, out: Any) -> None:
    out.put(rotate_key(Path(path), publish_old_for=600).new_kid)


def test_concurrent_rotations_are_serialised(tmp_path: Path):
    path, _ = _key(tmp_path)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rotate_in_child, args=(str(path), out)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    new_kids = [out.get(timeout=5) for _ in procs]
    current = load_private_key(path).public_key.key_id
    retired = [r.kid for r in read_history(path)]
    # Four rotations in some order: every key but the last was retired exactly once.
    assert len(retired) == 4 and len(set(retired)) == 4
    assert current in new_kids and current not in retired
    assert set(new_kids) - {current} <= set(retired)


def test_refusals_change_nothing(tmp_path: Path):
    with pytest.raises(KeyRotationError, match="no key to rotate"):
        rotate_key(tmp_path / "absent.key", publish_old_for=10)
    path, key = _key(tmp_path)
    with pytest.raises(KeyRotationError, match="is the current key"):
        rotate_key(path, publish_old_for=10, new_key=key)
    (tmp_path / "gateway-answers.history.json").write_text('{"retired": [{"kid": 1}]}')
    with pytest.raises(KeyRotationError, match="malformed"):
        rotate_key(path, publish_old_for=10)
    assert load_private_key(path).public_key.key_id == key.public_key.key_id
    with pytest.raises(ValueError):
        rotate_key(path, publish_old_for=-1)


def test_keys_rotate_signing_records_then_rotates(tmp_path: Path, capsys: Any):
    init_data_dir(tmp_path, Settings(data_dir=tmp_path))
    keys = tmp_path / "keys"
    old = load_private_key(keys / "gateway-answers.key").public_key.key_id
    code = main(["keys", "rotate", "--signing", "gateway-answers", "--data-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["old_kid"] == old != report["new_kid"]
    assert load_private_key(keys / "gateway-answers.key").public_key.key_id == report["new_kid"]
    from tongban.wiring import open_audit_log

    audit = open_audit_log(Settings(data_dir=tmp_path))
    try:
        stored = audit.get(report["audit_index"])
        assert stored is not None
        entry = stored.entry
    finally:
        audit.close()
    assert (entry["kind"], entry["event"], entry["key"]) == ("lifecycle", "key.rotated",
                                                             "gateway-answers")  # fmt: skip
    assert (entry["old_kid"], entry["new_kid"]) == (old, report["new_kid"])
    # An unknown name is a usage error (argparse's one line, exit 2), never a traceback.
    with pytest.raises(SystemExit) as exited:
        main(["keys", "rotate", "--signing", "gateway", "--data-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_rotation_under_load_fails_no_check_and_every_answer_verifies(
    tmp_path: Path,
    small_population: Any,
    party_keys: dict[str, SM2PrivateKey],
    gateway_stores: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
):
    """The answer key and the token key are each rotated twice while checks run, by the
    operator's command against the running gateway's data directory: no check fails, and
    every answer, before and after, verifies with the gateway's JWK Set; `audit verify`
    passes afterwards. (The checkpoint key is not rotated here: see docs/security.md.)"""
    import base64
    import threading
    import time

    from tongban_client import verify_answer

    from .gateway_harness import build_harness

    for name, url in gateway_stores.items():  # the operator's command reads the same stores
        monkeypatch.setenv("TONGBAN_" + name.upper(), url)
    h = build_harness(tmp_path, small_population.urls, party_keys, **gateway_stores)
    numbers = [str(r["id_number"]) for r in small_population.subjects()[:40]]
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    basic = base64.b64encode(f"edu-bureau:{h.secrets['edu-bureau']}".encode()).decode()

    def run() -> None:
        client = h.app.test_client()
        i = 0
        while not stop.is_set():
            token = client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials", "scope": "checks"},
                headers={"Authorization": f"Basic {basic}"},
            )
            if token.status_code != 200:
                failures.append(f"token {token.status_code}")
                continue
            auth = {"Authorization": "Bearer " + token.get_json()["access_token"]}
            got = time.monotonic()
            # A token a second (the token endpoint's budget is 20 a client), used across a
            # rotation of its key too.
            while time.monotonic() - got < 1.0 and not stop.is_set():
                body = {"subject": {"id_number": numbers[i % len(numbers)]},
                        "claim": "birth_registered", "purpose": "school_enrollment",
                        "params": {}}  # fmt: skip
                i += 1
                resp = client.post("/v1/checks", json=body, headers=auth)
                if resp.status_code != 200:
                    failures.append(f"check {resp.status_code} {resp.get_data(as_text=True)}")
                else:
                    answers.append(resp.get_json())

    workers = [threading.Thread(target=run) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for name in ("gateway-answers", "gateway-tokens", "gateway-answers", "gateway-tokens"):
            time.sleep(1.2)
            code = main(["keys", "rotate", "--signing", name, "--data-dir", str(tmp_path)])
            assert code == 0, capsys.readouterr().err
        time.sleep(1.5)  # every worker has looked at the files again by now
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    try:
        assert failures == []
        jwks = h.client.get("/.well-known/jwks.json").get_json()
        kids = set()
        for answer in answers:
            claims = verify_answer(answer["answer"], jwks, audience="edu-bureau")
            assert claims["result"] == answer["result"]
            kids.add(_kid(answer["answer"]))
        assert len(kids) == 3, kids  # the first key and both of its successors signed
        assert len(answers) > 30
        assert h.gateway.checkpointer is not None
        h.gateway.checkpointer.checkpoint()
    finally:
        h.close()
    capsys.readouterr()
    from tongban.keys import KeyRing

    KeyRing(tmp_path / "keys").ensure("gateway")  # the harness keeps only the private key
    assert main(["audit", "verify", "--data-dir", str(tmp_path)]) == 0, capsys.readouterr().err


def _kid(jws: str) -> str:
    import base64

    header = jws.split(".", maxsplit=1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def test_two_administrators_rotate_the_answer_key_through_the_api(
    tmp_path: Path, small_population: Any, party_keys: dict[str, SM2PrivateKey]
):
    import time

    from .gateway_harness import build_harness

    h = build_harness(tmp_path, small_population.urls, party_keys)
    try:
        number = str(small_population.subjects()[0]["id_number"])
        body = {"subject": {"id_number": number}, "claim": "birth_registered",
                "purpose": "school_enrollment", "params": {}}  # fmt: skip
        before = _kid(h.check("edu-bureau", body).get_json()["answer"])
        proposed = h.client.post("/v1/admin/keys/gateway-answers/rotate", headers=h.auth("admin-1"))
        assert proposed.status_code == 202, proposed.get_data(as_text=True)
        url = f"/v1/admin/changes/{proposed.get_json()['change_id']}/approve"
        assert h.client.post(url, headers=h.auth("admin-1")).status_code == 403
        # Pending: nothing rotated yet.
        assert _kid(h.check("edu-bureau", body).get_json()["answer"]) == before
        done = h.client.post(url, headers=h.auth("admin-2"))
        assert done.status_code == 200 and done.get_json()["kind"] == "key-rotation"
        assert h.gateway.audit is not None
        rows, _ = h.gateway.audit.entries({"kind": "key-rotation.change.approved"}, limit=5)
        (entry,) = [r.entry for r in rows]
        assert entry["old_kid"] == before and entry["new_kid"] != before
        time.sleep(1.2)  # the followed key is looked at once a second
        after = h.check("edu-bureau", body).get_json()["answer"]
        assert _kid(after) == entry["new_kid"]
        kids = {k["kid"] for k in h.client.get("/.well-known/jwks.json").get_json()["keys"]}
        assert {before, entry["new_kid"]} <= kids
        unknown = h.client.post("/v1/admin/keys/gateway/rotate", headers=h.auth("admin-1"))
        assert unknown.status_code == 404
    finally:
        h.close()
