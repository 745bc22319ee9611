"""Walk-forward objective: fold layout, metrics, causality, alignment, no recompilation.

Every scan here has 299 ticks (anchored: a 300-point series; rolling:
train 150 + horizon 150 - 1) on the cheap layout of ``bench.tuning``, so the
whole file compiles one graph (shared with test_tuning_resume through the
persistent XLA cache).
"""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.tools.eval_measures import meanabs, rmse

from bench.tuning import cheap_base, switching_series
from predictor.core import functional
from predictor.errors import ConfigError
from predictor.tuning.walkforward import (
    WalkForward,
    WalkForwardSpec,
    fold_layout,
    fold_metrics,
    naive_scale,
)

ANCHORED = WalkForwardSpec(folds=2, train_window=100, horizon=100, metric="mase", mode="anchored")
ROLLING = WalkForwardSpec(folds=2, train_window=150, horizon=150, metric="rmse", mode="rolling")
N_ANCHORED, N_ROLLING = 300, 450


@pytest.fixture(scope="module")
def series() -> np.ndarray:
    return switching_series(np.random.default_rng(7), N_ROLLING)


def test_fold_layout_tiles_the_end_of_the_series() -> None:
    spec = WalkForwardSpec(folds=4, train_window=200, horizon=200, mode="anchored")
    folds = fold_layout(1000, spec)
    assert [(f.target_start, f.target_end) for f in folds] == [
        (200, 400),
        (400, 600),
        (600, 800),
        (800, 1000),
    ]
    assert all(f.train_start == 0 for f in folds)
    rolling = fold_layout(N_ROLLING, ROLLING)
    assert [(f.train_start, f.target_start, f.target_end) for f in rolling] == [
        (0, 150, 300),
        (150, 300, 450),
    ]
    with pytest.raises(ValueError, match="too short"):
        fold_layout(999, spec)


def test_fold_metrics_against_statsmodels_and_definitions() -> None:
    rng = np.random.default_rng(3)
    actual = 5.0 + rng.standard_normal(50)
    forecast = actual + 0.3 * rng.standard_normal(50)
    train = np.cumsum(rng.standard_normal(80))
    m = fold_metrics(forecast, actual, naive_scale(train))
    assert m["rmse"] == pytest.approx(rmse(forecast, actual), rel=1e-12)
    assert m["mae"] == pytest.approx(meanabs(forecast, actual), rel=1e-12)
    mape = 100.0 * sum(abs((f - a) / a) for f, a in zip(forecast, actual, strict=True)) / 50
    assert m["mape"] == pytest.approx(mape, rel=1e-12)
    scale = sum(abs(train[i] - train[i - 1]) for i in range(1, 80)) / 79
    assert m["mase"] == pytest.approx(meanabs(forecast, actual) / scale, rel=1e-12)
    # MAPE is undefined across zero
    assert np.isnan(fold_metrics(forecast, actual - 5.0, 1.0)["mape"])


def test_mape_refused_on_a_series_that_crosses_zero(series: np.ndarray) -> None:
    base = cheap_base()
    spec = WalkForwardSpec(folds=2, train_window=100, horizon=100, metric="mape")
    ys = series[:N_ANCHORED]
    with pytest.raises(ValueError, match="MAPE is undefined"):
        WalkForward(ys - ys.mean(), spec, base)
    WalkForward(ys - ys.min() + 1.0, spec, base)  # positive: accepted


def test_train_window_must_cover_the_warm_up(series: np.ndarray) -> None:
    spec = WalkForwardSpec(folds=2, train_window=32, horizon=100, metric="rmse")
    with pytest.raises(ValueError, match="warm-up"):
        WalkForward(series, spec, cheap_base())


