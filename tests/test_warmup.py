"""Progressive warm-up: forecasts, weights and alarms from a short history."""

from __future__ import annotations

import functools
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from predictor.api import UniversalPredictor
from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor
from predictor.core.sia.window import history
from predictor.synthetic import ar1, fbm

N = 128
CFG = PredictorConfig(clock="event")


@functools.cache
def fp() -> FunctionalPredictor:
    return FunctionalPredictor(CFG, warmup=False)


@pytest.mark.parametrize("count", [1, 2, 3, 7, 16, 100, 127, 128, 500])
def test_history_mirrors_the_valid_part_and_leaves_a_full_window_alone(count: int) -> None:
    buf = np.random.default_rng(count).standard_normal(N)
    h = np.asarray(history(jnp.asarray(buf), jnp.asarray(count)))
    c = min(count, N)
    np.testing.assert_array_equal(h[N - c :], buf[N - c :])  # observed values in place
    assert set(h.tolist()) <= set(buf[N - c :].tolist())  # nothing else enters
    if c > 1:
        # Reflection about the oldest observed value: h[t0 - k] == h[t0 + k].
        t0 = N - c
        k = np.arange(1, min(c - 1, t0) + 1)
        np.testing.assert_array_equal(h[t0 - k], h[t0 + k])


@pytest.mark.parametrize(
    "ys",
    [
        ar1(np.random.default_rng(0), 200, 0.7),
        np.cumsum(np.random.default_rng(1).standard_normal(200)),
        fbm(np.random.default_rng(2), 200, 0.3),
    ],
    ids=["ar1", "random walk", "fbm"],
)
def test_kernels_forecast_from_min_history_and_warming_up_until_the_window_is_full(
    ys: np.ndarray,
) -> None:
    pred = fp()
    _, outs = pred.scan(pred.init_state(), ys)
    point = np.asarray(outs.predicted_value)
    m = CFG.min_history
    # Before min_history ticks: the last value, uniform weights.
    np.testing.assert_array_equal(point[: m - 1], ys[: m - 1])
    np.testing.assert_array_equal(np.asarray(outs.weights)[: m - 1], 0.25)
    # The detector is silent while cold, and says so: no drift reported.
    np.testing.assert_array_equal(np.asarray(outs.cusum_drift)[: m - 1], 0.0)
    assert not np.asarray(outs.regime_change_detected)[: m - 1].any()
    # From then on: the ensemble, and a forecast that is not the last value.
    assert np.all(point[m - 1 : N] != ys[m - 1 : N])
    assert np.all(np.isfinite(point)) and np.all(np.isfinite(np.asarray(outs.interval_upper)))
    warming = np.asarray(outs.warming_up)
    assert warming[: N - 1].all() and not warming[N - 1 :].any()
    # No circuit breaker before the window is full: its baseline needs a window.
    assert not np.asarray(outs.emergency_mode)[: N - 1].any()


def test_ensemble_beats_the_last_value_during_warm_up_on_a_mean_reverting_series() -> None:
    pred = fp()
    errs, naive = [], []
    for seed in range(4):
        ys = ar1(np.random.default_rng(10 + seed), N, 0.5)
        _, outs = pred.scan(pred.init_state(), ys)
        point = np.asarray(outs.predicted_value)
        lo = CFG.min_history + 4
        errs.append(np.abs(ys[lo + 1 :] - point[lo:-1]))
        naive.append(np.abs(ys[lo + 1 :] - ys[lo:-1]))
    # The optimal AR(1) forecast scores sqrt((1 + phi) / 2) = 0.87 x naive here.
    assert np.mean(np.concatenate(errs)) < 0.95 * np.mean(np.concatenate(naive))


def test_a_mean_shift_is_alarmed_before_the_window_is_full() -> None:
    rng = np.random.default_rng(3)
    ys = 0.3 * rng.standard_normal(110)
    ys[60:] += 4.0
    pred = fp()
    _, outs = pred.scan(pred.init_state(), ys)
    alarms = np.flatnonzero(np.asarray(outs.regime_change_detected))
    assert alarms.size >= 1 and 60 <= alarms[0] <= 66
    assert not np.asarray(outs.regime_change_detected)[:60].any()


def test_fit_history_and_snapshots_work_on_a_partial_window(tmp_path: Path) -> None:
    ys = ar1(np.random.default_rng(4), 60, 0.6)
    p = UniversalPredictor(CFG, warmup=False)
    with pytest.raises(ValueError, match="Insufficient history"):
        p.fit_history(ys[: CFG.min_history - 1])
    p.fit_history(ys[:40])
    assert p.view.fast.count == 40
    path = tmp_path / "partial.snap"
    p.save_snapshot(path)
    q = UniversalPredictor(CFG, warmup=False)
    q.load_snapshot(path)
    from predictor.core.types import ProcessState

    for k, y in enumerate(ys[40:], start=41):
        obs = ProcessState(magnitude=float(y), reference=float(y), timestamp_ns=k)
        a, b = p.step(obs), q.step(obs)
        assert a == b and a.warming_up
        assert a.predicted_value != float(y)
