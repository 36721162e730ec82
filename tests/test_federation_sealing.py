"""Flower messages signed and sealed (federation/horizontal/sealing.py): what the SuperLink
stores is one envelope per message, the ClientApp and ServerApp see the records, and every
way of breaking the envelope is refused with a reason that names no content."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from tongban.federation.horizontal import sealing
from tongban.primitives.envelope import GmsslCurve, Opener
from tongban.primitives.gm import GmsslSM2, load_private_key

from .flower_loop import RUN_ID, LoopGrid, envelope_setup, relay, sealed_grid

SECRET = "150102199305160016"
WEIGHTS = np.arange(13, dtype=np.float64) / 7.0


@pytest.fixture
def task_identity() -> Iterator[None]:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = RUN_ID, 7, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None  # type: ignore[assignment]


seen: list[RecordDict] = []
echo_app = ClientApp()


@echo_app.train(mods=[sealing.sealed_mod])
def _echo(msg: Message, context: Context) -> Message:
    """Returns the weights doubled and the config echoed: a reply that depends on the
    request, so a replayed or swapped reply shows."""
    seen.append(msg.content)
    weights = msg.content.array_records["w"]["w"].numpy()
    out = RecordDict(
        {
            "w": ArrayRecord({"w": _array(weights * 2)}),
            "cfg": ConfigRecord({"note": str(msg.content.config_records["cfg"]["note"])}),
        }
    )
    return Message(out, reply_to=msg)


def _array(values: np.ndarray) -> Any:
    from flwr.app import Array

    return Array(values)


def _request(node: int, note: str = SECRET, round_: str = "1") -> Message:
    content = RecordDict(
        {"w": ArrayRecord({"w": _array(WEIGHTS)}), "cfg": ConfigRecord({"note": note})}
    )
    return Message(content, dst_node_id=node, message_type=MessageType.TRAIN, group_id=round_)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "envelope"


@pytest.fixture
def loop(keys_dir: Path, task_identity: None) -> LoopGrid:
    seen.clear()
    return LoopGrid(echo_app, envelope_setup(keys_dir, {7: "supernode-0", 8: "supernode-1"}))


def _error(reply: Message) -> str:
    assert reply.has_error(), "the message should have been refused"
    assert reply.error.code == sealing.ENVELOPE_ERROR_CODE
    return str(reply.error.reason)


def _stored_text(msg: Message) -> str:
    from flwr.common.serde import message_to_proto

    raw: bytes = message_to_proto(msg).SerializeToString()
    return raw.decode("latin-1")


def test_round_trip_both_ways_and_the_superlink_holds_only_envelopes(
    loop: LoopGrid, keys_dir: Path
) -> None:
    grid = sealed_grid(loop, keys_dir)
    replies = grid.send_and_receive([_request(7), _request(8)])
    assert [r.has_error() for r in replies] == [False, False]
    for reply in replies:
        np.testing.assert_array_equal(reply.content.array_records["w"]["w"].numpy(), WEIGHTS * 2)
        assert reply.content.config_records["cfg"]["note"] == SECRET
    assert len(seen) == 2 and all(c.config_records["cfg"]["note"] == SECRET for c in seen)
    # The SuperLink saw four messages, each one config record holding one envelope.
    assert len(loop.stored) == 4
    raw_weights = WEIGHTS.tobytes()
    for msg in loop.stored:
        assert list(msg.content.keys()) == [sealing.ENVELOPE_RECORD]
        assert not msg.content.array_records
        text = _stored_text(msg)
        assert SECRET not in text and raw_weights not in text.encode("latin-1")
        b64 = base64.urlsafe_b64encode(SECRET.encode()).decode().rstrip("=")
        assert b64[:16] not in text and SECRET.encode().hex() not in text


def test_the_session_key_is_wrapped_once_per_node(loop: LoopGrid, keys_dir: Path) -> None:
    grid = sealed_grid(loop, keys_dir)
    for round_ in ("1", "2", "3"):
        replies = grid.send_and_receive([_request(7, round_=round_), _request(8, round_=round_)])
        assert not any(r.has_error() for r in replies)
    assert grid._sealer.wrapped == 2


def test_the_envelope_opens_with_gmssl_and_the_signature_verifies_with_gmssl(
    loop: LoopGrid, keys_dir: Path
) -> None:
    """The second SM2 implementation: gmssl's curve unwraps the key, gmssl's SM2 checks the
    ServerApp's signature over the documented binding."""
    sealed_grid(loop, keys_dir).send_and_receive([_request(7)])
    down = loop.stored[0]
    envelope = down.content.config_records[sealing.ENVELOPE_RECORD]["sealed"]
    node_key = load_private_key(keys_dir / "supernode-0.sm2")
    opened = Opener(node_key, curve=GmsslCurve()).open(
        str(envelope), purpose=sealing.PURPOSE, max_length=sealing.MAX_SEALED
    )
    server = load_private_key(keys_dir / sealing.SERVER_KEY).public_key
    binding = b"\0".join(
        [b"tongban/flower-envelope/v1", b"down", str(RUN_ID).encode(), b"7", b"train", b"1"]
    )
    sig, body = opened.plaintext[:64], opened.plaintext[64:]
    assert GmsslSM2().verify(server.x, server.y, binding + b"\0" + body, sig)
    assert SECRET.encode() in body  # the serialised record, inside


def test_a_node_refuses_an_unsealed_message(loop: LoopGrid) -> None:
    """A ServerApp without the envelope (or anyone who can reach the node's Runtime API)."""
    reply = loop.send_and_receive([_request(7)])[0]
    assert "not sealed" in _error(reply)
    assert seen == []


