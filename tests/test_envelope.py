"""The SM2/SM4 envelope (primitives/envelope.py, docs/envelope.md) and the sealed gateway <->
adapter protocol: round trips, every tamper refused without naming content, both ways
against gmssl's own SM2 encryption, bounded key reuse, answers under the request's key, and
nothing readable (ID numbers, the signed JSON) in the bytes on the wire."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import Generated
from tests.gateway_harness import Harness, build_harness
from tongban.adapters.client import (
    DepartmentClient,
    HttpTransport,
    InProcessTransport,
    WireRequest,
    WireResponse,
)
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.evaluate import Evaluator
from tongban.adapters.protocol import (
    ENVELOPE_PURPOSE,
    AdapterCore,
    RequestSigner,
    open_answer,
    seal_request,
)
from tongban.adapters.service import create_app
from tongban.adapters.store import DepartmentStore
from tongban.primitives.envelope import (
    WRAPPED_KEY_BYTES,
    Opener,
    Sealer,
    get_curve,
    sm2_decrypt,
    sm2_encrypt,
)
from tongban.primitives.errors import PROBLEM_BASE, EnvelopeRefused, TongbanError
from tongban.primitives.gm import SM2PrivateKey
from tongban.primitives.wire import PredicateCall, Tri

PURPOSE = "tongban-test"
SUBJECT = "150102199305160016"  # the ID number of the capture
SECRET = json.dumps(
    {"aud": "police", "batch": {"predicate": "registered_in_household", "subjects": [SUBJECT]}},
    separators=(",", ":"),
).encode()
CURVES = ("tongsuo", "gmssl")
RECIPIENT = SM2PrivateKey.generate()
OTHER = SM2PrivateKey.generate()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _flip(segment: str, index: int) -> str:
    """``segment`` (base64url) with one bit of its ``index``-th decoded byte flipped."""
    raw = bytearray(_unb64(segment))
    raw[index] ^= 0x01
    return _b64(bytes(raw))


def _parts(envelope: str) -> list[str]:
    return envelope.split(".")


def _refused(excinfo: pytest.ExceptionInfo[EnvelopeRefused], *needles: str) -> str:
    """The refusal's detail, which names the fault and nothing of the content."""
    detail = str(excinfo.value.detail)
    assert excinfo.value.slug == "envelope-refused"
    assert detail.startswith("envelope: ")
    for secret in (SUBJECT, "registered_in_household", "subjects", *needles):
        assert secret not in detail and secret not in str(excinfo.value)
    return detail


def _gmssl(private: SM2PrivateKey | None, public: SM2PrivateKey) -> Any:
    """gmssl's CryptSM2 in mode 1 (C1C3C2), the key set after construction: its
    constructor runs ``public_key.lstrip("04")``, eating leading 0/4 digits of x."""
    from gmssl import sm2

    crypt = sm2.CryptSM2(
        private_key="" if private is None else private.to_hex(), public_key="", mode=1
    )
    point = public.public_key
    crypt.public_key = f"{point.x:064x}{point.y:064x}"
    return crypt


def _lstrip_trap_key() -> SM2PrivateKey:
    """A key whose x, in hex, starts with 0 or 4 (what CryptSM2's lstrip("04") eats)."""
    while True:
        key = SM2PrivateKey.generate()
        if f"{key.public_key.x:064x}"[0] in "04":
            return key


# --- SM2 public-key encryption (GB/T 32918.4, C1C3C2) -------------------------------------


@pytest.mark.parametrize("curve", CURVES)
def test_sm2_encryption_round_trips_on_both_curves(curve: str) -> None:
    for message in (b"k" * 16, b"x", SECRET):
        ciphertext = sm2_encrypt(RECIPIENT.public_key, message, get_curve(curve))
        assert len(ciphertext) == 65 + 32 + len(message) and ciphertext[0] == 4
        for other in CURVES:
            assert sm2_decrypt(RECIPIENT, ciphertext, get_curve(other)) == message


