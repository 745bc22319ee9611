"""Background I/O of a cluster member: a control thread and a reader thread.

Only these threads talk to Redis (each on its own connection); the daemon's
loop exchanges plain records with them through ``Shared`` (one lock):

* control: heartbeat, membership, rendezvous ownership (acquire with a new
  epoch, hand off, detect fencing), checkpoint writes with their XACKs,
  prediction XADDs, releases. It posts ``ShardAssigned`` (followed by the
  replayed ticks) and ``ShardRevoked`` events.
* reader: fenced ``XREADGROUP`` of the held shards, then ``XREAD BLOCK`` on
  them while idle; posts ticks.

A Redis error never leaves a thread: it marks the member degraded, keeps
what was to be written, backs off (100 ms doubling to 1 s) and retries.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import redis

from predictor.cluster.hashing import shard_of, shards_of
from predictor.cluster.health import Health, now_ms
from predictor.cluster.records import (
    Event,
    Prediction,
    ShardAssigned,
    ShardRevoked,
    StreamTick,
    decode_tick,
    encode_checkpoint,
    entry_key,
)
from predictor.cluster.settings import ClusterSettings
from predictor.cluster.store import ClusterStore

#: Ticks waiting in the inbox above which the reader pauses.
INBOX_LIMIT = 200_000


@dataclass
class PendingCheckpoint:
    """A checkpoint submitted by the loop, not yet stored."""

    epoch: int
    state: Any
    entry_id: str
    seq: int
    ack_ids: list[str]
    blob: bytes | None = None


@dataclass
class Shared:
    """State exchanged between the loop and the I/O threads (guarded by ``lock``)."""

    settings: ClusterSettings
    member: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    owned: dict[int, int] = field(default_factory=dict)
    last_ids: dict[int, str] = field(default_factory=dict)
    inbox: deque[StreamTick | Event] = field(default_factory=deque)
    ckpts: dict[int, dict[str, PendingCheckpoint]] = field(default_factory=dict)
    preds: deque[Prediction] = field(default_factory=deque)
    releases: dict[int, int] = field(default_factory=dict)
    lost_by_reader: set[int] = field(default_factory=set)
    dropped_predictions: int = 0
    checkpoints_written: int = 0
    checkpoints_fenced: int = 0
    takeovers: int = 0
    replayed: int = 0
    bad_entries: int = 0
    last_checkpoint_ms: int = 0
    health: Health = field(default_factory=Health)
    stop: threading.Event = field(default_factory=threading.Event)
    closing: bool = False

    def __post_init__(self) -> None:
        self.inbox_cv = threading.Condition(self.lock)
        self.out_cv = threading.Condition(self.lock)

    def post(self, items: list[StreamTick | Event]) -> None:
        """Append to the inbox (caller holds ``lock``) and wake the loop."""
        self.inbox.extend(items)
        self.inbox_cv.notify_all()

    def revoke(self, shard: int, epoch: int, reason: str, handoff: bool = False) -> bool:
        """Stop delivering ``shard`` and tell the loop (caller holds ``lock``)."""
        if self.owned.get(shard) != epoch:
            return False
        del self.owned[shard]
        self.last_ids.pop(shard, None)
        if reason != "rebalance":
            self.ckpts.pop(shard, None)
        self.post([ShardRevoked(shard, epoch, reason, handoff)])
        return True


def _backoff(attempt: int) -> float:
    return float(min(1.0, 0.1 * 2 ** min(attempt, 4)))


class Controller(threading.Thread):
    """Heartbeat, ownership and writes (see the module doc)."""

    def __init__(self, shared: Shared, store: ClusterStore) -> None:
        super().__init__(name=f"cluster-control-{shared.member}", daemon=True)
        self.sh = shared
        self.store = store
        self.s = shared.settings
        self.revoking: dict[int, tuple[int, float]] = {}
        self.started_ms = now_ms()
        self.done = threading.Event()

    # -------------------------------------------------------------- loop ---
    def run(self) -> None:
        next_hb = next_refresh = 0.0
        failures = 0
        try:
            while True:
                stopping = self.sh.stop.is_set()
                try:
                    now = time.monotonic()
                    if stopping:
                        self.shutdown()
                        return
                    if now >= next_hb:
                        self.store.heartbeat(self.sh.member, self.info())
                        next_hb = now + self.s.heartbeat_period_ms / 1000.0
                    if now >= next_refresh or self.sh.lost_by_reader:
                        self.refresh()
                        next_refresh = now + self.s.refresh_ms / 1000.0
                    self.flush()
                    self.sh.health.ok("control")
                    failures = 0
                except redis.RedisError as exc:
                    self.sh.health.fail("control", exc)
                    failures += 1
                    self.sh.stop.wait(_backoff(failures))
                    if stopping:
                        return
                    continue
                with self.sh.lock:
                    if not (self.sh.ckpts or self.sh.preds or self.sh.releases):
                        wait = min(next_hb, next_refresh) - time.monotonic()
                        self.sh.out_cv.wait(max(0.0, wait))
        finally:
            self.done.set()

    def info(self) -> dict[str, Any]:
        h = self.sh.health.snapshot()
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_ms": self.started_ms,
            "owned": len(self.sh.owned),
            "degraded_periods": h["degraded_periods"],
            "last_checkpoint_ms": self.sh.last_checkpoint_ms,
        }

    # --------------------------------------------------------- ownership ---
    def refresh(self) -> None:
        me = self.sh.member
        live = set(self.store.members()) | {me}
        desired = shards_of(me, self.s.shards, live)
        with self.sh.lock:
            held = dict(self.sh.owned)
            self.sh.lost_by_reader.clear()
        checked = {**held, **{s: e for s, (e, _) in self.revoking.items()}}
        current = self.store.owners(checked) if checked else {}
        for s, epoch in checked.items():
            if current.get(s) != (me, epoch):
                with self.sh.lock:
                    self.sh.revoke(s, epoch, "fenced")
                self.revoking.pop(s, None)
        now = time.monotonic()
        for s, epoch in held.items():
            if s not in desired and s in self.sh.owned:
                with self.sh.lock:
                    self.sh.revoke(s, epoch, "rebalance", handoff=True)
                self.revoking[s] = (epoch, now + self.s.handoff_timeout_ms / 1000.0)
        for s, (epoch, deadline) in list(self.revoking.items()):
            if now >= deadline:
                self.finish_release(s, epoch)
        for s in sorted(desired - set(self.sh.owned) - set(self.revoking)):
            taken, epoch, _ = self.store.acquire(s, me)
            if taken:
                self.take_over(s, epoch)

    def take_over(self, shard: int, epoch: int) -> None:
        """Load checkpoints, claim the group's pending entries, post them as a replay."""
        ckpts, corrupt = self.store.load_checkpoints(shard)
        entries, lost = self.store.claim_pending(shard, self.sh.member)
        last = self.store.last_delivered(shard)
        replay: list[StreamTick | Event] = []
        covered: list[str] = []
        for entry_id, fields in entries:
            tick = decode_tick(shard, entry_id, fields)
            c = None if tick is None else ckpts.get(tick.asset)
            if tick is None or (c is not None and entry_key(entry_id) <= entry_key(c.entry_id)):
                covered.append(entry_id)
                continue
            replay.append(tick._replace(replay=True))
        self.store.ack(shard, covered)
        event = ShardAssigned(shard, epoch, ckpts, len(replay), tuple(corrupt), lost)
        with self.sh.lock:
            self.sh.owned[shard] = epoch
            self.sh.last_ids[shard] = last
            self.sh.takeovers += 1
            self.sh.replayed += len(replay)
            self.sh.post([event, *replay])

    def finish_release(self, shard: int, epoch: int) -> None:
        """Store the shard's last checkpoints, then give the shard up."""
        self.flush_checkpoints(only=shard)
        self.store.release(shard, self.sh.member, epoch)
        self.revoking.pop(shard, None)

    # ------------------------------------------------------------ writes ---
    def flush(self) -> None:
        self.flush_checkpoints()
        self.flush_predictions()
        with self.sh.lock:
            releases, self.sh.releases = self.sh.releases, {}
        try:
            while releases:
                s, epoch = next(iter(releases.items()))
                if self.revoking.get(s, (None, 0.0))[0] == epoch:
                    self.finish_release(s, epoch)
                del releases[s]
        finally:
            if releases:
                with self.sh.lock:
                    self.sh.releases.update(releases)

    def flush_checkpoints(self, only: int | None = None) -> None:
        with self.sh.lock:
            if only is None:
                batch, self.sh.ckpts = self.sh.ckpts, {}
            else:
                batch = {only: self.sh.ckpts.pop(only)} if only in self.sh.ckpts else {}
        try:
            while batch:
                s = next(iter(batch))
                self.write_shard(s, batch[s])
                del batch[s]
        finally:
            if batch:
                self.requeue(batch)

    def write_shard(self, shard: int, items: dict[str, PendingCheckpoint]) -> None:
        by_epoch: dict[int, dict[str, PendingCheckpoint]] = {}
        for asset, item in items.items():
            if item.blob is None:
                item.blob = encode_checkpoint(
                    shard, item.epoch, asset, item.state, item.entry_id, item.seq
                )
                item.state = None
            by_epoch.setdefault(item.epoch, {})[asset] = item
        for epoch, group in sorted(by_epoch.items()):
            blobs = {a: i.blob for a, i in group.items() if i.blob is not None}
            acks = [x for i in group.values() for x in i.ack_ids]
            res = self.store.write_checkpoints(shard, self.sh.member, epoch, blobs, acks)
            for a in group:
                del items[a]
            with self.sh.lock:
                if res.ok:
                    self.sh.checkpoints_written += len(blobs)
                    self.sh.last_checkpoint_ms = now_ms()
                else:
                    self.sh.checkpoints_fenced += len(blobs)
                    self.sh.revoke(shard, epoch, "fenced")
            if not res.ok:
                self.revoking.pop(shard, None)

    def requeue(self, batch: dict[int, dict[str, PendingCheckpoint]]) -> None:
        """Put unwritten checkpoints back unless the loop submitted newer ones."""
        with self.sh.lock:
            for s, items in batch.items():
                queue = self.sh.ckpts.setdefault(s, {})
                for asset, old in items.items():
                    new = queue.get(asset)
                    if new is None:
                        queue[asset] = old
                    elif new.epoch == old.epoch:
                        new.ack_ids[:0] = old.ack_ids

    def flush_predictions(self) -> None:
        with self.sh.lock:
            preds = list(self.sh.preds)
            self.sh.preds.clear()
        if not preds:
            return
        try:
            self.store.publish(preds, lambda a: shard_of(a, self.s.shards))
        except redis.RedisError:
            with self.sh.lock:
                room = self.s.buffer_limit - len(self.sh.preds)
                keep = preds[-room:] if room > 0 else []
                self.sh.dropped_predictions += len(preds) - len(keep)
                self.sh.preds.extendleft(reversed(keep))
            raise

    def shutdown(self) -> None:
        """Final writes, release of every shard, leave the membership."""
        with self.sh.lock:
            held = dict(self.sh.owned)
            for s, epoch in held.items():
                self.sh.revoke(s, epoch, "closing")
        self.flush()
        for s, epoch in {**held, **{s: e for s, (e, _) in self.revoking.items()}}.items():
            self.store.release(s, self.sh.member, epoch)
        self.store.leave(self.sh.member)


