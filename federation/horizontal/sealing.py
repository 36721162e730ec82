"""Flower messages inside the SM2/SM4 envelope, beneath Flower's own TLS.

TLS (deploy.py) protects each hop against a capture; this protects the content against
whoever terminates or relays that TLS (the SuperLink itself, a proxy, a log of the
SuperLink's object store): every message the ServerApp sends and every reply a ClientApp
returns is **signed, then sealed** (docs/federation.md, "The envelope"):

- **Down** (ServerApp → SuperNode): the RecordDict is serialised (Flower's protobuf), signed
  with the ServerApp's SM2 key over a binding of the direction, run, node, message type and
  group (round), and sealed to that node's SM2 public key (:class:`~tongban.primitives.
  envelope.Sealer`: one SM2 encryption per node per session, SM4-GCM per message).
- **Up** (the reply): signed with the node's SM2 key over the same binding, and sealed under
  the request's SM4 key (:meth:`~tongban.primitives.envelope.Opened.seal_reply`), bound to
  that very request: no SM2 encryption, and a reply can answer no other message.

The SuperLink then stores and forwards a RecordDict with a single config record,
``tongban.envelope`` → ``{"sealed": "<header>.<wrapped key>.<ciphertext>"}``.

Keys: ``DIR/federation/envelope/`` holds ``serverapp.sm2`` and ``supernode-<i>.sm2``
(private, 0600; in a real deployment each on its own machine) and ``peers.json``, the public
keys only: ``{"server": hex, "nodes": {"<node id>": hex}}``, written by the supervisor once
the SuperLink has assigned the node ids. A SuperNode's node config names its own key
(``envelope-key``) and ``peers.json`` (``envelope-peers``); the ServerApp's run config names
the directory (``envelope-dir``). Neither side ever exchanges an unsealed message: a node
without a key, or a message that is not sealed, sealed to another key, altered, or signed
by anyone else, is refused with :class:`~tongban.primitives.errors.EnvelopeRefused`, whose
detail names no content.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tongban.primitives.envelope import Opener, Sealed, Sealer
from tongban.primitives.errors import EnvelopeRefused
from tongban.primitives.extras import extra_imports
from tongban.primitives.gm import (
    SM2PrivateKey,
    SM2PublicKey,
    load_or_create_private_key,
    load_private_key,
)

with extra_imports("federation", "Flower training"):
    from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
    from flwr.server import Grid

__all__ = [
    "ENVELOPE_RECORD",
    "PEERS_FILE",
    "SERVER_KEY",
    "NodeKeys",
    "Peers",
    "SealedGrid",
    "ensure_keys",
    "envelope_dir",
    "node_key_path",
    "open_down",
    "sealed_mod",
    "write_peers",
]

ENVELOPE_RECORD = "tongban.envelope"
PEERS_FILE = "peers.json"
SERVER_KEY = "serverapp.sm2"
PURPOSE = "flower-message"
_DOMAIN = b"tongban/flower-envelope/v1"
_SIG = 64
#: Far above any message of this model (a 13-weight vector, SecAgg+ shares), far below
#: what would let one message exhaust a node's memory.
MAX_SEALED = 64 * 1024 * 1024
#: The Flower error code of a refused envelope (Flower's own codes are below 100).
ENVELOPE_ERROR_CODE = 461


def envelope_dir(data_dir: Path) -> Path:
    return data_dir / "federation" / "envelope"


def node_key_path(directory: Path, name: str) -> Path:
    return directory / f"{name}.sm2"


def ensure_keys(directory: Path, names: Iterable[str]) -> dict[str, SM2PublicKey]:
    """The ServerApp's and each node's SM2 key in ``directory`` (0700), created if absent;
    their public keys by name (``"server"`` for the ServerApp)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    out = {"server": load_or_create_private_key(directory / SERVER_KEY).public_key}
    for name in names:
        out[name] = load_or_create_private_key(node_key_path(directory, name)).public_key
    return out


