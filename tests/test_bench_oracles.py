"""bench.oracles: each Bayes-optimal predictor against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest

from bench import oracles as O
from bench import processes as P


def _full_covariance(h: float, n: int) -> np.ndarray:
    lags = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    return P.fgn_autocovariance(h, lags)


@pytest.mark.parametrize("h", [0.3, 0.7])
def test_fgn_coefficients_solve_the_normal_equations(h: float) -> None:
    n = 20
    # Regress g_{t+1} on (g_t, ..., g_{t-n+1}) with the dense (n+1)-covariance.
    cov = _full_covariance(h, n + 1)  # index 0 = g_{t+1}, index j + 1 = g_{t-j}
    expected = np.linalg.solve(cov[1:, 1:], cov[1:, 0])
    np.testing.assert_allclose(O.fgn_coefficients(h, n), expected, rtol=1e-10, atol=1e-12)


def test_fgn_coefficients_vanish_for_white_noise() -> None:
    np.testing.assert_allclose(O.fgn_coefficients(0.5, 10), 0.0, atol=1e-15)
    assert O.fgn_prediction_variance(0.5, 10) == pytest.approx(1.0)


@pytest.mark.parametrize("h", [0.3, 0.7])
def test_fbm_oracle_matches_brute_force(h: float) -> None:
    """Head (growing past) and tail (fixed past, vectorised) against dense solves."""
    n_past = 8
    x = P.fbm(np.random.default_rng(1), 30, h)
    g = np.diff(x, prepend=0.0)
    f = O.fbm(x, h, n_past=n_past)
    for t in range(x.size):
        m = min(t + 1, n_past)
        cov = _full_covariance(h, m + 1)
        c = np.linalg.solve(cov[1:, 1:], cov[1:, 0])
        assert f[t] == pytest.approx(x[t] + c @ g[t::-1][:m], abs=1e-12), t


@pytest.mark.parametrize("h", [0.3, 0.7])
def test_fbm_oracle_error_variance_is_the_theoretical_one(h: float) -> None:
    n_past, length, paths = 16, 40, 1000
    rng = np.random.default_rng(2)
    errs = []
    for _ in range(paths):
        x = P.fbm(rng, length, h)
        f = O.fbm(x, h, n_past=n_past)
        errs.append(x[n_past:] - f[n_past - 1 : -1])  # forecasts with the full past
    mse = float(np.mean(np.square(errs)))
    theory = O.fgn_prediction_variance(h, n_past)
    # 1000 x 24 nearly independent errors: relative standard error about 1%.
    assert mse == pytest.approx(theory, rel=0.05)
    assert theory < 1.0  # the oracle beats the naive forecast (error variance 1)


def test_random_walk_and_ar1_oracles() -> None:
    x = P.ar1(np.random.default_rng(4), 20_000, 0.7, sigma=2.0)
    f = O.ar1(x, 0.7)
    assert np.sqrt(np.mean((x[1:] - f[:-1]) ** 2)) == pytest.approx(2.0, rel=0.02)
    np.testing.assert_array_equal(O.random_walk(x), x)
    np.testing.assert_allclose(O.ar1(np.array([3.0]), 0.5, mu=1.0), [2.0])


def test_merton_drift_is_the_mean_increment() -> None:
    params = {"mu": 2e-4, "sigma": 0.01, "lam": 0.05, "jump_mean": -0.02, "jump_sd": 0.04}
    path = P.merton(np.random.default_rng(5), 400_000, **params)
    drift = O.merton_drift(**params)
    # Increment sd ~ sqrt(1e-4 + 0.05 * (0.04^2 + 0.02^2)) = 0.014: mean's sd 2.2e-5.
    assert np.mean(path.increments) == pytest.approx(drift, abs=1e-4)
    assert drift == pytest.approx(
        2e-4 - 0.5e-4 - 0.05 * (np.exp(-0.02 + 0.0008) - 1.0) + 0.05 * -0.02, rel=1e-12
    )
    np.testing.assert_allclose(O.merton(np.zeros(2), **params), [drift, drift])


def test_regime_mean_looks_one_step_ahead() -> None:
    np.testing.assert_array_equal(O.regime_mean([0.0, 0.0, 5.0, 5.0]), [0.0, 5.0, 5.0, 5.0])


def test_stable_median_is_last_value_plus_location() -> None:
    x = np.array([1.0, -2.0])
    np.testing.assert_array_equal(O.stable_median(x), x)
    np.testing.assert_allclose(O.stable_median(x, loc=0.5, dt=2.0), [2.0, -1.0])
