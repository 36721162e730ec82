"""The gateway ↔ adapter protocol over HTTP: Flask's test client and a real loopback server.

Every test that needs a department store runs on SQLite and on PostgreSQL (the
``population`` fixture). Requests are signed by the gateway key from ``party_keys``; the
refusal tests hand-craft tokens so that exactly one thing is wrong with each.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from tests.conftest import Generated
from tongban.adapters.client import (
    DepartmentClient,
    DepartmentRefused,
    HttpTransport,
    InProcessTransport,
    Transport,
    WireRequest,
    WireResponse,
)
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.protocol import (
    ANSWER_TYP,
    GATEWAY_ISSUER,
    REQUEST_LIFETIME,
    REQUEST_TYP,
    AdapterCore,
    RequestSigner,
)
from tongban.adapters.service import MAX_BODY, create_app
from tongban.adapters.store import DepartmentStore
from tongban.primitives.errors import PROBLEM_BASE, DepartmentUnavailable, Unauthenticated
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.jws import key_from_jwk, sign_compact, verify_compact
from tongban.primitives.problem import PROBLEM_JSON
from tongban.primitives.regions import DISTRICTS, PROVINCES
from tongban.primitives.wire import PredicateCall, Tri

DEPT = "police"
OTHER = "civil"
SERVED = (DEPT, OTHER)
# The predicate each served department answers in these tests, and the truth-oracle claim
# that equals it: police's district predicate asked for the subject's own district is the
# `household_in_district` claim; civil's marriage predicate is the `married` claim.
ORACLE = {
    "police": ("household_in_district", "household_in_district"),
    "civil": ("currently_married", "married"),
}
TRI = {True: Tri.TRUE, False: Tri.FALSE, None: Tri.UNKNOWN}
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
STRANGER = SM2PrivateKey.generate()  # a key no adapter trusts
JOSE = "application/jose"


# --- helpers ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: Any) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def _header(token: str) -> dict[str, Any]:
    segment = token.split(".", maxsplit=1)[0]
    value: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return value


def _call(row: Mapping[str, Any], department: str = DEPT) -> PredicateCall:
    predicate, _ = ORACLE[department]
    params = {"district": str(row["district"])} if department == "police" else {}
    return PredicateCall(predicate, str(row["id_number"]), params)


def _expected(row: Mapping[str, Any], department: str = DEPT) -> Tri:
    _, claim = ORACLE[department]
    claims: dict[str, bool | None] = row["claims"]
    return TRI[claims[claim]]


def _payload(
    call: PredicateCall,
    *,
    now: float | None = None,
    aud: str = DEPT,
    iss: str = GATEWAY_ISSUER,
    lifetime: int = REQUEST_LIFETIME,
    jti: str | None = None,
) -> dict[str, Any]:
    now = int(time.time() if now is None else now)
    return {
        "iss": iss,
        "aud": aud,
        "iat": now,
        "exp": now + lifetime,
        "jti": jti or secrets.token_urlsafe(16),
        "call": call.to_json(),
    }


def _sign(payload: Mapping[str, Any], key: SM2PrivateKey, *, typ: str = REQUEST_TYP) -> str:
    return sign_compact(payload, key, typ=typ, kid=key.public_key.key_id)


def _problem(resp: TestResponse | httpx.Response, status: int, slug: str) -> dict[str, Any]:
    """Assert an RFC 9457 refusal and return its body."""
    assert resp.status_code == status
    assert resp.headers["Content-Type"].split(";")[0] == PROBLEM_JSON
    body: dict[str, Any] = json.loads(
        resp.content if isinstance(resp, httpx.Response) else resp.data
    )
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert isinstance(body["detail"], str)
    assert body["instance"] == resp.headers["X-Request-Id"]
    return body


def _evaluate(client: FlaskClient, token: str | bytes, **headers: str) -> TestResponse:
    return client.post("/v1/evaluate", data=token, content_type=JOSE, headers=headers)


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    """Run ``app`` on a real loopback socket in a thread; stop it on exit."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _core(store: DepartmentStore, key: SM2PrivateKey, gateway: SM2PrivateKey) -> AdapterCore:
    # The signed layer in clear: these tests speak JWS to the adapter. The sealed wire
    # (docs/envelope.md) is tests/test_envelope.py's.
    keys = {gateway.public_key.key_id: gateway.public_key}
    return AdapterCore(Evaluator(store), key, keys, envelope=False)


