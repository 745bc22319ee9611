"""Snapshots: synchronous save vs non-blocking submit, and load, per state size.

    .venv/bin/python -m bench.snapshots [--quick]

For the daemon's stacked state of ``n`` assets (the shipped config's
``AssetState``, cold, stacked along the asset axis) and for one
``UniversalPredictor``:

* sync save: ``build_payload`` (device -> host copy) + pack + SHA-256 +
  atomic write (temp, fsync, replace, fsync dir), as ``SnapshotStore.save``;
* non-blocking submit: the time the caller is blocked by
  ``save_snapshot_nonblocking`` / ``SnapshotStore.submit`` (the host copy on
  the caller's thread; packing, hashing and I/O run on the writer's pool);
* load: read, verify the checksum and decode into a fresh template.

Medians over repetitions (the first, which warms allocations, is dropped);
the ratio submit / sync is the figure issue 7 asks for (target < 0.25).
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

import predictor.core  # noqa: F401  (float64)
from bench.accuracy import log
from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor
from predictor.core.predictor import UniversalPredictor
from predictor.snapshots import (
    AsyncSnapshotWriter,
    SnapshotStore,
    build_payload,
    load_snapshot,
    make_asset_batch,
    restore_assets,
)


def _median_s(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _stacked_row(n: int, reps: int, root: Path) -> list[str]:
    cfg = PredictorConfig()
    fp = FunctionalPredictor(cfg, warmup=False)
    states = fp.init_batch(n)
    ids = [f"ASSET{i:05d}" for i in range(n)]
    seq = np.arange(n, dtype=np.int64)

    def payload() -> dict[str, object]:
        batch = make_asset_batch(states, ids, seq=seq, last_ts_ns=seq + 1)
        return build_payload(
            config=cfg,
            global_state={},
            telemetry={},
            flags={},
            kernels=dict.fromkeys("ABCD"),
            assets=batch,
        )

    sync_store = SnapshotStore(root / f"sync{n}", keep=2)
    async_store = SnapshotStore(root / f"async{n}", keep=2)
    sync_s = _median_s(lambda: sync_store.save(payload()), reps)
    submit_times = []
    with AsyncSnapshotWriter() as writer:
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            future = async_store.submit(writer, payload())
            submit_times.append(time.perf_counter() - t0)
            future.result()
    submit_s = statistics.median(submit_times[1:])
    path = sync_store.paths()[-1]
    template = fp.init_state()
    load_s = _median_s(
        lambda: restore_assets(load_snapshot(path, cfg.schema_version), template), reps
    )
    size_mb = path.stat().st_size / 1e6
    return _row(f"daemon state, {n:,} assets", size_mb, sync_s, submit_s, load_s)


def _single_row(reps: int, root: Path) -> list[str]:
    p = UniversalPredictor(warmup=False)
    path = root / "single.snapshot"
    sync_s = _median_s(lambda: p.save_snapshot(path), reps)
    submit_times = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        future = p.save_snapshot_nonblocking(path)
        submit_times.append(time.perf_counter() - t0)
        future.result()
    submit_s = statistics.median(submit_times[1:])
    load_s = _median_s(lambda: p.load_snapshot(path), reps)
    size_mb = path.stat().st_size / 1e6
    return _row("UniversalPredictor (1 asset)", size_mb, sync_s, submit_s, load_s)


def _row(name: str, mb: float, sync_s: float, submit_s: float, load_s: float) -> list[str]:
    return [
        name,
        f"{mb:.2f}",
        f"{sync_s * 1e3:.2f}",
        f"{submit_s * 1e3:.2f}",
        f"{submit_s / sync_s:.3f}",
        f"{load_s * 1e3:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
    args = parser.parse_args()
    # stdout carries the markdown: the library's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    reps = 3 if args.quick else 7
    sizes = (1_000,) if args.quick else (100, 1_000, 10_000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-") as tmp:
        root = Path(tmp)
        log("snapshots: single asset")
        rows.append(_single_row(reps, root))
        for n in sizes:
            log(f"snapshots: {n} assets")
            rows.append(_stacked_row(n, reps, root))
    print("## Snapshots\n")
    print(
        f"Medians of {reps} repetitions after one warm-up; the directory is a local "
        f"filesystem ({tempfile.gettempdir()}). Target: non-blocking submit < 0.25 x sync save.\n"
    )
    head = ["state", "file (MB)", "sync save (ms)", "non-blocking submit (ms)", "ratio"]
    head.append("load (ms)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


if __name__ == "__main__":
    main()
