"""CUSUM: run lengths, detection of mean and variance changes, re-referencing, robustness."""

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
    SCALE_H_RATIO,
    CusumOut,
    CusumState,
    cusum_init,
    cusum_update,
    siegmund_arl,
)
from predictor.core.sia.residuals import ResidualState, residual_init, residual_update

CFG = PredictorConfig()
F64 = jnp.float64
GRACE = CFG.grace_period_steps


@jax.jit
def _cusum_only(
    u: jax.Array, kappa: jax.Array, h: jax.Array, k: jax.Array, grace: jax.Array
) -> tuple[CusumState, CusumOut]:
    """Scan cusum_update over standardised residuals (no scale observation)."""

    def step(state: CusumState, xs: tuple[jax.Array, jax.Array]) -> tuple[CusumState, CusumOut]:
        return cusum_update(state, xs[0], xs[1], h, k, grace)

    return jax.lax.scan(step, cusum_init(), (u, kappa))


@jax.jit
def _pipeline(e: jax.Array, mean_h_factor: jax.Array, kappa_fixed: jax.Array) -> jax.Array:
    """Residual statistics + CUSUM at the shipped defaults over a batch; returns alarms.

    ``mean_h_factor`` multiplies the kurtosis so that the mean channels'
    threshold rises (1e30: mean channels off, the scale channels alone);
    ``kappa_fixed`` > 0 replaces the kurtosis by 3 (fixed threshold h).
    """

    def one(series: jax.Array) -> jax.Array:
        Carry = tuple[ResidualState, CusumState]

        def step(carry: Carry, x: jax.Array) -> tuple[Carry, jax.Array]:
            rs, cs = carry
            rs, ro = residual_update(rs, x, CFG.volatility_alpha)
            kappa = jnp.where(kappa_fixed > 0, 3.0, ro.kappa) * mean_h_factor
            cs, co = cusum_update(
                cs, ro.u, kappa, CFG.cusum_h, CFG.cusum_k, GRACE, ro.log_sq, ro.log_sq_sd
            )
            return (rs, cs), co.alarm

        return jax.lax.scan(step, (residual_init(CFG), cusum_init()), series)[1]

    return jax.vmap(one)(e)


def _alarms(e: np.ndarray, *, scale_only: bool = False, fixed: bool = False) -> np.ndarray:
    factor = jnp.asarray(1e30 if scale_only else 1.0)
    return np.asarray(_pipeline(jnp.asarray(e), factor, jnp.asarray(1.0 if fixed else 0.0)))


