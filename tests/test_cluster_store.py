"""Fencing, checkpoints and fenced reads on a real redis-server (ClusterStore)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from predictor.cluster import ClusterConfigError, ClusterSettings, ClusterStore
from predictor.cluster.records import encode_checkpoint, tick_fields
from tests.redis_fixture import RedisServer


def _settings(server: RedisServer, **kw: object) -> ClusterSettings:
    return ClusterSettings(redis_url=server.url, shards=4, **kw)  # type: ignore[arg-type]


def test_takeover_bumps_epoch_and_fences_the_old_owner(redis_server: RedisServer) -> None:
    s = _settings(redis_server)
    a, b = ClusterStore(s), ClusterStore(s)
    a.heartbeat("a", {})
    taken, e1, _ = a.acquire(0, "a")
    assert taken
    # A live owner keeps the shard.
    assert b.acquire(0, "b") == (False, e1, "a")
    blob = encode_checkpoint(0, e1, "x", {"n": 1}, "1-0", 1)
    assert a.write_checkpoints(0, "a", e1, {"x": blob}, []).ok
    a.leave("a")  # the heartbeat key is gone: as after a crash and the TTL
    taken, e2, _ = b.acquire(0, "b")
    assert taken and e2 == e1 + 1
    refused = a.write_checkpoints(0, "a", e1, {"x": b"stale"}, [])
    assert not refused.ok and (refused.epoch, refused.owner) == (e2, "b")
    ckpts, corrupt = b.load_checkpoints(0)
    assert ckpts["x"].epoch == e1 and ckpts["x"].state == {"n": 1} and corrupt == []
    assert not a.release(0, "a", e1)
    assert b.release(0, "b", e2)
    assert b.owners([0]) == {0: ("", e2)}


def test_two_clients_racing_never_both_write_one_epoch(redis_server: RedisServer) -> None:
    """Both members believe the other dead and grab the shard in a loop.

    Every accepted write gets the shard's write counter; sorted by it, the
    epochs never go back and each epoch has a single writer.
    """
    s = _settings(redis_server)
    accepted: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def member(name: str) -> None:
        st = ClusterStore(s)
        for i in range(150):
            taken, epoch, _ = st.acquire(1, name)
            assert taken  # no heartbeat keys: the other owner counts as dead
            for j in range(2):
                blob = encode_checkpoint(1, epoch, "x", {"who": name, "i": i, "j": j}, "1-0", i)
                res = st.write_checkpoints(1, name, epoch, {"x": blob}, [])
                if res.ok:
                    with lock:
                        accepted.append((res.writes, epoch, name))
        st.close()

    threads = [threading.Thread(target=member, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    accepted.sort()
    assert len({w for w, _, _ in accepted}) == len(accepted)
    writers: dict[int, str] = {}
    last_epoch = 0
    for _, epoch, name in accepted:
        assert epoch >= last_epoch
        last_epoch = epoch
        assert writers.setdefault(epoch, name) == name
    assert {n for _, _, n in accepted} == {"a", "b"}
    # The stored checkpoint is the last accepted write.
    final = ClusterStore(s).load_checkpoints(1)[0]["x"]
    assert (final.epoch, final.state["who"]) == (accepted[-1][1], accepted[-1][2])


def test_fenced_read_takes_nothing_from_the_new_owner(redis_server: RedisServer) -> None:
    s = _settings(redis_server)
    a, b = ClusterStore(s), ClusterStore(s)
    _, e1, _ = a.acquire(2, "a")
    c = redis_server.client()
    ids = [c.xadd(a.keys.ticks(2), tick_fields("x", float(i), i + 1, None)) for i in range(5)]
    got, lost = a.read("a", {2: e1}, 2)
    assert [i for i, _ in got[2]] == [x.decode() for x in ids[:2]] and lost == []
    _, e2, _ = b.acquire(2, "b")
    got, lost = a.read("a", {2: e1}, 10)
    assert got == {} and lost == [2]
    # The takeover claims the old owner's pending entries, then reads the rest.
    claimed, trimmed = b.claim_pending(2, "b")
    assert [i for i, _ in claimed] == [x.decode() for x in ids[:2]] and trimmed == 0
    got, _ = b.read("b", {2: e2}, 10)
    assert [i for i, _ in got[2]] == [x.decode() for x in ids[2:]]
    # A checkpoint acknowledges exactly the entries it names.
    blob = encode_checkpoint(2, e2, "x", {"n": 5}, ids[-1].decode(), 5)
    res = b.write_checkpoints(2, "b", e2, {"x": blob}, [x.decode() for x in ids])
    assert res.ok and res.acked == 5
    assert c.xpending(b.keys.ticks(2), s.group)["pending"] == 0


def test_checkpoint_blob_round_trip_and_corruption(redis_server: RedisServer) -> None:
    s = _settings(redis_server)
    st = ClusterStore(s)
    _, epoch, _ = st.acquire(3, "a")
    state = {"w": np.linspace(-1.0, 1.0, 7), "k": np.arange(4, dtype=np.int64), "n": 9}
    blobs = {
        "good": encode_checkpoint(3, epoch, "good", state, "17-3", 9),
        "bad": encode_checkpoint(3, epoch, "bad", state, "17-4", 9),
    }
    assert st.write_checkpoints(3, "a", epoch, blobs, []).ok
    c = redis_server.client()
    damaged = bytearray(blobs["bad"])
    damaged[len(damaged) // 2] ^= 0x10
    c.hset(st.keys.ckpt(3), "bad", bytes(damaged))
    ckpts, corrupt = st.load_checkpoints(3)
    assert corrupt == ["bad"] and set(ckpts) == {"good"}
    got = ckpts["good"]
    assert (got.entry_id, got.seq, got.epoch, got.shard) == ("17-3", 9, epoch, 3)
    np.testing.assert_array_equal(got.state["w"], state["w"])
    restored = got.restore({"w": np.zeros(7), "k": np.zeros(4, dtype=np.int64), "n": 0})
    np.testing.assert_array_equal(restored["k"], state["k"])


def test_shard_count_is_checked_against_the_cluster(redis_server: RedisServer) -> None:
    ClusterStore(_settings(redis_server)).ensure_meta()
    other = ClusterStore(ClusterSettings(redis_url=redis_server.url, shards=8))
    with pytest.raises(ClusterConfigError, match="4 shards"):
        other.ensure_meta()