def write_peers(directory: Path, server: SM2PublicKey, nodes: Mapping[int, SM2PublicKey]) -> Path:
    """``peers.json``: public keys only, replaced atomically."""
    doc = {
        "server": server.to_bytes().hex(),
        "nodes": {str(node_id): key.to_bytes().hex() for node_id, key in sorted(nodes.items())},
    }
    path = directory / PEERS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Peers:
    server: SM2PublicKey
    nodes: dict[int, SM2PublicKey]

    @classmethod
    def load(cls, path: Path) -> Peers:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            server = SM2PublicKey.from_bytes(bytes.fromhex(doc["server"]))
            nodes = {
                int(k): SM2PublicKey.from_bytes(bytes.fromhex(v)) for k, v in doc["nodes"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            detail = f"envelope: cannot read the peer keys ({path.name}): {exc}"
            raise EnvelopeRefused(detail) from None
        return cls(server, nodes)


def _binding(direction: str, run_id: int, node_id: int, message_type: str, group_id: str) -> bytes:
    fields = [direction, str(run_id), str(node_id), message_type, group_id]
    return b"\0".join([_DOMAIN, *(f.encode("utf-8") for f in fields)]) + b"\0"


def _serialise(content: RecordDict) -> bytes:
    return bytes(recorddict_to_proto(content).SerializeToString())


def _deserialise(data: bytes) -> RecordDict:
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(data)
        return recorddict_from_proto(proto)
    except Exception:  # protobuf raises DecodeError, and others for a bad record
        raise EnvelopeRefused("envelope: the signed content is not a Flower record") from None


def _sealed_content(envelope: str) -> RecordDict:
    return RecordDict({ENVELOPE_RECORD: ConfigRecord({"sealed": envelope})})


def _envelope_of(content: RecordDict) -> str:
    records = content.config_records
    if set(content.keys()) != {ENVELOPE_RECORD} or ENVELOPE_RECORD not in records:
        raise EnvelopeRefused("envelope: message is not sealed")
    value = records[ENVELOPE_RECORD].get("sealed")
    if not isinstance(value, str):
        raise EnvelopeRefused("envelope: message is not sealed")
    return value


def _sign(key: SM2PrivateKey, binding: bytes, body: bytes) -> bytes:
    return key.sign(binding + body) + body


def _verify(key: SM2PublicKey, binding: bytes, signed: bytes, who: str) -> bytes:
    sig, body = signed[:_SIG], signed[_SIG:]
    if len(sig) != _SIG or not key.verify(binding + body, sig):
        raise EnvelopeRefused(f"envelope: not signed by {who}")
    return body


# --- SuperNode side -------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeKeys:
    key: SM2PrivateKey
    server: SM2PublicKey

    @classmethod
    def from_node_config(cls, cfg: Mapping[str, Any]) -> NodeKeys:
        key_path, peers_path = cfg.get("envelope-key"), cfg.get("envelope-peers")
        if not key_path or not peers_path:
            raise EnvelopeRefused(
                "envelope: this SuperNode has no envelope key (node config envelope-key and "
                "envelope-peers)"
            )
        try:
            key = load_private_key(str(key_path))
        except (OSError, ValueError) as exc:
            raise EnvelopeRefused(f"envelope: cannot read this node's key: {exc}") from None
        return cls(key, Peers.load(Path(str(peers_path))).server)


def open_down(msg: Message, keys: NodeKeys) -> tuple[RecordDict, Any]:
    """A sealed message from the ServerApp: its content and the opened envelope (to seal
    the reply under). EnvelopeRefused if it is not sealed to this node by the ServerApp."""
    md = msg.metadata
    opened = Opener(keys.key, cache_size=0).open(
        _envelope_of(msg.content), purpose=PURPOSE, max_length=MAX_SEALED
    )
    binding = _binding("down", md.run_id, md.dst_node_id, md.message_type, md.group_id)
    body = _verify(keys.server, binding, opened.plaintext, "the ServerApp")
    return _deserialise(body), opened


def sealed_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """The outermost ClientApp mod: opens the ServerApp's message, lets the handler (and
    the SecAgg+ and clipping mods) work on the plain record, and seals the reply. A refusal
    becomes an error reply whose reason names no content."""
    try:
        keys = NodeKeys.from_node_config(ctxt.node_config)
        content, opened = open_down(msg, keys)
    except EnvelopeRefused as exc:
        print(f"tongban: refused a message: {exc.detail}", file=sys.stderr, flush=True)
        return Message(Error(ENVELOPE_ERROR_CODE, exc.detail), reply_to=msg)
    msg.content = content
    reply = call_next(msg, ctxt)
    if reply.has_error():
        return reply
    md = msg.metadata
    binding = _binding("up", md.run_id, md.dst_node_id, md.message_type, md.group_id)
    signed = _sign(keys.key, binding, _serialise(reply.content))
    reply.content = _sealed_content(opened.seal_reply(signed))
    return reply


# --- ServerApp side -------------------------------------------------------------------------


class SealedGrid:
    """A Grid that seals every message to its node and opens every reply, for the workflows
    (DefaultWorkflow, SecAggPlusWorkflow), which only call ``send_and_receive``. A reply
    that does not open becomes an error reply, which fails the round (``accept_failures``
    is off), with the reason in the ServerApp's log."""

    def __init__(self, grid: Grid, key: SM2PrivateKey, peers: Peers) -> None:
        self._grid = grid
        self._key = key
        self._peers = peers
        self._sealer = Sealer()
        self.refused = 0

    @classmethod
    def from_dir(cls, grid: Grid, directory: Path) -> SealedGrid:
        if not str(directory):
            raise EnvelopeRefused("envelope: the run has no envelope-dir")
        try:
            key = load_private_key(directory / SERVER_KEY)
        except (OSError, ValueError) as exc:
            raise EnvelopeRefused(f"envelope: cannot read the ServerApp's key: {exc}") from None
        return cls(grid, key, Peers.load(directory / PEERS_FILE))

    def _seal(self, msg: Message) -> tuple[Message, Sealed]:
        md = msg.metadata
        node = md.dst_node_id
        peer = self._peers.nodes.get(node)
        if peer is None:
            raise EnvelopeRefused(f"envelope: node {node} has no key in {PEERS_FILE}")
        run_id = self._grid.run.run_id
        binding = _binding("down", run_id, node, md.message_type, md.group_id)
        signed = _sign(self._key, binding, _serialise(msg.content))
        sealed = self._sealer.seal(peer, signed, purpose=PURPOSE)
        out = Message(
            _sealed_content(sealed.envelope),
            node,
            md.message_type,
            ttl=md.ttl,
            group_id=md.group_id,
        )
        return out, sealed

    def _open(self, reply: Message, sent: dict[int, tuple[Message, Sealed]]) -> Message:
        md = reply.metadata
        node = md.src_node_id
        if reply.has_error() or node not in sent:
            return reply
        out, sealed = sent[node]
        try:
            if md.reply_to_message_id != out.metadata.message_id:
                raise EnvelopeRefused("envelope: a reply to another message")
            plain = sealed.open_reply(_envelope_of(reply.content), max_length=MAX_SEALED)
            binding = _binding("up", md.run_id, node, md.message_type, md.group_id)
            body = _verify(self._peers.nodes[node], binding, plain, f"node {node}")
            reply.content = _deserialise(body)
            return reply
        except EnvelopeRefused as exc:
            self.refused += 1
            print(f"tongban: refused a reply of node {node}: {exc.detail}", file=sys.stderr)
            return Message(Error(ENVELOPE_ERROR_CODE, exc.detail), reply_to=out)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        sent: dict[int, tuple[Message, Sealed]] = {}
        for msg in messages:
            out, sealed = self._seal(msg)
            sent[msg.metadata.dst_node_id] = (out, sealed)
        replies = self._grid.send_and_receive([o for o, _ in sent.values()], timeout=timeout)
        return [self._open(r, sent) for r in replies]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