def _t3(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_t(3, shape) / np.sqrt(3.0)


def test_siegmund_formula_value() -> None:
    assert siegmund_arl(5.0, 0.5) == pytest.approx(470.0, rel=0.01)
    assert siegmund_arl(8.0, 0.5) == pytest.approx(9557.0, rel=0.01)


@pytest.mark.parametrize("bias", [0.0, 0.8])
def test_run_length_matches_siegmund_before_and_after_rereferencing(bias: float) -> None:
    """Gaussian u, h = 5, k = 0.5, fixed threshold, no grace: ARL about 470.

    With a bias of 0.8 the first alarm comes within a few steps; the
    self-starting reference then makes the innovations N(0, 1) again, so the
    run length between later alarms is Siegmund's too (without the
    re-reference it would be about 25 steps).
    """
    chains, steps = 32, 8000
    u = bias + np.random.default_rng(0).standard_normal((chains, steps))
    run = jax.vmap(_cusum_only, in_axes=(0, 0, None, None, None))
    kappa = jnp.full((chains, steps), 3.0)
    _, out = run(jnp.asarray(u), kappa, jnp.asarray(5.0), jnp.asarray(0.5), jnp.asarray(0))
    alarm = np.asarray(out.alarm)
    first = np.argmax(alarm, axis=1)
    after = sum(int(a[f + 1 :].sum()) for a, f in zip(alarm, first, strict=True))
    ticks = sum(steps - int(f) - 1 for f in first)
    # About 540 alarms: the relative standard error of the ARL is about 5%.
    arl = ticks / after
    assert abs(arl / siegmund_arl(5.0, 0.5) - 1.0) < 0.3, arl
    if bias:
        assert np.all(first < 30), first


def test_whole_detector_run_length_gaussian_and_t3() -> None:
    """In-control run length at the defaults (residual statistics + all channels).

    Calibration (module docstring): about 1.0e4 (Gaussian) and 4.6e4
    (Student-t(3)) for the whole detector, about 3.4e5 for the scale channels
    alone; here 32 x 25,000 steps per law.
    """
    rng = np.random.default_rng(1)
    chains, steps = 32, 25_000
    for e, lo in (
        (rng.standard_normal((chains, steps)), 7_000),
        (_t3(rng, (chains, steps)), 15_000),
    ):
        ticks = chains * (steps - 128)
        every = _alarms(e)[:, 128:].sum()
        scale = _alarms(e, scale_only=True)[:, 128:].sum()
        assert ticks / max(every, 1) > lo, every
        # >= 10,000 with room: expected about 3 scale alarms in 8e5 steps.
        assert ticks / max(scale, 1) > 40_000, scale


def test_kurtosis_adaptation_reduces_heavy_tail_alarms() -> None:
    e = np.random.default_rng(2).standard_t(3, (4, 20_000))
    adaptive = _alarms(e).sum(axis=1)
    fixed = _alarms(e, fixed=True).sum(axis=1)
    assert np.all(adaptive < fixed), (adaptive, fixed)
    assert adaptive.sum() * 5 < fixed.sum()


def _variance_streams(
    seeds: int, factor: float, noise: str, n: int = 1400, change: int = 700
) -> np.ndarray:
    rng = np.random.default_rng(100)
    e = rng.standard_normal((seeds, n)) if noise == "gaussian" else _t3(rng, (seeds, n))
    e[:, change:] *= np.sqrt(factor)
    return e


def _delays(alarms: np.ndarray, change: int) -> np.ndarray:
    after = alarms[:, change:]
    return np.array([np.argmax(a) if a.any() else after.shape[1] for a in after])


@pytest.mark.parametrize(("factor", "noise"), [(4.0, "t3"), (4.0, "gaussian"), (0.25, "t3")])
def test_variance_change_detected_once(factor: float, noise: str) -> None:
    """Variance x4 (or /4) under Student-t(3) or Gaussian noise.

    Simulated with 400 seeds (module docstring): x4 under t(3) is caught
    within 128 steps in 95% of seeds, its 90th percentile delay is about 110;
    here: within 150 steps in >= 90% of 60 seeds, then no second alarm in the
    next 500 steps in >= 90% of them.
    """
    change = 700
    alarms = _alarms(_variance_streams(60, factor, noise), scale_only=True)
    delays = _delays(alarms, change)
    assert np.mean(delays <= 150) >= 0.9, delays
    assert alarms[:, 128:change].sum() <= 2  # scale channels alone: about 0.1 expected
    post = alarms[:, change:].sum(axis=1)
    assert np.mean(post == 1) >= 0.9, post


def test_mean_shift_detected_within_30_steps() -> None:
    seeds, n, change = 20, 5200, 5000
    rows = [
        piecewise(np.random.default_rng(100 + s), n, [change], [0.0, 1.5], [1.0, 1.0]).series
        for s in range(seeds)
    ]
    delays = _delays(_alarms(np.stack(rows)), change)
    assert np.median(delays) <= 30, delays


def test_isolated_outliers_do_not_trip_the_scale_channels() -> None:
    """A 100-sigma outlier every 50 steps: each moves v by at most its clip, 3.

    (u = 100 stays below the mean channels' threshold raised by kappa x 1e30.)
    """
    e = np.random.default_rng(4).standard_normal((8, 6000))
    e[:, 200::50] = 100.0
    assert _alarms(e, scale_only=True)[:, 128:].sum() == 0


def test_scale_channels_are_scale_free() -> None:
    e = _variance_streams(8, 4.0, "t3")
    base = _alarms(e)
    for c in (1e-150, 1e150):
        np.testing.assert_array_equal(_alarms(e * c), base)


def test_persistent_bias_gives_one_alarm() -> None:
    """u with a bias of 1 (k = 0.5, h = 8, grace 20): one alarm, not one per grace period.

    After the alarm the channels test u against its mean since the grace
    period; Siegmund's ARL 9,557 leaves about 0.2 false alarms per 2,000 steps.
    """
    chains, steps = 32, 2000
    u = 1.0 + np.random.default_rng(5).standard_normal((chains, steps))
    run = jax.vmap(_cusum_only, in_axes=(0, 0, None, None, None))
    args = (jnp.asarray(8.0), jnp.asarray(0.5), jnp.asarray(GRACE))
    _, out = run(jnp.asarray(u), jnp.full((chains, steps), 3.0), *args)
    alarm = np.asarray(out.alarm)
    assert np.all(alarm.any(axis=1))
    assert np.all(np.argmax(alarm, axis=1) < 60)
    assert alarm.sum() - chains <= 12, alarm.sum(axis=1)


def test_second_shift_after_rereferencing_alarms() -> None:
    """Bias 1 then, 1,000 steps later, 2.5 (or -0.5): a second alarm within 20 steps."""
    chains, steps, change = 32, 1400, 1000
    run = jax.vmap(_cusum_only, in_axes=(0, 0, None, None, None))
    args = (jnp.asarray(8.0), jnp.asarray(0.5), jnp.asarray(GRACE))
    for after in (2.5, -0.5):
        u = np.random.default_rng(6).standard_normal((chains, steps))
        u += np.where(np.arange(steps) < change, 1.0, after)
        _, out = run(jnp.asarray(u), jnp.full((chains, steps), 3.0), *args)
        delays = _delays(np.asarray(out.alarm), change)
        assert np.mean(delays <= 20) >= 0.9, delays


def test_grace_holds_channels_then_rereferences() -> None:
    grace = 15
    u = np.r_[np.zeros(5), np.full(100, 3.0), np.full(20, 6.0)]
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
    # Held at 0 through the grace period; then u = 3 is the new reference.
    assert np.all(drift[window] == 0.0)
    assert not alarm[first + 1 : 105].any()
    assert np.all(drift[first + 1 : 105] < 1e-12)
    # A further shift relative to it (3 -> 6): G+ grows by about 2.5 per step.
    assert np.flatnonzero(alarm).tolist() == [first, 107]


def test_alarm_resets_all_channels_and_references() -> None:
    state = cusum_init()._replace(
        g_pos=jnp.asarray(9.0), g_neg=jnp.asarray(1.0), g_up=jnp.asarray(2.0)
    )
    state = state._replace(
        ref_mean=jnp.asarray(0.3), ref_count=jnp.asarray(40.0), rereferenced=jnp.asarray(True)
    )
    new, out = cusum_update(state, 1.0, 3.0, 8.0, 0.5, 20)
    assert bool(out.alarm)
    # Re-referenced innovation: (1 - 0.3) sqrt(40 / 41), plus G+ = 9, minus k.
    assert float(out.drift) == pytest.approx(9.0 + 0.7 * np.sqrt(40 / 41) - 0.5)
    assert float(out.distance) == pytest.approx(8.0 - float(out.drift))
    channels = (new.g_pos, new.g_neg, new.g_up, new.g_down, new.ref_count, new.scale_count)
    assert all(float(c) == 0.0 for c in channels)
    assert int(new.grace) == 20 and bool(new.rereferenced)


def test_drift_reports_scale_channels_on_the_threshold_scale() -> None:
    """A scale channel at fraction f of h_v shows as f h_t; above h_v it alarms."""
    for g_up, alarm in ((0.5 * SCALE_H_RATIO * 8.0, False), (1.01 * SCALE_H_RATIO * 8.0, True)):
        state = cusum_init()._replace(
            g_up=jnp.asarray(g_up + 0.2), scale_mean=jnp.asarray(1.0), scale_count=jnp.asarray(1e9)
        )
        # w equal to the reference: v = 0, V+ loses its slack 0.2; kappa raises h_t.
        _, out = cusum_update(state, 0.0, 6.0, 8.0, 0.5, 20, 1.0, 2.0)
        h_t = 8.0 * (1.0 + np.log(2.0))
        assert float(out.threshold) == pytest.approx(h_t)
        assert float(out.drift) == pytest.approx(g_up / (SCALE_H_RATIO * 8.0) * h_t)
        assert bool(out.alarm) is alarm


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


@jax.jit
def _full(
    u: jax.Array, w: jax.Array, kappa: jax.Array, h: jax.Array, sd: jax.Array
) -> tuple[CusumState, CusumOut]:
    """Scan cusum_update with scale observations ``w`` of spread ``sd``."""

    def step(state: CusumState, xs: tuple[jax.Array, jax.Array]) -> tuple[CusumState, CusumOut]:
        return cusum_update(state, xs[0], kappa, h, 0.5, 3, xs[1], sd)

    return jax.lax.scan(step, cusum_init(), (u, w))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(_finite, st.sampled_from([1e300, -1e300, 0.0])), min_size=50, max_size=50),
    st.lists(st.floats(-1500.0, 1500.0), min_size=50, max_size=50),
    st.floats(0.0, 1e300),
    st.floats(1e-3, 1e4),
    st.floats(0.0, 1e3),
)
def test_finite_for_finite_inputs(
    u: list[float], w: list[float], kappa: float, h: float, sd: float
) -> None:
    """``w`` spans every finite log e^2 (|ln 1e-300^2| < 1500)."""
    state, out = _full(
        jnp.asarray(u, dtype=F64),
        jnp.asarray(w, dtype=F64),
        jnp.asarray(kappa, dtype=F64),
        jnp.asarray(h, dtype=F64),
        jnp.asarray(sd, dtype=F64),
    )
    for arr in (*out[:3], *state):
        assert np.all(np.isfinite(np.asarray(arr)))
