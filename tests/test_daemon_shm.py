"""predictord's shared-memory table under 100,000 updates, read from another process.

A reader in another process polling while the daemon
writes 100,000 updates never observes a torn record (each record carries a
crc32 of its payload, verified on every copy) and sees the final value of
every asset.

The real daemon runs as a subprocess; ticks go in over its PULL socket and
every prediction is collected from its PUB socket, so the shared-memory
writes are the daemon's own (``Publisher`` -> ``LatestWriter``), not a
writer driven by the test. The reader (``ShmReaderProcess``) polls every
asset's record from the moment the daemon is ready until every prediction
has been published.

The model is made cheap for this daemon only (what is measured is the
table, not the forecast): the DGM network is evaluated without training
(``dgm_train_steps = 0``, the smallest network; the ``fd`` solver costs
2**12 tridiagonal solves per lane), a 32-point window with 4 scales, a
depth-2 signature ladder of one depth. 64 assets fill the one bucket (64),
so every step is a full batch and one graph is compiled.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import zmq

from predictor.ipc.shm import segment_path
from tests.daemon_harness import (
    CHEAP_MODEL,
    Collector,
    Daemon,
    Feeder,
    ShmReaderProcess,
    base_daemon_table,
    random_walks,
    same_bits,
    write_config,
)

N_ASSETS = 64  # one full bucket per step
N_TICKS = 1600  # 102,400 ticks; every tick the gate accepts is one record update
MIN_UPDATES = 100_000
DEPTH = int(CHEAP_MODEL["log_sig_depth"])  # its one signature depth
#: Seconds to wait for every prediction (a loaded 2-core CI box needs ~30 s).
PUBLISH_TIMEOUT_S = 600.0


def test_reader_process_never_sees_a_torn_record_over_100k_daemon_updates(
    tmp_path: Path,
) -> None:
    t_start = time.monotonic()
    shm_name = f"predictor-test-shm-{os.getpid()}"
    table = {
        **base_daemon_table(tmp_path, shm_name),
        "batch_buckets": [N_ASSETS],
        "initial_capacity": N_ASSETS,
        "shed": DEPTH,
        # Every prediction must reach the collector: no PUB drops at the high-water mark.
        "sndhwm": 1_000_000,
    }
    config = write_config(tmp_path / "config.toml", predictor=CHEAP_MODEL, daemon=table)
    daemon = Daemon(tmp_path, config)
    ctx = zmq.Context()
    reader: ShmReaderProcess | None = None
    try:
        daemon.start()
        t_ready = time.monotonic()
        collector = Collector(ctx, daemon.predictions_endpoint)
        feeder = Feeder(ctx, daemon.ticks_endpoint)
        reader = ShmReaderProcess(shm_name, tmp_path)

        names = [f"S{i:02d}" for i in range(N_ASSETS)]
        series = random_walks(N_ASSETS, N_TICKS, seed=88)
        ts = [(k + 1) * 1_000_000 for k in range(N_TICKS)]
        t_feed = time.monotonic()
        for k in range(N_TICKS):
            feeder.send_ticks([(names[a], float(series[a, k]), ts[k]) for a in range(N_ASSETS)])
        messages = collector.wait_for(N_ASSETS * N_TICKS, timeout=PUBLISH_TIMEOUT_S)
        t_published = time.monotonic()
        # An admin reply is produced by the loop after it finished publishing
        # every tick it had taken: the last records are in the table too.
        status = daemon.admin("status")
        report = reader.finish()
        t_read = time.monotonic()

        assert len(messages) == N_ASSETS * N_TICKS
        per_asset: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for m in messages:
            per_asset[m["asset"]].append(m)
        updates = 0
        for name, msgs in per_asset.items():
            assert [m["seq"] for m in msgs] == list(range(1, N_TICKS + 1)), name
            assert [m["ts"] for m in msgs] == ts, name
            updates += sum("rejected" not in m for m in msgs)
        assert updates >= MIN_UPDATES
        assert status["compiles"]["after_warmup"] == 0  # one bucket, no padding graphs

        # The reader: no torn copy, no checksum failure, no seq going back.
        assert report["torn"] == 0
        assert report["checksum_failures"] == 0
        assert report["regressions"] == 0
        # It polled while the daemon wrote: many copies, and it saw the
        # records move (far more newer-seq copies than one per asset).
        assert report["copies"] >= 100 * N_ASSETS
        assert report["changes"] >= 10 * N_ASSETS
        # The final record of every asset is its last published prediction.
        assert sorted(report["final"]) == names
        for name, msgs in per_asset.items():
            last = [m for m in msgs if "rejected" not in m][-1]
            rec = report["final"][name]
            assert (rec["seq"], rec["ts"], rec["mode"]) == (last["seq"], last["ts"], last["mode"])
            assert same_bits(rec["predicted_value"], last["predicted_value"]), (name, rec, last)

        print(
            f"\nshm under load: {updates} updates by the daemon, {N_ASSETS} assets; reader "
            f"{report['copies']} copies, {report['changes']} newer-seq copies, "
            f"{report['lock_retries']} lock retries, 0 torn; wall s: ready "
            f"{t_ready - t_start:.1f}, feed to last prediction {t_published - t_feed:.1f} "
            f"({updates / (t_published - t_feed):.0f} updates/s), total {t_read - t_start:.1f}"
        )
        feeder.close()
        collector.close()
        assert daemon.stop() == 0
        assert not segment_path(shm_name).exists()  # unlinked at clean shutdown
    finally:
        if reader is not None and reader.proc.poll() is None:
            reader.proc.kill()
            reader.proc.wait(30)
        with contextlib.suppress(Exception):
            ctx.destroy(linger=0)
        daemon.kill()
        segment_path(shm_name).unlink(missing_ok=True)  # left behind if the daemon was killed
