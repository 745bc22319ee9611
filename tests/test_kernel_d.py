"""Kernel D (log-signature + ridge RLS): features, learning, robustness, vmap."""

from __future__ import annotations

import functools
from typing import Any

import iisignature
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bench.processes import ar1
from predictor.config import PredictorConfig
from predictor.core.kernels import d_signature as kd
from predictor.core.kernels import signature as sg

CFG = PredictorConfig()
N = CFG.wtmm_buffer_size
#: Every scan over the default config uses this series length, so that the
#: scans of all tests share one compiled program per depth.
STEPS = 5000
update = jax.jit(kd.update, static_argnames=("cfg", "depth"))


@functools.partial(jax.jit, static_argnames=("cfg", "depth", "standardise"))
def _scan(
    state: kd.DState, y: jax.Array, cfg: PredictorConfig, depth: int, standardise: bool = True
) -> tuple[kd.DState, jax.Array, kd.DAux]:
    """Slide a window of ``N`` over ``y``, standardised as the caller would.

    Returns the forecasts of ``y[N:]`` in the units of ``y``.
    """
    n = cfg.wtmm_buffer_size

    def step(s: kd.DState, t: jax.Array) -> tuple[kd.DState, tuple[jax.Array, kd.DAux]]:
        w = jax.lax.dynamic_slice(y, (t,), (n,))
        if standardise:
            mean, std = jnp.mean(w), jnp.std(w)
            std = jnp.where(std > 0.0, std, 1.0)
        else:
            mean, std = jnp.zeros(()), jnp.ones(())
        s, pred, aux = kd.update(s, (w - mean) / std, cfg, depth)
        return s, (mean + std * pred, aux)

    state, (preds, aux) = jax.lax.scan(step, state, jnp.arange(y.shape[0] - n + 1))
    return state, preds[:-1], aux


def _rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(e))))


def _basepoint_path(levels: np.ndarray) -> np.ndarray:
    length = levels.shape[-1]
    times = np.arange(1, length + 1) / length
    return np.concatenate([np.zeros((1, 2)), np.stack([times, levels], axis=1)])


# --------------------------------------------------------------------------- features


def test_init_layout() -> None:
    s = kd.init(CFG)
    assert s.weights.shape == (15,) and s.rhs.shape == (15,) and s.info.shape == (15, 15)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(s))
    np.testing.assert_array_equal(np.asarray(s.info), kd.RIDGE * np.eye(15))


@pytest.mark.parametrize("depth", (1, 2, 3, 4, 5))
def test_features_are_iisignature_logsig_of_the_basepointed_path(depth: int) -> None:
    rng = np.random.default_rng(depth)
    levels = rng.standard_normal((3, 16))
    phi = np.asarray(kd.features(jnp.asarray(levels), depth))
    s = iisignature.prepare(2, depth)
    dim = sg.logsig_dim(depth)
    for row, lv in zip(phi, levels, strict=True):
        assert row[0] == 1.0
        np.testing.assert_allclose(
            row[1 : 1 + dim], iisignature.logsig(_basepoint_path(lv), s), rtol=0, atol=1e-10
        )
        assert np.all(row[1 + dim :] == 0.0)
        assert row[1] == pytest.approx(1.0, abs=1e-14)  # total time increment
        assert row[2] == pytest.approx(lv[-1], abs=1e-14)  # level: basepoint at the origin


