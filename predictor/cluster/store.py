"""Synchronous Redis operations of the cluster (one client, one thread).

Key layout under ``prefix``::

    <prefix>:meta            hash  {shards}
    <prefix>:member:<id>     string JSON member info, PX heartbeat TTL
    <prefix>:shard:<s>       hash  {owner, epoch, acquired_ms, ckpt_ms, writes}
    <prefix>:ckpt:<s>        hash  asset -> checkpoint blob (records.py)
    <prefix>:ticks:<s>       stream of ticks, consumer group ``group``
    <prefix>:pred:<s>        stream of predictions

Every method may raise ``redis.RedisError`` (``TRANSIENT`` for a lost
connection or a loading server): callers that face the daemon's loop catch
them and report ``degraded`` (see ``node.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from predictor.cluster.records import (
    Checkpoint,
    CorruptCheckpointError,
    Prediction,
    decode_checkpoint,
    prediction_fields,
)
from predictor.cluster.scripts import ACQUIRE, CHECKPOINT, READ, RELEASE
from predictor.cluster.settings import ClusterSettings

#: Errors after which a retry may succeed (server away, restarting, loading).
TRANSIENT: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

Entry = tuple[str, dict[bytes, bytes]]


class ClusterConfigError(RuntimeError):
    """This client's settings contradict the cluster recorded in Redis."""


@dataclass(frozen=True)
class Keys:
    """Redis key names of one cluster (see the module doc)."""

    prefix: str

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def member_prefix(self) -> str:
        return f"{self.prefix}:member:"

    def member(self, member: str) -> str:
        return f"{self.prefix}:member:{member}"

    def shard(self, s: int) -> str:
        return f"{self.prefix}:shard:{s}"

    def ckpt(self, s: int) -> str:
        return f"{self.prefix}:ckpt:{s}"

    def ticks(self, s: int) -> str:
        return f"{self.prefix}:ticks:{s}"

    def pred(self, s: int) -> str:
        return f"{self.prefix}:pred:{s}"