@pytest.mark.parametrize("curve", CURVES)
def test_our_sm2_encryption_is_decrypted_by_gmssl(curve: str) -> None:
    for key in (RECIPIENT, _lstrip_trap_key()):
        message = b"0123456789abcdef"
        ciphertext = sm2_encrypt(key.public_key, message, get_curve(curve))
        # gmssl's mode 1 is C1 || C3 || C2 with C1 as x || y, without the 04 prefix.
        assert _gmssl(key, key).decrypt(ciphertext[1:]) == message


@pytest.mark.parametrize("curve", CURVES)
def test_gmssl_sm2_encryption_is_decrypted_by_ours(curve: str) -> None:
    for key in (RECIPIENT, _lstrip_trap_key()):
        message = b"fedcba9876543210"
        # Test only: CryptSM2.encrypt draws k from `random` (never used for sealing).
        ciphertext = b"\x04" + _gmssl(None, key).encrypt(message)
        assert sm2_decrypt(key, ciphertext, get_curve(curve)) == message


def test_sm2_decryption_refuses_off_curve_points_and_a_wrong_c3() -> None:
    ciphertext = bytearray(sm2_encrypt(RECIPIENT.public_key, b"k" * 16))
    for index in (0, 5, 40, 70, 100):  # prefix, x1, y1 (off the curve), C3, C2
        bad = bytearray(ciphertext)
        bad[index] ^= 0x01
        for curve in CURVES:
            with pytest.raises(ValueError, match="SM2 decryption failed"):
                sm2_decrypt(RECIPIENT, bytes(bad), get_curve(curve))
    with pytest.raises(ValueError, match="SM2 decryption failed"):
        sm2_decrypt(OTHER, bytes(ciphertext))


# --- the envelope ---------------------------------------------------------------------------


@pytest.mark.parametrize(("sealing", "opening"), [(a, b) for a in CURVES for b in CURVES])
def test_round_trip_and_reply(sealing: str, opening: str) -> None:
    sealer = Sealer(curve=get_curve(sealing))
    opener = Opener(RECIPIENT, curve=get_curve(opening))
    sealed = sealer.seal(RECIPIENT.public_key, SECRET, purpose=PURPOSE)
    header, wrapped, body = _parts(sealed.envelope)
    assert json.loads(_unb64(header)) == {
        "alg": "SM2-ENC",
        "enc": "SM4-GCM",
        "kid": RECIPIENT.public_key.key_id,
        "sid": sealed.sid,
    }
    assert len(_unb64(wrapped)) == WRAPPED_KEY_BYTES
    assert len(_unb64(body)) == 12 + len(SECRET) + 16
    opened = opener.open(sealed.envelope, purpose=PURPOSE)
    assert opened.plaintext == SECRET and not opened.cached
    reply = opened.seal_reply(b'{"results":["true"]}')
    head, nothing, _ = _parts(reply)
    assert nothing == ""
    assert json.loads(_unb64(head)) == {"alg": "SM4-REPLY", "enc": "SM4-GCM", "sid": sealed.sid}
    assert sealed.open_reply(reply) == b'{"results":["true"]}'
    with pytest.raises(RuntimeError, match="once"):
        opened.seal_reply(b"again")