@pytest.mark.parametrize("spec", [ANCHORED, ROLLING], ids=["anchored", "rolling"])
def test_forecasts_are_aligned_and_strictly_causal(series: np.ndarray, spec) -> None:
    n = N_ANCHORED if spec.mode == "anchored" else N_ROLLING
    ys = series[:n]
    walk = WalkForward(ys, spec, cheap_base())
    base = walk.forecasts(walk.base)
    first = walk.folds[0]
    a, b = first.target_start, first.target_end

    # The future of fold 0 (y[b:]) does not touch fold 0's forecasts.
    future = ys.copy()
    future[b:] += 50.0
    changed = WalkForward(future, spec, cheap_base()).forecasts(walk.base)
    np.testing.assert_array_equal(changed[0], base[0])

    # Forecast k of the fold predicts y[a + k] from y[.. a + k - 1]: moving
    # y[a] leaves forecast 0 alone and moves forecast 1; moving y[a - 1]
    # moves forecast 0.
    bumped = ys.copy()
    bumped[a] += 5.0
    after = WalkForward(bumped, spec, cheap_base()).forecasts(walk.base)[0]
    assert after[0] == base[0][0]
    assert after[1] != base[0][1]
    bumped = ys.copy()
    bumped[a - 1] += 5.0
    assert WalkForward(bumped, spec, cheap_base()).forecasts(walk.base)[0][0] != base[0][0]


def test_report_matches_fold_metrics(series: np.ndarray) -> None:
    ys = series[:N_ANCHORED]
    walk = WalkForward(ys, ANCHORED, cheap_base())
    report = walk.evaluate(walk.base)
    preds = walk.forecasts(walk.base)
    expected = []
    for f, p in zip(walk.folds, preds, strict=True):
        actual = ys[f.target_start : f.target_end]
        expected.append(meanabs(p, actual) / naive_scale(ys[: f.target_start]))
    assert report.per_fold["mase"] == pytest.approx(expected, rel=1e-12)
    assert report.value == pytest.approx(np.mean(expected), rel=1e-12)
    assert report.n_forecasts == 200
    assert report.value == walk({})  # the objective: base with no change


def scans() -> int:
    """Scan graphs memoised, over every layout and depth."""
    return sum(1 for layout in functional.compiled_layouts() for _ in scan_keys(layout))


def scan_keys(layout: object) -> list[object]:
    return [k for k in functional._compiled._graphs if k[0] == layout and k[1][1] == "scan"]


def test_sensitivity_trials_share_one_compiled_scan(series: np.ndarray) -> None:
    walk = WalkForward(series[:N_ANCHORED], ANCHORED, cheap_base())
    walk({})
    layouts = scans()
    scan = functional._compiled(
        functional.layout_config(walk.base), walk.base.log_sig_depth, "scan"
    )
    compiled = scan._cache_size()  # type: ignore[attr-defined]
    values = {walk({"cusum_h": 3.0, "entropy_window": 5, "epsilon": 0.01}), walk({})}
    assert len(values) == 2  # the sensitivities do change the score ...
    assert scans() == layouts  # ... not the graph
    assert scan._cache_size() == compiled  # type: ignore[attr-defined]


def test_invalid_candidate_raises_config_error(series: np.ndarray) -> None:
    walk = WalkForward(series[:N_ANCHORED], ANCHORED, cheap_base())
    with pytest.raises(ConfigError):
        walk({"volatility_alpha": 2.0})


def test_deep_trial_layouts_are_released(
    series: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    walk = WalkForward(series[:N_ANCHORED], ANCHORED, cheap_base())
    walk({})  # the base layout's scan is cached
    assert scans() >= 1
    kept = walk.forecasts(walk.base)
    monkeypatch.setattr(walk, "forecasts", lambda cfg: kept)  # no compilation in this test
    walk.evaluate(walk.base.replace(epsilon=0.5))  # same layout: cache kept
    assert scans() >= 1
    deep = walk.base.replace(wtmm_num_scales=5)
    walk.evaluate(deep)  # a deep-tier layout: its graphs are released, the base's kept
    assert functional.layout_config(deep) not in functional.compiled_layouts()
    assert functional.layout_config(walk.base) in functional.compiled_layouts()