def connect(url: str, timeout_ms: int = 2_000) -> redis.Redis:
    """A RESP2 client without hidden retries: each failure reaches the caller at once."""
    timeout = timeout_ms / 1000.0
    return redis.Redis.from_url(
        url,
        protocol=2,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class CheckpointWrite:
    """Outcome of ``write_checkpoints``: ``ok`` false means fenced out."""

    ok: bool
    writes: int
    acked: int
    epoch: int
    owner: str


class ClusterStore:
    """Cluster operations on one Redis client (not thread-safe: one per thread)."""

    def __init__(self, settings: ClusterSettings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.prefix)
        self.r = (
            client if client is not None else connect(settings.redis_url, settings.io_timeout_ms)
        )
        self._acquire = self.r.register_script(ACQUIRE)
        self._release = self.r.register_script(RELEASE)
        self._checkpoint = self.r.register_script(CHECKPOINT)
        self._read = self.r.register_script(READ)

    def close(self) -> None:
        self.r.close()

    # ------------------------------------------------------------ meta ---
    def ensure_meta(self) -> None:
        """Record the shard count, or check it against the recorded one."""
        self.r.hsetnx(self.keys.meta, "shards", self.settings.shards)
        stored = self.r.hget(self.keys.meta, "shards")
        if stored is None or int(stored) != self.settings.shards:
            raise ClusterConfigError(
                f"cluster {self.settings.prefix!r} at {self.settings.redis_url} has "
                f"{_s(stored)} shards; these settings say {self.settings.shards}"
            )

    # ------------------------------------------------------ membership ---
    def heartbeat(self, member: str, info: Mapping[str, Any]) -> bool:
        """Refresh ``member``'s key; ``False`` when it had expired and was re-created."""
        key = self.keys.member(member)
        value = json.dumps(dict(info), sort_keys=True)
        ttl = self.settings.heartbeat_ttl_ms
        if self.r.set(key, value, px=ttl, xx=True):
            return True
        self.r.set(key, value, px=ttl)
        return False

    def leave(self, member: str) -> None:
        self.r.delete(self.keys.member(member))

    def members(self) -> dict[str, dict[str, Any]]:
        """Live members (heartbeat key present) and the info they published."""
        prefix = self.keys.member_prefix
        keys = [_s(k) for k in self.r.scan_iter(match=f"{prefix}*", count=1000)]
        if not keys:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for key, raw in zip(keys, cast(list[Any], self.r.mget(keys)), strict=True):
            if raw is None:
                continue
            try:
                info = json.loads(raw)
            except ValueError:
                info = {}
            out[key[len(prefix) :]] = info if isinstance(info, dict) else {}
        return out

    # ------------------------------------------------------- ownership ---
    def acquire(self, shard: int, member: str) -> tuple[bool, int, str]:
        """``(taken, epoch, owner)``; taking bumps the epoch, fencing any older owner."""
        res = self._acquire(
            keys=[self.keys.shard(shard), self.keys.ticks(shard)],
            args=[member, self.keys.member_prefix, self.settings.group],
        )
        taken = int(res[0]) == 1
        return taken, int(res[1]), member if taken else _s(res[2])

    def release(self, shard: int, member: str, epoch: int) -> bool:
        return int(self._release(keys=[self.keys.shard(shard)], args=[member, epoch])) == 1

    def owners(self, shards: Iterable[int]) -> dict[int, tuple[str, int]]:
        """``{shard: (owner, epoch)}``; owner '' when released or never taken."""
        shard_list = list(shards)
        pipe = self.r.pipeline(transaction=False)
        for s in shard_list:
            pipe.hmget(self.keys.shard(s), "owner", "epoch")
        out: dict[int, tuple[str, int]] = {}
        for s, (owner, epoch) in zip(shard_list, pipe.execute(), strict=True):
            out[s] = ("" if owner is None else _s(owner), 0 if epoch is None else int(epoch))
        return out

    # ----------------------------------------------------- checkpoints ---
    def load_checkpoints(self, shard: int) -> tuple[dict[str, Checkpoint], list[str]]:
        """Verified checkpoints of a shard and the assets whose blob is corrupt."""
        good: dict[str, Checkpoint] = {}
        corrupt: list[str] = []
        for field, blob in cast(dict[bytes, bytes], self.r.hgetall(self.keys.ckpt(shard))).items():
            asset = _s(field)
            try:
                good[asset] = decode_checkpoint(blob, f"checkpoint {shard}/{asset}")
            except CorruptCheckpointError:
                corrupt.append(asset)
        return good, sorted(corrupt)

    def write_checkpoints(
        self,
        shard: int,
        member: str,
        epoch: int,
        blobs: Mapping[str, bytes],
        ack_ids: Sequence[str],
    ) -> CheckpointWrite:
        """Store blobs and XACK the entries they cover, if ``(member, epoch)`` still holds."""
        args: list[Any] = [member, epoch, self.settings.group, len(blobs)]
        for asset, blob in blobs.items():
            args.extend((asset, blob))
        args.extend(ack_ids)
        res = self._checkpoint(
            keys=[self.keys.shard(shard), self.keys.ckpt(shard), self.keys.ticks(shard)],
            args=args,
        )
        if int(res[0]) == 1:
            return CheckpointWrite(True, int(res[1]), int(res[2]), epoch, member)
        return CheckpointWrite(False, 0, 0, int(res[1]), _s(res[2]))

    # --------------------------------------------------------- streams ---
    def claim_pending(self, shard: int, member: str) -> tuple[list[Entry], int]:
        """All pending entries of the shard's group claimed for ``member`` (XAUTOCLAIM).

        Returns them in id order and the number of pending ids whose entry
        had already been trimmed from the stream.
        """
        entries: list[Entry] = []
        lost = 0
        start = "0-0"
        while True:
            res = self.r.xautoclaim(
                self.keys.ticks(shard), self.settings.group, member, 0, start, count=1000
            )
            start = _s(res[0])
            entries.extend((_s(i), f) for i, f in res[1] if f is not None)
            lost += len(res[2]) if len(res) > 2 else 0
            if start == "0-0":
                return entries, lost

    def last_delivered(self, shard: int) -> str:
        """The group's last delivered id on the shard's stream ('0-0' when none)."""
        for g in self.r.xinfo_groups(self.keys.ticks(shard)):
            if _s(g["name"]) == self.settings.group:
                return _s(g["last-delivered-id"])
        return "0-0"

    def read(
        self, member: str, epochs: Mapping[int, int], count: int
    ) -> tuple[dict[int, list[Entry]], list[int]]:
        """New entries of the shards held under ``epochs``; shards no longer held."""
        shard_list = list(epochs)
        if not shard_list:
            return {}, []
        keys = [self.keys.shard(s) for s in shard_list] + [self.keys.ticks(s) for s in shard_list]
        args: list[Any] = [member, self.settings.group, count, *(epochs[s] for s in shard_list)]
        got: dict[int, list[Entry]] = {}
        lost: list[int] = []
        for index, held, entries in self._read(keys=keys, args=args):
            s = shard_list[int(index)]
            if int(held) != 1:
                lost.append(s)
            elif entries:
                got[s] = [(_s(i), _pairs(f)) for i, f in entries]
        return got, lost

    def wait(self, last_ids: Mapping[int, str], block_ms: int) -> bool:
        """Block up to ``block_ms`` until a stream has an entry after ``last_ids``."""
        if not last_ids:
            return False
        streams: dict[Any, Any] = {self.keys.ticks(s): i for s, i in last_ids.items()}
        return bool(self.r.xread(streams, count=1, block=block_ms))

    def ack(self, shard: int, ids: Sequence[str]) -> int:
        return int(self.r.xack(self.keys.ticks(shard), self.settings.group, *ids)) if ids else 0

    def publish(self, predictions: Sequence[Prediction], shard_of: Any) -> None:
        """XADD predictions to their shard's stream (approximate MAXLEN), pipelined."""
        maxlen = self.settings.predictions_maxlen
        for start in range(0, len(predictions), 1000):
            pipe = self.r.pipeline(transaction=False)
            for p in predictions[start : start + 1000]:
                pipe.xadd(
                    self.keys.pred(shard_of(p.asset)),
                    prediction_fields(p),  # type: ignore[arg-type]
                    maxlen=maxlen,
                    approximate=True,
                )
            pipe.execute()


def _pairs(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """Field map of an entry as Lua returns it (a flat field, value list)."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}