# --- fixtures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    department: str
    call: PredicateCall
    expected: Tri


@pytest.fixture(scope="module")
def stores(population: Generated) -> Iterator[dict[str, DepartmentStore]]:
    made = {d: DepartmentStore(DEPARTMENTS[d], population.urls[d]) for d in SERVED}
    yield made
    for store in made.values():
        store.dispose()


@pytest.fixture(scope="module")
def cores(
    stores: dict[str, DepartmentStore], party_keys: dict[str, SM2PrivateKey]
) -> dict[str, AdapterCore]:
    return {d: _core(stores[d], party_keys[d], party_keys["gateway"]) for d in SERVED}


@pytest.fixture(scope="module")
def app(cores: dict[str, AdapterCore]) -> Flask:
    return create_app(cores[DEPT])


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def urls(cores: dict[str, AdapterCore]) -> Iterator[dict[str, str]]:
    with ExitStack() as stack:
        yield {d: stack.enter_context(serving(create_app(core))) for d, core in cores.items()}


@pytest.fixture(scope="module")
def http(urls: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=urls[DEPT], trust_env=False, timeout=5.0) as c:
        yield c


@pytest.fixture(scope="module")
def transport(urls: dict[str, str]) -> Iterator[HttpTransport]:
    t = HttpTransport(urls)
    yield t
    t.close()


@pytest.fixture(scope="module")
def signer(party_keys: dict[str, SM2PrivateKey]) -> RequestSigner:
    return RequestSigner(party_keys["gateway"])


def _client(
    signer: RequestSigner,
    transport: Transport,
    party_keys: dict[str, SM2PrivateKey],
    *,
    timeout: float = 5.0,
) -> DepartmentClient:
    keys = {d: party_keys[d].public_key for d in SERVED}
    return DepartmentClient(signer, transport, keys, timeout=timeout, envelope=False)


@pytest.fixture(scope="module")
def department_client(
    signer: RequestSigner, transport: HttpTransport, party_keys: dict[str, SM2PrivateKey]
) -> DepartmentClient:
    return _client(signer, transport, party_keys)


@pytest.fixture(scope="module")
def subjects(population: Generated) -> list[Subject]:
    """Per served department: the first subject of each truth value, plus a few more."""
    rows = population.subjects()
    picked: list[Subject] = []
    for dept in SERVED:
        _, claim = ORACLE[dept]
        seen: set[object] = set()
        for i, row in enumerate(rows):
            value = row["claims"][claim]  # type: ignore[index]
            if value not in seen or i < 3:
                seen.add(value)
                picked.append(Subject(dept, _call(row, dept), _expected(row, dept)))
    assert {s.expected for s in picked} == set(Tri)  # true, false and undetermined covered
    return picked


@pytest.fixture(scope="module")
def row(population: Generated) -> dict[str, Any]:
    """A real, valid subject of the police department."""
    return population.subjects()[0]


# --- the happy path ---------------------------------------------------------------------


