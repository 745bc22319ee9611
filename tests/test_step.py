"""core_step through FunctionalPredictor / UniversalPredictor: gate, flags,
determinism, batching, depth switching, fit_history and the quality floor."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import pytest
import structlog

from predictor.api import ConfigReloadablePredictor, UniversalPredictor
from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor, make_obs, output_to_result
from predictor.core.gate import (
    MAX_CONSECUTIVE_REJECTS,
    REJECT_NON_FINITE,
    REJECT_OUT_OF_ORDER,
    REJECT_OUTLIER,
)
from predictor.core.step import dgm_steps_for_depth
from predictor.core.types import ProcessState
from predictor.errors import DomainError

CFG = PredictorConfig(clock="event")
SECOND = 1_000_000_000
TICK = 10_000_000  # 10 ms between ticks: well inside the Nyquist interval


@functools.cache
def fp() -> FunctionalPredictor:
    return FunctionalPredictor(CFG, warmup=False)


@functools.cache
def fp_no_breaker() -> FunctionalPredictor:
    return FunctionalPredictor(CFG.replace(holder_threshold=0.0), warmup=False)


def ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    eps = rng.normal(size=n)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + eps[t]
    return x


def run_series(pred: FunctionalPredictor, ys: np.ndarray, phase: int = 0) -> tuple[object, object]:
    return pred.scan(pred.init_state(phase=phase), ys)


@pytest.fixture
def compile_counter() -> Iterator[list[str]]:
    events: list[str] = []

    def listener(event: str, duration: float, **_: object) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


# --- gate -------------------------------------------------------------------


def warmed_predictor(n: int = 200, seed: int = 0) -> UniversalPredictor:
    up = UniversalPredictor(CFG, warmup=False)
    up.fit_history(ar1(n, 0.5, seed))
    return up


def test_outlier_leaves_state_unchanged_and_returns_previous_result() -> None:
    up = warmed_predictor()
    last = up.step(ProcessState.of(0.3, 300))
    state_after_good = up.view
    again = up.step(ProcessState.of(1e6, 301))
    assert again == dataclasses.replace(last, rejected=True, reject_reason="outlier")
    after = up.view
    # Only the gate's bookkeeping and the stored output's reject flag may change.
    for part, name in (
        ("fast", "buffer"),
        ("fast", "count"),
        ("fast", "residual"),
        ("fast", "cusum"),
        ("fast", "orch"),
        ("fast", "kernel_d"),
        ("fit", "kernel_a"),
        ("fit", "kernel_b"),
        ("fit", "kernel_c"),
    ):
        jax.tree.map(
            np.testing.assert_array_equal,
            getattr(getattr(after, part), name),
            getattr(getattr(state_after_good, part), name),
        )
    assert int(after.fast.gate.reject_run) == 1
    assert float(after.fast.gate.pending) == 1e6 and int(after.fast.gate.last_ts) == 301


def test_non_finite_tick_is_rejected_with_its_reason() -> None:
    pred = fp()
    state, _ = pred.scan(pred.init_state(), ar1(150, 0.5, 1))
    for bad, reason in (
        (np.nan, REJECT_NON_FINITE),
        (np.inf, REJECT_NON_FINITE),
        (1e9, REJECT_OUTLIER),
    ):
        new, out = pred.step(state, make_obs(bad, bad, 10**6))
        assert bool(out.rejected) and int(out.reject_reason) == reason
        np.testing.assert_array_equal(pred.view(new).buffer, pred.view(state).buffer)


def test_first_tick_rejected_raises_domain_error() -> None:
    up = UniversalPredictor(CFG, warmup=False)
    with pytest.raises(DomainError):
        up.step(ProcessState.of(float("nan"), 1))


def test_level_shift_is_accepted_on_its_second_tick_with_an_alarm() -> None:
    pred = fp()
    state, _ = pred.scan(pred.init_state(), ar1(150, 0.5, 2))
    before = pred.view(state).buffer
    outs = []
    for i in range(3):
        state, out = pred.step(state, make_obs(1e4 + i, 1e4 + i, 10**6 + i))
        outs.append(out)
    assert [bool(o.rejected) for o in outs] == [True, False, False]
    assert bool(outs[1].regime_change_detected) and not bool(outs[2].regime_change_detected)
    np.testing.assert_array_equal(np.asarray(outs[1].weights), 0.25)
    window = pred.view(state).buffer
    # The history is moved by the jump and keeps its shape: increments unchanged.
    jump = 1e4 - before[-1]
    np.testing.assert_allclose(window[:-3], before[3:] + jump, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(window[-3:], [1e4, 1e4 + 1, 1e4 + 2])


def test_far_values_that_disagree_are_rejected_for_a_bounded_run() -> None:
    pred = fp()
    state, _ = pred.scan(pred.init_state(), ar1(150, 0.5, 2))
    rejected = 0
    for i in range(40):
        y = 1e4 * (-1.0) ** i
        state, out = pred.step(state, make_obs(y, y, 10**6 + i))
        rejected += int(bool(out.rejected))
    assert rejected == MAX_CONSECUTIVE_REJECTS


def test_out_of_order_and_non_positive_timestamps_are_rejected_without_a_trace() -> None:
    pred = fp()
    state, _ = pred.scan(pred.init_state(), ar1(150, 0.5, 4))
    last_ts = int(pred.view(state).fast.gate.last_ts)
    for ts in (last_ts, last_ts - 5, 0, -1):
        new, out = pred.step(state, make_obs(0.1, 0.1, ts))
        assert bool(out.rejected) and int(out.reject_reason) == REJECT_OUT_OF_ORDER
        old_v, new_v = pred.view(state), pred.view(new)
        jax.tree.map(np.testing.assert_array_equal, new_v.fast.gate, old_v.fast.gate)
        jax.tree.map(np.testing.assert_array_equal, new_v.fit, old_v.fit)
        np.testing.assert_array_equal(new_v.buffer, old_v.buffer)
    _, out = pred.step(state, make_obs(0.1, 0.1, last_ts + 1))
    assert not bool(out.rejected)


def test_stale_tick_freezes_weights_and_recovers_after_two_fresh_ticks() -> None:
    cfg = PredictorConfig(clock="wall", holder_threshold=0.0)
    pred = FunctionalPredictor(cfg, warmup=False)
    ys = ar1(300, 0.5, 3)
    state = pred.init_state()
    ts = 0
    for y in ys:
        ts += TICK
        state, out = pred.step(state, make_obs(y, y, ts), now_ns=ts)
    w_before = np.asarray(out.weights)
    ts += TICK
    state, out = pred.step(state, make_obs(0.1, 0.1, ts), now_ns=ts + 2 * SECOND)
    assert bool(out.stale) and bool(out.degraded_inference_mode)
    np.testing.assert_array_equal(out.weights, w_before)
    degraded = []
    for _ in range(3):
        ts += TICK
        state, out = pred.step(state, make_obs(0.2, 0.2, ts), now_ns=ts)
        degraded.append(bool(out.degraded_inference_mode))
    assert degraded == [True, False, False]


def test_sparse_tick_logs_frequency_warning() -> None:
    up = UniversalPredictor(CFG, warmup=False)
    for i in range(5):
        up.step(ProcessState.of(float(i % 3), (i + 1) * TICK))
    with structlog.testing.capture_logs() as logs:
        up.step(ProcessState.of(1.0, 5 * TICK + 5 * SECOND))
    assert any(e.get("warning") == "FrequencyWarning" for e in logs)


def test_frozen_feed_sets_degraded_mode() -> None:
    pred = fp()
    state, _ = pred.scan(pred.init_state(), ar1(150, 0.5, 4))
    flags = []
    for i in range(6):
        state, out = pred.step(state, make_obs(1.5, 1.5, 10**6 + i))
        flags.append(bool(out.degraded_inference_mode))
    assert flags == [False, False, False, False, True, True]
    state, out = pred.step(state, make_obs(0.2, 0.2, 10**6 + 10))
    assert not bool(out.degraded_inference_mode)


def test_cold_start_predicts_last_value_with_uniform_weights_for_min_history_ticks() -> None:
    pred = fp()
    ys = ar1(CFG.wtmm_buffer_size + 5, 0.5, 5)
    _, outs = run_series(pred, ys)
    n = CFG.wtmm_buffer_size
    m = CFG.min_history
    warming = np.asarray(outs.warming_up)
    assert warming[: n - 1].all() and not warming[n - 1 :].any()
    np.testing.assert_array_equal(np.asarray(outs.predicted_value)[: m - 1], ys[: m - 1])
    np.testing.assert_array_equal(np.asarray(outs.weights)[: m - 1], 0.25)


# --- regime change and circuit breaker --------------------------------------


def test_mean_shift_raises_regime_change_resets_weights_then_grace() -> None:
    pred = fp_no_breaker()
    rng = np.random.default_rng(6)
    ys = np.concatenate([rng.normal(size=1500), 6.0 + rng.normal(size=300)])
    _, outs = run_series(pred, ys)
    alarms = np.flatnonzero(np.asarray(outs.regime_change_detected))
    after = alarms[alarms >= 1500]
    assert after.size and after[0] < 1530
    # Uniform weights, except that a mode-collapsed kernel B keeps its published weight at 0.
    expected = [1 / 3, 0.0, 1 / 3, 1 / 3] if bool(outs.mode_collapse_warning[after[0]]) else 0.25
    np.testing.assert_allclose(np.asarray(outs.weights)[after[0]], expected, rtol=1e-12)
    gaps = np.diff(alarms)
    assert np.all(gaps > CFG.grace_period_steps)


def test_rough_segment_sets_emergency_mode_and_leaves_with_hysteresis() -> None:
    pred = fp()
    rng = np.random.default_rng(7)
    smooth = np.sin(np.linspace(0, 12 * np.pi, 600)) * 5 + np.cumsum(rng.normal(size=600)) * 0.01
    rough = rng.normal(size=600)  # white noise levels: H near 0
    ys = np.concatenate([smooth, rough, smooth + smooth[-1] - smooth[0]])
    _, outs = run_series(pred, ys)
    mode = np.asarray(outs.mode)
    emergency = np.asarray(outs.emergency_mode)
    w = np.asarray(outs.weights)
    assert not emergency[:600].any()
    # It opens as soon as the rough values fill the fine-scale median ...
    idx = 600 + int(np.argmax(emergency[600:]))
    assert emergency[600:].any() and idx < 620
    np.testing.assert_array_equal(w[idx], [0.0, 0.0, 0.0, 1.0])
    assert mode[idx] == 2
    # ... and closes once the smooth path is back.
    assert not emergency[-50:].any()


# --- determinism, batching, depth -------------------------------------------


def test_two_runs_are_bit_identical() -> None:
    pred = fp()
    ys = np.cumsum(np.random.default_rng(8).normal(size=5000))
    s1, o1 = run_series(pred, ys)
    s2, o2 = run_series(pred, ys)
    jax.tree.map(np.testing.assert_array_equal, (s1, o1), (s2, o2))


def test_fit_history_equals_stepping_one_by_one() -> None:
    pred = fp()
    ys = np.cumsum(np.random.default_rng(9).normal(size=400))
    final, outs = run_series(pred, ys)
    state = pred.init_state()
    for i, y in enumerate(ys):
        state, out = pred.step(state, make_obs(y, y, i + 1))
    jax.tree.map(np.testing.assert_array_equal, final, state)
    np.testing.assert_array_equal(np.asarray(outs.predicted_value)[-1], out.predicted_value)


def test_fit_history_contract() -> None:
    up = UniversalPredictor(CFG, warmup=False)
    with pytest.raises(ValueError, match="Insufficient history"):
        up.fit_history(np.zeros(CFG.min_history - 1))
    ok = up.fit_history(ar1(10_000, 0.7, 10))
    assert isinstance(ok, bool)
    last = output_to_result(up.view.last_output)
    assert ok == (last.sinkhorn_converged and last.cusum_drift < CFG.cusum_h)


def test_step_batch_equals_single_runs_bit_for_bit() -> None:
    pred = fp()
    n_assets, n_steps = 64, 160
    rng = np.random.default_rng(11)
    series = np.cumsum(rng.normal(size=(n_assets, n_steps)), axis=1) * rng.uniform(
        0.1, 10, (n_assets, 1)
    )
    states = pred.init_batch(n_assets)  # phases 0 .. n - 1: refits staggered
    batch_out = []
    for t in range(n_steps):
        obs = make_obs(series[:, t], series[:, t], np.full(n_assets, t + 1))
        states, out = pred.step_batch(states, obs, now_ns=t + 1)
        batch_out.append(np.asarray(out.predicted_value))
    batch_pred = np.stack(batch_out, axis=1)
    for i in range(0, n_assets, 9):
        _, outs = run_series(pred, series[i], phase=i)
        np.testing.assert_array_equal(np.asarray(outs.predicted_value), batch_pred[i])


def test_depth_switch_compiles_nothing_and_keeps_state(compile_counter: list[str]) -> None:
    up = UniversalPredictor(CFG)  # compiles every depth of the ladder
    up.fit_history(ar1(200, 0.5, 12))
    up.step(ProcessState.of(0.1, 1000))  # every graph is warm now
    compile_counter.clear()
    count_before = int(up.view.fast.count)
    for i, depth in enumerate((3, 2, 5, 3)):
        up.set_depth(depth)
        for j in range(3):
            up.step(ProcessState.of(0.1 * j, 2000 + 10 * i + j))
    assert compile_counter == []
    assert int(up.view.fast.count) == count_before + 12
    with pytest.raises(ValueError, match="depth"):
        up.set_depth(4)


# --- quality floor ------------------------------------------------------------


def _rmse(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a**2)))


def test_quality_floor_ar1_and_random_walk() -> None:
    n_warm, n_eval = 500, 5000
    pred = fp_no_breaker()
    x = ar1(n_warm + n_eval + 1, 0.7, 13)
    _, outs = run_series(pred, x)
    yhat = np.asarray(outs.predicted_value)
    ens = _rmse(x[n_warm + 1 :] - yhat[n_warm:-1])
    oracle = _rmse(x[n_warm + 1 :] - 0.7 * x[n_warm:-1])
    assert ens <= 1.05 * oracle, (ens, oracle)

    rw = np.cumsum(np.random.default_rng(14).normal(size=n_warm + n_eval + 1))
    _, outs = run_series(fp(), rw)
    yhat = np.asarray(outs.predicted_value)
    ens = _rmse(rw[n_warm + 1 :] - yhat[n_warm:-1])
    naive = _rmse(rw[n_warm + 1 :] - rw[n_warm:-1])
    assert ens <= 1.02 * naive, (ens, naive)


# --- reload -----------------------------------------------------------------


def test_config_reload_keeps_state_for_sensitivities_and_reinits_for_layout(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[predictor]\nclock = "event"\n')
    rp = ConfigReloadablePredictor(path)
    rp.fit_history(ar1(200, 0.5, 15))
    assert not rp.check_and_reload_config()
    path.write_text('[predictor]\nclock = "event"\ncusum_h = 9.5\n')
    assert rp.check_and_reload_config()
    assert rp.config.cusum_h == 9.5 and int(rp.view.fast.count) == 200
    assert float(rp.functional.params.cusum_h) == 9.5
    path.write_text('[predictor]\nclock = "event"\ncusum_h = 9.5\nsignature_window = 12\n')
    assert rp.check_and_reload_config()
    assert int(rp.view.fast.count) == 0 and rp.config.signature_window == 12
    path.write_text("[predictor]\ncusum_h = -1.0\n")
    with pytest.raises(ValueError, match="cusum_h"):
        rp.check_and_reload_config()
    assert rp.config.cusum_h == 9.5


@pytest.mark.parametrize(
    ("ladder", "start", "steps", "expected"),
    [
        ((5, 3, 2), 3, 2, {5: 2, 3: 2, 2: 0}),  # shipped: the last rung only evaluates
        ((5, 3, 2), 5, 4, {5: 4, 3: 2, 2: 0}),
        ((5, 4, 3, 2), 5, 8, {5: 8, 4: 4, 3: 2, 2: 0}),
        ((3,), 3, 2, {3: 2}),  # no shedding: full budget
        ((5, 3, 2), 2, 2, {5: 2, 3: 2, 2: 2}),  # starting on the last rung is not shedding
    ],
)
def test_dgm_training_budget_per_shedding_level(
    ladder: tuple[int, ...], start: int, steps: int, expected: dict[int, int]
) -> None:
    cfg = PredictorConfig(shed_ladder=ladder, log_sig_depth=start, dgm_train_steps=steps)
    assert {d: dgm_steps_for_depth(cfg, d) for d in ladder} == expected
