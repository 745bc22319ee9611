"""Redis restarted under a member, and a cluster rebuilt from an RDB snapshot."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from predictor.cluster import ClusterRouter, ClusterSettings, ClusterStore, cluster_status
from tests.redis_fixture import CountingMember, RedisServer, wait_for

ASSETS = [f"a{i}" for i in range(12)]


def _settings(url: str, **kw: object) -> ClusterSettings:
    base: dict[str, object] = {
        "redis_url": url,
        "shards": 4,
        "heartbeat_ttl_ms": 1000,
        "refresh_ms": 100,
        "checkpoint_interval": 1000,
        "checkpoint_max_age_ms": 400,
        "block_ms": 50,
        "io_timeout_ms": 500,
    }
    return ClusterSettings(**(base | kw))  # type: ignore[arg-type]


def _send(router: ClusterRouter, rounds: range) -> None:
    for r in rounds:
        for i, a in enumerate(ASSETS):
            router.send(a, float(r + i), 1 + r)
    router.flush()


def _pending(c: Any, stream: str, group: str) -> list[tuple[bytes, bytes, int]]:
    """Pending entries without their idle time (which differs between servers)."""
    rows = c.xpending_range(stream, group, "-", "+", 10_000)
    return [(r["message_id"], r["consumer"], r["times_delivered"]) for r in rows]


def _expected(rounds: int) -> dict[str, tuple[int, float]]:
    return {a: (rounds, float(sum(r + i for r in range(rounds)))) for i, a in enumerate(ASSETS)}


def test_redis_restart_degrades_buffers_and_recovers(redis_server: RedisServer) -> None:
    s = _settings(redis_server.url)
    member = CountingMember(s, "m1")
    member.start()
    router = ClusterRouter.from_settings(s, batch=32)
    try:
        wait_for(lambda: len(member.node.owned()) == s.shards, 20, "the member to own all shards")
        epochs = member.node.owned()
        _send(router, range(10))
        wait_for(lambda: member.counts() == _expected(10), 20, "the first ticks")
        redis_server.kill()
        # The loop keeps running: checkpoints become due and stay buffered.
        wait_for(lambda: member.node.degraded, 20, "degraded")
        wait_for(
            lambda: member.node.status()["buffered_checkpoints"] == len(ASSETS),
            20,
            "checkpoints buffered while Redis is away",
        )
        for i, a in enumerate(ASSETS):  # the router buffers too, and raises nothing
            router.send(a, float(10 + i), 11)
        assert not router.flush() and router.degraded and router.buffered == len(ASSETS)
        time.sleep(1.2)  # past the heartbeat TTL
        redis_server.start()
        wait_for(lambda: not member.node.degraded, 20, "recovery")
        wait_for(lambda: member.node.status()["buffered_checkpoints"] == 0, 20, "flush")
        stored, corrupt = {}, []
        st = ClusterStore(s)
        for shard in range(s.shards):
            got, bad = st.load_checkpoints(shard)
            stored.update(got)
            corrupt += bad
        assert corrupt == []
        assert {a: (c.state["n"], c.state["sum"]) for a, c in stored.items()} == _expected(10)
        # Ownership survived: same epochs, no takeover.
        assert member.node.owned() == epochs
        status = member.node.status()
        assert status["degraded_periods"] and status["checkpoints_fenced"] == 0
        wait_for(router.flush, 20, "the router's buffered ticks")
        wait_for(lambda: member.counts() == _expected(11), 20, "ticks sent during the outage")
        st.close()
    finally:
        router.close(1.0)
        member.stop()


def test_rebuild_from_rdb_snapshot(redis_server: RedisServer) -> None:
    s = _settings(redis_server.url, checkpoint_interval=5, checkpoint_max_age_ms=10_000)
    member = CountingMember(s, "old")
    member.start()
    router = ClusterRouter.from_settings(s, batch=32)
    wait_for(lambda: len(member.node.owned()) == s.shards, 20, "the member to own all shards")
    _send(router, range(10))
    wait_for(lambda: member.counts() == _expected(10), 20, "the first ticks")
    wait_for(lambda: member.node.status()["checkpoints_written"] > 0, 20, "checkpoints")
    member.autosave = False
    _send(router, range(10, 13))  # never checkpointed: stay pending
    wait_for(lambda: member.counts() == _expected(13), 20, "the next ticks")
    member.stop(final=False)  # no final checkpoint: 3 ticks per asset stay pending
    _send(router, range(13, 20))  # never read: lag
    router.close(2.0)
    rdb = redis_server.save()

    new = RedisServer(Path(tempfile.mkdtemp(prefix="rds-", dir="/tmp")), aof=False)
    shutil.copy(rdb, new.dir / "dump.rdb")
    new.start()
    try:
        s2 = _settings(new.url, checkpoint_interval=5, checkpoint_max_age_ms=10_000)
        old_st, new_st = ClusterStore(s), ClusterStore(s2)
        old_c, new_c = redis_server.client(), new.client()
        for shard in range(s.shards):
            k = old_st.keys
            assert old_c.hgetall(k.ckpt(shard)) == new_c.hgetall(k.ckpt(shard))
            assert old_c.xrange(k.ticks(shard)) == new_c.xrange(k.ticks(shard))
            assert _pending(old_c, k.ticks(shard), s.group) == _pending(
                new_c, k.ticks(shard), s.group
            )
        before = cluster_status(s2)
        assert sum(r["pending"] for r in before["shard_table"]) > 0
        assert sum(r["lag"] or 0 for r in before["shard_table"]) > 0
        rebuilt = CountingMember(s2, "new")
        rebuilt.start()
        try:
            wait_for(lambda: rebuilt.counts() == _expected(20), 30, "the rebuilt cluster")
        finally:
            rebuilt.stop()
        old_st.close()
        new_st.close()
    finally:
        new.cleanup()