def test_every_tamper_is_refused_naming_no_content() -> None:
    sealer, opener = Sealer(), Opener(RECIPIENT)
    good = sealer.seal(RECIPIENT.public_key, SECRET, purpose=PURPOSE)
    header, wrapped, body = _parts(good.envelope)
    members = json.loads(_unb64(header))

    def forged_header(**changes: str) -> str:
        text = json.dumps({**members, **changes}, separators=(",", ":"), sort_keys=True)
        return _b64(text.encode())

    tampered = {
        "header bit": (_flip(header, 0), "malformed"),
        "header name": (_flip(header, 3), "not sealed"),
        "header sid": (forged_header(sid=_b64(b"\x00" * 16)), "cannot be opened"),
        "header alg": (forged_header(alg="SM2-ENX"), "not sealed"),
        "header enc": (forged_header(enc="SM4-CBC"), "malformed header"),
        "header kid": (forged_header(kid=OTHER.public_key.key_id), "another key"),
        "wrapped C1": (f"{header}.{_flip(wrapped, 10)}.{body}", "cannot be opened"),
        "wrapped C3": (f"{header}.{_flip(wrapped, 70)}.{body}", "cannot be opened"),
        "wrapped C2": (f"{header}.{_flip(wrapped, 100)}.{body}", "cannot be opened"),
        "nonce": (f"{header}.{wrapped}.{_flip(body, 0)}", "cannot be opened"),
        "ciphertext": (f"{header}.{wrapped}.{_flip(body, 20)}", "cannot be opened"),
        "tag": (f"{header}.{wrapped}.{_flip(body, len(_unb64(body)) - 1)}", "cannot be opened"),
        "truncated": (good.envelope[:-8], "cannot be opened"),
        "short body": (f"{header}.{wrapped}.{_b64(b'x' * 20)}", "cannot be opened"),
        "no wrapped key": (f"{header}..{body}", "malformed wrapped key"),
        "two parts": (f"{header}.{wrapped}", "not sealed"),
        "padding": (good.envelope + "=", "malformed"),
        "not ascii base64": (f"{header}.{wrapped}.{body[:-1]}*", "malformed"),
    }
    for name, (changed, fault) in tampered.items():
        envelope = f"{changed}.{wrapped}.{body}" if name.startswith("header") else changed
        # Twice each: on the unwrapping path and with the good session key cached.
        for cached in (False, True):
            if cached:
                opener.open(good.envelope, purpose=PURPOSE)  # caches the good key
            with pytest.raises(EnvelopeRefused) as excinfo:
                opener.open(envelope, purpose=PURPOSE)
            detail = _refused(excinfo)
            assert cached or fault in detail, name
        opener.forget()
    # The right bytes for another purpose (or direction) do not open either.
    with pytest.raises(EnvelopeRefused) as excinfo:
        opener.open(good.envelope, purpose="tongban-other")
    assert "cannot be opened" in _refused(excinfo)


