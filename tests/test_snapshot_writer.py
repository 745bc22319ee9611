"""Asynchronous snapshot writer: non-blocking submit, supersede, failures, draining."""

from __future__ import annotations

import errno
import os
import statistics
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from structlog.testing import capture_logs

import predictor.snapshots.writer as writer_module
from predictor.config import PredictorConfig
from predictor.snapshots import (
    AsyncSnapshotWriter,
    SnapshotResult,
    SnapshotStore,
    build_payload,
    is_temp_name,
    load_snapshot,
    make_asset_batch,
    restore_assets,
    restore_sections,
)

CFG = PredictorConfig()
SCHEMA = CFG.schema_version
N_ASSETS = 1000


class AssetState(NamedTuple):
    """About 20 KB per asset, close to the real per-asset state."""

    signal: jax.Array  # (128,) f64
    cusum: jax.Array  # (128,) f64
    ema: jax.Array  # (160,) f64
    mlp: jax.Array  # (2048,) f64
    ar: jax.Array  # (32,) f64
    weights: jax.Array  # (4,) f64
    count: jax.Array  # () int64
    flags: jax.Array  # (4,) bool
    key: jax.Array  # () typed PRNG key


def stacked_state(n: int, seed: int = 0) -> AssetState:
    rng = np.random.default_rng(seed)

    def f64(*shape: int) -> jax.Array:
        return jnp.asarray(rng.standard_normal((n, *shape)))

    return AssetState(
        signal=f64(128),
        cusum=f64(128),
        ema=f64(160),
        mlp=f64(2048),
        ar=f64(32),
        weights=f64(4),
        count=jnp.asarray(rng.integers(0, 2**40, size=n)),
        flags=jnp.asarray(rng.random((n, 4)) < 0.5),
        key=jax.random.split(jax.random.key(seed), n),
    )


def one_asset_template() -> AssetState:
    return jax.tree_util.tree_map(lambda x: x[0], stacked_state(1, seed=99))


def small_payload(i: int) -> dict[str, Any]:
    return build_payload(
        config=CFG,
        global_state={"i": np.int64(i), "x": np.full(100, float(i))},
        telemetry={},
        flags={},
        kernels={"A": None, "B": None, "C": None, "D": None},
    )


def index_of(path: str | Path) -> int:
    payload = load_snapshot(path, SCHEMA)
    g = restore_sections(payload, {"global": {"i": np.int64(0), "x": np.zeros(100)}})["global"]
    return int(g["i"])


def test_nonblocking_submit_is_a_fraction_of_a_sync_save(tmp_path: Path) -> None:
    state = stacked_state(N_ASSETS)
    ids = [f"ASSET{i:04d}" for i in range(N_ASSETS)]
    seq = np.arange(N_ASSETS, dtype=np.int64) * 3
    last_ts = 1_700_000_000_000_000_000 + np.arange(N_ASSETS, dtype=np.int64)

    def payload() -> dict[str, Any]:
        batch = make_asset_batch(state, ids, seq=seq, last_ts_ns=last_ts)
        return build_payload(
            config=CFG,
            global_state={"ticks": np.int64(12345)},
            telemetry={},
            flags={},
            kernels={"A": None, "B": None, "C": None, "D": None},
            assets=batch,
        )

    sync_store = SnapshotStore(tmp_path / "sync", keep=2)
    async_store = SnapshotStore(tmp_path / "async", keep=2)
    step = jax.jit(lambda x: jnp.tanh(x) * 0.5 + 0.1)
    x = step(jnp.ones(64)).block_until_ready()
    sync_s, submit_s, steps_during_write = [], [], []
    with AsyncSnapshotWriter() as writer:
        for rep in range(4):
            t0 = time.perf_counter()
            sync_result = sync_store.save(payload())
            t1 = time.perf_counter()
            future = async_store.submit(writer, payload())
            t2 = time.perf_counter()
            steps = 0
            while not future.done():  # the caller keeps stepping while it writes
                x = step(x).block_until_ready()
                steps += 1
            result = future.result()
            assert result.status == "success" and result.size == sync_result.size
            if rep:  # the first repetition warms up allocations and caches
                sync_s.append(t1 - t0)
                submit_s.append(t2 - t1)
                steps_during_write.append(steps)
    ratio = statistics.median(submit_s) / statistics.median(sync_s)
    print(
        f"\n{N_ASSETS} assets, {result.size / 1e6:.1f} MB: sync save "
        f"{statistics.median(sync_s) * 1e3:.1f} ms, non-blocking submit "
        f"{statistics.median(submit_s) * 1e3:.1f} ms, ratio {ratio:.3f}, "
        f"steps during the write {steps_during_write}"
    )
    assert ratio < 0.25
    assert min(steps_during_write) > 0
    restored = restore_assets(load_snapshot(result.path, SCHEMA), one_asset_template())
    assert restored.ids == tuple(ids) and restored.capacity == N_ASSETS
    np.testing.assert_array_equal(restored.seq, seq)
    np.testing.assert_array_equal(restored.last_ts_ns, last_ts)
    for got, want in zip(restored.state[:-1], state[:-1], strict=True):
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
    np.testing.assert_array_equal(
        jax.random.key_data(restored.state.key), jax.random.key_data(state.key)
    )