def test_a_node_without_its_key_refuses_everything(loop: LoopGrid, keys_dir: Path) -> None:
    loop.node_configs[7] = {}
    reply = sealed_grid(loop, keys_dir).send_and_receive([_request(7)])[0]
    assert "no envelope key" in _error(reply) and seen == []


def test_a_message_sealed_to_another_node_is_refused(loop: LoopGrid, keys_dir: Path) -> None:
    """Node 8's envelope delivered to node 7 (a SuperLink that misroutes)."""

    def to_seven(msg: Message) -> Message:
        msg.metadata.__dict__["_dst_node_id"] = 7
        return msg

    loop.tamper_down = to_seven
    reply = sealed_grid(loop, keys_dir).send_and_receive([_request(8)])[0]
    assert "sealed to another key" in _error(reply) and seen == []


def _flip(msg: Message) -> Message:
    rec = msg.content.config_records[sealing.ENVELOPE_RECORD]
    value = str(rec["sealed"])
    i = len(value) - 10
    rec["sealed"] = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
    return msg


def test_an_altered_message_is_refused(loop: LoopGrid, keys_dir: Path) -> None:
    loop.tamper_down = _flip
    reply = sealed_grid(loop, keys_dir).send_and_receive([_request(7)])[0]
    reason = _error(reply)
    assert "envelope" in reason and SECRET not in reason and seen == []


def test_an_altered_reply_fails_the_round_with_a_reason(
    loop: LoopGrid, keys_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop.tamper_up = _flip
    grid = sealed_grid(loop, keys_dir)
    reply = grid.send_and_receive([_request(7)])[0]
    reason = _error(reply)
    assert "envelope" in reason and grid.refused == 1
    err = capsys.readouterr().err
    assert "refused a reply of node 7" in err and SECRET not in err


def test_a_message_moved_to_another_round_is_refused(loop: LoopGrid, keys_dir: Path) -> None:
    """The signature binds the group (round): a SuperLink replaying round 1's message as
    round 2's is caught, although the envelope itself opens."""

    def later(msg: Message) -> Message:
        msg.metadata.__dict__["_group_id"] = "2"
        return msg

    loop.tamper_down = later
    reply = sealed_grid(loop, keys_dir).send_and_receive([_request(7)])[0]
    assert "not signed by the ServerApp" in _error(reply) and seen == []


def test_a_reply_from_another_exchange_is_refused(loop: LoopGrid, keys_dir: Path) -> None:
    """Round 1's reply replayed as the answer to round 2's message."""
    grid = sealed_grid(loop, keys_dir)
    grid.send_and_receive([_request(7)])
    old_reply = loop.stored[-1]

    def replay(msg: Message) -> Message:
        stale = relay(old_reply)
        stale.metadata.__dict__["_reply_to_message_id"] = msg.metadata.reply_to_message_id
        return stale

    loop.tamper_up = replay
    reply = grid.send_and_receive([_request(7, round_="2")])[0]
    # The same session (one wrapped key per node), but bound to round 1's message.
    assert _error(reply) == "envelope: cannot be opened"


def test_a_reply_signed_by_another_node_is_refused(loop: LoopGrid, keys_dir: Path) -> None:
    """Node 8's key in node 7's place: the envelope opens (node 8 can open what was sealed
    to it), but the reply is not node 7's."""
    peers = json.loads((keys_dir / sealing.PEERS_FILE).read_text())
    peers["nodes"]["7"], peers["nodes"]["8"] = peers["nodes"]["8"], peers["nodes"]["7"]
    (keys_dir / sealing.PEERS_FILE).write_text(json.dumps(peers))
    loop.node_configs[7], loop.node_configs[8] = loop.node_configs[8], loop.node_configs[7]
    grid = sealed_grid(loop, keys_dir)
    # The ServerApp's peers swapped the other way round: re-read the true ones.
    peers["nodes"]["7"], peers["nodes"]["8"] = peers["nodes"]["8"], peers["nodes"]["7"]
    grid._peers = sealing.Peers.load(_write(keys_dir / "true-peers.json", peers))
    reply = grid.send_and_receive([_request(7)])[0]
    assert "sealed to another key" in _error(reply)


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_a_node_missing_from_the_peers_file_is_not_sent_anything(
    loop: LoopGrid, keys_dir: Path
) -> None:
    from tongban.primitives.errors import EnvelopeRefused

    with pytest.raises(EnvelopeRefused, match="node 9 has no key"):
        sealed_grid(loop, keys_dir).send_and_receive([_request(9)])
    assert loop.stored == []


def test_a_run_without_envelope_keys_does_not_start(tmp_path: Path, loop: LoopGrid) -> None:
    from tongban.primitives.errors import EnvelopeRefused

    with pytest.raises(EnvelopeRefused, match="ServerApp's key"):
        sealed_grid(loop, tmp_path / "nowhere")


def test_keys_are_private_and_kept(keys_dir: Path) -> None:
    first = sealing.ensure_keys(keys_dir, ["supernode-0"])
    assert (keys_dir.stat().st_mode & 0o777) == 0o700
    for name in (sealing.SERVER_KEY, "supernode-0.sm2"):
        assert ((keys_dir / name).stat().st_mode & 0o777) == 0o600
    assert sealing.ensure_keys(keys_dir, ["supernode-0"]) == first
    peers = sealing.write_peers(keys_dir, first["server"], {3: first["supernode-0"]})
    doc = json.loads(peers.read_text())
    assert set(doc) == {"server", "nodes"} and list(doc["nodes"]) == ["3"]
    assert '"d"' not in peers.read_text()  # public keys only
