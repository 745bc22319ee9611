"""What ``predictorctl cluster status`` shows, read straight from Redis.

``cluster_status`` returns a JSON-ready dict::

    {"prefix", "shards", "time_ms",
     "members": {id: {"ttl_ms", "host", "pid", "owned", "degraded_periods", ...}},
     "owners": {member: [shard, ...]}, "unowned": [shard, ...],
     "shard_table": [{"shard", "owner", "owner_alive", "epoch", "length",
                      "pending", "lag", "checkpoints", "writes",
                      "last_checkpoint_ms", "checkpoint_age_s"}, ...]}

``lag`` is the group's count of entries not yet delivered (Redis 7), and
``pending`` those delivered but not covered by a checkpoint; together the
ticks a takeover would replay or still has to read.
"""

from __future__ import annotations

from typing import Any

import redis

from predictor.cluster.settings import ClusterSettings
from predictor.cluster.store import ClusterStore


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _int(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def cluster_status(settings: ClusterSettings, client: redis.Redis | None = None) -> dict[str, Any]:
    """Members, owners, epochs, lag and checkpoint age per shard (raises ``RedisError``)."""
    store = ClusterStore(settings, client)
    try:
        return _collect(store)
    finally:
        if client is None:
            store.close()


def _collect(store: ClusterStore) -> dict[str, Any]:
    r, k, group = store.r, store.keys, store.settings.group
    sec, usec = r.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    recorded = _int(r.hget(k.meta, "shards"))
    shards = recorded if recorded is not None else store.settings.shards
    members = store.members()
    pipe = r.pipeline(transaction=False)
    for m in members:
        pipe.pttl(k.member(m))
    for m, ttl in zip(members, pipe.execute(), strict=True):
        members[m]["ttl_ms"] = int(ttl)
    pipe = r.pipeline(transaction=False)
    for s in range(shards):
        pipe.hgetall(k.shard(s))
        pipe.xlen(k.ticks(s))
        pipe.xinfo_groups(k.ticks(s))
        pipe.hlen(k.ckpt(s))
    res = pipe.execute(raise_on_error=False)
    table: list[dict[str, Any]] = []
    owners: dict[str, list[int]] = {}
    unowned: list[int] = []
    for s in range(shards):
        rec_raw, length, groups, nckpt = res[4 * s : 4 * s + 4]
        rec = {_s(a): _s(b) for a, b in rec_raw.items()} if isinstance(rec_raw, dict) else {}
        info: dict[str, Any] = {}
        if isinstance(groups, list):
            for g in groups:
                if _s(g.get("name")) == group:
                    info = g
        owner = rec.get("owner", "")
        ckpt_ms = _int(rec.get("ckpt_ms"))
        row = {
            "shard": s,
            "owner": owner,
            "owner_alive": owner in members,
            "epoch": _int(rec.get("epoch")) or 0,
            "length": length if isinstance(length, int) else 0,
            "pending": _int(info.get("pending")) or 0,
            "lag": _int(info.get("lag")),
            "checkpoints": nckpt if isinstance(nckpt, int) else 0,
            "writes": _int(rec.get("writes")) or 0,
            "last_checkpoint_ms": ckpt_ms,
            "checkpoint_age_s": None if ckpt_ms is None else (now_ms - ckpt_ms) / 1000.0,
        }
        table.append(row)
        if owner and owner in members:
            owners.setdefault(owner, []).append(s)
        else:
            unowned.append(s)
    return {
        "prefix": store.settings.prefix,
        "shards": shards,
        "time_ms": now_ms,
        "members": members,
        "owners": owners,
        "unowned": unowned,
        "shard_table": table,
    }
