"""Checkpoints: the C2SP signed-note text, SM2 signatures checked by both backends, the
witness's rules (rollback, split view, proofs), its HTTP route, its persisted state, and the
gateway's Checkpointer gathering cosignatures through real witnesses."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.test_audit_merkle import sm3
from tongban.adapters.client import InProcessTransport, WireRequest, WireResponse
from tongban.adapters.departments import DEPARTMENTS
from tongban.adapters.service import create_app
from tongban.adapters.store import DepartmentStore
from tongban.adapters.witness import MetaWitnessState, Witness, WitnessRefused
from tongban.audit.log import AuditLog
from tongban.audit.merkle import MerkleTree
from tongban.audit.note import Checkpoint, NoteError, NoteSignature, SignedNote, sign_line
from tongban.audit.vault import Pseudonymizer
from tongban.gateway.checkpoints import Checkpointer
from tongban.primitives.errors import BadRequest, DepartmentUnavailable
from tongban.primitives.gm import C2SP_SIGNATURE_TYPE, SM2PrivateKey, SM2PublicKey, get_backend
from tongban.primitives.problem import PROBLEM_JSON

ORIGIN = "gateway.test/audit"
GATEWAY = "tongban-gateway"
WITNESSES = ("health", "police", "civil")


def tree_of(n: int, salt: bytes = b"") -> MerkleTree:
    return MerkleTree(sm3(b"\x00" + salt + b"%d" % i) for i in range(n))


def note_for(tree: MerkleTree, size: int, key: SM2PrivateKey, *, origin: str = ORIGIN) -> str:
    body = Checkpoint(origin, size, tree.root(size)).body()
    return SignedNote(body, (sign_line(body, GATEWAY, key),)).text()


def independent_key_id(name: str, key: SM2PublicKey) -> bytes:
    point = b"\x04" + key.x.to_bytes(32, "big") + key.y.to_bytes(32, "big")
    preimage = name.encode() + b"\n" + b"\xfftongban/SM3withSM2" + point
    return hashlib.sha256(preimage).digest()[:4]


# --- the signed note -------------------------------------------------------------------


def test_signed_note_text_is_exactly_the_c2sp_form(party_keys: dict[str, SM2PrivateKey]):
    gateway, health = party_keys["gateway"], party_keys["health"]
    tree = tree_of(13)
    root = tree.root()
    body = Checkpoint(ORIGIN, 13, root).body()
    assert body == f"{ORIGIN}\n13\n{base64.b64encode(root).decode()}\n"
    note = SignedNote(body, (sign_line(body, GATEWAY, gateway),))
    note = note.with_signature(sign_line(body, "health", health))
    text = note.text()
    lines = text.split("\n")
    assert lines[:4] == [ORIGIN, "13", base64.b64encode(root).decode(), ""]
    assert lines[-1] == "" and len(lines) == 7
    assert C2SP_SIGNATURE_TYPE == b"\xfftongban/SM3withSM2"
    for line, (name, key) in zip(lines[4:6], ((GATEWAY, gateway), ("health", health)), strict=True):
        dash, who, blob_text = line.split(" ")
        assert dash == "\u2014" and who == name
        blob = base64.b64decode(blob_text, validate=True)
        assert len(blob) == 4 + 64
        assert blob[:4] == independent_key_id(name, key.public_key)
        signature = blob[4:]
        # SM3withSM2 over the body, r||s, checked by both independent implementations.
        for backend in ("gmssl", "tongsuo"):
            pub = key.public_key
            assert get_backend(backend).verify(pub.x, pub.y, body.encode(), signature)
            assert not get_backend(backend).verify(pub.x, pub.y, body.encode() + b"x", signature)
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        assert r > 0 and s > 0
    parsed = SignedNote.parse(text)
    assert parsed == note
    assert parsed.checkpoint == Checkpoint(ORIGIN, 13, root)
    assert parsed.text() == text
    keys = {GATEWAY: gateway.public_key, "health": health.public_key}
    assert parsed.verified_by(keys) == {GATEWAY: True, "health": True}
    assert parsed.verified_by({GATEWAY: health.public_key}) == {GATEWAY: False}


def test_notes_signed_by_either_backend_verify_with_the_other(
    party_keys: dict[str, SM2PrivateKey],
):
    key = party_keys["gateway"]
    body = Checkpoint(ORIGIN, 1, tree_of(1).root()).body().encode()
    for signer, checker in (("gmssl", "tongsuo"), ("tongsuo", "gmssl")):
        signature = key.sign(body, backend=get_backend(signer))
        assert len(signature) == 64
        assert key.public_key.verify(body, signature, backend=get_backend(checker))


def test_an_empty_tree_checkpoint(party_keys: dict[str, SM2PrivateKey]):
    body = Checkpoint(ORIGIN, 0, MerkleTree().root()).body()
    assert body == f"{ORIGIN}\n0\n{base64.b64encode(sm3(b'')).decode()}\n"
    text = SignedNote(body, (sign_line(body, GATEWAY, party_keys["gateway"]),)).text()
    assert SignedNote.parse(text).checkpoint.size == 0


def test_signature_checks_name_key_id_and_body(party_keys: dict[str, SM2PrivateKey]):
    key = party_keys["gateway"]
    body = Checkpoint(ORIGIN, 3, tree_of(3).root()).body()
    sig = sign_line(body, GATEWAY, key)
    assert sig.verifies(body, key.public_key)
    assert not sig.verifies(body.replace("\n3\n", "\n4\n"), key.public_key)
    renamed = NoteSignature("impostor", sig.key_id, sig.signature)
    assert not renamed.verifies(body, key.public_key)  # the key id binds the name
    assert not NoteSignature(GATEWAY, b"\0\0\0\0", sig.signature).verifies(body, key.public_key)
    assert not sig.verifies(body, party_keys["health"].public_key)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("\n\n", "\n"),  # no blank line
        lambda t: t.split("\n\n")[0] + "\n\n",  # no signatures
        lambda t: t.replace("\u2014 ", "- ", 1),  # not an em dash
        lambda t: t.replace("\n13\n", "\n013\n"),  # non-canonical size
        lambda t: t.replace("\n13\n", "\n-13\n"),
        lambda t: t.replace("\n13\n", "\n\n"),  # size missing
        lambda t: t.replace(t.split("\n")[2], "AAAA"),  # root not 32 bytes
        lambda t: t.replace(t.split("\n")[2], "!!" + t.split("\n")[2][2:]),  # not base64
        lambda t: t.replace(t.split("\n")[0] + "\n", "\n", 1),  # empty origin
        lambda t: t[: t.rindex(" ") + 1] + "AAAA\n",  # signature too short
        lambda t: t[:-2] + "*\n",  # signature not base64
        lambda t: t.rstrip("\n") + " extra\n",  # four fields
        lambda t: t + "x" * 17000,  # too large
    ],
)
def test_malformed_notes_are_refused(party_keys: dict[str, SM2PrivateKey], mutate: Any):
    text = note_for(tree_of(13), 13, party_keys["gateway"])
    SignedNote.parse(text)
    with pytest.raises(NoteError):
        SignedNote.parse(mutate(text))


# --- the witness -----------------------------------------------------------------------


@pytest.fixture
def department_store(tmp_path: Path) -> Iterator[DepartmentStore]:
    store = DepartmentStore(DEPARTMENTS["health"], f"sqlite:///{tmp_path / 'health.db'}")
    store.create_schema()
    yield store
    store.dispose()


def make_witness(
    name: str, store: DepartmentStore, keys: Mapping[str, SM2PrivateKey], origin: str = ORIGIN
) -> Witness:
    return Witness(
        name,
        keys[name],
        origin=origin,
        gateway_name=GATEWAY,
        gateway_key=keys["gateway"].public_key,
        state=MetaWitnessState(store),
    )


def refusal(exc: pytest.ExceptionInfo[WitnessRefused]) -> dict[str, Any]:
    problem = exc.value.to_problem()
    assert exc.value.status == 409
    assert problem["type"].endswith("/witness-refused")
    return problem


def test_witness_rules(party_keys: dict[str, SM2PrivateKey], department_store: DepartmentStore):
    keys = party_keys
    witness = make_witness("health", department_store, keys)
    tree = tree_of(40)
    state = MetaWitnessState(department_store)
    assert state.load() is None

    # First checkpoint: nothing to be consistent with.
    sig = witness.cosign(note_for(tree, 5, keys["gateway"]), 0, [])
    assert sig.name == "health"
    assert sig.verifies(Checkpoint(ORIGIN, 5, tree.root(5)).body(), keys["health"].public_key)
    assert state.load() == (5, tree.root(5))

    # Consistent growth, with the proof from what it saw.
    witness.cosign(note_for(tree, 12, keys["gateway"]), 5, tree.consistency_proof(5, 12))
    assert state.load() == (12, tree.root(12))
    # The same checkpoint again is fine (a gateway re-collecting cosignatures).
    witness.cosign(note_for(tree, 12, keys["gateway"]), 12, [])

    cases: list[tuple[str, int, list[bytes], str]] = [
        (note_for(tree, 8, keys["gateway"]), 8, [], "rollback"),
        (note_for(tree, 8, keys["gateway"]), 12, [], "rollback"),
        (note_for(tree_of(12, b"x"), 12, keys["gateway"]), 12, [], "split-view"),
        (note_for(tree, 20, keys["gateway"]), 5, tree.consistency_proof(5, 20), "need-proof"),
        (note_for(tree, 20, keys["gateway"]), 0, [], "need-proof"),
        (
            note_for(tree, 20, keys["gateway"]),
            12,
            [sm3(b"junk"), *tree.consistency_proof(12, 20)[1:]],
            "inconsistent",
        ),
        (note_for(tree, 20, keys["gateway"]), 12, [], "inconsistent"),
        (note_for(tree, 20, keys["gateway"]), 12, tree.consistency_proof(12, 21), "inconsistent"),
        # Another history of the first 12 leaves, with a proof that fits that history.
        (
            note_for(tree_of(20, b"rewritten"), 20, keys["gateway"]),
            12,
            tree_of(20, b"rewritten").consistency_proof(12, 20),
            "inconsistent",
        ),
    ]
    for text, from_size, proof, reason in cases:
        with pytest.raises(WitnessRefused) as exc:
            witness.cosign(text, from_size, proof)
        problem = refusal(exc)
        assert problem["reason"] == reason, (reason, problem)
        assert problem["last_size"] == 12
        assert state.load() == (12, tree.root(12))  # a refusal changes nothing

    forged = SignedNote.parse(note_for(tree, 20, keys["police"]))  # signed by another key
    with pytest.raises(WitnessRefused) as exc:
        witness.cosign(forged.text(), 12, tree.consistency_proof(12, 20))
    assert refusal(exc)["reason"] == "bad-signature"
    unsigned_by_gateway = SignedNote(
        forged.body, (sign_line(forged.body, "someone-else", keys["gateway"]),)
    )
    with pytest.raises(WitnessRefused) as exc:
        witness.cosign(unsigned_by_gateway.text(), 12, tree.consistency_proof(12, 20))
    assert refusal(exc)["reason"] == "bad-signature"
    with pytest.raises(WitnessRefused) as exc:
        witness.cosign(
            note_for(tree, 20, keys["gateway"], origin="elsewhere.test/audit"),
            12,
            tree.consistency_proof(12, 20),
        )
    assert refusal(exc)["reason"] == "wrong-origin"
    with pytest.raises(BadRequest):
        witness.cosign("not a note", 12, [])
    assert state.load() == (12, tree.root(12))

    # The honest growth still goes through.
    witness.cosign(note_for(tree, 20, keys["gateway"]), 12, tree.consistency_proof(12, 20))
    assert state.load() == (20, tree.root(20))


def test_witness_state_survives_a_restart(
    party_keys: dict[str, SM2PrivateKey], department_store: DepartmentStore
):
    tree = tree_of(30)
    make_witness("health", department_store, party_keys).cosign(
        note_for(tree, 17, party_keys["gateway"]), 0, []
    )
    stored = json.loads(department_store.get_meta(MetaWitnessState.KEY) or "{}")
    assert {k: stored[k] for k in ("size", "root")} == {"size": 17, "root": tree.root(17).hex()}
    # The whole note is kept, signed by the gateway and by this witness.
    kept = SignedNote.parse(stored["note"])
    assert kept.checkpoint.size == 17
    assert [s.name for s in kept.signatures] == [GATEWAY, "health"]
    # A new process: a new store object on the same database, a new witness.
    again = DepartmentStore(DEPARTMENTS["health"], department_store.url)
    try:
        witness = make_witness("health", again, party_keys)
        with pytest.raises(WitnessRefused) as exc:
            witness.cosign(note_for(tree, 9, party_keys["gateway"]), 0, [])
        assert refusal(exc)["reason"] == "rollback"
        with pytest.raises(WitnessRefused) as exc:
            witness.cosign(note_for(tree, 25, party_keys["gateway"]), 0, [])
        refusal(exc)
        assert exc.value.extra == {"reason": "need-proof", "last_size": 17}
        witness.cosign(
            note_for(tree, 25, party_keys["gateway"]), 17, tree.consistency_proof(17, 25)
        )
        assert MetaWitnessState(again).load() == (25, tree.root(25))
    finally:
        again.dispose()


def test_witness_http_route(
    party_keys: dict[str, SM2PrivateKey], department_store: DepartmentStore
):
    witness = make_witness("health", department_store, party_keys)
    app = create_app(SimpleNamespace(name="health"), witness)  # type: ignore[arg-type]
    client = app.test_client()
    tree = tree_of(10)

    def post(body: object) -> Any:
        return client.post("/v1/witness/cosign", json=body)

    ok = post(
        {"note": note_for(tree, 6, party_keys["gateway"]), "from_size": 0, "consistency_path": []}
    )
    assert ok.status_code == 200
    line = ok.get_json()["cosignature"]
    assert line.startswith("\u2014 health ")
    body = Checkpoint(ORIGIN, 6, tree.root(6)).body()
    parsed = SignedNote.parse(body + "\n" + line).signatures[0]
    assert parsed.verifies(body, party_keys["health"].public_key)

    proof = [h.hex() for h in tree.consistency_proof(6, 10)]
    grown = post(
        {
            "note": note_for(tree, 10, party_keys["gateway"]),
            "from_size": 6,
            "consistency_path": proof,
        }
    )
    assert grown.status_code == 200

    back = post(
        {"note": note_for(tree, 6, party_keys["gateway"]), "from_size": 6, "consistency_path": []}
    )
    assert back.status_code == 409 and back.mimetype == PROBLEM_JSON
    assert back.get_json()["reason"] == "rollback" and back.get_json()["last_size"] == 10

    bad: object
    for bad in (
        [],
        {"note": 1, "from_size": 0, "consistency_path": []},
        {"note": "x", "from_size": "0", "consistency_path": []},
        {"note": "x", "from_size": 0, "consistency_path": "00"},
        {
            "note": note_for(tree, 10, party_keys["gateway"]),
            "from_size": 6,
            "consistency_path": ["zz"],
        },
        {"note": "garbage", "from_size": 10, "consistency_path": []},
    ):
        resp = post(bad)
        assert resp.status_code == 400 and resp.mimetype == PROBLEM_JSON, bad
    not_json = client.post("/v1/witness/cosign", data="x", content_type="text/plain")
    assert not_json.status_code == 400

    plain = create_app(SimpleNamespace(name="hrss"), None)  # type: ignore[arg-type]
    assert plain.test_client().post("/v1/witness/cosign", json={}).status_code == 404


# --- the gateway's checkpointer --------------------------------------------------------


class RecordingTransport:
    """Real witnesses in-process; can take one down, and records what it was sent."""

    def __init__(self, witnesses: Mapping[str, Witness]) -> None:
        self.inner = InProcessTransport({}, witnesses)
        self.down: set[str] = set()
        self.garbage: set[str] = set()
        self.calls: list[tuple[str, int, int]] = []

    def handle_request(self, department: str, request: WireRequest, timeout: float) -> WireResponse:
        if request.path != "/v1/witness/cosign":
            raise DepartmentUnavailable("not used")
        if department in self.down:
            raise DepartmentUnavailable(f"{department} is down")
        resp = self.inner.handle_request(department, request, timeout)
        asked = json.loads(request.body or b"{}")
        self.calls.append((department, asked["from_size"], resp.status))
        if department in self.garbage and resp.status == 200:
            forged = json.dumps({"cosignature": "\u2014 " + department + " AAAA"}).encode()
            return WireResponse(200, forged)
        return resp


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(
        f"sqlite:///{tmp_path / 'audit.db'}",
        Pseudonymizer(b"p" * 32, b"v" * 16),
        origin=ORIGIN,
        create=True,
    ).open()
    yield log
    log.close()


@pytest.fixture
def witnesses(tmp_path: Path, party_keys: dict[str, SM2PrivateKey]) -> Iterator[dict[str, Witness]]:
    stores = {}
    for name in WITNESSES:
        store = DepartmentStore(DEPARTMENTS[name], f"sqlite:///{tmp_path / f'{name}.db'}")
        store.create_schema(indexes=False)
        stores[name] = store
    yield {name: make_witness(name, store, party_keys) for name, store in stores.items()}
    for store in stores.values():
        store.dispose()


def checkpointer(
    log: AuditLog,
    keys: Mapping[str, SM2PrivateKey],
    transport: RecordingTransport | None,
    **kw: Any,
) -> Checkpointer:
    return Checkpointer(
        log,
        keys["gateway"],
        name=GATEWAY,
        witnesses={w: keys[w].public_key for w in WITNESSES},
        transport=transport,
        **kw,
    )


def fill(log: AuditLog, n: int) -> None:
    for _ in range(n):
        log.append({"kind": "check", "time": "2025-03-01T08:00:00.000Z"})


def signers(note: SignedNote, keys: Mapping[str, SM2PrivateKey]) -> set[str]:
    """Names whose signature line on ``note`` verifies."""
    public = {GATEWAY: keys["gateway"].public_key} | {w: keys[w].public_key for w in WITNESSES}
    return {name for name, good in note.verified_by(public).items() if good}


def test_checkpointer_collects_every_cosignature(
    audit_log: AuditLog, witnesses: dict[str, Witness], party_keys: dict[str, SM2PrivateKey]
):
    transport = RecordingTransport(witnesses)
    cp = checkpointer(audit_log, party_keys, transport)
    first = cp.checkpoint()  # the empty tree
    assert first.checkpoint == Checkpoint(ORIGIN, 0, sm3(b""))
    assert signers(first, party_keys) == {GATEWAY, *WITNESSES}
    fill(audit_log, 7)
    note = cp.checkpoint()
    assert note.checkpoint == Checkpoint(ORIGIN, 7, audit_log.root())
    assert signers(note, party_keys) == {GATEWAY, *WITNESSES}
    assert audit_log.latest_checkpoint() == note
    fill(audit_log, 9)
    note = cp.checkpoint()
    assert note.checkpoint.size == 16 and signers(note, party_keys) == {GATEWAY, *WITNESSES}
    assert [c for c in transport.calls if c[1:] == (7, 200)] == [(w, 7, 200) for w in WITNESSES]
    # Nothing new: the stored note is returned as is, no witness is asked.
    calls = len(transport.calls)
    assert cp.checkpoint() == note
    assert len(transport.calls) == calls
    # The note as a witness stores it: each witness's state is the checkpoint.
    for w in witnesses.values():
        assert w.state.load() == (16, audit_log.root())


def test_checkpointer_retries_after_need_proof(
    audit_log: AuditLog, witnesses: dict[str, Witness], party_keys: dict[str, SM2PrivateKey]
):
    transport = RecordingTransport(witnesses)
    fill(audit_log, 5)
    checkpointer(audit_log, party_keys, transport).checkpoint()
    transport.down = {"civil"}
    fill(audit_log, 6)
    note = checkpointer(audit_log, party_keys, transport).checkpoint()
    assert signers(note, party_keys) == {GATEWAY, "health", "police"}
    # A restarted gateway (a new Checkpointer knows nothing of what civil saw) offers a
    # proof from the last stored checkpoint; civil says it saw 5, and gets a proof from 5.
    transport.down = set()
    fill(audit_log, 4)
    transport.calls.clear()
    note = checkpointer(audit_log, party_keys, transport).checkpoint()
    assert note.checkpoint.size == 15
    assert signers(note, party_keys) == {GATEWAY, *WITNESSES}
    assert ("civil", 11, 409) in transport.calls and ("civil", 5, 200) in transport.calls
    assert witnesses["civil"].state.load() == (15, audit_log.root())


def test_checkpointer_recollects_a_missing_cosignature(
    audit_log: AuditLog, witnesses: dict[str, Witness], party_keys: dict[str, SM2PrivateKey]
):
    transport = RecordingTransport(witnesses)
    cp = checkpointer(audit_log, party_keys, transport)
    fill(audit_log, 3)
    transport.down = {"police"}
    note = cp.checkpoint()
    assert signers(note, party_keys) == {GATEWAY, "health", "civil"}
    assert audit_log.latest_checkpoint() == note
    transport.down = set()
    again = cp.checkpoint()  # same size: only police's signature was missing
    assert again.checkpoint == note.checkpoint
    assert signers(again, party_keys) == {GATEWAY, *WITNESSES}
    stored = audit_log.latest_checkpoint()
    assert stored is not None and signers(stored, party_keys) == {GATEWAY, *WITNESSES}
    # A note with fewer signatures never replaces a stored one of the same size.
    transport.down = set(WITNESSES)
    cp.checkpoint(force=True)
    stored = audit_log.latest_checkpoint()
    assert stored is not None and signers(stored, party_keys) == {GATEWAY, *WITNESSES}


def test_checkpointer_leaves_off_refusals_and_bad_cosignatures(
    audit_log: AuditLog,
    witnesses: dict[str, Witness],
    party_keys: dict[str, SM2PrivateKey],
    caplog: pytest.LogCaptureFixture,
):
    transport = RecordingTransport(witnesses)
    fill(audit_log, 4)
    checkpointer(audit_log, party_keys, transport).checkpoint()
    # police saw another tree of the same size (a split view), civil answers garbage.
    witnesses["police"].state.save(6, sm3(b"another tree"))
    transport.garbage = {"civil"}
    fill(audit_log, 2)
    with caplog.at_level(logging.ERROR, logger="tongban.checkpoints"):
        note = checkpointer(audit_log, party_keys, transport).checkpoint()
    assert note.checkpoint.size == 6
    assert signers(note, party_keys) == {GATEWAY, "health"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "police refused" in messages and "split view" in messages
    assert "civil returned a malformed cosignature" in messages


def test_checkpointer_without_transport_signs_alone(
    audit_log: AuditLog, party_keys: dict[str, SM2PrivateKey]
):
    fill(audit_log, 2)
    note = checkpointer(audit_log, party_keys, None).checkpoint()
    assert [s.name for s in note.signatures] == [GATEWAY]
    assert note.verified_by({GATEWAY: party_keys["gateway"].public_key}) == {GATEWAY: True}


def test_checkpointer_runs_every_interval(
    audit_log: AuditLog, witnesses: dict[str, Witness], party_keys: dict[str, SM2PrivateKey]
):
    fill(audit_log, 3)
    cp = checkpointer(audit_log, party_keys, RecordingTransport(witnesses), interval=0.05)
    cp.start()  # checkpoints at once, then every interval
    try:
        latest = audit_log.latest_checkpoint()
        assert latest is not None and latest.checkpoint.size == 3
        fill(audit_log, 5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            latest = audit_log.latest_checkpoint()
            if latest is not None and latest.checkpoint.size == 8:
                break
            time.sleep(0.02)
        assert latest is not None and latest.checkpoint.size == 8
        assert signers(latest, party_keys) == {GATEWAY, *WITNESSES}
    finally:
        cp.stop()