def test_lower_depth_features_are_a_prefix_of_depth_five() -> None:
    levels = jnp.asarray(np.random.default_rng(7).standard_normal((3, 16)))
    full = np.asarray(kd.features(levels, 5))
    for depth in (1, 2, 3, 4):
        k = 1 + sg.logsig_dim(depth)
        part = np.asarray(kd.features(levels, depth))
        np.testing.assert_allclose(part[:, :k], full[:, :k], rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- RLS algebra


def test_rls_is_the_ridge_exponentially_weighted_least_squares_solution() -> None:
    cfg = CFG
    rng = np.random.default_rng(3)
    y = np.cumsum(rng.standard_normal(N + STEPS))
    state, _, aux = _scan(kd.init(cfg), jnp.asarray(y), cfg, 3)
    # Closed form from the documented regression pairs: in each window's own
    # standardisation, phi(path ending at t-1) against z_t - z_{t-1}.
    lam, length = cfg.signature_forgetting, kd.path_length(cfg)
    windows = np.lib.stride_tricks.sliding_window_view(y, N)
    z = (windows - windows.mean(axis=1, keepdims=True)) / windows.std(axis=1, keepdims=True)
    phi = np.asarray(kd.features(jnp.asarray(z[:, N - 1 - length : N - 1]), 3))
    target = z[:, -1] - z[:, -2]
    decay = lam ** np.arange(len(target) - 1, -1, -1)
    info = kd.RIDGE * np.eye(15) + (phi * decay[:, None]).T @ phi
    rhs = (phi * decay[:, None]).T @ target
    np.testing.assert_allclose(np.asarray(state.info), info, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(state.weights), np.linalg.solve(info, rhs), atol=1e-9)
    trace_p = float(np.trace(np.linalg.inv(info)))
    assert float(aux.trace_p[-1]) == pytest.approx(trace_p, rel=1e-9)
    assert trace_p <= 15.0 / kd.RIDGE


def test_rls_learns_a_linear_function_of_the_level_two_term() -> None:
    # x_{t+1} - x_t = c * A_t + sigma eps, A_t the [1,2] (Levy-area) Lyndon coordinate
    # of the basepointed, time-augmented path of the last L points (iisignature).
    c, sigma, steps, length = 0.15, 0.1, 2000, kd.path_length(CFG)
    rng = np.random.default_rng(11)
    s2 = iisignature.prepare(2, 2)
    x = list(0.1 * rng.standard_normal(N))
    true_fn = []
    for _ in range(steps):
        area = iisignature.logsig(_basepoint_path(np.asarray(x[-length:])), s2)[2]
        true_fn.append(c * area)
        x.append(x[-1] + true_fn[-1] + sigma * rng.standard_normal())
    xs = np.asarray(x)
    assert np.max(np.abs(xs)) < np.sqrt(N)  # inside the kernel's clip, no clipping bias
    state, preds, _ = _scan(kd.init(CFG), jnp.asarray(xs), CFG, 2, standardise=False)
    # preds[k] forecasts xs[N + k] from the window ending at xs[N - 1 + k].
    realised = xs[N:] - xs[N - 1 : -1]
    dhat = np.asarray(preds) - xs[N - 1 : -1]
    fn = np.asarray(true_fn)
    after = slice(1000, None)
    rmse_kernel = _rmse((realised - dhat)[after])
    rmse_true = _rmse((realised - fn)[after])
    rmse_naive = _rmse(realised[after])
    assert rmse_naive > 1.1 * rmse_true  # the signal is there to be learned
    assert rmse_kernel <= 1.05 * rmse_true
    assert float(state.weights[3]) == pytest.approx(c, rel=0.1)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("depth", (3, 5))
def test_within_two_percent_of_oracle_on_ar1_and_of_naive_on_random_walk(depth: int) -> None:
    rng = np.random.default_rng(100 + depth)
    for phi, y in (
        (0.7, ar1(rng, N + STEPS, 0.7)),
        (1.0, np.cumsum(rng.standard_normal(N + STEPS))),
    ):
        _, preds, aux = _scan(kd.init(CFG), jnp.asarray(y), CFG, depth)
        realised, last = y[N:], y[N - 1 : -1]
        ratio = _rmse(realised - np.asarray(preds)) / _rmse(realised - phi * last)
        assert ratio <= 1.02, (phi, depth, ratio)
        assert np.all(np.asarray(aux.solve_ok) == 1.0)


def test_no_wind_up_over_100k_steps_with_a_dead_stretch() -> None:
    # Forgetting 0.99 (an unguarded RLS winds up within a few thousand steps) and
    # 3,000 constant ticks in the middle: no excitation at all, the classic trigger.
    cfg = CFG.replace(signature_forgetting=0.99)
    rng = np.random.default_rng(5)
    y = np.cumsum(rng.standard_normal(N + 100_000))
    y[50_000:53_000] = y[50_000]
    state, preds, aux = _scan(kd.init(cfg), jnp.asarray(y), cfg, 3)
    preds = np.asarray(preds)
    assert np.all(np.isfinite(preds))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))
    trace_p = np.asarray(aux.trace_p)
    assert np.all(trace_p <= 15.0 / kd.RIDGE * (1 + 1e-12))
    assert np.all(np.asarray(aux.solve_ok) == 1.0)
    realised, last = y[N:], y[N - 1 : -1]
    resumed = 53_000 - N  # first forecast of a moving value after the dead stretch

    def ratio(part: slice) -> float:
        return _rmse((realised - preds)[part]) / _rmse((realised - last)[part])

    assert ratio(slice(resumed + 100, resumed + 500)) <= 1.10  # re-learnt quickly
    assert ratio(slice(-10_000, None)) <= 1.03
    assert ratio(slice(None)) <= 1.05


