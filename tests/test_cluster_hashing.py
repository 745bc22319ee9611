"""Stable shard hash and rendezvous placement; ClusterSettings validation (no Redis)."""

from __future__ import annotations

import hashlib

import pytest

from predictor.cluster import ClusterSettings, assignment, owner_of, shard_of, shards_of
from predictor.errors import ConfigError

SHARDS = 256


def test_shard_of_is_first_8_bytes_of_sha256() -> None:
    for asset in ("BTC-USD", "ÉUR/CHF", "x" * 64, "a"):
        ref = int.from_bytes(hashlib.sha256(asset.encode()).digest()[:8], "big") % 64
        assert shard_of(asset, 64) == ref
    # Fixed values: any change of the hash would strand every cluster's checkpoints.
    assert [shard_of(a, 1000) for a in ("a", "b", "BTC-USD")] == [
        int.from_bytes(hashlib.sha256(a.encode()).digest()[:8], "big") % 1000
        for a in ("a", "b", "BTC-USD")
    ]
    assert shard_of("anything", 1) == 0
    with pytest.raises(ValueError, match="shards"):
        shard_of("a", 0)


def test_shards_spread_assets_evenly() -> None:
    counts = [0] * 16
    for i in range(16_000):
        counts[shard_of(f"asset-{i}", 16)] += 1
    # 1000 expected per shard; 5 sigma of a binomial is about 150.
    assert min(counts) > 850
    assert max(counts) < 1150


def test_adding_a_fourth_member_moves_about_a_quarter_and_only_to_it() -> None:
    three = ["host-a", "host-b", "host-c"]
    before = assignment(SHARDS, three)
    after = assignment(SHARDS, [*three, "host-d"])
    moved = [s for s in range(SHARDS) if before[s] != after[s]]
    assert all(after[s] == "host-d" for s in moved)
    assert 0.15 * SHARDS < len(moved) < 0.35 * SHARDS
    assert set(moved) == shards_of("host-d", SHARDS, three)


def test_removing_a_member_moves_only_its_shards() -> None:
    four = ["host-a", "host-b", "host-c", "host-d"]
    before = assignment(SHARDS, four)
    after = assignment(SHARDS, ["host-a", "host-c", "host-d"])
    for s in range(SHARDS):
        if before[s] != "host-b":
            assert after[s] == before[s]
        else:
            assert after[s] != "host-b"
    # Every member owns something and the order of the list does not matter.
    assert set(before.values()) == set(four)
    assert assignment(SHARDS, list(reversed(four))) == before
    assert owner_of(3, []) is None
    assert assignment(SHARDS, []) == {}


def test_settings_defaults_and_clear_errors(tmp_path: object) -> None:
    s = ClusterSettings()
    assert s.shards == 64
    assert s.heartbeat_period_ms == 1000
    assert s.resolved_member_id({})
    assert s.resolved_member_id({"PREDICTOR_CLUSTER_MEMBER": "host-7"}) == "host-7"
    assert (
        ClusterSettings(member_id="m1").resolved_member_id({"PREDICTOR_CLUSTER_MEMBER": "x"})
        == "m1"
    )
    with pytest.raises(ConfigError, match="PREDICTOR_CLUSTER_MEMBER"):
        s.resolved_member_id({"PREDICTOR_CLUSTER_MEMBER": "bad id"})
    with pytest.raises(ConfigError, match=r"cluster\.shards"):
        ClusterSettings.from_mapping({"shards": 0})
    with pytest.raises(ConfigError, match=r"cluster\.redis_url.*redis://"):
        ClusterSettings.from_mapping({"redis_url": "http://x"})
    with pytest.raises(ConfigError, match=r"cluster\.shard_count.*Extra inputs"):
        ClusterSettings.from_mapping({"shard_count": 3})
    with pytest.raises(ConfigError, match=r"heartbeat_interval_ms"):
        ClusterSettings.from_mapping({"heartbeat_ttl_ms": 1000, "heartbeat_interval_ms": 600})
    with pytest.raises(ConfigError, match=r"refresh_ms"):
        ClusterSettings.from_mapping({"heartbeat_ttl_ms": 1000, "refresh_ms": 800})
    with pytest.raises(ConfigError, match=r"cluster\.prefix"):
        ClusterSettings.from_mapping({"prefix": "a b"})
    with pytest.raises(ConfigError, match=r"cluster\.checkpoint_interval"):
        ClusterSettings.from_mapping({"checkpoint_interval": "10"})


def test_settings_from_toml(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    p = Path(str(tmp_path)) / "config.toml"
    p.write_text('[cluster]\nredis_url = "unix:///run/redis.sock"\nshards = 32\n')
    s = ClusterSettings.from_toml(p)
    assert s is not None
    assert (s.redis_url, s.shards) == ("unix:///run/redis.sock", 32)
    p.write_text("[daemon]\n")
    assert ClusterSettings.from_toml(p) is None
