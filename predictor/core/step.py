"""core_step: gate -> SIA -> kernels -> orchestrator -> result, for one asset.

One pure function ``core_step(state, obs, now_ns, params, cfg, depth)``;
``cfg`` and ``depth`` are static (one compiled graph per signature depth),
``params`` are the traced sensitivities. ``FunctionalPredictor`` jits and
vmaps it. Units: ``y``, ``ref`` and ``predicted_value`` are in the series'
own units; ``predicted_next`` and kernel forecasts ``p_z`` are in
window-standard units ``z = (y - mean_w) / std_w``.

Timeline of one tick t (MODEL.md):

1. Gate, before any state change: a non-finite value, or one farther than
   ``SIGMA_BOUND`` window standard deviations from the window mean, is
   rejected: the state is unchanged except the reject counters, and the
   previous result is returned with ``rejected = True``. Staleness, sparse
   arrival and a frozen signal freeze the weights for this tick.
2. The magnitude enters the window (oldest value dropped).
3. Errors ``e = r_t - yhat_{t|t-1}`` of the ensemble and of each kernel,
   against the forecasts kept from tick t-1, update the residual
   statistics, the CUSUM and the kernel losses.
4. The Hölder exponent of the z-window and the four kernels' forecasts of
   z_{t+1}; the orchestrator turns losses into weights.
5. Until the window has been filled once (cold start) the forecast is the
   last value, weights stay uniform and ``warming_up`` is set.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.config import PredictorConfig
from predictor.core import orchestrator as orch
from predictor.core import sia
from predictor.core.kernels import a_wiener, b_dgm, c_levy, d_signature
from predictor.core.numerics import f64, tree_dot, tree_sum
from predictor.core.params import Params

#: Catastrophic-outlier bound in window standard deviations (specification).
SIGMA_BOUND = 20.0
#: The outlier test needs this many values in the window to estimate sigma.
GATE_MIN_COUNT = 8
#: After this many consecutive rejections the next tick is accepted: the
#: process has moved and a permanent level shift must not lock the asset.
MAX_CONSECUTIVE_REJECTS = 16
#: A run of this many identical magnitudes is a frozen feed.
FROZEN_RUN = 5
#: Fresh ticks needed to leave degraded (stale) mode.
FRESH_TICKS_TO_RECOVER = 2
#: Two-sided 95% normal quantile for the forecast interval.
Z95 = 1.959963984540054

REJECT_NONE, REJECT_NON_FINITE, REJECT_OUTLIER = 0, 1, 2


class Obs(NamedTuple):
    """One observation as device scalars: magnitude, reference, timestamp (ns)."""

    y: jax.Array  # float64
    ref: jax.Array  # float64
    ts: jax.Array  # int64


class StepOutput(NamedTuple):
    """Every PredictionResult field as arrays, plus gate diagnostics."""

    predicted_next: jax.Array
    holder_exponent: jax.Array
    cusum_drift: jax.Array
    distance_to_collapse: jax.Array
    free_energy: jax.Array
    kurtosis: jax.Array
    dgm_entropy: jax.Array
    adaptive_threshold: jax.Array
    weights: jax.Array
    sinkhorn_converged: jax.Array
    degraded_inference_mode: jax.Array
    emergency_mode: jax.Array
    regime_change_detected: jax.Array
    mode_collapse_warning: jax.Array
    mode: jax.Array  # int, orchestrator.MODE_*
    predicted_value: jax.Array
    interval_lower: jax.Array
    interval_upper: jax.Array
    warming_up: jax.Array
    rejected: jax.Array
    reject_reason: jax.Array  # REJECT_*
    stale: jax.Array
    frequency_warning: jax.Array
    emergency_entered: jax.Array


class GateState(NamedTuple):
    """Bookkeeping of the gate (timestamps, degraded mode, frozen feed)."""

    last_ts: jax.Array  # int64, 0 before the first tick
    max_ts: jax.Array  # int64, the event clock
    degraded: jax.Array  # bool, stale-tick degraded mode
    fresh_streak: jax.Array  # int64, fresh ticks since the last stale one
    same_run: jax.Array  # int64, length of the current run of identical magnitudes
    reject_run: jax.Array  # int64, consecutive rejections


class AssetState(NamedTuple):
    """Complete state of one asset; every leaf is an array (stackable, vmappable)."""

    buffer: jax.Array  # (N,) last N magnitudes, oldest first
    count: jax.Array  # type: ignore[assignment]  # int64, accepted ticks so far (shadows tuple.count)
    gate: GateState
    prev_kernel_pred: jax.Array  # (4,) kernel forecasts of y_t made at t-1, input units
    prev_pred: jax.Array  # ensemble forecast of y_t made at t-1, input units
    kernel_sq_err: jax.Array  # (4,) EMA of squared kernel errors, input units^2
    residual: sia.ResidualState
    cusum: sia.CusumState
    orch: orch.OrchState
    kernel_a: a_wiener.AState
    kernel_b: b_dgm.BState
    kernel_c: c_levy.CState
    kernel_d: d_signature.DState
    last_output: StepOutput


def _zero_output(n_weights: int = orch.N_KERNELS) -> StepOutput:
    f = f64(0.0)
    b = jnp.asarray(False)
    i = jnp.asarray(0, jnp.int32)
    return StepOutput(
        predicted_next=f,
        holder_exponent=f64(0.5),
        cusum_drift=f,
        distance_to_collapse=f,
        free_energy=f,
        kurtosis=f64(3.0),
        dgm_entropy=f,
        adaptive_threshold=f,
        weights=jnp.full((n_weights,), 1.0 / n_weights, dtype=jnp.float64),
        sinkhorn_converged=jnp.asarray(True),
        degraded_inference_mode=b,
        emergency_mode=b,
        regime_change_detected=b,
        mode_collapse_warning=b,
        mode=i,
        predicted_value=f,
        interval_lower=f,
        interval_upper=f,
        warming_up=jnp.asarray(True),
        rejected=b,
        reject_reason=i,
        stale=b,
        frequency_warning=b,
        emergency_entered=b,
    )


def init_state(cfg: PredictorConfig, key: jax.Array | None = None) -> AssetState:
    """Cold state of one asset (deterministic; ``key`` seeds kernel B)."""
    n = cfg.wtmm_buffer_size
    zero_i = jnp.asarray(0, jnp.int64)
    return AssetState(
        buffer=jnp.zeros((n,)),
        count=zero_i,
        gate=GateState(zero_i, zero_i, jnp.asarray(False), zero_i, zero_i, zero_i),
        prev_kernel_pred=jnp.zeros((orch.N_KERNELS,)),
        prev_pred=f64(0.0),
        kernel_sq_err=jnp.zeros((orch.N_KERNELS,)),
        residual=sia.residual_init(cfg),
        cusum=sia.cusum_init(),
        orch=orch.init(),
        kernel_a=a_wiener.init(cfg),
        kernel_b=b_dgm.init(cfg, key),
        kernel_c=c_levy.init(cfg),
        kernel_d=d_signature.init(cfg),
        last_output=_zero_output(),
    )


def dgm_steps_for_depth(cfg: PredictorConfig, depth: int) -> int:
    """DGM Adam steps at a shedding level.

    ``dgm_train_steps`` at ``log_sig_depth`` and above, halved per level
    below it, and none on the last rung of a ladder that sheds at all: the
    training is most of a step's cost (about 80% at the defaults), so the
    deepest shedding level only evaluates the warm-started network.
    """
    ladder = cfg.shed_ladder
    if depth not in ladder:
        return cfg.dgm_train_steps
    rank = max(0, ladder.index(depth) - ladder.index(cfg.log_sig_depth))
    if rank > 0 and depth == ladder[-1]:
        return 0
    return cfg.dgm_train_steps >> rank


def _tree_where(pred: jax.Array, a: object, b: object) -> object:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _window_moments(buffer: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and std of the valid part of the window (the last min(count, N) values)."""
    n = buffer.shape[0]
    valid = jnp.arange(n) >= n - jnp.minimum(count, n)
    m = jnp.maximum(tree_sum(valid.astype(jnp.float64)), 1.0)
    mean = tree_sum(jnp.where(valid, buffer, 0.0)) / m
    var = tree_sum(jnp.where(valid, (buffer - mean) ** 2, 0.0)) / m
    return mean, jnp.sqrt(var)


