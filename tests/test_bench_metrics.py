"""bench.metrics against hand-computed values, and the causality of the walk-forward harness."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import accuracy as A
from bench import metrics as M
from bench import oracles as O
from bench.changepoints import page_cusum
from predictor.config import PredictorConfig


def test_rmse_mae_ratio_mase() -> None:
    e = [1.0, -2.0, 3.0, -4.0]
    assert M.rmse(e) == pytest.approx(math.sqrt(7.5))
    assert M.mae(e) == pytest.approx(2.5)
    assert M.ratio(3.0, 2.0) == 1.5
    assert math.isnan(M.ratio(1.0, 0.0))
    # mean|e| = 4/3 against a naive MAE of 2.
    assert M.mase([1.0, -1.0, 2.0], [2.0, -2.0, 2.0]) == pytest.approx(2.0 / 3.0)


def test_coverage_is_closed_interval_and_width() -> None:
    y = [0.0, 1.0, 2.0, 3.0]
    lo = [0.0, 0.0, 3.0, 2.0]
    hi = [1.0, 0.5, 4.0, 3.0]
    assert M.coverage(y, lo, hi) == 0.5  # 0 in [0, 1] and 3 in [2, 3]: both ends count
    assert M.mean_width(lo, hi) == pytest.approx(0.875)


def test_one_step_errors_align_forecast_with_next_value() -> None:
    y = [1.0, 2.0, 4.0, 7.0]
    f = [1.0, 3.0, 3.0, 100.0]
    np.testing.assert_array_equal(M.one_step_errors(y, f, 0, 3), [1.0, 1.0, 4.0])
    np.testing.assert_array_equal(M.one_step_errors(y, f, 1, 2), [1.0])
    with pytest.raises(ValueError, match="targets"):
        M.one_step_errors(y, f, 0, 4)  # y[4] does not exist


def test_detection_stats_hand_example() -> None:
    n = 30
    alarms = np.zeros(n, dtype=bool)
    alarms[[1, 3, 12, 13, 26]] = True
    monitored = np.arange(n) >= 2
    s = M.detection_stats(alarms, [10, 20], window=5, monitored=monitored)
    # Change 10 caught at 12 (delay 2; 13 is a repeat), change 20 missed (26 is past 24).
    assert (s.changes, s.detected) == (2, 1)
    assert s.rate == 0.5
    assert (s.median_delay, s.p90_delay) == (2.0, 2.0)
    # False: 3 and 26 (1 is not monitored). Control: 28 monitored minus 2 windows of 5.
    assert (s.false_alarms, s.control_steps) == (2, 18)
    assert s.false_per_10k == pytest.approx(1e4 * 2 / 18)


def test_detection_delay_quantiles_interpolate() -> None:
    n = 100
    changes = [10, 30, 50, 70]
    alarms = np.zeros(n, dtype=bool)
    alarms[[10 + 0, 30 + 4, 50 + 1, 70 + 9]] = True
    s = M.detection_stats(alarms, changes, window=10, monitored=np.ones(n, dtype=bool))
    assert s.rate == 1.0
    assert s.median_delay == 2.5  # (1 + 4) / 2
    assert s.p90_delay == pytest.approx(7.5)  # sorted 0, 1, 4, 9: position 2.7
    assert s.false_alarms == 0
    assert s.control_steps == n - 40


def test_detection_without_detections_is_nan() -> None:
    s = M.detection_stats(np.zeros(20, dtype=bool), [5], 5, np.ones(20, dtype=bool))
    assert s.detected == 0
    assert math.isnan(s.median_delay) and math.isnan(s.p90_delay)
    assert s.false_per_10k == 0.0


def test_page_cusum_hand_example() -> None:
    # G+ = 0.5, 1.0, 1.5 > h = 1 at t = 2, reset, then 0.5, 1.0, 1.5 at t = 5.
    alarms = page_cusum(np.ones(6), h=1.0, k=0.5)
    np.testing.assert_array_equal(np.flatnonzero(alarms), [2, 5])
    assert not page_cusum(np.full(50, 0.5), h=1.0, k=0.5).any()  # u = k never drifts
    np.testing.assert_array_equal(np.flatnonzero(page_cusum(-np.ones(3), h=1.0, k=0.5)), [2])


def test_error_band_and_ewma_by_hand() -> None:
    y = np.array([0.0, 1.0, 3.0])
    lo, hi = A.error_band(y, np.zeros(3))
    # e_1 = 1 (running mean: v = 1), e_2 = 3 (rate 1/2: v = 1 + (9 - 1) / 2 = 5).
    np.testing.assert_allclose(hi, A.Z95 * np.sqrt([0.0, 1.0, 5.0]))
    np.testing.assert_allclose(lo, -hi)
    np.testing.assert_allclose(A.ewma(np.array([1.0, 3.0, 3.0]), 0.5), [1.0, 2.0, 2.5])


def test_markdown_table_and_fmt() -> None:
    table = M.markdown_table(["a", "b"], [["1", "2"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert M.fmt(math.nan) == "—"
    assert M.fmt(1.23456, 2) == "1.23"
    assert M.fmt(12345.6) == "12,346"
    assert (M.verdict(True), M.verdict(False), M.verdict(None)) == ("pass", "miss", "—")


#: A small layout (fast to compile); the harness code is the same for any config.
SMALL = PredictorConfig(
    clock="event", wtmm_buffer_size=32, wiener_order=4, wtmm_num_scales=4, dgm_solver="fd"
)


def test_walk_forward_is_causal() -> None:
    """Poisoning y[k:] changes no forecast, band, alarm or residual made before k."""
    rng = np.random.default_rng(3)
    n, k, chunk = 180, 100, 64  # k inside the second chunk
    clean = np.cumsum(rng.standard_normal(n))
    poisoned = clean.copy()
    poisoned[k:] = 1e4 + 50.0 * rng.standard_normal(n - k)
    runs = []
    for ys in (clean, poisoned):
        oracle = O.fbm(ys, 0.5, n_past=16)
        runs.append(A.all_forecasts(ys, SMALL, A.GENERIC_RIVER, oracle, chunk=chunk))
    (models_a, walk_a), (models_b, walk_b) = runs
    assert models_a.keys() == models_b.keys()
    assert len(models_a) == 10  # oracle, naive, EWMA, 2 river models, 4 kernels, ensemble
    for name, fa in models_a.items():
        fb = models_b[name]
        for part in ("point", "lower", "upper"):
            a, b = getattr(fa, part), getattr(fb, part)
            if a is None:
                continue
            np.testing.assert_array_equal(a[:k], b[:k], err_msg=f"{name}.{part}")
            assert not np.array_equal(a[k:], b[k:]), f"{name}.{part}: poison had no effect"
    for field in ("alarm", "u", "weights", "kernels"):
        np.testing.assert_array_equal(getattr(walk_a, field)[:k], getattr(walk_b, field)[:k])
    # The walk really ran the predictor: past its window it is not the naive forecast.
    assert not walk_a.warming[SMALL.wtmm_buffer_size :].any()
    assert not np.array_equal(walk_a.point[40:k], clean[40:k])