class Reader(threading.Thread):
    """Fenced group reads of the held shards (see the module doc)."""

    def __init__(self, shared: Shared, store: ClusterStore) -> None:
        super().__init__(name=f"cluster-reader-{shared.member}", daemon=True)
        self.sh = shared
        self.store = store
        self.s = shared.settings

    def run(self) -> None:
        failures = 0
        idle = self.s.block_ms / 1000.0
        while not self.sh.stop.is_set():
            with self.sh.lock:
                epochs = dict(self.sh.owned)
                full = len(self.sh.inbox) >= INBOX_LIMIT
            if not epochs or full:
                self.sh.stop.wait(idle / 4 if full else idle)
                continue
            try:
                got, lost = self.store.read(self.sh.member, epochs, self.s.read_count)
                if lost:
                    with self.sh.lock:
                        self.sh.lost_by_reader.update(lost)
                        self.sh.out_cv.notify_all()
                if got:
                    self.deliver(got, epochs)
                else:
                    with self.sh.lock:
                        last = {s: self.sh.last_ids.get(s, "0-0") for s in self.sh.owned}
                    self.store.wait(last, self.s.block_ms)
                self.sh.health.ok("reader")
                failures = 0
            except redis.RedisError as exc:
                self.sh.health.fail("reader", exc)
                failures += 1
                self.sh.stop.wait(_backoff(failures))

    def deliver(
        self, got: dict[int, list[tuple[str, dict[bytes, bytes]]]], epochs: dict[int, int]
    ) -> None:
        for s, entries in got.items():
            ticks: list[StreamTick | Event] = []
            bad: list[str] = []
            for entry_id, fields in entries:
                tick = decode_tick(s, entry_id, fields)
                if tick is None:
                    bad.append(entry_id)
                else:
                    ticks.append(tick)
            with self.sh.lock:
                self.sh.bad_entries += len(bad)
                if self.sh.owned.get(s) == epochs[s]:
                    self.sh.last_ids[s] = entries[-1][0]
                    self.sh.post(ticks)
            # A malformed entry can never be covered by a checkpoint: drop it now.
            self.store.ack(s, bad)
