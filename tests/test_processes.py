"""predictor.synthetic (also importable as bench.processes): each generator against
its closed-form law."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from predictor import synthetic as P


@pytest.mark.parametrize("h", [0.2, 0.3, 0.5, 0.7])
def test_fgn_autocovariance_matches_theory(h: float) -> None:
    rng = np.random.default_rng(7)
    paths, n = 200, 1024
    x = np.stack([P.fgn(rng, n, h) for _ in range(paths)])
    # The mean is known (0): no demeaning, so no small-sample bias.
    for lag in range(6):
        sample = np.mean(x[:, : n - lag] * x[:, lag:])
        theory = P.fgn_autocovariance(h, np.array([lag]))[0]
        assert abs(sample - theory) < 0.015, (h, lag, sample, theory)


@pytest.mark.parametrize("h", [0.1, 0.9])
def test_fgn_full_covariance_is_exact_toeplitz(h: float) -> None:
    # Strong memory (H = 0.9) makes long-path lag averages slow to converge;
    # many short paths test the whole covariance matrix instead.
    rng = np.random.default_rng(8)
    n, paths = 12, 40_000
    x = np.stack([P.fgn(rng, n, h) for _ in range(paths)])
    sample = x.T @ x / paths
    lags = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    theory = P.fgn_autocovariance(h, lags)
    # Entry-wise sd of the sample covariance is at most sqrt(2 / paths) = 0.007.
    assert np.max(np.abs(sample - theory)) < 0.03


def test_fgn_autocovariance_closed_form() -> None:
    # H = 0.5 is white noise; the lag-1 value is 2^(2H-1) - 1.
    np.testing.assert_allclose(P.fgn_autocovariance(0.5, np.arange(4)), [1, 0, 0, 0], atol=1e-15)
    for h in (0.2, 0.8):
        assert P.fgn_autocovariance(h, np.array([1]))[0] == pytest.approx(2 ** (2 * h - 1) - 1)


@pytest.mark.parametrize("h", [0.3, 0.7])
def test_fbm_variance_scales_as_t_2h(h: float) -> None:
    rng = np.random.default_rng(3)
    b = np.stack([P.fbm(rng, 256, h, sigma=2.0) for _ in range(2000)])
    for t in (16, 64, 256):
        ratio = b[:, t - 1].var() / (4.0 * t ** (2 * h))
        assert abs(ratio - 1.0) < 0.1, (t, ratio)


def test_fgn_rejects_bad_hurst() -> None:
    with pytest.raises(ValueError, match="Hurst"):
        P.fgn(np.random.default_rng(0), 10, 1.0)


def test_same_seed_same_path() -> None:
    a = P.fbm(np.random.default_rng(11), 64, 0.4)
    b = P.fbm(np.random.default_rng(11), 64, 0.4)
    np.testing.assert_array_equal(a, b)


def test_brownian_increments() -> None:
    w = P.brownian(np.random.default_rng(1), 50_000, sigma=0.5, dt=0.04)
    inc = np.diff(w)
    assert inc.var() == pytest.approx(0.25 * 0.04, rel=0.03)
    assert stats.kstest(inc / np.sqrt(0.01), "norm").pvalue > 0.01


def test_ar1_moments() -> None:
    x = P.ar1(np.random.default_rng(2), 100_000, phi=0.8, sigma=1.0, mu=3.0)
    assert x.mean() == pytest.approx(3.0, abs=0.05)
    assert x.var() == pytest.approx(1.0 / (1 - 0.64), rel=0.05)
    d = x - x.mean()
    assert np.mean(d[1:] * d[:-1]) / d.var() == pytest.approx(0.8, abs=0.01)


def test_ou_is_exact_ar1() -> None:
    theta, sigma, dt = 0.5, 2.0, 0.5
    x = P.ou(np.random.default_rng(4), 100_000, theta, mu=-1.0, sigma=sigma, dt=dt)
    phi = np.exp(-theta * dt)
    assert x.var() == pytest.approx(sigma**2 / (2 * theta), rel=0.05)
    d = x - x.mean()
    assert np.mean(d[1:] * d[:-1]) / d.var() == pytest.approx(phi, abs=0.01)
    assert x.mean() == pytest.approx(-1.0, abs=0.1)


def test_merton_jumps_and_diffusion() -> None:
    rng = np.random.default_rng(5)
    path = P.merton(rng, 50_000, mu=0.0, sigma=0.01, lam=0.02, jump_mean=-0.02, jump_sd=0.05)
    counts = path.jump_counts
    # Poisson count of jumps: mean lam n, sd sqrt(lam n) = 31.6.
    assert abs(counts.sum() - 1000) < 4 * np.sqrt(1000)
    np.testing.assert_array_equal(path.jump_indices, np.flatnonzero(counts))
    assert np.all(path.jump_sizes[counts == 0] == 0.0)
    kbar = np.exp(-0.02 + 0.5 * 0.05**2) - 1
    drift = -0.5 * 0.01**2 - 0.02 * kbar
    diff = path.diffusive_increments
    assert stats.kstest((diff - drift) / 0.01, "norm").pvalue > 0.01
    # Single jumps are N(jump_mean, jump_sd^2).
    single = path.jump_sizes[counts == 1]
    assert stats.kstest((single + 0.02) / 0.05, "norm").pvalue > 0.01
    np.testing.assert_allclose(np.cumsum(path.increments), path.log_price, rtol=1e-12)


def test_merton_martingale_price() -> None:
    # With mu = 0 the compensated price S is a martingale: E[S_T] = S_0.
    ends = [
        np.exp(P.merton(np.random.default_rng(s), 100, sigma=0.01, lam=0.05).log_price[-1])
        for s in range(4000)
    ]
    assert np.mean(ends) == pytest.approx(1.0, abs=3 * np.std(ends) / np.sqrt(4000))


@pytest.mark.parametrize(("alpha", "beta"), [(1.5, 0.0), (1.5, 0.5), (1.0, 0.5), (0.8, -0.3)])
def test_stable_matches_scipy(alpha: float, beta: float) -> None:
    x = P.stable_increments(np.random.default_rng(1), 1500, alpha, beta=beta, scale=2.0, loc=0.3)
    law = stats.levy_stable(alpha, beta, loc=0.3, scale=2.0)
    assert stats.kstest(x, law.cdf).pvalue > 0.01


def test_stable_alpha_two_is_gaussian() -> None:
    # S1 with alpha = 2 is N(loc, 2 scale^2); time aggregation scales by dt^(1/2).
    x = P.stable_increments(np.random.default_rng(9), 20_000, 2.0, scale=1.5, dt=4.0)
    assert x.var() == pytest.approx(2 * 1.5**2 * 4.0, rel=0.05)


def test_piecewise_segments() -> None:
    pw = P.piecewise(np.random.default_rng(6), 30_000, [10_000, 20_000], [0, 5, 5], [1, 1, 3])
    np.testing.assert_array_equal(pw.change_indices, [10_000, 20_000])
    segs = np.split(pw.series, pw.change_indices)
    for seg, mu, sd in zip(segs, [0, 5, 5], [1, 1, 3], strict=True):
        assert seg.size == 10_000
        assert seg.mean() == pytest.approx(mu, abs=4 * sd / 100)
        assert seg.std() == pytest.approx(sd, rel=0.03)
    with pytest.raises(ValueError, match="segment"):
        P.piecewise(np.random.default_rng(0), 10, [5], [0.0], [1.0])
    with pytest.raises(ValueError, match="increasing"):
        P.piecewise(np.random.default_rng(0), 10, [5, 3], [0, 0, 0], [1, 1, 1])


def test_bench_processes_is_the_same_module_content() -> None:
    """The benchmarks' old import path names the package's generators, not copies."""
    from bench import processes

    for name in processes.__all__:
        assert getattr(processes, name) is getattr(P, name), name
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(processes.fbm(rng_a, 64, 0.7), P.fbm(rng_b, 64, 0.7))
