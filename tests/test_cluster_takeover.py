"""SIGKILL of a member process: takeover within TTL + 2 s, every tick applied once."""

from __future__ import annotations

import signal
import time
from collections import defaultdict

import msgpack

from predictor.cluster import (
    ClusterRouter,
    ClusterSettings,
    PredictionFollower,
    cluster_status,
    shard_of,
)
from tests.redis_fixture import CountingMember, RedisServer, spawn_member, wait_for

ASSETS = [f"asset-{i:02d}" for i in range(24)]
ROUNDS = 60
TTL_MS = 1500


def _settings(url: str) -> ClusterSettings:
    return ClusterSettings(
        redis_url=url,
        shards=8,
        heartbeat_ttl_ms=TTL_MS,
        refresh_ms=100,
        checkpoint_interval=7,
        checkpoint_max_age_ms=300,
        block_ms=50,
    )


def _send(router: ClusterRouter, rounds: range) -> None:
    for r in rounds:
        for i, a in enumerate(ASSETS):
            router.send(a, float(r * 100 + i), 1_000_000 + r)
        router.flush()
        time.sleep(0.01)


def test_sigkill_moves_shards_and_replays_exactly_after_checkpoints(
    redis_server: RedisServer,
) -> None:
    s = _settings(redis_server.url)
    victim = spawn_member(redis_server.url, "victim", s)
    survivor = CountingMember(s, "survivor")
    survivor.start()
    router = ClusterRouter.from_settings(s, batch=64)
    try:
        wait_for(
            lambda: (
                set(cluster_status(s)["owners"]) == {"victim", "survivor"}
                and not cluster_status(s)["unowned"]
            ),
            30,
            "both members to own shards",
        )
        victim_shards = set(cluster_status(s)["owners"]["victim"])
        _send(router, range(ROUNDS // 2))

        def victim_checkpointed() -> bool:
            table = cluster_status(s)["shard_table"]
            return all(table[x]["writes"] > 0 for x in victim_shards)

        wait_for(victim_checkpointed, 30, "the victim's first checkpoints")
        victim.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.wait(10)

        def all_survivor() -> bool:
            st = cluster_status(s)
            return set(st["owners"]) == {"survivor"} and not st["unowned"]

        wait_for(all_survivor, 30, "the survivor to own every shard", step_s=0.02)
        took = time.monotonic() - killed
        assert took <= TTL_MS / 1000 + 2.0, f"takeover took {took:.2f} s"
        taken = {e.shard for e in survivor.assigned if e.shard in victim_shards}
        assert taken == victim_shards

        _send(router, range(ROUNDS // 2, ROUNDS))
        expected = {
            a: (ROUNDS, float(sum(r * 100 + i for r in range(ROUNDS))))
            for i, a in enumerate(ASSETS)
        }
        wait_for(lambda: survivor.counts() == expected, 30, "every tick applied exactly once")
        # The replay started right after each asset's checkpoint: no replayed entry
        # is at or before the checkpoint the takeover loaded.
        loaded = {
            a: c.entry_id
            for e in survivor.assigned
            for a, c in e.checkpoints.items()
            if e.shard in victim_shards
        }
        assert loaded and survivor.replayed
        for asset, entry_id in survivor.replayed:
            if asset in loaded:
                ms, sq = (int(x) for x in loaded[asset].split("-"))
                ems, esq = (int(x) for x in entry_id.split("-"))
                assert (ems, esq) > (ms, sq)

        # Followers see every sequence number; duplicates carry identical predictions.
        follower = PredictionFollower(
            redis_server.url, s.shards, ASSETS, prefix=s.prefix, start="0", dedupe=False
        )
        seen: dict[str, dict[int, set[float]]] = defaultdict(lambda: defaultdict(set))

        def complete() -> bool:
            for p in follower.read(block_ms=100, count=100_000):
                seen[p.asset][p.seq].add(msgpack.unpackb(p.body)["sum"])
            return all(len(seen[a]) == ROUNDS for a in ASSETS)

        wait_for(complete, 30, "every prediction on the predictions streams")
        follower.close()
        for a in ASSETS:
            assert set(seen[a]) == set(range(1, ROUNDS + 1)), a
            assert all(len(v) == 1 for v in seen[a].values()), a
        assert any(shard_of(a, s.shards) in victim_shards for a in ASSETS)
    finally:
        if victim.poll() is None:
            victim.kill()
        router.close(1.0)
        survivor.stop()