def _gate_first_write(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Hold the first write on the pool until ``release`` is set."""
    started, release = threading.Event(), threading.Event()
    real = writer_module.save_snapshot

    def gated(path: Any, payload: Any) -> SnapshotResult:
        if not started.is_set():
            started.set()
            assert release.wait(10)
        return real(path, payload)

    monkeypatch.setattr(writer_module, "save_snapshot", gated)
    return started, release


def test_newer_request_supersedes_a_queued_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = _gate_first_write(monkeypatch)
    target = tmp_path / "snap.msgpack"
    with AsyncSnapshotWriter(max_workers=2) as writer:
        first = writer.submit(target, small_payload(1))
        assert started.wait(10)
        queued = [writer.submit(target, small_payload(i)) for i in (2, 3, 4)]
        other = writer.submit(tmp_path / "other.msgpack", small_payload(9))
        assert other.result(10).status == "success"  # another target is not held up
        assert not first.done() and writer.pending() == 1
        release.set()
        assert writer.wait(10)
    statuses = [f.result().status for f in (first, *queued)]
    assert statuses == ["success", "superseded", "superseded", "success"]
    assert queued[0].result().path == str(target) and queued[0].result().size == 0
    assert index_of(target) == 4


def test_store_requests_share_one_slot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started, release = _gate_first_write(monkeypatch)
    store = SnapshotStore(tmp_path, keep=5)
    with AsyncSnapshotWriter() as writer:
        futures = [store.submit(writer, small_payload(0))]
        assert started.wait(10)
        futures += [store.submit(writer, small_payload(i)) for i in (1, 2)]
        release.set()
        results = [f.result(10) for f in futures]
    assert [r.status for r in results] == ["success", "superseded", "success"]
    assert [index_of(p) for p in store.paths()] == [2, 0]


def test_full_disk_reports_failure_and_keeps_previous_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path, keep=3)
    previous = {
        p: p.read_bytes() for p in (Path(store.save(small_payload(i)).path) for i in (1, 2))
    }
    real_write = os.write

    def no_space(fd: int, data: Any) -> int:
        if fd <= 2:
            return real_write(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with AsyncSnapshotWriter() as writer, capture_logs() as logs:
        monkeypatch.setattr(os, "write", no_space)
        result = store.submit(writer, small_payload(3)).result(10)
        monkeypatch.undo()
    assert result.status == "failed" and result.size == 0 and result.checksum == ""
    assert result.error is not None and "No space left on device" in result.error
    assert {p: p.read_bytes() for p in store.paths()} == previous
    assert not [n for n in os.listdir(tmp_path) if is_temp_name(n)]
    assert any(e["event"] == "snapshot_write_failed" for e in logs)
    assert result.to_dict()["status"] == "failed"


def test_cancelled_waiting_request_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = _gate_first_write(monkeypatch)
    with AsyncSnapshotWriter() as writer:
        writer.submit(tmp_path / "a.msgpack", small_payload(1))
        assert started.wait(10)
        waiting = writer.submit(tmp_path / "a.msgpack", small_payload(2))
        assert waiting.cancel()
        release.set()
        assert writer.wait(10)
    assert waiting.cancelled() and index_of(tmp_path / "a.msgpack") == 1


def test_close_drains_then_refuses_new_requests(tmp_path: Path) -> None:
    writer = AsyncSnapshotWriter()
    futures: list[Future[SnapshotResult]] = [
        writer.submit(tmp_path / f"s{i}.msgpack", small_payload(i)) for i in range(6)
    ]
    assert writer.close(timeout=30)
    assert all(f.done() and f.result().status == "success" for f in futures)
    assert writer.pending() == 0
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(tmp_path / "late.msgpack", small_payload(0))


def test_failing_post_write_hook_is_logged_and_result_stays_success(tmp_path: Path) -> None:
    def hook(_result: SnapshotResult) -> None:
        raise RuntimeError("retention broke")

    with AsyncSnapshotWriter() as writer, capture_logs() as logs:
        result = writer.submit(tmp_path / "s.msgpack", small_payload(5), on_success=hook).result(10)
    assert result.status == "success" and result.duration_s > 0 and len(result.checksum) == 64
    assert any(e["event"] == "snapshot_post_write_failed" for e in logs)
    assert index_of(tmp_path / "s.msgpack") == 5