def test_an_envelope_to_another_key_is_refused() -> None:
    sealed = Sealer().seal(OTHER.public_key, SECRET, purpose=PURPOSE)
    with pytest.raises(EnvelopeRefused) as excinfo:
        Opener(RECIPIENT).open(sealed.envelope, purpose=PURPOSE)
    assert "sealed to another key" in _refused(excinfo)
    # Relabelled with our key id, the wrapped key still does not open with our key.
    header, wrapped, body = _parts(sealed.envelope)
    members = {**json.loads(_unb64(header)), "kid": RECIPIENT.public_key.key_id}
    relabelled = _b64(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    with pytest.raises(EnvelopeRefused) as excinfo:
        Opener(RECIPIENT).open(f"{relabelled}.{wrapped}.{body}", purpose=PURPOSE)
    assert "cannot be opened" in _refused(excinfo)
    # The right recipient opens it.
    assert Opener(OTHER).open(sealed.envelope, purpose=PURPOSE).plaintext == SECRET


def test_a_plain_jws_is_not_an_envelope(party_keys: dict[str, SM2PrivateKey]) -> None:
    token, _ = RequestSigner(party_keys["gateway"]).sign_batch(
        "police", "registered_in_household", {}, [SUBJECT]
    )
    with pytest.raises(EnvelopeRefused) as excinfo:
        Opener(RECIPIENT).open(token, purpose=ENVELOPE_PURPOSE)
    assert "not sealed" in _refused(excinfo)


def test_replies_are_bound_to_their_request_and_direction() -> None:
    sealer, opener = Sealer(), Opener(RECIPIENT)
    first = sealer.seal(RECIPIENT.public_key, b"first", purpose=PURPOSE)
    second = sealer.seal(RECIPIENT.public_key, b"second", purpose=PURPOSE)
    assert first.sid == second.sid  # one session key for both
    reply = opener.open(first.envelope, purpose=PURPOSE).seal_reply(b"to the first")
    with pytest.raises(EnvelopeRefused) as excinfo:
        second.open_reply(reply)  # same key, another request
    assert "cannot be opened" in _refused(excinfo)
    with pytest.raises(EnvelopeRefused) as excinfo:
        opener.open(reply, purpose=PURPOSE)  # a reply is not a request
    _refused(excinfo)
    with pytest.raises(EnvelopeRefused) as excinfo:
        first.open_reply(second.envelope)  # a request is not a reply
    assert "not a reply" in _refused(excinfo)
    other_session = Sealer().seal(RECIPIENT.public_key, b"first", purpose=PURPOSE)
    with pytest.raises(EnvelopeRefused) as excinfo:
        other_session.open_reply(reply)
    assert "not a reply" in _refused(excinfo)
    head, _, body = _parts(reply)
    for bad in (f"{head}..{_flip(body, 0)}", f"{head}..{_flip(body, 30)}", reply[:-4]):
        with pytest.raises(EnvelopeRefused):
            first.open_reply(bad)
    assert first.open_reply(reply) == b"to the first"


def test_key_reuse_is_bounded_by_count_and_age() -> None:
    now = [0.0]
    sealer = Sealer(max_messages=3, max_age=60.0, clock=lambda: now[0])
    opener = Opener(RECIPIENT)
    sealed = [sealer.seal(RECIPIENT.public_key, b"m", purpose=PURPOSE) for _ in range(7)]
    sids = [s.sid for s in sealed]
    assert sids[0] == sids[1] == sids[2] != sids[3] == sids[4] == sids[5] != sids[6]
    assert sealer.wrapped == 3
    nonces = {_unb64(_parts(s.envelope)[2])[:12] for s in sealed}
    assert len(nonces) == 7  # a fresh nonce each message
    for s in sealed:
        opener.open(s.envelope, purpose=PURPOSE)
    assert opener.unwrapped == 3  # once per session, then from the cache
    now[0] = 59.0
    assert sealer.seal(RECIPIENT.public_key, b"m", purpose=PURPOSE).sid == sids[6]
    now[0] = 60.0
    assert sealer.seal(RECIPIENT.public_key, b"m", purpose=PURPOSE).sid != sids[6]
    # Sessions are per recipient.
    assert sealer.seal(OTHER.public_key, b"m", purpose=PURPOSE).sid != sids[6]
    with pytest.raises(ValueError):
        Sealer(max_messages=0)


def test_the_recipient_cache_is_a_bounded_lru_of_vouched_keys() -> None:
    now = [0.0]
    opener = Opener(RECIPIENT, cache_size=2, max_age=100.0, clock=lambda: now[0])
    senders = [Sealer() for _ in range(3)]
    envelopes = [s.seal(RECIPIENT.public_key, b"m", purpose=PURPOSE).envelope for s in senders]
    # Not vouched for (remember=False): opened, but never cached.
    for envelope in envelopes:
        assert not opener.open(envelope, purpose=PURPOSE, remember=False).cached
    assert opener.cached_sessions == 0 and opener.unwrapped == 3
    for envelope in envelopes:
        opener.remember(opener.open(envelope, purpose=PURPOSE, remember=False))
    assert opener.cached_sessions == 2  # the least recently used one went
    assert opener.open(envelopes[2], purpose=PURPOSE).cached
    assert not opener.open(envelopes[0], purpose=PURPOSE).cached  # evicted: unwrapped again
    now[0] = 100.0
    assert not opener.open(envelopes[2], purpose=PURPOSE).cached  # too old: unwrapped again
    # The session id of a cached key with another wrapped key is refused, not re-keyed.
    header, _, body = _parts(envelopes[2])
    foreign = _parts(Sealer().seal(RECIPIENT.public_key, b"m", purpose=PURPOSE).envelope)[1]
    with pytest.raises(EnvelopeRefused) as excinfo:
        opener.open(f"{header}.{foreign}.{body}", purpose=PURPOSE)
    assert "cannot be opened" in _refused(excinfo)


def _encodings(needle: bytes) -> list[str]:
    """``needle`` as ASCII, hex (both cases) and base64url at each of the three alignments
    (for needles of 12 bytes or more: a shorter one's few characters occur by chance)."""
    out = [needle.decode("latin-1"), needle.hex(), needle.hex().upper()]
    for shift in range(3 if len(needle) >= 12 else 0):
        encoded = _b64(b"\x00" * shift + needle)
        # Drop the characters the leading bytes and the last partial group touch.
        start = (shift * 4 + 2) // 3
        out.append(encoded[start + 1 : -2])
    return out


def _assert_unreadable(wire: bytes, *needles: bytes) -> None:
    """No needle in ``wire`` (one message as sent) in any encoding, nor in the bytes its
    base64url segments decode to, nor in their hex."""
    text = wire.decode("latin-1")
    views = [text, text.lower()]
    for segment in text.split("."):
        try:
            raw = _unb64(segment)
        except (binascii.Error, ValueError):
            continue
        views += [raw.decode("latin-1"), raw.hex()]
    for needle in needles:
        for encoding in _encodings(needle):
            assert all(encoding not in view for view in views), (needle, encoding)


# --- the sealed protocol ------------------------------------------------------------------

DEPT = "police"


class Recording:
    """A transport that records what crosses it and lets a test change the answer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []
        self.tamper: Any = None

    def handle_request(self, department: str, request: WireRequest, timeout: float) -> WireResponse:
        resp: WireResponse = self.inner.handle_request(department, request, timeout)
        if request.path != "/v1/evaluate":
            return resp
        self.requests.append(request.body or b"")
        body = resp.body
        if self.tamper is not None:
            body = self.tamper(body)
        self.answers.append(body)
        return WireResponse(resp.status, body, resp.headers)


@pytest.fixture(scope="module")
def store(small_population: Generated) -> Iterator[DepartmentStore]:
    made = DepartmentStore(DEPARTMENTS[DEPT], small_population.urls[DEPT])
    yield made
    made.dispose()


@pytest.fixture(scope="module")
def subjects(small_population: Generated) -> list[str]:
    return [str(r["id_number"]) for r in small_population.subjects()[:40]]


def _core(
    store: DepartmentStore, party_keys: dict[str, SM2PrivateKey], **options: Any
) -> AdapterCore:
    gateway = party_keys["gateway"].public_key
    return AdapterCore(Evaluator(store), party_keys[DEPT], {gateway.key_id: gateway}, **options)


def _client(
    party_keys: dict[str, SM2PrivateKey], transport: Any, **options: Any
) -> DepartmentClient:
    keys = {DEPT: party_keys[DEPT].public_key}
    return DepartmentClient(RequestSigner(party_keys["gateway"]), transport, keys, **options)


def _plain(store: DepartmentStore, party_keys: dict[str, SM2PrivateKey]) -> DepartmentClient:
    """The same exchange with the envelope off at both ends (the benchmark's switch)."""
    core = _core(store, party_keys, envelope=False)
    return _client(party_keys, InProcessTransport({DEPT: core}), envelope=False)


def test_the_protocol_is_sealed_both_ways_and_nothing_is_readable(
    store: DepartmentStore, party_keys: dict[str, SM2PrivateKey], subjects: list[str]
) -> None:
    core = _core(store, party_keys)
    wire = Recording(InProcessTransport({DEPT: core}))
    client = _client(party_keys, wire)
    plain = _plain(store, party_keys)
    for subject in subjects[:5]:
        call = PredicateCall("registered_in_household", subject)
        assert client.evaluate(DEPT, call).result == plain.evaluate(DEPT, call).result
    batch = client.evaluate_batch(DEPT, "registered_in_household", {}, subjects)
    assert batch == plain.evaluate_batch(DEPT, "registered_in_household", {}, subjects)
    assert set(batch) <= {Tri.TRUE, Tri.FALSE, Tri.UNKNOWN}
    assert len(wire.requests) == len(wire.answers) == 6
    assert client.sealer is not None and client.sealer.wrapped == 1  # one session key
    assert core.opener is not None and core.opener.unwrapped == 1
    needles = [
        *(s.encode() for s in subjects),
        b"registered_in_household",
        b"tongban-predicate-request+jwt",
        b"tongban-predicate-answer+jwt",
        b'"subjects"',
        b'"results"',
        b'"in_reply_to"',
        b'"aud"',
        b'"iss"',
        b'"jti"',
    ]
    for message in wire.requests + wire.answers:
        _assert_unreadable(message, *needles)
        # The one piece of JSON is the envelope's own header: algorithms, ids.
        header = json.loads(_unb64(message.decode().split(".")[0]))
        assert set(header) <= {"alg", "enc", "kid", "sid"}


def test_the_adapter_refuses_an_unsealed_or_missealed_request(
    store: DepartmentStore,
    party_keys: dict[str, SM2PrivateKey],
    subjects: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tongban.adapter")
    core = _core(store, party_keys)
    http = create_app(core).test_client()
    signer = RequestSigner(party_keys["gateway"])
    token, _ = signer.sign_batch(DEPT, "registered_in_household", {}, subjects[:3])
    to_other = seal_request(Sealer(), party_keys["health"].public_key, token).envelope
    good = seal_request(Sealer(), party_keys[DEPT].public_key, token).envelope
    header, wrapped, body = good.split(".")
    for sent, fault in (
        (token, "not sealed"),
        (to_other, "sealed to another key"),
        (f"{header}.{wrapped}.{_flip(body, 40)}", "cannot be opened"),
    ):
        with pytest.raises(EnvelopeRefused, match=fault):
            core.handle(sent)
        resp = http.post("/v1/evaluate", data=sent, content_type="application/jose")
        assert resp.status_code == 401
        problem = resp.get_json()
        assert problem["type"] == PROBLEM_BASE + "envelope-refused"
        assert fault in problem["detail"]
        text = resp.get_data(as_text=True)
        assert all(s not in text for s in subjects[:3])
    logged = [r.getMessage() for r in caplog.records if r.name == "tongban.adapter"]
    assert len(logged) == 6 and all("envelope-refused" in m for m in logged)
    assert all(s not in m for m in logged for s in subjects)
    # A sealed request that opens but does not authenticate leaves no key in the cache.
    forged, _ = RequestSigner(OTHER).sign(DEPT, PredicateCall("registered_in_household", SUBJECT))
    with pytest.raises(TongbanError):
        core.handle(seal_request(Sealer(), party_keys[DEPT].public_key, forged).envelope)
    assert core.opener is not None and core.opener.cached_sessions == 0
    # The good one is answered, sealed.
    answer = http.post("/v1/evaluate", data=good, content_type="application/jose")
    assert answer.status_code == 200 and answer.mimetype == "application/jose"
    assert answer.get_data(as_text=True).split(".")[1] == ""  # a reply: nothing wrapped


def test_an_answer_that_does_not_open_is_an_error_never_an_answer(
    store: DepartmentStore, party_keys: dict[str, SM2PrivateKey], subjects: list[str]
) -> None:
    core = _core(store, party_keys)
    wire = Recording(InProcessTransport({DEPT: core}))
    client = _client(party_keys, wire)
    call = PredicateCall("registered_in_household", subjects[0])
    plain_answer = _core(store, party_keys, envelope=False)
    tampers = {
        "flipped": lambda b: b[:-3] + (b"A" if b[-3:-2] != b"A" else b"B") + b[-2:],
        "unsealed": lambda b: plain_answer.handle(
            RequestSigner(party_keys["gateway"]).sign(DEPT, call)[0]
        ).encode(),
        "replayed": lambda b: wire.answers[0] if wire.answers else b,
        "not ascii": lambda b: b"\xff" + b,
    }
    client.evaluate(DEPT, call)  # answers[0], for the replay
    for name, tamper in tampers.items():
        wire.tamper = tamper
        with pytest.raises(EnvelopeRefused):
            client.evaluate(DEPT, call)
        wire.tamper = None
        assert client.evaluate(DEPT, call).result in (Tri.TRUE, Tri.FALSE, Tri.UNKNOWN), name


def test_a_check_whose_answer_does_not_open_is_undetermined(
    tmp_path: Path,
    small_population: Generated,
    party_keys: dict[str, SM2PrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness: Harness = build_harness(tmp_path, small_population.urls, party_keys)
    try:
        number = next(
            r["id_number"]
            for r in small_population.subjects()
            if isinstance(claims := r.get("claims"), dict) and claims["birth_registered"] is True
        )
        body = {
            "subject": {"id_number": number},
            "claim": "birth_registered",
            "purpose": "school_enrollment",
        }
        assert harness.check("edu-bureau", body).get_json()["result"] == "yes"
        transport = harness.gateway.departments.transport
        assert isinstance(transport, InProcessTransport)
        original = transport.handle_request

        def handle_request(department: str, request: WireRequest, timeout: float) -> WireResponse:
            resp = original(department, request, timeout)
            answer = resp.body
            if department == "police" and request.path == "/v1/evaluate":
                # the answer's last character changed on the way
                answer = answer[:-1] + (b"A" if answer[-1:] != b"A" else b"B")
            return WireResponse(resp.status, answer, resp.headers)

        monkeypatch.setattr(transport, "handle_request", handle_request)
        resp = harness.check("edu-bureau", body)
        assert resp.status_code == 200
        assert resp.get_json()["result"] == "undetermined"
    finally:
        harness.close()


def test_the_switch_turns_the_envelope_off_on_both_ends_only(
    store: DepartmentStore, party_keys: dict[str, SM2PrivateKey], subjects: list[str]
) -> None:
    call = PredicateCall("registered_in_household", subjects[0])
    off = _core(store, party_keys, envelope=False)
    wire = Recording(InProcessTransport({DEPT: off}))
    result = _client(party_keys, wire, envelope=False).evaluate(DEPT, call).result
    assert wire.requests[0].count(b".") == 2 and json.loads(
        _unb64(wire.requests[0].decode().split(".")[0])
    )["typ"] == ("tongban-predicate-request+jwt")
    # Mismatched ends refuse (undetermined for a check), never answer "no".
    with pytest.raises(TongbanError):
        _client(party_keys, InProcessTransport({DEPT: off})).evaluate(DEPT, call)
    on = InProcessTransport({DEPT: _core(store, party_keys)})
    with pytest.raises(TongbanError):
        _client(party_keys, on, envelope=False).evaluate(DEPT, call)
    assert _client(party_keys, on).evaluate(DEPT, call).result == result


@contextmanager
def _serving(core: AdapterCore) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, create_app(core), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_sealed_over_http(
    store: DepartmentStore, party_keys: dict[str, SM2PrivateKey], subjects: list[str]
) -> None:
    core = _core(store, party_keys)
    plain = _plain(store, party_keys)
    with _serving(core) as url:
        transport = HttpTransport({DEPT: url})
        try:
            wire = Recording(transport)
            client = _client(party_keys, wire)
            got = client.evaluate_batch(DEPT, "registered_in_household", {}, subjects)
            assert got == plain.evaluate_batch(DEPT, "registered_in_household", {}, subjects)
            call = PredicateCall("registered_in_household", subjects[0])
            assert client.evaluate(DEPT, call).result == got[0]
        finally:
            transport.close()
    for message in wire.requests + wire.answers:
        _assert_unreadable(message, *(s.encode() for s in subjects), b"registered_in_household")


def test_the_gateway_side_helpers_name_the_purpose() -> None:
    sealed = seal_request(Sealer(), RECIPIENT.public_key, "a.b.c")
    opened = Opener(RECIPIENT).open(sealed.envelope, purpose=ENVELOPE_PURPOSE)
    assert opened.plaintext == b"a.b.c"
    assert open_answer(sealed, opened.seal_reply(b"x.y.z").encode()) == "x.y.z"
