"""Residual statistics: EMA volatility, standardised residual, kurtosis, log-squared residual."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from predictor.config import PredictorConfig
from predictor.core.sia.cusum import adaptive_threshold
from predictor.core.sia.residuals import (
    KURTOSIS_NEUTRAL,
    LOG_SQ_FLOOR,
    LOG_SQ_MIN_COUNT,
    LOG_SQ_SD_MIN,
    U_MAX,
    ResidualState,
    kurtosis,
    residual_init,
    residual_update,
)

CFG = PredictorConfig()
N = CFG.wtmm_buffer_size
_kurt = jax.jit(kurtosis)


@jax.jit
def _run(e: jax.Array, alpha: jax.Array) -> tuple[ResidualState, tuple[jax.Array, ...]]:
    """Scan residual_update over a sequence; outputs (u, sigma, kappa, sigma_ref, log_sq, sd)."""

    def step(state: ResidualState, x: jax.Array) -> tuple[ResidualState, tuple[jax.Array, ...]]:
        state, out = residual_update(state, x, alpha)
        return state, tuple(out)

    return jax.lax.scan(step, residual_init(CFG), e)


def test_kurtosis_gaussian_and_student() -> None:
    rng = np.random.default_rng(0)
    assert 2.8 < float(_kurt(jnp.asarray(rng.standard_normal(10_000)))) < 3.2
    assert float(_kurt(jnp.asarray(rng.standard_t(3, 10_000)))) > 5.0


def test_kurtosis_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    for x in (rng.standard_normal(200), rng.exponential(size=500), rng.uniform(size=300)):
        ref = stats.kurtosis(x, fisher=False, bias=True)
        assert float(_kurt(jnp.asarray(x))) == pytest.approx(ref, rel=1e-10)
    # Masked entries are ignored; a two-point symmetric law has the minimum, 1.
    x = np.r_[np.tile([-1.0, 1.0], 20), np.full(10, 1e6)]
    mask = np.arange(50) < 40
    assert float(kurtosis(jnp.asarray(x), jnp.asarray(mask))) == pytest.approx(1.0)


def test_kurtosis_degenerate_and_clipped() -> None:
    assert float(_kurt(jnp.full(20, 4.2))) == KURTOSIS_NEUTRAL
    assert float(kurtosis(jnp.asarray([1.0, 2.0, 3.0]))) == KURTOSIS_NEUTRAL
    spike = np.zeros(100_000)
    spike[0] = 1.0  # m4 / m2^2 = about n
    assert float(_kurt(jnp.asarray(spike))) == 100.0


def test_pipeline_kurtosis_and_threshold_rise_with_tails() -> None:
    rng = np.random.default_rng(2)
    alpha = jnp.asarray(CFG.volatility_alpha)
    _, (_, _, kappa_g, *_) = _run(jnp.asarray(rng.standard_normal(10_000)), alpha)
    _, (_, _, kappa_t, *_) = _run(jnp.asarray(rng.standard_t(3, 10_000)), alpha)
    kg, kt = np.asarray(kappa_g)[N:], np.asarray(kappa_t)[N:]
    # 128-sample Pearson kurtosis of Gaussian data: E = 3 (n - 1) / (n + 1) = 2.95.
    assert 2.8 < kg.mean() < 3.2
    assert np.median(kt) > 5.0
    thr_g = np.asarray(adaptive_threshold(CFG.cusum_h, kappa_g))[N:]
    thr_t = np.asarray(adaptive_threshold(CFG.cusum_h, kappa_t))[N:]
    assert thr_t.mean() > thr_g.mean() + 2.0
    grid = jnp.linspace(1.0, 100.0, 200)
    thr = np.asarray(adaptive_threshold(8.0, grid))
    assert np.all(thr[grid <= 3.0] == 8.0)
    assert np.all(np.diff(thr[grid > 3.0]) > 0)
    assert float(adaptive_threshold(8.0, 3.0 * np.e)) == pytest.approx(16.0)


def test_against_numpy_recursion() -> None:
    rng = np.random.default_rng(3)
    e = rng.standard_normal(300) * np.where(np.arange(300) < 150, 1.0, 4.0)
    alpha = 0.2
    _, (u, sigma, kappa, ref, log_sq, log_sq_sd) = _run(jnp.asarray(e), jnp.asarray(alpha))
    var = e[0] ** 2
    for t in range(300):
        if t > 0:
            var = (1 - alpha) * var + alpha * e[t] ** 2
        prev = e[max(0, t - N) : t]
        want_ref = np.sqrt(np.mean(prev**2)) if t > 0 else 0.0
        window = e[max(0, t + 1 - N) : t + 1]
        want_k = stats.kurtosis(window, fisher=False) if window.size >= 4 else 3.0
        assert float(sigma[t]) == pytest.approx(np.sqrt(var), rel=1e-12)
        assert float(ref[t]) == pytest.approx(want_ref, rel=1e-12)
        assert float(u[t]) == pytest.approx(e[t] / want_ref if t > 0 else 0.0, rel=1e-12)
        assert float(kappa[t]) == pytest.approx(np.clip(want_k, 1, 100), rel=1e-9)
        if prev.size >= LOG_SQ_MIN_COUNT:
            # Floor: 1e-4 x the geometric mean of prev^2, itself floored once.
            g0 = np.mean(np.log(prev**2))
            lo = np.log(LOG_SQ_FLOOR) + np.mean(np.maximum(np.log(prev**2), g0 + np.log(1e-4)))
            want_sd = max(np.std(np.maximum(np.log(prev**2), lo)), LOG_SQ_SD_MIN)
            assert float(log_sq[t]) == pytest.approx(max(np.log(e[t] ** 2), lo), rel=1e-12)
            assert float(log_sq_sd[t]) == pytest.approx(want_sd, rel=1e-10)
        else:
            assert float(log_sq[t]) == 0.0 and float(log_sq_sd[t]) == 0.0


def test_ring_buffer_keeps_last_n() -> None:
    e = np.arange(1.0, N + 40.0)
    state, _ = _run(jnp.asarray(e), jnp.asarray(0.1))
    assert int(state.filled) == N
    np.testing.assert_array_equal(np.sort(np.asarray(state.buffer)), e[-N:])


def test_alpha_is_traced_not_static() -> None:
    traces = 0

    def counted(state: ResidualState, e: jax.Array, alpha: jax.Array) -> jax.Array:
        nonlocal traces
        traces += 1
        return residual_update(state, e, alpha)[1].sigma

    f = jax.jit(counted)
    s0 = residual_update(residual_init(CFG), 1.0, 0.1)[0]
    a = float(f(s0, jnp.asarray(3.0), jnp.asarray(0.1)))
    b = float(f(s0, jnp.asarray(3.0), jnp.asarray(0.5)))
    assert traces == 1
    assert a == pytest.approx(np.sqrt(0.9 + 0.9)) and b == pytest.approx(np.sqrt(0.5 + 4.5))


def test_zero_residuals_then_error() -> None:
    e = np.r_[np.zeros(10), 2.0]
    _, (u, sigma, kappa, _, _, sd) = _run(jnp.asarray(e), jnp.asarray(0.1))
    u, sigma = np.asarray(u), np.asarray(sigma)
    assert np.all(np.asarray(sd) == 0.0)  # no scale observation without a reference
    assert np.all(u == 0.0)  # no scale has been set yet
    assert np.all(np.isfinite(sigma)) and np.all(sigma > 0)
    assert sigma[10] == 2.0  # seeded by the first non-zero residual
    assert float(kappa[9]) == KURTOSIS_NEUTRAL


def test_vmap_over_batch_equals_per_item() -> None:
    rng = np.random.default_rng(4)
    e = rng.standard_normal((4, 200)) * np.array([[1.0], [1e-100], [1e200], [0.0]])
    batched = jax.vmap(_run, in_axes=(0, None))(jnp.asarray(e), jnp.asarray(0.1))
    for i in range(4):
        single = _run(jnp.asarray(e[i]), jnp.asarray(0.1))
        for got, want in zip(batched[1], single[1], strict=True):
            np.testing.assert_allclose(np.asarray(got)[i], np.asarray(want), rtol=1e-12)


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(_finite, st.sampled_from([0.0, 1e300, -1e300, 5e-324])), min_size=1, max_size=40
    ),
    st.floats(1e-6, 1.0),
)
def test_finite_for_finite_residuals(seq: list[float], alpha: float) -> None:
    e = np.zeros(40)
    e[: len(seq)] = seq
    _, (u, sigma, kappa, ref, log_sq, sd) = _run(jnp.asarray(e), jnp.asarray(alpha))
    for arr in (u, sigma, kappa, ref, log_sq, sd):
        assert np.all(np.isfinite(np.asarray(arr)))
    assert np.all(np.abs(np.asarray(u)) <= U_MAX)
    assert np.all(np.asarray(sigma) > 0)
    k = np.asarray(kappa)
    assert np.all((k >= 1.0) & (k <= 100.0))


def test_log_sq_spread_matches_closed_forms() -> None:
    """Spread of log e^2: pi / sqrt 2 (Gaussian), sqrt(pi^2 / 2 + psi'(3/2)) (Student-t(3))."""
    rng = np.random.default_rng(5)
    alpha = jnp.asarray(0.1)
    want_g = np.pi / np.sqrt(2.0)
    want_t = np.sqrt(np.pi**2 / 2.0 + special.polygamma(1, 1.5))
    _, out_g = _run(jnp.asarray(rng.standard_normal(20_000)), alpha)
    _, out_t = _run(jnp.asarray(3.0 * rng.standard_t(3, 20_000)), alpha)
    # The 128-sample spread is biased low by about (n - 1) / n and by the
    # 1% floor, and noisy: the mean over the series is within a few percent.
    assert np.mean(np.asarray(out_g[5])[N:]) == pytest.approx(want_g, rel=0.05)
    assert np.mean(np.asarray(out_t[5])[N:]) == pytest.approx(want_t, rel=0.06)


def test_log_sq_moves_by_log_of_variance_ratio() -> None:
    """A variance x4 moves the mean of log e^2 by ln 4, Gaussian or Student-t(3)."""
    rng = np.random.default_rng(6)
    for x in (rng.standard_normal(40_000), rng.standard_t(3, 40_000)):
        x[20_000:] *= 2.0
        _, out = _run(jnp.asarray(x), jnp.asarray(0.1))
        w = np.asarray(out[4])
        # Away from the change: the floor (relative to the ring's RMS) is the same.
        jump = w[21_000:].mean() - w[N:19_000].mean()
        assert jump == pytest.approx(np.log(4.0), abs=0.1)


def test_log_sq_scale_free() -> None:
    """Scaling e by c shifts log_sq by ln c^2 and leaves the spread unchanged."""
    e = np.random.default_rng(7).standard_t(3, 500)
    _, base = _run(jnp.asarray(e), jnp.asarray(0.1))
    for c in (1e-200, 1e200):
        _, scaled = _run(jnp.asarray(e * c), jnp.asarray(0.1))
        ok = np.asarray(base[5]) > 0
        np.testing.assert_allclose(
            np.asarray(scaled[4])[ok], np.asarray(base[4])[ok] + 2.0 * np.log(c), atol=1e-9
        )
        np.testing.assert_allclose(np.asarray(scaled[5]), np.asarray(base[5]), rtol=1e-9)


def test_log_sq_zero_and_constant_residuals() -> None:
    """An exact zero is floored (finite); a ring of equal |e| has the minimum spread."""
    e = np.r_[np.tile([1.0, -1.0], 40), 0.0, 1.0]
    _, out = _run(jnp.asarray(e), jnp.asarray(0.1))
    w, sd = np.asarray(out[4]), np.asarray(out[5])
    assert w[80] == pytest.approx(np.log(LOG_SQ_FLOOR))  # geometric mean of e^2: 1
    assert sd[79] == LOG_SQ_SD_MIN and sd[80] == LOG_SQ_SD_MIN
    assert sd[81] > LOG_SQ_SD_MIN  # the zero is in the ring now
    assert sd[LOG_SQ_MIN_COUNT - 1] == 0.0 and sd[LOG_SQ_MIN_COUNT] > 0.0


def test_log_sq_floor_ignores_an_outlier() -> None:
    """A 1e6-sigma outlier in the ring moves the floor by ln(1e12) / N, not by 1e12."""
    rng = np.random.default_rng(8)
    e = rng.standard_normal(400)
    spiked = e.copy()
    spiked[200] = 1e6
    _, base = _run(jnp.asarray(e), jnp.asarray(0.1))
    _, out = _run(jnp.asarray(spiked), jnp.asarray(0.1))
    w0, w1 = np.asarray(base[4])[201:328], np.asarray(out[4])[201:328]
    # Only residuals near the floor (|e| < 1% sigma) can move, and by little.
    assert np.mean(w0 == w1) > 0.97
    assert np.max(np.abs(w1 - w0)) < np.log(1e12) / N + 1e-9