def test_authenticated_request_returns_signed_answer(
    client: FlaskClient,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    call = _call(row)
    token, jti = signer.sign(DEPT, call)

    resp = _evaluate(client, token)

    assert resp.status_code == 200
    assert resp.mimetype == JOSE
    assert resp.headers["Cache-Control"] == "no-store"
    answer = resp.get_data(as_text=True)
    dept_key = party_keys[DEPT].public_key
    assert _header(answer) == {"alg": "SM2", "kid": dept_key.key_id, "typ": ANSWER_TYP}
    header, payload = verify_compact(
        answer, {dept_key.key_id: dept_key}.get, typ=ANSWER_TYP, algorithms=("SM2",)
    )
    assert header["typ"] == "tongban-predicate-answer+jwt"
    assert payload["iss"] == DEPT
    assert payload["aud"] == GATEWAY_ISSUER
    assert payload["in_reply_to"] == jti
    assert payload["predicate"] == call.predicate
    assert payload["result"] == _expected(row).value
    assert 0 < payload["exp"] - payload["iat"] <= REQUEST_LIFETIME
    # The answer carries the predicate's result and nothing about the subject.
    assert call.subject not in answer
    assert call.subject not in json.dumps(payload)


def test_answer_is_not_verified_by_another_departments_key(
    client: FlaskClient,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    token, _ = signer.sign(DEPT, _call(row))
    answer = _evaluate(client, token).get_data(as_text=True)
    other = party_keys[OTHER].public_key

    with pytest.raises(Unauthenticated):
        verify_compact(answer, lambda _kid: other, typ=ANSWER_TYP, algorithms=("SM2",))


def test_results_equal_the_truth_over_http(
    department_client: DepartmentClient, subjects: list[Subject]
):
    for s in subjects:
        answer = department_client.evaluate(s.department, s.call)

        assert answer.department == s.department
        assert answer.predicate == s.call.predicate
        assert answer.result is s.expected, s.call.predicate


def test_in_process_transport_gives_the_same_results(
    department_client: DepartmentClient,
    signer: RequestSigner,
    cores: dict[str, AdapterCore],
    party_keys: dict[str, SM2PrivateKey],
    subjects: list[Subject],
):
    in_process = _client(signer, InProcessTransport(cores), party_keys)

    over_http = [department_client.evaluate(s.department, s.call).result for s in subjects]
    direct = [in_process.evaluate(s.department, s.call).result for s in subjects]

    assert direct == over_http == [s.expected for s in subjects]


def test_text_plain_body_is_accepted(
    client: FlaskClient, signer: RequestSigner, row: dict[str, Any]
):
    token, _ = signer.sign(DEPT, _call(row))

    resp = client.post("/v1/evaluate", data=token + "\r\n", content_type="text/plain")

    assert resp.status_code == 200
    assert resp.mimetype == JOSE


# --- refusals: body and transport -------------------------------------------------------


def test_missing_body_is_unauthenticated(client: FlaskClient):
    # No token at all is a missing credential: 401, as the error tree says ("missing").
    body = _problem(_evaluate(client, b""), 401, "unauthenticated")

    assert body["detail"] == "malformed token"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"\xff\xfe\x00garbage", JOSE),  # not ASCII: cannot be a compact JWS
        (b'{"predicate": "registered_in_household"}', "application/json"),
        (b"a.b.c", "application/x-www-form-urlencoded"),
    ],
    ids=["binary", "json", "form"],
)
def test_garbage_body_is_bad_request(client: FlaskClient, data: bytes, content_type: str):
    resp = client.post("/v1/evaluate", data=data, content_type=content_type)

    body = _problem(resp, 400, "bad-request")
    assert "application/jose" in body["detail"]


@pytest.mark.parametrize("token", ["hello", "a.b", "a.b.c", "...", "e30.e30.e30"])
def test_ascii_garbage_token_is_unauthenticated(client: FlaskClient, token: str):
    body = _problem(_evaluate(client, token), 401, "unauthenticated")

    assert body["detail"] in {"malformed token", "algorithm not allowed"}


def test_oversized_body_is_413(client: FlaskClient):
    resp = _evaluate(client, b"A" * (MAX_BODY + 1))

    body = _problem(resp, 413, "payload-too-large")
    assert str(MAX_BODY) in body["detail"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405(client: FlaskClient, method: str):
    resp = client.open("/v1/evaluate", method=method)

    _problem(resp, 405, "method-not-allowed")


def test_405_names_the_allowed_methods(client: FlaskClient):
    resp = client.get("/v1/evaluate")

    assert resp.status_code == 405
    assert "POST" in resp.headers.get("Allow", "")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("POST", "/v1/evaluat"), ("GET", "/v2/predicates"), ("POST", "/admin")],
)
def test_unknown_path_is_404(client: FlaskClient, method: str, path: str):
    resp = client.open(path, method=method)

    _problem(resp, 404, "not-found")


# --- refusals: authentication -----------------------------------------------------------

TokenMaker = Callable[[dict[str, SM2PrivateKey], PredicateCall], str]


def _alg_none(keys: dict[str, SM2PrivateKey], call: PredicateCall) -> str:
    kid = keys["gateway"].public_key.key_id
    header = {"alg": "none", "typ": REQUEST_TYP, "kid": kid}
    return f"{_segment(header)}.{_segment(_payload(call))}."


