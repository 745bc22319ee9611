"""Adaptive CUSUM: false-alarm calibration, detection delays, grace, robustness."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.processes import piecewise
from predictor.config import PredictorConfig
from predictor.core.sia.cusum import (
    CusumOut,
    CusumState,
    cusum_init,
    cusum_update,
    siegmund_arl,
)
from predictor.core.sia.residuals import ResidualState, residual_init, residual_update

CFG = PredictorConfig()
F64 = jnp.float64


@jax.jit
def _cusum_only(
    u: jax.Array, kappa: jax.Array, h: jax.Array, k: jax.Array, grace: jax.Array
) -> tuple[CusumState, CusumOut]:
    """Scan cusum_update over a sequence of standardised residuals."""

    def step(state: CusumState, xs: tuple[jax.Array, jax.Array]) -> tuple[CusumState, CusumOut]:
        return cusum_update(state, xs[0], xs[1], h, k, grace)

    return jax.lax.scan(step, cusum_init(), (u, kappa))


@jax.jit
def _pipeline(e: jax.Array, adaptive: jax.Array) -> jax.Array:
    """Residual statistics + CUSUM at the shipped defaults over a batch; returns alarms.

    ``adaptive`` = 0 replaces kappa by 3, i.e. the fixed threshold h.
    """

    def one(series: jax.Array) -> jax.Array:
        Carry = tuple[ResidualState, CusumState]

        def step(carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
            rs, cs = carry
            rs, ro = residual_update(rs, x, CFG.volatility_alpha)
            kappa = jnp.where(adaptive > 0, ro.kappa, 3.0)
            cs, co = cusum_update(cs, ro.u, kappa, CFG.cusum_h, CFG.cusum_k, CFG.grace_period_steps)
            return (rs, cs), co.alarm

        return jax.lax.scan(step, (residual_init(CFG), cusum_init()), series)[1]

    return jax.vmap(one)(e)


def test_siegmund_formula_value() -> None:
    assert siegmund_arl(5.0, 0.5) == pytest.approx(470.0, rel=0.01)
    assert siegmund_arl(8.0, 0.5) == pytest.approx(9557.0, rel=0.01)


def test_false_alarm_run_length_matches_siegmund() -> None:
    """Gaussian u, h = 5, k = 0.5, fixed threshold, no grace: ARL about 470."""
    chains, steps = 32, 8000
    u = np.random.default_rng(0).standard_normal((chains, steps))
    run = jax.vmap(_cusum_only, in_axes=(0, 0, None, None, None))
    kappa = jnp.full((chains, steps), 3.0)
    _, out = run(jnp.asarray(u), kappa, jnp.asarray(5.0), jnp.asarray(0.5), jnp.asarray(0))
    alarms = int(np.sum(np.asarray(out.alarm)))
    # About 540 alarms: the relative standard error of the ARL is about 5%.
    arl = chains * steps / alarms
    assert abs(arl / siegmund_arl(5.0, 0.5) - 1.0) < 0.3, arl


def _alarm_counts(e: np.ndarray, adaptive: bool) -> np.ndarray:
    return np.asarray(_pipeline(jnp.asarray(e), jnp.asarray(1.0 if adaptive else 0.0))).sum(axis=1)


def test_default_threshold_false_alarms() -> None:
    e = np.random.default_rng(1).standard_normal((4, 20_000))
    counts = _alarm_counts(e, adaptive=True)
    assert np.all(counts <= 6), counts


def test_kurtosis_adaptation_reduces_heavy_tail_alarms() -> None:
    e = np.random.default_rng(2).standard_t(3, (4, 20_000))
    adaptive = _alarm_counts(e, adaptive=True)
    fixed = _alarm_counts(e, adaptive=False)
    assert np.all(adaptive < fixed), (adaptive, fixed)
    assert adaptive.sum() * 5 < fixed.sum()


def _delays(kind: str) -> np.ndarray:
    seeds, n, change = 20, 5200, 5000
    rows = []
    for s in range(seeds):
        rng = np.random.default_rng(100 + s)
        if kind == "mean":
            pw = piecewise(rng, n, [change], [0.0, 1.5], [1.0, 1.0])
        else:
            pw = piecewise(rng, n, [change], [0.0, 0.0], [1.0, np.sqrt(3.0)])
        rows.append(pw.series)
    alarms = np.asarray(_pipeline(jnp.asarray(np.stack(rows)), jnp.asarray(1.0)))
    after = alarms[:, change:]
    return np.array([np.argmax(a) if a.any() else n for a in after])


def test_mean_shift_detected_within_30_steps() -> None:
    delays = _delays("mean")
    assert np.median(delays) <= 30, delays


def test_variance_shift_detected_within_60_steps() -> None:
    delays = _delays("variance")
    assert np.median(delays) <= 60, delays


def test_grace_period_suppresses_alarms_but_statistic_moves() -> None:
    grace = 15
    u = np.r_[np.zeros(5), np.full(60, 3.0)]
    kappa = jnp.full(u.size, 3.0)
    _, out = _cusum_only(
        jnp.asarray(u), kappa, jnp.asarray(5.0), jnp.asarray(0.5), jnp.asarray(grace)
    )
    alarm = np.asarray(out.alarm)
    drift = np.asarray(out.drift)
    in_grace = np.asarray(out.in_grace)
    first = int(np.argmax(alarm))
    # G+ grows by 2.5 per step: 2.5 t > 5 first at the third shifted step.
    assert first == 7
    window = slice(first + 1, first + 1 + grace)
    assert not alarm[window].any()
    assert in_grace[window].all() and not in_grace[first]
    # The statistic restarts from 0 and keeps climbing during grace.
    assert drift[first + 1] == pytest.approx(2.5)
    assert np.all(np.diff(drift[window]) > 0)
    assert drift[first + grace] > 5.0
    # First step after grace: the (large) statistic raises the alarm at once.
    assert alarm[first + grace + 1]


def test_alarm_resets_all_channels() -> None:
    state = CusumState(jnp.asarray(9.0), jnp.asarray(1.0), jnp.asarray(2.0), jnp.asarray(0))
    new, out = cusum_update(state, 1.0, 3.0, 8.0, 0.5, 20)
    assert bool(out.alarm) and float(out.drift) == pytest.approx(9.5)
    assert float(out.distance) == pytest.approx(8.0 - 9.5)
    assert (float(new.g_pos), float(new.g_neg), float(new.g_var)) == (0.0, 0.0, 0.0)
    assert int(new.grace) == 20


def test_sensitivities_are_traced() -> None:
    traces = 0

    def counted(u: jax.Array, h: jax.Array, k: jax.Array, g: jax.Array) -> jax.Array:
        nonlocal traces
        traces += 1
        return cusum_update(cusum_init(), u, 3.0, h, k, g)[1].alarm

    f = jax.jit(counted)
    a = bool(f(jnp.asarray(6.0), jnp.asarray(5.0), jnp.asarray(0.5), jnp.asarray(3)))
    b = bool(f(jnp.asarray(6.0), jnp.asarray(8.0), jnp.asarray(0.5), jnp.asarray(9)))
    assert traces == 1
    assert a and not b


def test_vmap_equals_per_item() -> None:
    u = np.random.default_rng(3).standard_normal((3, 300)) * np.array([[1.0], [2.0], [0.5]])
    kappa = np.full((3, 300), 4.0)
    run = jax.vmap(_cusum_only, in_axes=(0, 0, None, None, None))
    args = (jnp.asarray(4.0), jnp.asarray(0.5), jnp.asarray(10))
    _, batched = run(jnp.asarray(u), jnp.asarray(kappa), *args)
    for i in range(3):
        _, single = _cusum_only(jnp.asarray(u[i]), jnp.asarray(kappa[i]), *args)
        for got, want in zip(batched, single, strict=True):
            np.testing.assert_array_equal(np.asarray(got)[i], np.asarray(want))


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(_finite, st.sampled_from([1e300, -1e300, 0.0])), min_size=50, max_size=50),
    st.floats(0.0, 1e300),
    st.floats(1e-3, 1e4),
)
def test_finite_for_finite_inputs(u: list[float], kappa: float, h: float) -> None:
    _, out = _cusum_only(
        jnp.asarray(u, dtype=F64),
        jnp.full(50, kappa),
        jnp.asarray(h),
        jnp.asarray(0.5),
        jnp.asarray(3),
    )
    for arr in (out.drift, out.threshold, out.distance):
        assert np.all(np.isfinite(np.asarray(arr)))
