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
the ratio submit / sync is the figure that matters (target < 0.25).

    .venv/bin/python -m bench.snapshots --scale 100000

measures instead one table of ``n`` live assets of the real per-asset state
(capacity ``n * 5 / 4``, the rest free), each phase in a fresh process so
that its peak RSS is its own: the save (host copy of the live rows, records
streamed into the file) and the load (verification, then the rows restored
into the template's layout, as jax arrays and, with ``host=True``, as numpy
arrays). The file must grow with the live rows only,
and the load's peak must stay near one copy of the restored state.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import structlog

import predictor.core  # noqa: F401  (float64)
from predictor.api import UniversalPredictor
from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor
from predictor.snapshots import (
    AsyncSnapshotWriter,
    SnapshotStore,
    build_payload,
    load_snapshot,
    make_asset_batch,
    restore_assets,
    save_snapshot,
)


def log(msg: str) -> None:
    """Progress on stderr (stdout carries the markdown tables)."""
    print(msg, file=sys.stderr, flush=True)


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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _scale_table(n: int) -> tuple[Any, Any]:
    """(stacked host state of capacity n * 5 / 4 with n distinct live rows, template)."""
    import jax

    template = FunctionalPredictor(PredictorConfig(), warmup=False).init_state()
    one = jax.device_get(template)
    capacity = n + n // 4

    def stack(x: Any) -> Any:
        out = np.empty((capacity, *np.shape(x)), np.asarray(x).dtype)
        out[:] = x
        if out.dtype.kind == "f":
            out[:n] += np.arange(n, dtype=out.dtype).reshape((n,) + (1,) * (out.ndim - 1))
        return out

    return jax.tree.map(stack, one), template


def scale_phase(phase: str, n: int, path: Path) -> dict[str, float]:
    """One phase of ``--scale`` in this process: seconds, peak RSS (MB), sizes."""
    cfg = PredictorConfig()
    if phase == "save":
        state, _ = _scale_table(n)
        state_mb = sum(np.asarray(x).nbytes for x in jax_leaves(state)) / 1e6
        before = _rss_mb()
        t0 = time.perf_counter()
        ids = [f"ASSET{i:06d}" for i in range(n)]
        seq = np.arange(n, dtype=np.int64)
        batch = make_asset_batch(state, ids, seq=seq, last_ts_ns=seq + 1)
        payload = build_payload(
            config=cfg,
            global_state={},
            telemetry={},
            flags={},
            kernels=dict.fromkeys("ABCD"),
            assets=batch,
        )
        save_snapshot(path, payload)
        return {
            "seconds": time.perf_counter() - t0,
            "table_mb": state_mb,
            "file_mb": path.stat().st_size / 1e6,
            "rss_before_mb": before,
            "peak_rss_mb": _rss_mb(),
        }
    _, template = _scale_table(1)
    before = _rss_mb()
    t0 = time.perf_counter()
    payload = load_snapshot(path, cfg.schema_version)
    batch = restore_assets(payload, template, host=phase == "load-host")
    seconds = time.perf_counter() - t0
    restored = sum(np.asarray(x).nbytes for x in jax_leaves(batch.state)) / 1e6
    return {
        "seconds": seconds,
        "restored_mb": restored,
        "rss_before_mb": before,
        "peak_rss_mb": _rss_mb(),
    }


def jax_leaves(tree: Any) -> list[Any]:
    import jax

    return list(jax.tree.leaves(tree))


def _scale(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-snapshots-") as tmp:
        path = Path(tmp) / "scale.snapshot"
        out = {}
        for phase in ("save", "load", "load-host"):
            log(f"snapshots: {n} assets, {phase}")
            argv = ["--phase", phase, "--scale", str(n), "--path", str(path)]
            proc = subprocess.run(
                [sys.executable, "-m", "bench.snapshots", *argv],
                capture_output=True,
                text=True,
                check=True,
            )
            out[phase] = json.loads(proc.stdout.strip().splitlines()[-1])
    s, ld, lh = out["save"], out["load"], out["load-host"]
    print(f"## Snapshot of {n:,} assets (real per-asset state)\n")
    print("| phase | seconds | MB | peak RSS (MB) | RSS before (MB) |")
    print("|---|---|---|---|---|")
    print(
        f"| save | {s['seconds']:.2f} | file {s['file_mb']:.0f} (table {s['table_mb']:.0f}) "
        f"| {s['peak_rss_mb']:.0f} | {s['rss_before_mb']:.0f} |"
    )
    print(
        f"| load | {ld['seconds']:.2f} | restored {ld['restored_mb']:.0f} "
        f"| {ld['peak_rss_mb']:.0f} | {ld['rss_before_mb']:.0f} |"
    )
    print(
        f"| load, host=True | {lh['seconds']:.2f} | restored {lh['restored_mb']:.0f} "
        f"| {lh['peak_rss_mb']:.0f} | {lh['rss_before_mb']:.0f} |"
    )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
    parser.add_argument("--scale", type=int, default=0, help="one table of N live assets")
    parser.add_argument("--phase", choices=["save", "load", "load-host"], help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase is not None:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
        print(json.dumps(scale_phase(args.phase, args.scale, args.path)))
        return
    if args.scale:
        _scale(args.scale)
        return
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