# --------------------------------------------------------------------------- robustness


def _trained_state(depth: int) -> kd.DState:
    y = np.cumsum(np.random.default_rng(9).standard_normal(N + STEPS))
    state, _, _ = _scan(kd.init(CFG), jnp.asarray(y), CFG, depth)
    return state


def _assert_finite(out: Any) -> None:
    for leaf in jax.tree.leaves(out):
        assert np.all(np.isfinite(np.asarray(leaf)))


@pytest.mark.parametrize("depth", (2, 3, 5))
def test_finite_on_degenerate_windows(depth: int) -> None:
    spike = np.zeros(N)
    spike[-1] = 1e6
    mid_spike = np.zeros(N)
    mid_spike[N - 5] = 1e300
    standardised_spike = (spike - spike.mean()) / spike.std()
    windows = [np.zeros(N), np.full(N, 3.0), spike, mid_spike, standardised_spike, -spike]
    for state in (kd.init(CFG), _trained_state(depth)):
        for w in windows:
            out = update(state, jnp.asarray(w), CFG, depth)
            _assert_finite(out)
            assert float(out[2].trace_p) <= 15.0 / kd.RIDGE * (1 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float64,
        N,
        elements=st.floats(-1e300, 1e300, allow_nan=False, allow_infinity=False),
    ),
    st.sampled_from((2, 3, 5)),
)
def test_finite_under_hypothesis_windows(window: np.ndarray, depth: int) -> None:
    state = kd.init(CFG)
    for _ in range(2):
        state, pred, aux = update(state, jnp.asarray(window), CFG, depth)
        _assert_finite((state, pred, aux))


@pytest.mark.parametrize("depth", (3, 5))
def test_vmap_equals_per_item_bit_for_bit(depth: int) -> None:
    rng = np.random.default_rng(20 + depth)
    batch = 4
    y = np.cumsum(rng.standard_normal((batch, N + STEPS + 1)), axis=1)
    y *= rng.uniform(0.5, 3.0, (batch, 1))
    states = []
    for b in range(batch):
        s, _, _ = _scan(kd.init(CFG), jnp.asarray(y[b, :-1]), CFG, depth)
        states.append(s)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *states)
    w = y[:, -N:]
    z = jnp.asarray((w - w.mean(axis=1, keepdims=True)) / w.std(axis=1, keepdims=True))
    batched = jax.vmap(update, in_axes=(0, 0, None, None))(stacked, z, CFG, depth)
    for b in range(batch):
        single = update(states[b], z[b], CFG, depth)
        picked = jax.tree.map(lambda v, i=b: v[i], batched)
        for x1, x2 in zip(jax.tree.leaves(single), jax.tree.leaves(picked), strict=True):
            assert np.array_equal(np.asarray(x1), np.asarray(x2))


def test_depth_switching_keeps_the_state_usable() -> None:
    rng = np.random.default_rng(13)
    y = np.cumsum(rng.standard_normal(N + 3 * STEPS))
    # From a fresh state, a lower depth never touches the unused coordinates.
    s2, _, _ = _scan(kd.init(CFG), jnp.asarray(y[: N + STEPS]), CFG, 2)
    assert np.all(np.asarray(s2.weights)[4:] == 0.0)
    state = kd.init(CFG)
    for k, depth in enumerate((5, 2, 3)):
        seg = y[k * STEPS : N + (k + 1) * STEPS]
        state, preds, _ = _scan(state, jnp.asarray(seg), CFG, depth)
        _assert_finite((state, preds))
        realised, last = seg[N:], seg[N - 1 : -1]
        # Right after the switch, and once the state has re-adapted.
        for part in (slice(0, 1000), slice(-2000, None)):
            err = realised[part] - np.asarray(preds)[part]
            assert _rmse(err) <= 1.03 * _rmse((realised - last)[part]), (depth, part)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        update(kd.init(CFG), jnp.zeros(N), CFG, 6)
    with pytest.raises(ValueError):
        update(kd.init(CFG), jnp.zeros(N - 1), CFG, 3)
