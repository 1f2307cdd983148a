"""The region's nodes, as their heartbeats in the node KV bucket describe them.

Node-agents rewrite their key every few seconds. A node whose last heartbeat is older than the grace
period is not alive: the scheduler places nothing on it and the gateway reports it unreachable.

A node silent for much longer is declared lost by the scheduler, which first fences it: a key in the
fenced bucket (`hutch.core.bus.fenced_bucket`) that says which run of the node (its heartbeats'
`started_at`, the epoch) was given up on. A fenced node is not alive whatever its heartbeats say,
until the node-agent itself has stopped every sandbox it still ran and removed the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.message import DecodeError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from hutch.events.v1 import node_pb2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    cpu_millis_total: int
    memory_mb_total: int
    cpu_millis_allocated: int
    memory_mb_allocated: int
    sandboxes: int
    templates: frozenset[str]
    isolation_classes: frozenset[str]
    sent_at: datetime
    # When this run of the node-agent started (its epoch); None when the heartbeat does not say.
    started_at: datetime | None = None
    # Each running sandbox: when it was last in use.
    idle_since: Mapping[str, datetime] = field(default_factory=dict)

    @classmethod
    def from_heartbeat(cls, beat: node_pb2.NodeHeartbeat) -> NodeInfo:
        return cls(
            node_id=beat.node_id,
            address=beat.address,
            cpu_millis_total=beat.cpu_millis_total,
            memory_mb_total=beat.memory_mb_total,
            cpu_millis_allocated=beat.cpu_millis_allocated,
            memory_mb_allocated=beat.memory_mb_allocated,
            sandboxes=beat.sandboxes,
            templates=frozenset(beat.templates),
            isolation_classes=frozenset(beat.isolation_classes),
            sent_at=beat.sent_at.ToDatetime(tzinfo=UTC),
            started_at=beat.started_at.ToDatetime(tzinfo=UTC) if beat.HasField("started_at") else None,
            idle_since={sandbox: since.ToDatetime(tzinfo=UTC) for sandbox, since in beat.idle_since.items()},
        )


@dataclass(frozen=True)
class Fence:
    """A node declared lost: nothing may be routed to it, and what it still runs is stale.

    Stored as JSON under the node's id in the fenced bucket; the node-agent deletes it once it has
    stopped its sandboxes, and heartbeats from then on as a new run (a new epoch).
    """

    node_id: str
    fenced_at: datetime
    # The run of the node that was lost (its heartbeats' started_at), and its last heartbeat.
    epoch: datetime | None = None
    last_heartbeat: datetime | None = None

    def encode(self) -> bytes:
        return json.dumps(
            {
                "node_id": self.node_id,
                "fenced_at": self.fenced_at.isoformat(),
                "epoch": self.epoch.isoformat() if self.epoch else None,
                "last_heartbeat": self.last_heartbeat.isoformat() if self.last_heartbeat else None,
            }
        ).encode()

    @classmethod
    def decode(cls, node_id: str, value: bytes) -> Fence:
        """The fence stored under `node_id`; an unreadable value still fences the node."""
        try:
            data = json.loads(value)
            return cls(
                node_id=node_id,
                fenced_at=datetime.fromisoformat(data["fenced_at"]),
                epoch=datetime.fromisoformat(data["epoch"]) if data.get("epoch") else None,
                last_heartbeat=datetime.fromisoformat(data["last_heartbeat"]) if data.get("last_heartbeat") else None,
            )
        except (ValueError, KeyError, TypeError):
            log.warning("unreadable fence for %s; treating the node as fenced", node_id)
            return cls(node_id=node_id, fenced_at=datetime.now(UTC))


# A fence watch that hears nothing for this long is started afresh (it re-reads every key).
QUIET_FENCES_S = 30.0


class NodeDirectory:
    """A live view of the node KV bucket (and, when given, the fenced bucket), kept current by watchers."""

    def __init__(self, kv: KeyValue, grace_s: float = 10.0, fenced: KeyValue | None = None) -> None:
        self._kv = kv
        self._fenced_kv = fenced
        self._grace = timedelta(seconds=grace_s)
        # Nodes beat every two seconds, so a watch this quiet is broken (its consumer went with a NATS
        # server's restart) or there is nothing to watch: watching afresh, well before a node's last
        # beat ages past the grace period, keeps live nodes from looking lost.
        self._quiet_restart_s = max(1.0, grace_s / 2)
        self._nodes: dict[str, NodeInfo] = {}
        self._fences: dict[str, Fence] = {}
        self._loaded = asyncio.Event()
        self._fences_loaded = asyncio.Event()
        if fenced is None:
            self._fences_loaded.set()

    async def run(self, stop: asyncio.Event) -> None:
        watches = [self._keep_watching(self._kv, self._apply, self._loaded, stop, self._quiet_restart_s)]
        if self._fenced_kv is not None:
            # Fences change rarely: a quiet fence watch is the normal case.
            watches.append(
                self._keep_watching(self._fenced_kv, self._apply_fence, self._fences_loaded, stop, QUIET_FENCES_S)
            )
        await asyncio.gather(*watches)

    async def _keep_watching(
        self,
        kv: KeyValue,
        apply: Callable[[str, bytes | None, str | None], None],
        loaded: asyncio.Event,
        stop: asyncio.Event,
        quiet_restart_s: float,
    ) -> None:
        while not stop.is_set():
            try:
                await self._watch(kv, apply, loaded, stop, quiet_restart_s)
            except Exception as exc:  # NATS away or the watch consumer expired: watch again
                log.warning("node directory watch restarting: %r", exc)
                await asyncio.sleep(0.5)

    async def _watch(
        self,
        kv: KeyValue,
        apply: Callable[[str, bytes | None, str | None], None],
        loaded: asyncio.Event,
        stop: asyncio.Event,
        quiet_restart_s: float,
    ) -> None:
        watcher = await kv.watchall()
        quiet_since = asyncio.get_running_loop().time()
        try:
            while not stop.is_set():
                try:
                    # Short waits so that a shutdown is noticed within a second.
                    entry = await watcher.updates(timeout=1.0)
                except Exception:
                    if asyncio.get_running_loop().time() - quiet_since > quiet_restart_s:
                        return  # start a fresh watch, which also re-reads every key
                    continue
                quiet_since = asyncio.get_running_loop().time()
                if entry is None:
                    loaded.set()
                    continue
                apply(entry.key, entry.value, entry.operation)
        finally:
            try:
                await watcher.stop()
            except Exception as exc:
                log.debug("stopping the node watcher: %r", exc)

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE) or not value:
            self._nodes.pop(key, None)
            return
        beat = node_pb2.NodeHeartbeat()
        try:
            beat.ParseFromString(value)
        except DecodeError:
            log.warning("ignoring an undecodable heartbeat for %s", key)
            return
        self._nodes[key] = NodeInfo.from_heartbeat(beat)

    def _apply_fence(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in (KV_DEL, KV_PURGE) or not value:
            if self._fences.pop(key, None) is not None:
                log.info("node %s is no longer fenced", key)
            return
        self._fences[key] = Fence.decode(key, value)

    async def loaded(self, timeout_s: float = 5.0) -> None:
        """Waits until the watchers have read every key once."""
        async with asyncio.timeout(timeout_s):
            await self._loaded.wait()
            await self._fences_loaded.wait()

    def get(self, node_id: str) -> NodeInfo | None:
        return self._nodes.get(node_id)

    def fence(self, node_id: str) -> Fence | None:
        """The node's fence, if it was declared lost and has not come back clean since."""
        return self._fences.get(node_id)

    def note_fence(self, fence: Fence) -> None:
        """Records a fence just written, before the watcher reports it."""
        self._fences[fence.node_id] = fence

    def is_alive(self, node: NodeInfo, now: datetime | None = None) -> bool:
        if node.node_id in self._fences:
            return False  # declared lost: whatever it still runs is stale
        return (now or datetime.now(UTC)) - node.sent_at <= self._grace

    def all(self) -> list[NodeInfo]:
        """Every node with a key in the bucket, reachable or not."""
        return list(self._nodes.values())

    def alive(self) -> list[NodeInfo]:
        now = datetime.now(UTC)
        return [n for n in self._nodes.values() if self.is_alive(n, now)]
