"""The two-rate step: full recomputation at K = 1, staggered refits, batch = single.

A small layout keeps compilation short (window 64, an 8-unit DGM); the
properties do not depend on the sizes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor, make_obs
from predictor.core.params import params_from_config
from predictor.core.rates import full_step
from predictor.core.state import Obs, StepOutput

SMALL = PredictorConfig(
    clock="event",
    wtmm_buffer_size=64,
    wtmm_num_scales=8,
    dgm_width_size=8,
    dgm_collocation_points=16,
    fd_grid_size=33,
    shed_ladder=(3, 2),
)
#: Compared outputs (floats), and the flags that must agree exactly.
FIELDS = (
    "predicted_value",
    "predicted_next",
    "interval_lower",
    "interval_upper",
    "holder_exponent",
    "cusum_drift",
    "kurtosis",
    "free_energy",
    "dgm_entropy",
    "weights",
)
FLAGS = ("regime_change_detected", "emergency_mode", "warming_up", "mode", "rejected")


def series(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n)
    if kind == "random_walk":
        return 100.0 + np.cumsum(e)
    x = np.zeros(n)
    for t in range(1, n):
        x[t] = 0.7 * x[t - 1] + e[t]
    if kind == "shift":  # a level shift and a variance change: alarms and re-fits
        x[n // 2 :] += 6.0
        x[3 * n // 4 :] *= 3.0
    return x


@functools.cache
def reference(cfg: PredictorConfig, depth: int) -> object:
    """``full_step`` scanned over a series: every kernel recomputed on every tick."""
    fp = FunctionalPredictor(cfg, warmup=False)
    params = params_from_config(cfg)

    @jax.jit
    def run(ys: jax.Array) -> StepOutput:
        def body(s: object, x: tuple[jax.Array, jax.Array]) -> tuple[object, StepOutput]:
            y, t = x
            return full_step(s, Obs(y, y, t), t, params, cfg, depth)  # type: ignore[arg-type]

        ts = jnp.arange(1, ys.shape[0] + 1, dtype=jnp.int64)
        state = fp.view(fp.init_state())
        return jax.lax.scan(body, state, (ys, ts))[1]

    return run


def assert_outputs_close(a: StepOutput, b: StepOutput, rtol: float) -> None:
    for name in FIELDS:
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.max(np.abs(y)), err_msg=name)
    for name in FLAGS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("kind", ["ar1", "random_walk", "shift"])
def test_refit_before_forecast_at_k1_is_the_full_recomputation(kind: str) -> None:
    cfg = SMALL.replace(refit_timing="before", refit_interval=1)
    ys = series(kind, 400, seed=1)
    fp = FunctionalPredictor(cfg, warmup=False)
    _, outs = fp.scan(fp.init_state(), ys)
    expected = reference(cfg, cfg.log_sig_depth)(jnp.asarray(ys))
    assert np.asarray(outs.regime_change_detected).any() == (kind == "shift")
    assert_outputs_close(outs, jax.device_get(expected), rtol=1e-12)


def test_refits_are_staggered_once_per_interval() -> None:
    k, n_assets = 8, 24
    full = SMALL.wtmm_buffer_size  # past the warm-up's own refits
    n_ticks = full + 64
    # No alarm and no breaker: after warm-up only the schedule triggers refits.
    cfg = SMALL.replace(refit_interval=k, cusum_h=1e4, holder_threshold=0.0)
    fp = FunctionalPredictor(cfg, warmup=False)
    ys = np.stack([series("ar1", n_ticks, seed=s) for s in range(n_assets)])
    states = fp.init_batch(n_assets)
    due = []
    for t in range(n_ticks):
        obs = make_obs(ys[:, t], ys[:, t], np.full(n_assets, t + 1))
        states, out = fp.step_batch(states, obs)
        due.append(np.asarray(out.refit_due))
    due_arr = np.stack(due, axis=1)[:, full:]  # (asset, tick) once the window is full
    # Every window of K consecutive ticks holds exactly one refit of each asset ...
    for start in range(due_arr.shape[1] - k + 1):
        np.testing.assert_array_equal(due_arr[:, start : start + k].sum(axis=1), 1)
    # ... and each tick carries the refits of about 1/K of the assets.
    per_tick = due_arr.sum(axis=0)
    assert per_tick.min() == n_assets // k == per_tick.max()


def test_warm_up_refits_when_the_history_doubles() -> None:
    cfg = SMALL.replace(refit_interval=64, cusum_h=1e4, holder_threshold=0.0, min_history=4)
    fp = FunctionalPredictor(cfg, warmup=False)
    _, outs = fp.scan(fp.init_state(), series("ar1", 63, seed=1))
    due = np.flatnonzero(np.asarray(outs.refit_due)) + 1  # tick counts
    # count + 1 = 4, 8, 16, 32, 64 while the 64-tick window fills; K = 64 is not reached.
    np.testing.assert_array_equal(due, [3, 7, 15, 31, 63])


@pytest.mark.parametrize("timing", ["after", "before"])
def test_batch_equals_single_steps_at_every_size(timing: str) -> None:
    cfg = SMALL.replace(refit_timing=timing, refit_interval=4)
    fp = FunctionalPredictor(cfg, warmup=False)
    n_ticks = 120
    sizes = (1, 7, 64)
    widest = max(sizes)
    rng = np.random.default_rng(3)
    ys = np.cumsum(rng.standard_normal((widest, n_ticks)), axis=1) * rng.uniform(
        0.01, 100.0, (widest, 1)
    )
    ys[:, n_ticks // 2 :] += 8.0 * np.std(ys, axis=1, keepdims=True)  # alarms mid-way
    batches = {}
    for n in sizes:
        states = fp.init_batch(n)
        outs = []
        for t in range(n_ticks):
            obs = make_obs(ys[:n, t], ys[:n, t], np.full(n, t + 1))
            states, out = fp.step_batch(states, obs)
            outs.append(out)
        batches[n] = jax.tree.map(lambda *xs: np.stack(xs, axis=1), *outs)
    for lane in (0, 5, 63):
        state = fp.init_state(phase=lane)
        singles = []
        for t in range(n_ticks):
            state, out = fp.step(state, make_obs(ys[lane, t], ys[lane, t], t + 1))
            singles.append(out)
        single = jax.tree.map(lambda *xs: np.stack(xs), *singles)
        for n in sizes:
            if lane < n:
                got = jax.tree.map(lambda x, i=lane: x[i], batches[n])
                jax.tree.map(np.testing.assert_array_equal, got, single)


def test_rejected_tick_leaves_fits_and_schedule_alone() -> None:
    cfg = SMALL.replace(refit_interval=3)
    fp = FunctionalPredictor(cfg, warmup=False)
    state, _ = fp.scan(fp.init_state(), series("ar1", 100, seed=4))
    before = fp.view(jax.device_get(state))
    state, out = fp.step(state, make_obs(np.nan, np.nan, 10_000))
    after = fp.view(jax.device_get(state))
    assert bool(out.rejected) and not bool(out.refit_due)
    jax.tree.map(np.testing.assert_array_equal, after.fit, before.fit)
    assert int(after.fast.count) == int(before.fast.count)
