"""ClusterNode: what the daemon's single loop calls in cluster mode.

Every method returns promptly and never raises for Redis trouble (only
``start`` raises, for settings that contradict the cluster); I/O runs on two
background threads (``worker.py``) that post records back. One loop
iteration::

    batch = node.poll(max_items=4096, timeout_s=0.01)
    for ev in batch.events:                  # before the batch's ticks
        ShardAssigned -> restore ev.checkpoints (then its replayed ticks follow)
        ShardRevoked  -> if ev.handoff: node.release(ev.shard, final checkpoints)
                         drop the shard's assets
    ... step the ticks, predict ...
    node.publish(predictions)                # Prediction(asset, seq, ts, body)
    due = node.due()                         # assets whose checkpoint is due
    node.checkpoint([AssetCheckpoint(asset, state, last_entry_id, seq) for asset in due])

and on drain ``node.close(final_checkpoints)``. A checkpoint acknowledges
(XACK) the asset's delivered entries up to its ``entry_id`` in the same
atomic step that stores it, so whatever is not acknowledged is replayed by
the next owner: correctness never depends on a checkpoint being written.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from predictor.cluster.hashing import shard_of
from predictor.cluster.records import (
    AssetCheckpoint,
    Event,
    Prediction,
    ShardAssigned,
    ShardRevoked,
    StreamTick,
    entry_key,
)
from predictor.cluster.settings import ClusterSettings
from predictor.cluster.store import TRANSIENT, ClusterStore
from predictor.cluster.worker import Controller, PendingCheckpoint, Reader, Shared
from predictor.snapshots import to_host


@dataclass
class Batch:
    """What one ``poll`` returned: handle ``events`` first, then ``ticks``."""

    events: list[Event] = field(default_factory=list)
    ticks: list[StreamTick] = field(default_factory=list)


class ClusterNode:
    """A cluster member driven by the daemon's loop (see the module doc)."""

    def __init__(self, settings: ClusterSettings, member_id: str | None = None) -> None:
        self.settings = settings
        self.member = member_id or settings.resolved_member_id()
        self._sh = Shared(settings, self.member)
        self._threads: tuple[Controller, Reader] | None = None
        self._stores: list[ClusterStore] = []
        # Loop-thread bookkeeping (never touched by the I/O threads).
        self._epochs: dict[int, int] = {}
        self._handoff: dict[int, int] = {}
        self._unacked: dict[str, list[str]] = {}
        self._first_ms: dict[str, float] = {}
        self._shard: dict[str, int] = {}

    # ----------------------------------------------------------- control ---
    def start(self) -> None:
        """Start the I/O threads; raises ``ClusterConfigError`` on a shard-count mismatch.

        Redis being unreachable is not an error: the member starts degraded
        and joins once Redis answers.
        """
        control = ClusterStore(self.settings)
        try:
            control.ensure_meta()
        except TRANSIENT as exc:
            self._sh.health.fail("control", exc)
        reader = ClusterStore(self.settings)
        self._stores = [control, reader]
        self._threads = (Controller(self._sh, control), Reader(self._sh, reader))
        for t in self._threads:
            t.start()

    def close(self, final: Iterable[AssetCheckpoint] = (), timeout_s: float = 5.0) -> bool:
        """Write ``final`` checkpoints, release every shard, leave; ``True`` if all done.

        Gives up after ``timeout_s`` when Redis is away (nothing is lost: the
        next owner replays the unacknowledged ticks).
        """
        if self._threads is None:
            return True
        self.checkpoint(final)
        control, reader = self._threads
        self._sh.stop.set()
        with self._sh.lock:
            self._sh.out_cv.notify_all()
        control.join(timeout_s)
        reader.join(max(0.1, self.settings.io_timeout_ms / 1000.0))
        finished = not control.is_alive() and not self._sh.ckpts
        for st in self._stores:
            with contextlib.suppress(redis.RedisError, OSError):
                st.close()
        self._threads = None
        return finished

    # -------------------------------------------------------------- intake ---
    def poll(self, max_items: int = 4096, timeout_s: float = 0.0) -> Batch:
        """Events and ticks in arrival order, waiting at most ``timeout_s`` for the first.

        A batch stops before an event that follows ticks, so handling
        ``events`` before ``ticks`` keeps the order.
        """
        out = Batch()
        sh = self._sh
        with sh.lock:
            if not sh.inbox and timeout_s > 0:
                sh.inbox_cv.wait(timeout_s)
            n = 0
            while sh.inbox and n < max_items:
                item = sh.inbox[0]
                if isinstance(item, StreamTick):
                    out.ticks.append(item)
                elif out.ticks:
                    break
                else:
                    out.events.append(item)
                sh.inbox.popleft()
                n += 1
        for ev in out.events:
            self._on_event(ev)
        now = time.monotonic()
        for t in out.ticks:
            self._shard[t.asset] = t.shard
            self._unacked.setdefault(t.asset, []).append(t.entry_id)
            self._first_ms.setdefault(t.asset, now)
        return out

    def _on_event(self, ev: Event) -> None:
        if isinstance(ev, ShardAssigned):
            self._epochs[ev.shard] = ev.epoch
        elif isinstance(ev, ShardRevoked) and self._epochs.get(ev.shard) == ev.epoch:
            del self._epochs[ev.shard]
            if ev.handoff:
                # Still held under this epoch until ``release``: final checkpoints count.
                self._handoff[ev.shard] = ev.epoch
            else:
                self._forget(ev.shard)

    # ------------------------------------------------------------- output ---
    def publish(self, predictions: Sequence[Prediction]) -> None:
        """Queue predictions for their shards' streams (dropped if disabled)."""
        if not self.settings.publish_predictions or not predictions:
            return
        sh = self._sh
        with sh.lock:
            sh.preds.extend(predictions)
            excess = len(sh.preds) - self.settings.buffer_limit
            for _ in range(max(0, excess)):
                sh.preds.popleft()
            sh.dropped_predictions += max(0, excess)
            sh.out_cv.notify_all()

    def due(self) -> list[str]:
        """Assets with ``checkpoint_interval`` unsaved ticks, or unsaved for the max age."""
        now = time.monotonic()
        age = self.settings.checkpoint_max_age_ms / 1000.0
        n = self.settings.checkpoint_interval
        return [
            a
            for a, ids in self._unacked.items()
            if ids and (len(ids) >= n or now - self._first_ms.get(a, now) >= age)
        ]

    def checkpoint(self, items: Iterable[AssetCheckpoint]) -> int:
        """Queue checkpoints (host copy taken here); returns how many were accepted.

        An asset whose shard this member does not hold is skipped. The
        entries delivered for the asset up to ``entry_id`` are acknowledged
        together with the stored checkpoint.
        """
        queued: dict[int, dict[str, PendingCheckpoint]] = {}
        for item in items:
            shard = self._shard.get(item.asset, shard_of(item.asset, self.settings.shards))
            epoch = self._epochs.get(shard, self._handoff.get(shard))
            if epoch is None:
                continue
            key = entry_key(item.entry_id)
            ids = self._unacked.get(item.asset, [])
            cut = 0
            while cut < len(ids) and entry_key(ids[cut]) <= key:
                cut += 1
            acks, rest = ids[:cut], ids[cut:]
            if rest:
                self._unacked[item.asset] = rest
            else:
                self._unacked.pop(item.asset, None)
                self._first_ms.pop(item.asset, None)
            host = to_host(item.state)
            queued.setdefault(shard, {})[item.asset] = PendingCheckpoint(
                epoch, host, item.entry_id, int(item.seq), acks
            )
        if queued:
            with self._sh.lock:
                for shard, group in queued.items():
                    target = self._sh.ckpts.setdefault(shard, {})
                    for asset, new in group.items():
                        old = target.get(asset)
                        if old is not None and old.epoch == new.epoch:
                            new.ack_ids[:0] = old.ack_ids
                        target[asset] = new
                self._sh.out_cv.notify_all()
        return sum(len(g) for g in queued.values())

    def release(self, shard: int, final: Iterable[AssetCheckpoint] = ()) -> None:
        """Answer a handoff (``ShardRevoked.handoff``): store ``final``, then give the shard up.

        Without this call the shard is released after ``handoff_timeout_ms``
        and the next owner replays from the last stored checkpoints.
        """
        if shard not in self._handoff:
            return
        self.checkpoint(final)
        epoch = self._handoff.pop(shard)
        with self._sh.lock:
            self._sh.releases[shard] = epoch
            self._sh.out_cv.notify_all()
        self._forget(shard)

    def _forget(self, shard: int) -> None:
        for asset in [a for a, s in self._shard.items() if s == shard]:
            self._shard.pop(asset)
            self._unacked.pop(asset, None)
            self._first_ms.pop(asset, None)

    # ------------------------------------------------------------- status ---
    @property
    def degraded(self) -> bool:
        """Whether the last Redis call of a background thread failed."""
        return self._sh.health.degraded

    def owned(self) -> dict[int, int]:
        """``{shard: epoch}`` as the loop knows it (events seen by ``poll``)."""
        return dict(self._epochs)

    def status(self) -> dict[str, Any]:
        """This member's view: ownership, buffers, counters and degraded periods."""
        sh = self._sh
        with sh.lock:
            out: dict[str, Any] = {
                "member": self.member,
                "held": dict(sh.owned),
                "inbox": len(sh.inbox),
                "buffered_checkpoints": sum(len(g) for g in sh.ckpts.values()),
                "buffered_predictions": len(sh.preds),
                "dropped_predictions": sh.dropped_predictions,
                "checkpoints_written": sh.checkpoints_written,
                "checkpoints_fenced": sh.checkpoints_fenced,
                "takeovers": sh.takeovers,
                "replayed": sh.replayed,
                "bad_entries": sh.bad_entries,
                "last_checkpoint_ms": sh.last_checkpoint_ms,
            }
        out.update(sh.health.snapshot())
        return out