def _forged_same_kid(keys: dict[str, SM2PrivateKey], call: PredicateCall) -> str:
    # A stranger's signature under the gateway's kid: the kid resolves, the signature fails.
    kid = keys["gateway"].public_key.key_id
    return sign_compact(_payload(call), STRANGER, typ=REQUEST_TYP, kid=kid)


def _signed(*, offset: float = 0.0, **changes: Any) -> TokenMaker:
    """Genuinely signed by the gateway, issued ``offset`` seconds from the moment of use."""

    def make(keys: dict[str, SM2PrivateKey], call: PredicateCall) -> str:
        payload = _payload(call, now=time.time() + offset, **changes)
        return _sign(payload, keys["gateway"])

    return make


def _with_claims(**claims: Any) -> TokenMaker:
    def make(keys: dict[str, SM2PrivateKey], call: PredicateCall) -> str:
        payload = {**_payload(call), **claims}
        for name, value in claims.items():
            if value is None:
                del payload[name]
        return _sign(payload, keys["gateway"])

    return make


def _wrong_typ(keys: dict[str, SM2PrivateKey], call: PredicateCall) -> str:
    return _sign(_payload(call), keys["gateway"], typ=ANSWER_TYP)


REFUSALS: dict[str, tuple[TokenMaker, str]] = {
    "alg-none": (_alg_none, "algorithm not allowed"),
    "untrusted-key": (lambda k, c: _sign(_payload(c), STRANGER), "unknown kid"),
    "forged-signature": (_forged_same_kid, "signature does not verify"),
    "department-key": (lambda k, c: _sign(_payload(c), k[DEPT]), "unknown kid"),
    "expired": (_signed(offset=-3600), "token expired"),
    "future-iat": (_signed(offset=120), "token issued in the future"),
    "wrong-audience": (_signed(aud=OTHER), "wrong audience"),
    "audience-list": (_with_claims(aud=[OTHER, "medins"]), "wrong audience"),
    "no-audience": (_with_claims(aud=None), "missing aud"),
    "wrong-typ": (_wrong_typ, "unexpected typ"),
    "wrong-issuer": (_signed(iss="tongban-impostor"), "unexpected issuer"),
    "lifetime-too-long": (_signed(lifetime=3600), "request lifetime too long"),
    "no-exp": (_with_claims(exp=None), "missing exp"),
    "no-iat": (_with_claims(iat=None), "missing iat"),
    "short-jti": (_with_claims(jti="abc"), "missing or malformed jti"),
    "no-jti": (_with_claims(jti=None), "missing or malformed jti"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_authentication_refusals(
    client: FlaskClient,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
    case: str,
):
    make, detail = REFUSALS[case]
    token = make(party_keys, _call(row))

    body = _problem(_evaluate(client, token), 401, "unauthenticated")

    assert body["detail"] == detail
    assert str(row["id_number"]) not in json.dumps(body)


def test_refusal_tokens_only_differ_in_the_fault(
    client: FlaskClient, party_keys: dict[str, SM2PrivateKey], row: dict[str, Any]
):
    """Positive control: the token builders above produce accepted tokens when unaltered,
    including an iat inside the five-second leeway."""
    for token in (
        _signed()(party_keys, _call(row)),
        _signed(offset=3)(party_keys, _call(row)),
        _with_claims(aud=[OTHER, DEPT])(party_keys, _call(row)),
    ):
        assert _evaluate(client, token).status_code == 200


def test_replayed_token_is_refused(client: FlaskClient, signer: RequestSigner, row: dict[str, Any]):
    token, _ = signer.sign(DEPT, _call(row))

    first = _evaluate(client, token)
    second = _evaluate(client, token)

    assert first.status_code == 200
    body = _problem(second, 401, "unauthenticated")
    assert body["detail"] == "request replayed"


def test_replay_is_refused_over_the_real_server(
    http: httpx.Client, signer: RequestSigner, row: dict[str, Any]
):
    token, _ = signer.sign(DEPT, _call(row))
    headers = {"Content-Type": JOSE}

    first = http.post("/v1/evaluate", content=token, headers=headers)
    second = http.post("/v1/evaluate", content=token, headers=headers)

    assert first.status_code == 200
    assert first.headers["Content-Type"] == JOSE
    assert _problem(second, 401, "unauthenticated")["detail"] == "request replayed"


# --- refusals: what is asked ------------------------------------------------------------


def test_unknown_predicate(client: FlaskClient, signer: RequestSigner, row: dict[str, Any]):
    # civil's predicate sent to police
    token, _ = signer.sign(DEPT, PredicateCall("currently_married", str(row["id_number"])))

    body = _problem(_evaluate(client, token), 400, "unknown-predicate")

    assert str(row["id_number"]) not in json.dumps(body)


@pytest.mark.parametrize(
    "params",
    [
        {"district": "150102", "colour": "red"},  # a name the predicate does not take
        {"district": "999999"},  # a value outside the enumeration
        {"district": "15010"},
        {},  # a required parameter missing
        {"province": "15"},  # another predicate's parameter
    ],
    ids=["unknown-name", "unenumerated", "prefix", "missing", "other-predicates"],
)
def test_unknown_or_unenumerated_parameter(
    client: FlaskClient, signer: RequestSigner, row: dict[str, Any], params: dict[str, str]
):
    call = PredicateCall("household_in_district", str(row["id_number"]), params)
    token, _ = signer.sign(DEPT, call)

    body = _problem(_evaluate(client, token), 400, "unknown-parameter")

    assert "999999" not in body["detail"]


def test_non_string_parameter_is_bad_request(
    client: FlaskClient, party_keys: dict[str, SM2PrivateKey], row: dict[str, Any]
):
    payload = _payload(_call(row))
    payload["call"]["params"] = {"district": 150102}

    _problem(_evaluate(client, _sign(payload, party_keys["gateway"])), 400, "bad-request")


@pytest.mark.parametrize("params", ["district", 150102], ids=["string", "number"])
def test_non_object_params_is_bad_request(
    client: FlaskClient, party_keys: dict[str, SM2PrivateKey], row: dict[str, Any], params: Any
):
    payload = _payload(_call(row))
    payload["call"]["params"] = params

    _problem(_evaluate(client, _sign(payload, party_keys["gateway"])), 400, "bad-request")


def _invalid_numbers(number: str) -> dict[str, str]:
    """Variants of a real number, each invalid for a different reason."""
    wrong_check = "0" if number[17] != "0" else "1"
    return {
        "bad_check_digit": number[:17] + wrong_check,
        "bad_length": number[:17],
        "bad_date": number[:10] + "13" + number[12:],
        "bad_format": number[:16] + "A" + number[17],
    }


@pytest.mark.parametrize("reason", ["bad_check_digit", "bad_length", "bad_date", "bad_format"])
def test_invalid_id_number_is_refused_without_echo(
    client: FlaskClient, signer: RequestSigner, row: dict[str, Any], reason: str
):
    bad = _invalid_numbers(str(row["id_number"]))[reason]
    token, _ = signer.sign(DEPT, PredicateCall("registered_in_household", bad))

    resp = _evaluate(client, token)

    body = _problem(resp, 422, "invalid-id-number")
    assert body["reason"] == reason
    text = resp.get_data(as_text=True)
    assert bad not in text
    assert bad[:14] not in text  # not even region + birth date


def test_predicate_is_checked_before_the_subject(
    client: FlaskClient, signer: RequestSigner, row: dict[str, Any]
):
    bad = _invalid_numbers(str(row["id_number"]))["bad_check_digit"]
    token, _ = signer.sign(DEPT, PredicateCall("no_such_predicate", bad))

    _problem(_evaluate(client, token), 400, "unknown-predicate")


# --- request ids ------------------------------------------------------------------------


def test_every_response_has_a_request_id(
    client: FlaskClient, signer: RequestSigner, row: dict[str, Any]
):
    token, _ = signer.sign(DEPT, _call(row))
    responses = [
        _evaluate(client, token),
        _evaluate(client, token),  # replay: 401
        _evaluate(client, b""),
        client.get("/v1/evaluate"),
        client.get("/nowhere"),
        client.get("/healthz"),
        client.get("/v1/predicates"),
        client.get("/.well-known/jwks.json"),
    ]

    ids = [r.headers.get("X-Request-Id", "") for r in responses]

    assert all(REQUEST_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("incoming", ["req-0123456789", "a.b_c-D.e_F", "x" * 64])
def test_well_formed_request_id_is_echoed(client: FlaskClient, incoming: str):
    ok = client.get("/healthz", headers={"X-Request-Id": incoming})
    refused = _evaluate(client, b"", **{"X-Request-Id": incoming})

    assert ok.headers["X-Request-Id"] == incoming
    assert refused.headers["X-Request-Id"] == incoming
    assert _problem(refused, 401, "unauthenticated")["instance"] == incoming


@pytest.mark.parametrize(
    "incoming",
    ["short", "x" * 65, "has space in it", "id;drop=1", "abc/def/ghi", "身份证号码12345"],
)
def test_malformed_request_id_is_replaced(client: FlaskClient, incoming: str):
    resp = _evaluate(client, b"", **{"X-Request-Id": incoming.encode().decode("latin-1")})

    rid = resp.headers["X-Request-Id"]
    assert rid != incoming
    assert REQUEST_ID.fullmatch(rid)
    assert incoming.strip() not in resp.get_data(as_text=True)


def test_request_id_over_the_real_server(http: httpx.Client):
    echoed = http.get("/healthz", headers={"X-Request-Id": "trace-abcdef12"})
    replaced = http.get("/healthz", headers={"X-Request-Id": "bad id"})
    minted = http.post("/v1/evaluate", content=b"", headers={"Content-Type": JOSE})

    assert echoed.headers["X-Request-Id"] == "trace-abcdef12"
    assert REQUEST_ID.fullmatch(replaced.headers["X-Request-Id"])
    assert replaced.headers["X-Request-Id"] != "bad id"
    assert _problem(minted, 401, "unauthenticated")["instance"] == minted.headers["X-Request-Id"]


# --- the real server --------------------------------------------------------------------


def test_real_server_answers_and_refuses(
    http: httpx.Client,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    token, jti = signer.sign(DEPT, _call(row))
    headers = {"Content-Type": JOSE, "Accept": JOSE}

    ok = http.post("/v1/evaluate", content=token, headers=headers)
    expired = http.post(
        "/v1/evaluate", content=_signed(offset=-600)(party_keys, _call(row)), headers=headers
    )
    wrong_aud = http.post(
        "/v1/evaluate", content=signer.sign(OTHER, _call(row))[0], headers=headers
    )
    too_big = http.post("/v1/evaluate", content=b"A" * (MAX_BODY + 1), headers=headers)
    wrong_method = http.get("/v1/evaluate")
    nowhere = http.get("/v1/nothing-here")

    assert ok.status_code == 200
    assert ok.headers["Content-Type"] == JOSE
    assert _header(ok.text)["typ"] == ANSWER_TYP
    dept_key = party_keys[DEPT].public_key
    _, payload = verify_compact(
        ok.text, {dept_key.key_id: dept_key}.get, typ=ANSWER_TYP, algorithms=("SM2",)
    )
    assert payload["in_reply_to"] == jti
    assert _problem(expired, 401, "unauthenticated")["detail"] == "token expired"
    assert _problem(wrong_aud, 401, "unauthenticated")["detail"] == "wrong audience"
    _problem(too_big, 413, "payload-too-large")
    _problem(wrong_method, 405, "method-not-allowed")
    _problem(nowhere, 404, "not-found")


def test_predicates_lists_enumerated_params(http: httpx.Client):
    resp = http.get("/v1/predicates")

    assert resp.status_code == 200
    doc = resp.json()
    assert doc["department"] == DEPT
    listed = {p["name"]: p for p in doc["predicates"]}
    assert set(listed) == set(DEPARTMENTS[DEPT].predicates)
    assert listed["registered_in_household"]["params"] == {}
    assert listed["household_in_district"]["params"] == {"district": list(DISTRICTS)}
    assert listed["household_in_province"]["params"] == {"province": list(PROVINCES)}
    assert all(p["description"] for p in listed.values())


def test_jwks_key_verifies_answers(http: httpx.Client, signer: RequestSigner, row: dict[str, Any]):
    jwks = http.get("/.well-known/jwks.json")
    token, _ = signer.sign(DEPT, _call(row))
    answer = http.post("/v1/evaluate", content=token, headers={"Content-Type": JOSE}).text

    assert jwks.status_code == 200
    (jwk,) = jwks.json()["keys"]
    assert "d" not in jwk
    key = key_from_jwk(jwk)
    header, payload = verify_compact(
        answer, {jwk["kid"]: key}.get, typ=ANSWER_TYP, algorithms=("SM2",)
    )
    assert header["kid"] == jwk["kid"]
    assert payload["result"] == _expected(row).value


def test_healthz_over_the_real_server(http: httpx.Client, department_client: DepartmentClient):
    resp = http.get("/healthz")

    assert resp.status_code == 200
    assert resp.json()["status"] == "ok"
    assert resp.json()["department"] == DEPT
    report = department_client.health(DEPT)
    assert report["reachable"] is True
    assert report["status"] == "ok"


# --- the client side --------------------------------------------------------------------


class ReplayingTransport:
    """Delegates to a real transport, but answers every request after the first with the
    first answer: an attacker on the path feeding the gateway an old, genuine answer."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.first: WireResponse | None = None

    def handle_request(self, department: str, request: WireRequest, timeout: float) -> WireResponse:
        if request.path != "/v1/evaluate":
            return self.inner.handle_request(department, request, timeout)
        if self.first is None:
            self.first = self.inner.handle_request(department, request, timeout)
        return self.first


def test_client_rejects_answer_to_another_request(
    signer: RequestSigner,
    transport: HttpTransport,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    client = _client(signer, ReplayingTransport(transport), party_keys)
    client.evaluate(DEPT, _call(row))

    with pytest.raises(Unauthenticated, match="does not match the request"):
        client.evaluate(DEPT, _call(row))


def test_client_rejects_answer_signed_by_the_wrong_department_key(
    stores: dict[str, DepartmentStore],
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    # An impostor answers for police with health's key; the gateway knows police's key.
    impostor = _core(stores[DEPT], party_keys["health"], party_keys["gateway"])
    with serving(create_app(impostor)) as url:
        transport = HttpTransport({DEPT: url})
        try:
            client = _client(signer, transport, party_keys)

            with pytest.raises(Unauthenticated):
                client.evaluate(DEPT, _call(row))
        finally:
            transport.close()


def test_client_maps_a_refusal_to_department_refused(
    department_client: DepartmentClient, row: dict[str, Any]
):
    with pytest.raises(DepartmentRefused) as info:
        department_client.evaluate(DEPT, PredicateCall("currently_married", str(row["id_number"])))

    assert info.value.status == 502
    assert info.value.type.endswith("/department-refused")


def test_department_down_is_unavailable_quickly(
    signer: RequestSigner, party_keys: dict[str, SM2PrivateKey], row: dict[str, Any]
):
    transport = HttpTransport({DEPT: f"http://127.0.0.1:{_closed_port()}"})
    try:
        client = _client(signer, transport, party_keys, timeout=0.5)
        started = time.monotonic()

        with pytest.raises(DepartmentUnavailable):
            client.evaluate(DEPT, _call(row))
        health = client.health(DEPT)

        assert time.monotonic() - started < 3.0
        assert health == {"reachable": False}
    finally:
        transport.close()


def test_unconfigured_department_is_unavailable(
    department_client: DepartmentClient, row: dict[str, Any]
):
    with pytest.raises(DepartmentUnavailable):
        department_client.evaluate("medins", _call(row))


# --- store failures ---------------------------------------------------------------------


@pytest.fixture
def broken_store(tmp_path: Path) -> Iterator[DepartmentStore]:
    """A police store that declares its reference date but has lost its tables, so the
    first query about a subject fails inside SQLAlchemy (with the subject as a parameter)."""
    url = f"sqlite:///{tmp_path / 'police.db'}"
    engine = create_engine(url)
    DEPARTMENTS[DEPT].table("meta").create(engine)
    engine.dispose()
    store = DepartmentStore(DEPARTMENTS[DEPT], url)
    store.set_meta("reference_date", "2024-06-30")
    yield store
    store.dispose()


def test_store_failure_is_503_store_unavailable(
    broken_store: DepartmentStore,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    client = create_app(_core(broken_store, party_keys[DEPT], party_keys["gateway"])).test_client()
    token, _ = signer.sign(DEPT, _call(row))

    body = _problem(_evaluate(client, token), 503, "store-unavailable")

    assert str(row["id_number"]) not in json.dumps(body)


def test_unreachable_store_is_503_store_unavailable(
    tmp_path: Path, signer: RequestSigner, party_keys: dict[str, SM2PrivateKey], row: dict[str, Any]
):
    store = DepartmentStore(DEPARTMENTS[DEPT], f"sqlite:///{tmp_path / 'missing' / 'police.db'}")
    try:
        app = create_app(_core(store, party_keys[DEPT], party_keys["gateway"]))
        token, _ = signer.sign(DEPT, _call(row))

        _problem(_evaluate(app.test_client(), token), 503, "store-unavailable")
    finally:
        store.dispose()


def test_unreachable_store_fails_healthz(tmp_path: Path, party_keys: dict[str, SM2PrivateKey]):
    store = DepartmentStore(DEPARTMENTS[DEPT], f"sqlite:///{tmp_path / 'missing' / 'police.db'}")
    try:
        app = create_app(_core(store, party_keys[DEPT], party_keys["gateway"]))

        _problem(app.test_client().get("/healthz"), 503, "store-unavailable")
    finally:
        store.dispose()


# --- no personal data in logs -----------------------------------------------------------


def test_refused_requests_log_no_id_number(
    caplog: pytest.LogCaptureFixture,
    client: FlaskClient,
    http: httpx.Client,
    broken_store: DepartmentStore,
    signer: RequestSigner,
    party_keys: dict[str, SM2PrivateKey],
    row: dict[str, Any],
):
    number = str(row["id_number"])
    bad = _invalid_numbers(number)["bad_check_digit"]
    replayed, _ = signer.sign(DEPT, _call(row))
    _evaluate(client, replayed)
    broken = create_app(_core(broken_store, party_keys[DEPT], party_keys["gateway"]))
    caplog.set_level(logging.DEBUG)
    tokens = [
        replayed,
        signer.sign(DEPT, PredicateCall("currently_married", number))[0],
        signer.sign(DEPT, PredicateCall("household_in_district", number, {"d": "1"}))[0],
        signer.sign(DEPT, PredicateCall("registered_in_household", bad))[0],
        signer.sign(OTHER, _call(row))[0],
        _signed(offset=-600)(party_keys, _call(row)),
        _sign(_payload(_call(row)), STRANGER),
    ]

    statuses = [_evaluate(client, t).status_code for t in tokens]
    statuses += [
        http.post("/v1/evaluate", content=t, headers={"Content-Type": JOSE}).status_code
        for t in tokens[1:]
    ]
    statuses.append(_evaluate(broken.test_client(), signer.sign(DEPT, _call(row))[0]).status_code)

    assert all(s >= 400 for s in statuses), statuses
    names = {r.name for r in caplog.records}
    assert "tongban.adapter" in names  # the 503 was logged
    assert "werkzeug" in names  # so were the real server's access lines
    for record in caplog.records:
        assert number not in record.getMessage()
        assert bad not in record.getMessage()
    assert number not in caplog.text
    assert bad not in caplog.text


def test_one_transport_method_and_the_in_process_one_is_the_adapters_own_app(
    transport: HttpTransport, cores: dict[str, AdapterCore]
):
    """The seam is one method (Transport.handle_request, httpx's shape); the in-process
    transport runs the adapter's real WSGI app, so a request it cannot serve fails there
    exactly as over HTTP: same status, same problem type, same health body."""
    from tongban.adapters.client import health, send

    assert [n for n in vars(Transport) if not n.startswith("_")] == ["handle_request"]
    in_process = InProcessTransport(cores)
    huge = "x" * (70 * 1024)  # past the adapter's MAX_BODY
    for token, status in (("not a jws", 401), (huge, 413)):
        over_http, here = send(transport, DEPT, token, 5.0), send(in_process, DEPT, token, 5.0)
        assert over_http[0] == here[0] == status
        assert json.loads(over_http[1])["type"] == json.loads(here[1])["type"]
    unknown = WireRequest("GET", "/v1/no-such-route")
    a, b = (
        transport.handle_request(DEPT, unknown, 5.0),
        in_process.handle_request(DEPT, unknown, 5.0),
    )
    assert a.status == b.status == 404 and json.loads(a.body)["type"] == json.loads(b.body)["type"]
    assert health(transport, DEPT, 5.0) == health(in_process, DEPT, 5.0)
    with pytest.raises(DepartmentUnavailable):
        in_process.handle_request("nowhere", unknown, 5.0)
