"""The requester SDK (``client/``, ``tongban_client``) against a real gateway over HTTP.

A whole gateway (real adapter cores over the generated population, witnesses, the audit
log) is served by werkzeug on a loopback socket, with its public URL the served one, so
the SDK speaks to it exactly as a requester would: tokens from ``/oauth/token``
(client_secret_basic and private_key_jwt with SM2 and ES256), checks, batches, problems,
signed answers verified offline, and audit proofs against checkpoints verified with a
pinned key. The CLI is run in-process and as a process; one slow test installs the SDK
alone into a fresh virtual environment.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import json
import math
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from werkzeug.serving import make_server

import tongban.client  # the server's name for the SDK (in a checkout it finds client/src)
from tests.gateway_harness import in_process_departments
from tongban import pki
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.store import DepartmentStore
from tongban.audit.merkle import MerkleTree
from tongban.audit.note import Checkpoint as ServerCheckpoint
from tongban.audit.note import SignedNote, sign_line
from tongban.config import Settings
from tongban.gateway.app import create_app
from tongban.gateway.oauth import AuthMethod
from tongban.gateway.services import Gateway
from tongban.keys import KeyRing
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.idnumber import make_id
from tongban.primitives.jws import jwks as server_jwks
from tongban.provision import migrate
from tongban.wiring import build_gateway

from .conftest import Generated

sdk: Any = importlib.import_module("tongban_client")
sdk_cli: Any = importlib.import_module("tongban_client.cli")

ROOT = Path(__file__).resolve().parent.parent
CLIENT_SRC = ROOT / "client" / "src"
SUBJECT_BURST = 6  # per (requester, subject): small, so the rate-limit test is quick
SM2_CLIENT_KEY = SM2PrivateKey.generate()
P256_CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
BAD_ID = make_id("110105", dt.date(1990, 5, 17), 123)[:-1] + "0"  # wrong check digit


@dataclass
class Served:
    url: str
    app: Flask
    gateway: Gateway
    secrets: dict[str, str]
    party_keys: dict[str, SM2PrivateKey]
    truth: list[dict[str, Any]]
    keys_dir: Path
    taken: set[str]

    def checkpoint(self) -> None:
        """What the gateway's checkpointer does every few seconds: sign the current tree
        and gather the witnesses' cosignatures."""
        assert self.gateway.checkpointer is not None
        self.gateway.checkpointer.checkpoint()

    def subject(self, claim: str = "birth_registered", value: object = True) -> str:
        """An ID number not used by another test (the per-subject rate limit is small)
        whose truth for ``claim`` is ``value``."""
        for row in self.truth:
            number = row["id_number"]
            if number not in self.taken and row["claims"][claim] == value:
                self.taken.add(number)
                return str(number)
        raise AssertionError(f"no subject left with {claim} = {value}")

    def client(self, client_id: str = "edu-bureau", **options: Any) -> Any:
        if "private_key" not in options and client_id in self.secrets:
            options.setdefault("client_secret", self.secrets[client_id])
        options.setdefault("gateway_key", self.keys_dir / "gateway.jwk.json")
        return sdk.Client(self.url, client_id, **options)

    def jwks(self) -> dict[str, Any]:
        with sdk.Client(self.url, None) as anonymous:
            return dict(anonymous.jwks())


