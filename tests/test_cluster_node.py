"""Members joining and leaving under load; the router without a server."""

from __future__ import annotations

import time

import pytest

from predictor.cluster import (
    ClusterRouter,
    ClusterSettings,
    assignment,
    cluster_status,
)
from tests.redis_fixture import CountingMember, RedisServer, wait_for

ASSETS = [f"s{i}" for i in range(40)]
SHARDS = 32


def _settings(url: str) -> ClusterSettings:
    return ClusterSettings(
        redis_url=url,
        shards=SHARDS,
        heartbeat_ttl_ms=2000,
        refresh_ms=100,
        checkpoint_interval=4,
        checkpoint_max_age_ms=300,
        block_ms=50,
    )


def _owners(s: ClusterSettings) -> dict[int, tuple[str, int]]:
    table = cluster_status(s)["shard_table"]
    return {r["shard"]: (r["owner"], r["epoch"]) for r in table}


def _send(router: ClusterRouter, rounds: range) -> None:
    for r in rounds:
        for i, a in enumerate(ASSETS):
            router.send(a, float(r * 7 + i), 1 + r)
        router.flush()
        time.sleep(0.005)


def _expected(rounds: int) -> dict[str, tuple[int, float]]:
    return {a: (rounds, float(sum(r * 7 + i for r in range(rounds)))) for i, a in enumerate(ASSETS)}


def _merged(members: list[CountingMember]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for m in members:
        out.update(m.counts())
    return out


def test_join_moves_only_the_new_members_shards_and_leave_hands_over(
    redis_server: RedisServer,
) -> None:
    s = _settings(redis_server.url)
    names = ["m-a", "m-b", "m-c"]
    members = [CountingMember(s, n) for n in names]
    for m in members:
        m.start()
    router = ClusterRouter.from_settings(s, batch=64)
    try:
        three = assignment(SHARDS, names)
        wait_for(lambda: {k: v[0] for k, v in _owners(s).items()} == three, 30, "3 members")
        _send(router, range(0, 10))
        wait_for(lambda: _merged(members) == _expected(10), 30, "first ticks")
        before = _owners(s)

        d = CountingMember(s, "m-d")
        d.start()
        members.append(d)
        four = assignment(SHARDS, [*names, "m-d"])
        _send(router, range(10, 20))  # under load while the shards move
        wait_for(lambda: {k: v[0] for k, v in _owners(s).items()} == four, 30, "4 members")
        after = _owners(s)
        moved = {x for x in range(SHARDS) if after[x][0] != before[x][0]}
        assert moved == {x for x in range(SHARDS) if four[x] == "m-d"}
        assert 0.1 * SHARDS <= len(moved) <= 0.4 * SHARDS
        for x in set(range(SHARDS)) - moved:
            assert after[x] == before[x]  # neither owner nor epoch changed
        for x in moved:
            assert after[x][1] == before[x][1] + 1
        _send(router, range(20, 30))
        wait_for(lambda: _merged(members) == _expected(30), 30, "every tick once after the join")
        # The old owners handed over with final checkpoints, loaded by the new one.
        assert any(e.checkpoints for e in d.assigned)
        assert all(e.corrupt == () and e.lost == 0 for e in d.assigned)

        # A graceful leave: its shards move to the survivors, still exactly once.
        leaving = members.pop(0)
        leaving.stop(final=True)
        three_left = assignment(SHARDS, ["m-b", "m-c", "m-d"])
        wait_for(lambda: {k: v[0] for k, v in _owners(s).items()} == three_left, 30, "after leave")
        _send(router, range(30, 40))
        wait_for(lambda: _merged(members) == _expected(40), 30, "every tick once after leave")
        assert "m-a" not in cluster_status(s)["members"]
    finally:
        router.close(1.0)
        for m in members:
            m.stop()


def test_router_without_server_buffers_and_reports_degraded() -> None:
    router = ClusterRouter("unix:///nonexistent/redis.sock", 4, batch=2, max_buffer=3)
    for i in range(5):
        router.send("x", float(i), i + 1)  # no exception
    assert router.degraded and router.buffered == 3 and router.dropped == 2
    assert "Error" in router.stats()["last_error"]
    with pytest.raises(ValueError, match="finite"):
        router.send("x", float("nan"), 1)
    with pytest.raises(ValueError, match="ts"):
        router.send("x", 1.0, 0)
    assert router.close(0.2) is False