def _gate_reject(state: AssetState, obs: Obs) -> jax.Array:
    """Reject reason of an observation (REJECT_*), before any state change."""
    finite = jnp.isfinite(obs.y) & jnp.isfinite(obs.ref)
    mean, std = _window_moments(state.buffer, state.count)
    scale = jnp.maximum(jnp.abs(mean), 1.0)
    informative = (state.count >= GATE_MIN_COUNT) & (std > 1e-12 * scale)
    far = jnp.abs(obs.y - mean) > SIGMA_BOUND * std
    outlier = informative & far & (state.gate.reject_run < MAX_CONSECUTIVE_REJECTS)
    reason = jnp.where(~finite, REJECT_NON_FINITE, jnp.where(outlier, REJECT_OUTLIER, REJECT_NONE))
    return reason.astype(jnp.int32)


def core_step(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[AssetState, StepOutput]:
    """One tick for one asset: ``(S_t, obs_t) -> (S_{t+1}, result_t)``. See module doc."""
    reason = _gate_reject(state, obs)
    rejected = reason != REJECT_NONE
    # A rejected tick must not poison arithmetic below; its results are discarded.
    safe = Obs(
        jnp.where(rejected, state.buffer[-1], obs.y), jnp.where(rejected, 0.0, obs.ref), obs.ts
    )
    new_state, out = _accept(state, safe, now_ns, params, cfg, depth)

    rejected_state = state._replace(
        gate=state.gate._replace(reject_run=state.gate.reject_run + 1),
        last_output=state.last_output._replace(rejected=jnp.asarray(True), reject_reason=reason),
    )
    final_state = _tree_where(rejected, rejected_state, new_state)
    final_out = _tree_where(rejected, rejected_state.last_output, out)
    return final_state, final_out  # type: ignore[return-value]


def _gate_flags(
    gate: GateState, obs: Obs, now_ns: jax.Array, params: Params, cfg: PredictorConfig
) -> tuple[GateState, jax.Array, jax.Array, jax.Array]:
    """Staleness and sparse arrival; returns (gate, stale, degraded, sparse)."""
    max_ts = jnp.maximum(gate.max_ts, obs.ts)
    if cfg.clock == "event":
        stale = jnp.asarray(False)
        fresh = jnp.asarray(True)
    else:
        latency = now_ns - obs.ts
        stale = latency > params.staleness_ttl_ns
        recover_ns = params.inference_recovery_hysteresis * params.staleness_ttl_ns
        fresh = latency.astype(jnp.float64) < recover_ns
    fresh_streak = jnp.where(fresh & ~stale, gate.fresh_streak + 1, 0)
    degraded = (gate.degraded | stale) & ~(fresh_streak >= FRESH_TICKS_TO_RECOVER)
    sparse = (gate.last_ts > 0) & (obs.ts - gate.last_ts > params.besov_nyquist_interval_ns)
    new_gate = GateState(
        last_ts=obs.ts,
        max_ts=max_ts,
        degraded=degraded,
        fresh_streak=fresh_streak,
        same_run=gate.same_run,  # set by the caller, which knows the previous magnitude
        reject_run=jnp.asarray(0, jnp.int64),
    )
    return new_gate, stale, degraded, sparse


def _accept(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[AssetState, StepOutput]:
    n = cfg.wtmm_buffer_size
    first = state.count == 0
    gate, stale, degraded, sparse = _gate_flags(state.gate, obs, now_ns, params, cfg)
    same = (~first) & (obs.y == state.buffer[-1])
    same_run = jnp.where(same, state.gate.same_run + 1, 1)
    frozen = same_run >= FROZEN_RUN
    gate = gate._replace(same_run=same_run)

    # 2. The window: on the first tick it is filled with y_0 (a flat history).
    shifted = jnp.concatenate([state.buffer[1:], obs.y[None]])
    buffer = jnp.where(first, jnp.full((n,), obs.y), shifted)
    count = state.count + 1
    warming = count < n
    mean, std = sia.window_stats(buffer)
    z = sia.standardize(buffer)

    # 3. Errors of the forecasts made at t-1 (none exist on the first tick).
    kernel_err = jnp.where(first, 0.0, obs.ref - state.prev_kernel_pred)
    err = jnp.where(first, 0.0, obs.ref - state.prev_pred)
    residual, res = sia.residual_update(state.residual, err, params.volatility_alpha)
    cusum, cus = sia.cusum_update(
        state.cusum, res.u, res.kappa, params.cusum_h, params.cusum_k, params.grace_period_steps
    )
    cusum = _tree_where(warming, state.cusum, cusum)  # type: ignore[assignment]  # cold start: no alarms
    alarm = cus.alarm & ~warming

    # 4. Identification and the four kernels.
    holder = sia.holder_exponent(z, cfg)
    ka, pa, _ = a_wiener.update(state.kernel_a, z, cfg)
    kb, pb, aux_b = b_dgm.update(state.kernel_b, z, cfg, dgm_steps_for_depth(cfg, depth))
    kc, pc, _ = c_levy.update(state.kernel_c, z, cfg)
    kd, pd, _ = d_signature.update(state.kernel_d, z, cfg, depth)
    p_z = jnp.stack([pa, pb, pc, pd])
    p_z = jnp.where(jnp.isfinite(p_z), p_z, z[-1])  # a failing kernel falls back to naive
    p_val = mean + std * p_z

    # Residual scale for the losses and the ground cost: floored relative to
    # the window's scale (1 for a flat window), so 1 / sigma^2 stays finite.
    ref_scale = jnp.where(std > 1e-290, std, 1.0)
    sigma = jnp.maximum(res.sigma, 1e-9 * ref_scale)
    sigma_z = sigma / ref_scale
    freeze = stale | sparse | frozen | warming | state.gate.degraded
    orch_state, o = orch.update(
        state.orch,
        errors=kernel_err,
        predictions=p_val,
        sigma=sigma,
        sigma_z=jnp.minimum(sigma_z, 1e6),
        holder=holder,
        kurtosis=res.kappa,
        alarm=alarm,
        freeze=freeze,
        collapse=aux_b.mode_collapse_warning,
        params=params,
        max_iter=cfg.sinkhorn_max_iter,
    )
    uniform = jnp.full((orch.N_KERNELS,), 1.0 / orch.N_KERNELS)
    orch_state = _tree_where(warming, state.orch._replace(weights=uniform), orch_state)  # type: ignore[assignment]
    weights = jnp.where(warming, uniform, o.weights)

    # 5. Ensemble forecast and its 95% interval (mixture variance).
    # EMA with a running-mean start, so the first errors are not shrunk towards 0.
    n_err = jnp.maximum(count - 1, 1).astype(jnp.float64)
    rate = jnp.where(first, 0.0, jnp.maximum(1.0 / n_err, 1.0 / params.entropy_window))
    kernel_sq_err = state.kernel_sq_err + rate * (kernel_err**2 - state.kernel_sq_err)
    y_hat = jnp.where(warming, obs.y, tree_dot(weights, p_val))
    p_next = jnp.where(warming, z[-1], tree_dot(weights, p_z))
    mix_var = tree_dot(weights, kernel_sq_err + (p_val - y_hat) ** 2)
    half = Z95 * jnp.sqrt(jnp.maximum(mix_var, 0.0))

    out = StepOutput(
        predicted_next=p_next,
        holder_exponent=holder,
        cusum_drift=cus.drift,
        distance_to_collapse=cus.distance,
        free_energy=o.free_energy,
        kurtosis=res.kappa,
        dgm_entropy=aux_b.dgm_entropy,
        adaptive_threshold=cus.threshold,
        weights=weights,
        sinkhorn_converged=o.converged,
        degraded_inference_mode=degraded | frozen,
        emergency_mode=o.emergency & ~warming,
        regime_change_detected=alarm,
        mode_collapse_warning=aux_b.mode_collapse_warning,
        mode=jnp.where(warming, orch.MODE_STANDARD, o.mode).astype(jnp.int32),
        predicted_value=y_hat,
        interval_lower=y_hat - half,
        interval_upper=y_hat + half,
        warming_up=warming,
        rejected=jnp.asarray(False),
        reject_reason=jnp.asarray(REJECT_NONE, jnp.int32),
        stale=stale,
        frequency_warning=sparse,
        emergency_entered=o.emergency_entered & ~warming,
    )
    new_state = AssetState(
        buffer=buffer,
        count=count,
        gate=gate,
        prev_kernel_pred=p_val,
        prev_pred=y_hat,
        kernel_sq_err=kernel_sq_err,
        residual=residual,
        cusum=cusum,
        orch=orch_state,
        kernel_a=ka,
        kernel_b=kb,
        kernel_c=kc,
        kernel_d=kd,
        last_output=out,
    )
    return new_state, out