def _placeholder(environ: Any, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


@pytest.fixture(scope="module")
def served(
    small_population: Generated,
    party_keys: dict[str, SM2PrivateKey],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """The gateway of ``tongban gateway serve`` (build_gateway + create_app) over real
    adapter cores, on 127.0.0.1; its public URL is the served one, as the assertion
    audience and the answers' issuer must be."""
    tmp = tmp_path_factory.mktemp("sdk-gateway")
    server = make_server("127.0.0.1", 0, _placeholder, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    keys_dir = tmp / "keys"
    keys_dir.mkdir()
    gateway_key = party_keys["gateway"]
    ring = KeyRing(keys_dir)
    (keys_dir / "gateway.key").write_text(json.dumps({"kty": "SM2", "d": gateway_key.to_hex()}))
    ring.ensure("gateway")  # writes keys/gateway.jwk.json: the key a requester pins
    ring.ensure("idp")
    config = Settings(
        data_dir=tmp,
        public_url=url,
        checkpoint_interval=3600,
        rate_subject_burst=SUBJECT_BURST,
        rate_subject_per_second=0.01,
    )
    stores = {d: DepartmentStore(DEPARTMENTS[d], small_population.urls[d]) for d in DEPARTMENTS}
    migrate(config)
    gateway = build_gateway(
        config,
        transport=in_process_departments(config, stores, party_keys),
        department_keys={d: party_keys[d].public_key for d in DEPARTMENTS},
        start=False,
    )
    assert gateway.oauth is not None
    registry = gateway.oauth.registry
    secrets = {
        cid: str(registry.register_client(cid, cid, scopes=scopes).secret)
        for cid, scopes in {
            "edu-bureau": ("checks", "checks:batch"),
            "insurer-a": ("checks",),
        }.items()
    }
    registry.register_client(
        "bank-sm", "Bank (SM2)", scopes=["checks"], auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks=server_jwks({"sm-1": SM2_CLIENT_KEY.public_key}), alg="SM2",
    )  # fmt: skip
    registry.register_client(
        "bank-es", "Bank (ES256)", scopes=["checks"], auth_method=AuthMethod.PRIVATE_KEY_JWT,
        jwks=server_jwks({"es-1": P256_CLIENT_KEY.public_key()}), alg="ES256",
    )  # fmt: skip
    app = create_app(gateway)
    server.app = app
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield Served(
            url, app, gateway, secrets, party_keys, small_population.subjects(), keys_dir, set()
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        gateway.close()
        for store in stores.values():
            store.dispose()


@pytest.fixture(scope="module")
def edu(served: Served) -> Iterator[Any]:
    """One client for the tests that are not about tokens: the token endpoint's per-client
    budget (20, then one per 3 s) is shared by every client of the module."""
    with served.client() as gw:
        yield gw


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def dec(s: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    head, body, _ = token.split(".")
    return dec(head), dec(body)


def _b64(doc: dict[str, Any]) -> str:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --- packaging ----------------------------------------------------------------------------


def test_the_sdk_is_also_tongban_client_in_the_servers_package():
    alias: Any = tongban.client  # what it holds is known at run time only (a re-export)
    assert alias.Client is sdk.Client and alias.verify_answer is sdk.verify_answer
    assert set(alias.__all__) == set(sdk.__all__)
    assert "Client" in sdk.__all__ and "verify_answer" in sdk.__all__


def test_the_sdk_imports_nothing_of_the_server():
    code = (
        "import sys, tongban_client, tongban_client.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tongban', 'flask', 'sqlalchemy', 'werkzeug', 'pydantic'))\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CLIENT_SRC)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=CLIENT_SRC, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- tokens -------------------------------------------------------------------------------


def test_a_token_is_cached_then_renewed_before_it_expires(served: Served):
    clock = FakeClock()
    with served.client(clock=clock, renew_before=30) as gw:
        first = gw.access_token()
        assert gw.claims()  # uses the cached token
        assert gw.access_token() == first

        clock.now += 300 - 30 - 1  # the gateway's tokens live 300 s
        assert gw.access_token() == first
        clock.now += 2  # now within renew_before of expiry
        second = gw.access_token()
        assert second != first
        assert gw.claims()
        assert gw.access_token() == second


def test_a_cached_token_the_gateway_refuses_is_replaced_once(served: Served):
    with served.client() as gw:
        good = gw.access_token()
        head, body, sig = good.split(".")
        forged = f"{head}.{body}.{sig[:-4]}AAAA"  # the gateway answers 401 token-invalid
        gw._token = type(gw._token)(forged, math.inf)  # as if it went stale

        assert {c.name for c in gw.claims()} >= {"birth_registered"}
        assert gw.access_token() not in (forged, good)


@pytest.mark.parametrize(("client_id", "key", "kid"), [
    ("bank-sm", SM2_CLIENT_KEY, "sm-1"), ("bank-es", P256_CLIENT_KEY, "es-1"),
])  # fmt: skip
def test_private_key_jwt_with_sm2_and_es256(served: Served, client_id, key, kid):
    private = (
        {"kty": "SM2", "d": key.to_hex()}  # the gateway's own key file format
        if isinstance(key, SM2PrivateKey)
        else key
    )
    with served.client(client_id, private_key=private, key_id=kid) as gw:
        token = gw.access_token()
        assert gw.claims() == ()  # registered, but the demo policy grants it nothing
        assert gw.access_token() == token
        header, payload = _segments(token)
        assert header["typ"] == "at+jwt" and payload["client_id"] == client_id


def test_private_key_jwt_with_a_wrong_kid_or_key_is_unauthenticated(served: Served):
    mine = {"kty": "SM2", "d": SM2_CLIENT_KEY.to_hex()}
    with (
        served.client("bank-sm", private_key=mine, key_id="not-registered") as gw,
        pytest.raises(sdk.Unauthenticated) as refused,
    ):
        gw.access_token()
    # RFC 6749 section 5.2: 400, or 401 where the client authenticated with HTTP Basic.
    assert refused.value.status in (400, 401) and refused.value.extra["error"] == "invalid_client"
    assert refused.value.slug == "token-invalid"

    other = {"kty": "SM2", "d": SM2PrivateKey.generate().to_hex()}
    with (
        served.client("bank-sm", private_key=other, key_id="sm-1") as gw,
        pytest.raises(sdk.Unauthenticated),
    ):
        gw.claims()


def test_a_wrong_secret_is_a_typed_problem(served: Served):
    with (
        served.client("edu-bureau", client_secret="not-the-secret") as gw,
        pytest.raises(sdk.Unauthenticated) as refused,
    ):
        gw.check("birth_registered", "school_enrollment", served.subject())
    assert refused.value.slug in {"invalid_client", "token-invalid"}
    assert "not-the-secret" not in str(refused.value)


def test_options_are_checked_before_anything_is_sent(served: Served):
    with pytest.raises(ValueError, match="http"):
        sdk.Client("http://gateway.example", "x", client_secret="s")
    with pytest.raises(ValueError, match="one of"):
        sdk.Client(served.url, "x", client_secret="s", private_key=SM2_CLIENT_KEY.to_hex())
    with pytest.raises(ValueError, match="key_id"):
        sdk.Client(served.url, "x", private_key={"kty": "SM2", "d": SM2_CLIENT_KEY.to_hex()})
    with pytest.raises(ValueError, match="alg"):
        sdk.Client(served.url, "x", private_key=P256_CLIENT_KEY, alg="SM2")


# --- checks -------------------------------------------------------------------------------


def test_check_answers_and_its_sm2_answer_verifies_offline(served: Served, edu):
    yes, no = served.subject(value=True), served.subject(value=False)
    gw = edu
    result = gw.check("birth_registered", "school_enrollment", yes)
    negative = gw.check("birth_registered", "school_enrollment", no)
    jwks = gw.jwks()

    assert (result.result, result.value, negative.result) == ("yes", True, "no")
    assert yes not in repr(result)
    header, _ = _segments(result.answer)
    assert header["alg"] == "SM2" and header["typ"] == sdk.ANSWER_TYP
    payload = sdk.verify_answer(result.answer, jwks, audience="edu-bureau", issuer=served.url)
    assert payload["result"] == "yes" and payload["audit_index"] == result.audit_index
    assert payload["claim"] == "birth_registered" and yes not in json.dumps(payload)


def test_an_es256_answer_verifies_offline(served: Served, edu):
    gw = edu
    result = gw.check("birth_registered", "school_enrollment", served.subject(), answer_alg="ES256")
    assert _segments(result.answer)[0]["alg"] == "ES256"
    assert gw.verify_answer(result.answer)["result"] == "yes"


@pytest.fixture(scope="module")
def answers(served: Served, edu) -> dict[str, str]:
    gw = edu
    return {
        alg: gw.check(
            "birth_registered", "school_enrollment", served.subject(), answer_alg=alg
        ).answer
        for alg in ("SM2", "ES256")
    } | {"access_token": gw.access_token()}


def _reason(token: str, jwks: dict[str, Any], **options: Any) -> str:
    with pytest.raises(sdk.AnswerRejected) as rejected:
        sdk.verify_answer(token, jwks, **options)
    return str(rejected.value.reason)


def test_tampered_answers_are_rejected(served: Served, answers: dict[str, str]):
    jwks = served.jwks()
    for alg in ("SM2", "ES256"):
        head, body, sig = answers[alg].split(".")
        payload = _segments(answers[alg])[1] | {"result": "no"}
        assert _reason(f"{head}.{_b64(payload)}.{sig}", jwks) == "signature does not verify"
        flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
        assert _reason(f"{head}.{body}.{flipped}", jwks) == "signature does not verify"
        assert _reason(f"{head}.{body}", jwks) == "malformed token"


def test_answers_with_a_wrong_kid_typ_alg_or_time_are_rejected(
    served: Served, answers: dict[str, str]
):
    jwks = served.jwks()
    sm2, es256 = answers["SM2"], answers["ES256"]
    header, _ = _segments(sm2)
    _head, body, sig = sm2.split(".")

    renamed = {"keys": [k | {"kid": "x" + k["kid"]} for k in jwks["keys"]]}
    assert _reason(sm2, renamed) == "unknown kid"
    # An access token is signed by the gateway too, with a key in the same JWK Set: it is
    # another kind of token, refused by its typ.
    assert _reason(answers["access_token"], jwks) == "unexpected typ"
    retyped = _b64(header | {"typ": "JWT"})
    assert _reason(f"{retyped}.{body}.{sig}", jwks) == "unexpected typ"
    for alg in ("none", "HS256", "RS256", "ES384"):
        assert _reason(f"{_b64(header | {'alg': alg})}.{body}.", jwks) == "algorithm not allowed"
    # The SM2 answer's kid relabelled ES256 (and the reverse): never a cross-family verify.
    _es_head, es_body, es_sig = es256.split(".")
    relabelled = _b64(_segments(es256)[0] | {"alg": "SM2"})
    assert _reason(f"{relabelled}.{es_body}.{es_sig}", jwks) == "key does not match alg"
    assert _reason(f"{_b64(header | {'alg': 'ES256'})}.{body}.{sig}", jwks) == (
        "key does not match alg"
    )
    assert _reason(sm2, jwks, algorithms=("ES256",)) == "algorithm not allowed"

    later = time.time() + 3600
    assert _reason(sm2, jwks, now=later) == "answer expired"
    assert _reason(sm2, jwks, audience="insurer-a") == "wrong audience"
    assert sdk.verify_answer(sm2, jwks, now=time.time() + 60)["result"] == "yes"


def test_batch_answers_in_order_with_invalid_ids_named_not_echoed(served: Served, edu):
    yes, no = served.subject(value=True), served.subject(value=False)
    gw = edu
    batch = gw.batch(
        "birth_registered", "school_enrollment", [yes, BAD_ID, sdk.Subject(no)],
        answer_alg="ES256",
    )  # fmt: skip
    payload = gw.verify_answer(batch.answer)

    assert [i.result for i in batch.items] == ["yes", "invalid", "no"]
    assert [i.index for i in batch.items] == [0, 1, 2]
    assert batch[1].reason and BAD_ID not in repr(batch)
    assert [r["result"] for r in payload["results"]] == ["yes", "invalid", "no"]
    assert [r["audit_index"] for r in payload["results"]] == [i.audit_index for i in batch.items]
    assert "Subject(id_number=[redacted]" in repr(sdk.Subject(yes))


def test_claims_lists_what_the_client_may_ask(served: Served, edu):
    gw = edu
    claims = {c.name: c for c in gw.claims()}
    assert set(claims) == {"birth_registered", "household_in_district", "low_income_household"}
    purposes = {p.name: p for p in claims["birth_registered"].purposes}
    assert purposes["school_enrollment"].consent_required is False
    assert purposes["school_enrollment"].legal_basis
    assert "district" in claims["household_in_district"].params


# --- problems -----------------------------------------------------------------------------


def test_an_invalid_id_number_is_a_typed_problem_without_the_number(served: Served, edu):
    gw = edu
    with pytest.raises(sdk.InvalidIdNumber) as refused:
        gw.check("birth_registered", "school_enrollment", BAD_ID)

    problem = refused.value
    assert isinstance(problem, sdk.Problem) and problem.status == 422
    assert problem.slug == "invalid-id-number" and problem.type.endswith("/invalid-id-number")
    assert problem.detail
    everything = f"{problem} {problem!r} {problem.detail} {problem.title} {problem.extra}"
    assert BAD_ID not in everything and BAD_ID[:17] not in everything


def test_policy_denied_and_consent_required_are_typed(served: Served):
    with served.client("insurer-a") as gw:
        with pytest.raises(sdk.PolicyDenied) as denied:
            gw.check("birth_registered", "underwriting", served.subject())
        with pytest.raises(sdk.ConsentRequired) as consent:
            gw.check(
                "maternity_insurance_active",
                "insurance_claim",
                served.subject("maternity_insurance_active", True),
            )
    assert denied.value.status == 403 and isinstance(denied.value.audit_index, int)
    assert isinstance(consent.value, sdk.ConsentRefused) and consent.value.status == 403
    assert consent.value.slug == "consent-required"


def test_rate_limited_carries_retry_after(served: Served, edu):
    number = served.subject()
    gw = edu
    for _ in range(SUBJECT_BURST):
        gw.check("birth_registered", "school_enrollment", number)
    with pytest.raises(sdk.RateLimited) as limited:
        gw.check("birth_registered", "school_enrollment", number)
    assert limited.value.status == 429
    assert isinstance(limited.value.retry_after, int) and limited.value.retry_after > 0
    assert number not in str(limited.value) + repr(limited.value.extra)


def test_an_unreachable_gateway_is_a_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        sdk.Client(f"http://127.0.0.1:{port}", "x", client_secret="s", timeout=2) as gw,
        pytest.raises(sdk.TransportError),
    ):
        gw.claims()


def test_https_with_a_ca_bundle_and_refused_without_it(served: Served, tmp_path: Path):
    """The same gateway behind TLS with a certificate of its own CA: ``verify=`` that CA's
    file is trusted, the system's CAs are not."""
    pki.ensure(tmp_path, ["gateway"])
    tls = pki.files(tmp_path, "gateway")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    server = make_server("127.0.0.1", 0, served.app, threaded=True, ssl_context=context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    url = f"https://127.0.0.1:{server.server_port}"
    secret = served.secrets["insurer-a"]
    try:
        with sdk.Client(url, "insurer-a", client_secret=secret, verify=tls.ca) as gw:
            assert {c.name for c in gw.claims()} == {"maternity_insurance_active"}
        with (
            sdk.Client(url, "insurer-a", client_secret=secret) as gw,
            pytest.raises(sdk.TransportError),
        ):
            gw.claims()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    with pytest.raises(ValueError, match="CA bundle"):
        sdk.Client(url, "insurer-a", client_secret=secret, verify=tmp_path / "missing.pem")


# --- audit proofs -------------------------------------------------------------------------


def test_inclusion_of_a_check_against_a_checkpoint_verified_with_the_pinned_key(
    served: Served,
):
    witnesses = {d: served.party_keys[d].public_key.to_jwk() for d in DEPARTMENTS}
    served.checkpoint()
    with served.client(witness_keys=witnesses, witness_quorum=len(witnesses)) as gw:
        index = gw.check("birth_registered", "school_enrollment", served.subject()).audit_index
        with pytest.raises(sdk.NotCheckpointedYet):
            gw.verify_inclusion(index)
        served.checkpoint()
        checkpoint = gw.checkpoint()
        proven = gw.verify_inclusion(index)
        again = gw.verify_inclusion(index, checkpoint=checkpoint.text, leaf_hash=proven.leaf_hash)

    assert checkpoint.size > index and proven.root == checkpoint.root == again.root
    assert checkpoint.signers[0] == "tongban-gateway"
    assert set(checkpoint.signers[1:]) == set(DEPARTMENTS)
    note = SignedNote.parse(checkpoint.text)  # the server's own parser agrees
    assert note.checkpoint.root == checkpoint.root and note.checkpoint.size == checkpoint.size


def test_inclusion_is_only_for_your_own_entries(served: Served, edu):
    with served.client("insurer-a") as insurer, pytest.raises(sdk.PolicyDenied) as denied:
        insurer.check("birth_registered", "underwriting", served.subject())
    served.checkpoint()
    with pytest.raises(sdk.Forbidden) as refused:
        edu.verify_inclusion(denied.value.audit_index)
    assert refused.value.status == 403


def test_a_checkpoint_is_rejected_with_the_wrong_pinned_key(served: Served):
    served.checkpoint()
    stranger = SM2PrivateKey.generate().public_key.to_jwk()
    with served.client(gateway_key=stranger) as gw:
        with pytest.raises(sdk.CheckpointRejected):
            gw.checkpoint()
        with pytest.raises(sdk.CheckpointRejected):
            gw.verify_inclusion(0)
    quorum = {"health": stranger}
    with (
        served.client(witness_keys=quorum, witness_quorum=1) as gw,
        pytest.raises(sdk.CheckpointRejected, match="cosigned"),
    ):
        gw.checkpoint()
    with served.client(gateway_key=None) as gw, pytest.raises(ValueError, match="pinned"):
        gw.checkpoint()
    with served.client(gateway_key=None, trust_gateway_jwks=True) as gw:
        assert gw.checkpoint().size > 0  # opted in: a key of the gateway's own JWK Set


def test_a_pinned_key_may_be_a_pem(served: Served, tmp_path: Path):
    from tongsuopy.crypto import serialization
    from tongsuopy.crypto.asymciphers import ec as tongsuo_ec

    public = served.party_keys["gateway"].public_key
    key = tongsuo_ec.EllipticCurvePublicNumbers(public.x, public.y, tongsuo_ec.SM2()).public_key()
    pem = tmp_path / "gateway.pem"
    pem.write_bytes(
        key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    served.checkpoint()
    with served.client(gateway_key=pem) as gw:
        assert gw.checkpoint().size > 0


def test_consistency_between_two_checkpoints(served: Served, edu):
    gw = edu
    gw.check("birth_registered", "school_enrollment", served.subject())
    served.checkpoint()
    old = gw.checkpoint()
    for _ in range(3):
        gw.check("birth_registered", "school_enrollment", served.subject())
    served.checkpoint()
    new = gw.checkpoint()

    proven = gw.verify_consistency(old)
    assert (proven.old_size, proven.new_size) == (old.size, new.size) and new.size > old.size
    assert gw.verify_consistency(old.text, new.text).new_root == new.root
    assert gw.verify_consistency(new, new).new_size == new.size
    with pytest.raises(sdk.ProofRejected, match="fewer"):
        gw.verify_consistency(new, old)  # a log that shrank


def test_a_split_view_fails_the_consistency_proof(served: Served, edu):
    """A checkpoint signed with the real gateway key over another tree of the same history
    (what a gateway showing two logs would produce) is caught by the proof."""
    served.checkpoint()
    gw = edu
    real = gw.checkpoint()
    forged_root = bytes(32 - 1) + b"\x01"
    body = ServerCheckpoint(real.origin, real.size - 1, forged_root).body()
    forged = SignedNote(body, (sign_line(body, "tongban-gateway", served.party_keys["gateway"]),))
    old = gw.verify_checkpoint(forged.text())  # correctly signed...
    with pytest.raises(sdk.ProofRejected):
        gw.verify_consistency(old, real)  # ...but not of this log

    same_size = ServerCheckpoint(real.origin, real.size, forged_root).body()
    twin = SignedNote(
        same_size, (sign_line(same_size, "tongban-gateway", served.party_keys["gateway"]),)
    )
    with pytest.raises(sdk.ProofRejected):
        gw.verify_consistency(twin.text(), real)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33])
def test_merkle_verification_matches_the_logs_tree(size: int):
    leaves = [sdk.leaf_hash(f"entry {i}".encode()) for i in range(size)]
    tree = MerkleTree(leaves)
    root = tree.root()
    for index in range(size):
        proof = tree.inclusion_proof(index, size)
        assert sdk.root_from_inclusion(index, size, leaves[index], proof) == root
        if proof:
            bent = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
            assert sdk.root_from_inclusion(index, size, leaves[index], bent) != root
            with pytest.raises(sdk.ProofRejected):
                sdk.root_from_inclusion(index, size, leaves[index], proof[:-1])
    for first in range(1, size + 1):
        proof = tree.consistency_proof(first, size)
        assert sdk.root_from_consistency(first, size, tree.root(first), proof) == root
        if proof:  # a wrong first root: refused, or leading to another second root
            try:
                implied = sdk.root_from_consistency(first, size, bytes(32), proof)
            except sdk.ProofRejected:
                continue
            assert implied != root


# --- the CLI ------------------------------------------------------------------------------


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = sdk_cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("tongban-client: error: "), err
    assert "Traceback" not in err
    return err


def test_cli_check_then_verify_answer_and_inclusion(
    served: Served, capsys, monkeypatch, tmp_path: Path
):
    monkeypatch.setenv("TONGBAN_CLIENT_SECRET", served.secrets["edu-bureau"])
    base = ("--url", served.url, "--client-id", "edu-bureau")
    code, out, err = _cli(
        capsys, "check", "birth_registered", "school_enrollment",
        "--id-number", served.subject(), "--verify", *base,
    )  # fmt: skip
    assert code == 0, err
    answer = json.loads(out)
    assert answer["result"] == "yes" and answer["verified"]["result"] == "yes"

    saved = tmp_path / "answer.json"
    saved.write_text(out)
    jwks_url = f"{served.url}/.well-known/jwks.json"
    code, out, err = _cli(capsys, "verify-answer", str(saved), "--jwks", jwks_url)
    assert code == 0, err
    assert json.loads(out)["audit_index"] == answer["audit_index"]

    served.checkpoint()
    pinned = str(served.keys_dir / "gateway.jwk.json")
    code, out, err = _cli(
        capsys, "verify-inclusion", "--index", str(answer["audit_index"]), "--pinned-key", pinned,
        *base,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["verified"] is True

    state = tmp_path / "checkpoint.txt"
    for _ in range(2):
        code, out, err = _cli(
            capsys, "verify-consistency", "--url", served.url, "--pinned-key", pinned,
            "--state", str(state),
        )  # fmt: skip
        assert code == 0, err
    assert json.loads(out)["verified"] is True and "old_size" in json.loads(out)

    code, out, err = _cli(
        capsys, "check", "household_in_district", "school_enrollment",
        "--id-number", served.subject(), "--param", "district=110105", *base,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["result"] in {"yes", "no", "undetermined"}


def test_cli_batch_reads_ids_from_a_file_and_prints_no_id_number(
    served: Served, capsys, monkeypatch, tmp_path: Path
):
    monkeypatch.setenv("TONGBAN_CLIENT_SECRET", served.secrets["edu-bureau"])
    ids = [served.subject(), served.subject(value=False)]
    listing = tmp_path / "ids.txt"
    listing.write_text("\n".join([ids[0], "", ids[1] + ",", "not-an-id"]) + "\n")
    code, out, err = _cli(
        capsys, "batch", "birth_registered", "school_enrollment", "--ids", str(listing),
        "--verify", "--url", served.url, "--client-id", "edu-bureau",
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out)
    assert [r["result"] for r in doc["results"]] == ["yes", "no", "invalid"]
    assert [r["result"] for r in doc["verified"]["results"]] == ["yes", "no", "invalid"]
    assert not any(i in out + err for i in ids)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    code, out, err = _cli(
        capsys, "batch", "birth_registered", "school_enrollment", "--ids", str(empty),
        "--url", served.url, "--client-id", "edu-bureau",
    )  # fmt: skip
    assert code == 2 and err.strip() == "tongban-client: error: --ids: no ID numbers"


def test_cli_errors_are_one_line_without_the_id_number(
    served: Served, capsys, monkeypatch, tmp_path: Path
):
    monkeypatch.setenv("TONGBAN_CLIENT_SECRET", served.secrets["edu-bureau"])
    base = ("--url", served.url, "--client-id", "edu-bureau")

    code, _, err = _cli(
        capsys, "check", "birth_registered", "school_enrollment", "--id-number", BAD_ID, *base
    )
    assert code == 1 and "invalid-id-number" in _one_line(err) and BAD_ID not in err

    monkeypatch.delenv("TONGBAN_CLIENT_SECRET")
    code, _, err = _cli(capsys, "check", "c", "p", "--id-number", BAD_ID, *base)
    assert code == 2 and "TONGBAN_CLIENT_SECRET" in _one_line(err)

    code, _, err = _cli(capsys, "check", "c", "p", BAD_ID, *base)  # a stray positional
    assert code == 2 and BAD_ID not in _one_line(err)

    code, _, err = _cli(capsys, "verify-inclusion", "--index", "x", "--pinned-key", "k", *base)
    assert code == 2 and "--index" in _one_line(err)

    tampered = tmp_path / "tampered.jws"
    tampered.write_text("eyJhbGciOiJub25lIn0.e30.")
    code, _, err = _cli(capsys, "verify-answer", str(tampered), "--jwks", str(tmp_path / "no"))
    assert code == 2 and _one_line(err)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(served.jwks()))
    code, _, err = _cli(capsys, "verify-answer", str(tampered), "--jwks", str(jwks))
    assert code == 3 and "algorithm not allowed" in _one_line(err)

    stranger = tmp_path / "stranger.jwk.json"
    stranger.write_text(json.dumps(SM2PrivateKey.generate().public_key.to_jwk()))
    served.checkpoint()
    code, _, err = _cli(
        capsys, "verify-consistency", "--url", served.url, "--pinned-key", str(stranger),
        "--state", str(tmp_path / "state"),
    )  # fmt: skip
    assert code == 3 and "pinned gateway key" in _one_line(err)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("TONGBAN_CLIENT_SECRET", "s")
    code, _, err = _cli(capsys, "claims", "--url", closed, "--client-id", "x", "--timeout", "2")
    assert code == 1 and "unreachable" in _one_line(err)


def test_cli_as_a_process_never_prints_a_traceback(served: Served, tmp_path: Path):
    env = {
        **os.environ,
        "PYTHONPATH": str(CLIENT_SRC),
        "TONGBAN_URL": served.url,
        "TONGBAN_CLIENT_ID": "edu-bureau",
        "TONGBAN_CLIENT_SECRET": served.secrets["edu-bureau"],
    }
    runs = [
        ["check", "birth_registered", "school_enrollment", "--id-number", "-"],
        ["verify-answer", "-", "--jwks", f"{served.url}/.well-known/jwks.json"],
        ["verify-inclusion", "--index", "999999999", "--pinned-key", str(tmp_path / "none")],
    ]
    for argv in runs:
        done = subprocess.run(
            [sys.executable, "-m", "tongban_client", *argv], input=BAD_ID + "\n", env=env,
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode in (1, 2, 3), (argv, done.stderr)
        _one_line(done.stderr)
        assert BAD_ID not in done.stderr and done.stdout == ""


# --- the SDK alone ------------------------------------------------------------------------

ALONE = """
import importlib.util, json, sys
import tongban_client
from tongban_client import verify_answer
assert importlib.util.find_spec("flask") is None, "flask is installed"
assert importlib.util.find_spec("sqlalchemy") is None, "sqlalchemy is installed"
assert importlib.util.find_spec("tongban") is None, "the server is installed"
jws, jwks = json.load(open(sys.argv[1]))
print(verify_answer(jws, jwks)["result"])
"""


@pytest.mark.slow
def test_the_sdk_installs_and_verifies_alone_in_a_fresh_venv(
    served: Served, answers: dict[str, str], tmp_path: Path
):
    # From a copy, so that the build leaves no build/ or egg-info in the checkout.
    source = tmp_path / "client"
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    bundle = tmp_path / "answer.json"
    bundle.write_text(json.dumps([answers["SM2"], served.jwks()]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(python), "-c", ALONE, str(bundle)], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "yes"
    for module in ("flask", "sqlalchemy"):
        failed = subprocess.run(
            [str(python), "-c", f"import {module}"], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert failed.returncode != 0 and "ModuleNotFoundError" in failed.stderr

    cli = subprocess.run(
        [str(venv / "bin" / "tongban-client"), "verify-answer", str(tmp_path / "missing"),
         "--jwks", str(bundle)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cli.returncode == 2 and cli.stderr.startswith("tongban-client: error: ")

    # The script, in that venv: a token, a check and a batch against the gateway,
    # both answers verified offline, an inclusion and a consistency proof against
    # checkpoints verified with the pinned key (client/examples/quickstart.py). The
    # gateway here checkpoints when told: a thread plays its checkpointer meanwhile.
    served.checkpoint()
    ids = [served.subject(), served.subject(value=False), served.subject()]
    stop = threading.Event()

    def checkpointer() -> None:
        while not stop.wait(0.3):
            served.checkpoint()

    ticking = threading.Thread(target=checkpointer, daemon=True)
    ticking.start()
    try:
        run = subprocess.run(
            [str(python), str(ROOT / "client" / "examples" / "quickstart.py"), served.url,
             "edu-bureau", str(served.keys_dir / "gateway.jwk.json"), *ids],
            cwd=tmp_path, env={**env, "TONGBAN_CLIENT_SECRET": served.secrets["edu-bureau"]},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
    finally:
        stop.set()
        ticking.join(timeout=10)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[-1] == "ok"
    assert lines[1] == "check: yes, verified offline: yes"
    assert lines[2] == "batch: ['no', 'yes'], verified offline"
    assert lines[3].startswith("inclusion: entry ") and lines[4].startswith("consistency: ")
    assert not any(i in run.stdout + run.stderr for i in ids)
