"""Flower's message path without the network: a Grid whose ``send_and_receive`` hands every
message to a real ClientApp as a SuperNode would (a copy through Flower's protobuf, the
run, node and message ids set as the SuperLink sets them), and keeps what the SuperLink
would have stored, so tests can look at it. The envelope keys are real
(``sealing.ensure_keys``/``write_peers`` in a temporary directory)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto

from tongban.federation.horizontal import sealing

RUN_ID = 41


def relay(msg: Message) -> Message:
    """The message as the other end receives it: a fresh copy through protobuf."""
    return message_from_proto(message_to_proto(msg))


def _same(msg: Message) -> Message:
    return msg


@dataclass
class LoopGrid:
    """Delivers to ``app`` for each node id in ``node_configs``."""

    app: Callable[[Message, Context], Message]
    node_configs: dict[int, dict[str, Any]]
    stored: list[Message] = field(default_factory=list)  # what the SuperLink saw, both ways
    #: Applied to each down message before delivery and to each reply before return.
    tamper_down: Callable[[Message], Message] = field(default_factory=lambda: _same)
    tamper_up: Callable[[Message], Message] = field(default_factory=lambda: _same)
    run: Any = field(default_factory=lambda: SimpleNamespace(run_id=RUN_ID))

    def get_node_ids(self) -> list[int]:
        return list(self.node_configs)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            msg.metadata.__dict__["_run_id"] = RUN_ID
            down = self.tamper_down(relay(msg))
            self.stored.append(relay(down))
            node = down.metadata.dst_node_id
            ctx = Context(
                run_id=RUN_ID,
                node_id=node,
                node_config=self.node_configs[node],
                state=RecordDict(),
                run_config={},
            )
            reply = self.app(down, ctx)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            up = self.tamper_up(relay(reply))
            self.stored.append(relay(up))
            replies.append(up)
        return replies


def envelope_setup(directory: Path, nodes: dict[int, str]) -> dict[int, dict[str, Any]]:
    """Keys for the ServerApp and for each ``node id -> name``, ``peers.json``, and the
    envelope part of each node's config."""
    keys = sealing.ensure_keys(directory, nodes.values())
    peers = sealing.write_peers(
        directory, keys["server"], {node: keys[name] for node, name in nodes.items()}
    )
    return {
        node: {
            "envelope-key": str(sealing.node_key_path(directory, name)),
            "envelope-peers": str(peers),
        }
        for node, name in nodes.items()
    }


def sealed_grid(grid: LoopGrid, directory: Path) -> sealing.SealedGrid:
    return sealing.SealedGrid.from_dir(grid, directory)  # type: ignore[arg-type]
