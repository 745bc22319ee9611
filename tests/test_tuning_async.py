"""AsyncMetaOptimizer: background checkpoints with backpressure, background export."""

from __future__ import annotations

import math
import threading
import tomllib
from pathlib import Path
from typing import Any

from predictor.tuning.async_io import AsyncMetaOptimizer
from predictor.tuning.checkpoint import read_checkpoint
from predictor.tuning.optimizer import BayesianMetaOptimizer
from predictor.tuning.space import fast_space


def bowl(params: dict[str, Any]) -> float:
    return (math.log(params["cusum_h"]) - 1.0) ** 2 + math.log(params["entropy_window"]) ** 2


def make(tmp_path: Path, n: int) -> BayesianMetaOptimizer:
    return BayesianMetaOptimizer(
        fast_space(), bowl, "async", n, seed=2, checkpoint_path=tmp_path / "s.json"
    )


def test_async_optimize_leaves_the_final_checkpoint_on_disk(tmp_path: Path) -> None:
    opt = make(tmp_path, 25)
    with AsyncMetaOptimizer(opt) as aio:
        aio.optimize(checkpoint_interval=3)
        assert aio.failures == []
    doc = read_checkpoint(tmp_path / "s.json")
    assert doc["iteration"] == 25 and doc["best_value"] == opt.best_value
    sync = make(tmp_path / "sync", 25)
    sync.optimize(checkpoint_interval=3)
    assert [t.params for t in sync.trials] == [t.params for t in opt.trials]


def test_backpressure_drops_queued_checkpoints_but_never_goes_back(tmp_path: Path) -> None:
    opt = make(tmp_path, 12)
    opt.optimize()
    path = tmp_path / "burst.json"
    gate = threading.Event()
    with AsyncMetaOptimizer(opt, max_pending=5) as aio:
        # Occupy both workers so that checkpoints queue up behind them.
        blockers = [aio._io_executor.submit(gate.wait) for _ in range(2)]
        futures = [aio.save_study_async(path) for _ in range(12)]
        assert aio.dropped == 7
        assert sum(f.cancelled() for f in futures) == 7
        assert len(aio._checkpoints) == 5
        gate.set()
        for b in blockers:
            b.result()
        assert aio.wait_for_io_completion(timeout_seconds=30)
    doc = read_checkpoint(path)
    assert doc["iteration"] == 12


def test_async_export_and_wait(tmp_path: Path) -> None:
    opt = make(tmp_path, 12)
    opt.optimize()
    config = tmp_path / "config.toml"
    config.write_text("[predictor]\ncusum_h = 8.0\n")
    with AsyncMetaOptimizer(opt) as aio:
        future = aio.export_config_async(opt.result(), config)
        assert aio.wait_for_io_completion(timeout_seconds=30)
        mutation = future.result()
    assert mutation.delta["cusum_h"]["new"] == opt.best_params["cusum_h"]  # type: ignore[index]
    assert tomllib.loads(config.read_text())["predictor"]["cusum_h"] == opt.best_params["cusum_h"]  # type: ignore[index]


def test_failed_write_is_reported(tmp_path: Path) -> None:
    opt = make(tmp_path, 11)
    opt.optimize()
    config = tmp_path / "config.toml"
    config.write_text("[predictor]\ncusum_h = 8.0\n")
    config.with_name("config.toml.tmp").write_text("busy")
    with AsyncMetaOptimizer(opt) as aio:
        aio.export_config_async(opt.result(), config)
        assert not aio.wait_for_io_completion(timeout_seconds=30)
        assert aio.failures
