"""One tick for one asset, at two rates: a cheap tick and a periodic refit.

Pure functions of ``(state, obs, now_ns, params)`` with ``cfg`` and
``depth`` static (one compiled graph per signature depth); ``params`` are
the traced sensitivities. Units: ``y``, ``ref`` and ``predicted_value`` are
in the series' own units; ``predicted_next`` and kernel forecasts ``p_z``
are in window-standard units ``z = (y - mean_w) / std_w``.

``tick`` (every observation, O(N) vectorised work, no fitting):

1. Gate, before any state change: a non-finite value, or one farther than
   ``SIGMA_BOUND`` window standard deviations from the window mean, is
   rejected: the state is unchanged except the reject counters, and the
   previous result is returned with ``rejected = True``. Staleness, sparse
   arrival and a frozen signal freeze the weights for this tick.
2. ``advance``: the magnitude enters the window (oldest value dropped); the
   errors ``e = r_t - yhat_{t|t-1}`` of the ensemble and of each kernel,
   against the forecasts kept from tick t-1, update the residual
   statistics, the CUSUM and the kernel losses.
3. ``forecast``: each kernel's forecast of z_{t+1} from its cached fit (A:
   the AR coefficients on the current lags; B: the cached solution's drift
   at the current point; C: the cached drift and jumps from z_t; D: the
   log-signature of the last L points and one recursive least-squares
   update), the circuit breaker (the newest point's Hölder exponent against
   the series' baseline, ``predictor.core.breaker``), and the
   orchestrator's JKO step on the losses.
4. ``refit_due``: the tick count is congruent to the asset's phase modulo
   K = ``refit_interval``, or the window is filling and its history just
   reached ``min_history`` times a power of two, or the CUSUM alarmed, or
   emergency mode was entered.

Warm-up is progressive: for the first ``min_history`` ticks the forecast is
the last value, weights stay uniform and the CUSUM is silent; from then on
the kernels, weights and CUSUM work on the valid part of the window (the
fits see it mirrored back in time, ``sia.window.history``). ``warming_up``
stays set, and the circuit breaker unarmed, until the window is full.

``refit`` (when a tick says so, after its result is out): the Hölder
exponent by WTMM, Burg with AIC order selection, kernel B's training steps
and tabulated solution, kernel C's jump-diffusion fit, all on the window
that includes the tick, cached for the next ticks.

The refit and the composition of both rates are in ``predictor.core.rates``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.config import PredictorConfig
from predictor.core import breaker as brk
from predictor.core import orchestrator as orch
from predictor.core import sia
from predictor.core.gate import (
    FROZEN_RUN,
    REJECT_NONE,
    gate_flags,
    gate_reject,
    rejected_gate,
)
from predictor.core.kernels import a_wiener, b_dgm, c_levy, d_signature
from predictor.core.numerics import f64, tree_dot
from predictor.core.params import Params
from predictor.core.sia.window import history, standardize_frame
from predictor.core.state import (
    AssetState,
    FastState,
    FitState,
    GateState,
    Obs,
    StepOutput,
)

#: Errors below this fraction of the values' magnitude are rounding (set to 0).
RESOLUTION = 1e-10
#: Two-sided 95% normal quantile for the forecast interval.
Z95 = 1.959963984540054


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
        refit_due=b,
    )


def init_state(cfg: PredictorConfig, key: jax.Array | None = None, phase: int = 0) -> AssetState:
    """Cold state of one asset (deterministic; ``key`` seeds kernel B).

    ``phase`` staggers the refits of assets stepped together: the asset
    refits when ``(count + phase) % refit_interval == 0``.
    """
    n = cfg.wtmm_buffer_size
    zero_i = jnp.asarray(0, jnp.int64)
    fast = FastState(
        buffer=jnp.zeros((n,)),
        count=zero_i,
        phase=jnp.asarray(phase, jnp.int64),
        refit_pending=jnp.asarray(False),
        gate=GateState(zero_i, zero_i, jnp.asarray(False), zero_i, zero_i, zero_i, f64(jnp.nan)),
        prev_kernel_pred=jnp.zeros((orch.N_KERNELS,)),
        prev_pred=f64(0.0),
        kernel_sq_err=jnp.zeros((orch.N_KERNELS,)),
        residual=sia.residual_init(cfg),
        cusum=sia.cusum_init(),
        orch=orch.init(),
        breaker=brk.init(),
        kernel_d=d_signature.init(cfg),
        last_output=_zero_output(),
    )
    fit = FitState(
        holder=f64(0.5),
        mean=f64(0.0),
        scale=f64(1.0),
        kernel_a=a_wiener.init(cfg),
        kernel_b=b_dgm.init(cfg, key),
        kernel_c=c_levy.init(cfg),
        refits=zero_i,
    )
    return AssetState(fast, fit)


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


def tree_where(pred: jax.Array, a: object, b: object) -> object:
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def refit_scheduled(
    count: jax.Array, phase: jax.Array, params: Params, cfg: PredictorConfig
) -> jax.Array:
    """A refit is due by the schedule after the tick that brought ``count`` ticks.

    Every ``refit_interval`` ticks, staggered by ``phase``; and, while the
    window fills, whenever ``count + 1`` is ``min_history`` times a power of
    two, so that the first kernel forecast (at ``count = min_history``) and
    the following ones use fits of a history that doubled since.
    """
    k = jnp.maximum(params.refit_interval, 1)
    periodic = (count + phase) % k == 0
    ratio = (count + 1) // cfg.min_history
    doubling = ((count + 1) % cfg.min_history == 0) & ((ratio & (ratio - 1)) == 0)
    return periodic | (doubling & (count < cfg.wtmm_buffer_size))


class Advanced(NamedTuple):
    """What ``advance`` hands to ``forecast`` besides the advanced state."""

    first: jax.Array
    warming: jax.Array  # the window is not full yet
    cold: jax.Array  # fewer than min_history ticks: the forecast is the last value
    freeze: jax.Array
    stale: jax.Array
    sparse: jax.Array
    degraded: jax.Array
    kernel_err: jax.Array
    res: sia.ResidualOut
    cus: sia.CusumOut
    alarm: jax.Array


def advance(
    fast: FastState, obs: Obs, now_ns: jax.Array, params: Params, cfg: PredictorConfig
) -> tuple[FastState, Advanced]:
    """Gate flags, the window, residual statistics and CUSUM for an accepted tick."""
    n = cfg.wtmm_buffer_size
    first = fast.count == 0
    gate, stale, degraded, sparse = gate_flags(fast.gate, obs, now_ns, params, cfg)
    same = (~first) & (obs.y == fast.buffer[-1])
    same_run = jnp.where(same, fast.gate.same_run + 1, 1)
    frozen = same_run >= FROZEN_RUN
    gate = gate._replace(same_run=same_run)

    # The window: on the first tick it is filled with y_0 (a flat history).
    shifted = jnp.concatenate([fast.buffer[1:], obs.y[None]])
    buffer = jnp.where(first, jnp.full((n,), obs.y), shifted)
    count = fast.count + 1
    warming = count < n
    cold = count < cfg.min_history

    # Errors of the forecasts made at t-1 (none exist on the first tick).
    kernel_err = jnp.where(first, 0.0, obs.ref - fast.prev_kernel_pred)
    err = jnp.where(first, 0.0, obs.ref - fast.prev_pred)
    # Below the series' floating-point resolution an error is rounding, not
    # signal: its scale-free statistics would flag rounding noise's swings.
    resolution = RESOLUTION * jnp.maximum(jnp.abs(obs.ref), jnp.abs(fast.prev_pred))
    err = jnp.where(jnp.abs(err) <= resolution, 0.0, err)
    residual, res = sia.residual_update(fast.residual, err, params.volatility_alpha)
    cusum, cus = sia.cusum_update(
        fast.cusum,
        res.u,
        res.kappa,
        params.cusum_h,
        params.cusum_k,
        params.grace_period_steps,
        res.log_sq,
        res.log_sq_sd,
    )
    cusum = tree_where(cold, fast.cusum, cusum)  # type: ignore[assignment]  # cold start: no alarms
    freeze = stale | sparse | frozen | cold | fast.gate.degraded
    new = fast._replace(buffer=buffer, count=count, gate=gate, residual=residual, cusum=cusum)
    ctx = Advanced(
        first=first,
        warming=warming,
        cold=cold,
        freeze=freeze,
        stale=stale,
        sparse=sparse,
        degraded=degraded | frozen,
        kernel_err=kernel_err,
        res=res,
        cus=cus,
        alarm=cus.alarm & ~cold,
    )
    return new, ctx


def forecast(
    fast: FastState,
    fit: FitState,
    ctx: Advanced,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[FastState, StepOutput]:
    """Kernel forecasts from the cached fits, the orchestrator and the output."""
    z, z_mean, z_scale = standardize_frame(history(fast.buffer, fast.count))
    # The refit window's z units map to this window's by z = offset + gain r.
    gain = fit.scale / z_scale
    offset = (fit.mean - z_mean) / z_scale
    pa = a_wiener.forecast(fit.kernel_a, z)
    pb = b_dgm.forecast(fit.kernel_b, z[-1], gain, offset, cfg)
    pc = c_levy.forecast(fit.kernel_c, z[-1], gain, offset, cfg)
    return combine(fast, fit, ctx, z, jnp.stack([pa, pb, pc]), params, cfg, depth)


def combine(
    fast: FastState,
    fit: FitState,
    ctx: Advanced,
    z: jax.Array,
    p_abc: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[FastState, StepOutput]:
    """Kernel D, the orchestrator and the output, given kernels A-C's forecasts ``p_abc``."""
    count = fast.count
    warming, cold = ctx.warming, ctx.cold
    mean, std = sia.window_stats(history(fast.buffer, count))
    kd, pd, _ = d_signature.update(fast.kernel_d, z, cfg, depth)
    p_z = jnp.concatenate([p_abc, pd[None]])
    p_z = jnp.where(jnp.isfinite(p_z), p_z, z[-1])  # a failing kernel falls back to naive
    p_val = mean + std * p_z

    # Residual scale for the losses and the ground cost: floored relative to
    # the window's scale (1 for a flat window), so 1 / sigma^2 stays finite.
    res = ctx.res
    ref_scale = jnp.where(std > 1e-290, std, 1.0)
    sigma = jnp.maximum(res.sigma, 1e-9 * ref_scale)
    sigma_z = sigma / ref_scale
    collapse = b_dgm.collapse_warning(fit.kernel_b)
    breaker, bo = brk.update(
        fast.breaker,
        fast.buffer,
        fit.holder,
        count,
        ~warming,
        threshold=params.holder_threshold,
        alpha=params.volatility_alpha,
        grace_steps=params.grace_period_steps,
    )
    orch_state, o = orch.update(
        fast.orch,
        errors=ctx.kernel_err,
        predictions=p_val,
        sigma=sigma,
        sigma_z=jnp.minimum(sigma_z, 1e6),
        emergency=bo.emergency,
        kurtosis=res.kappa,
        alarm=ctx.alarm,
        freeze=ctx.freeze,
        collapse=collapse,
        params=params,
        max_iter=cfg.sinkhorn_max_iter,
    )
    uniform = jnp.full((orch.N_KERNELS,), 1.0 / orch.N_KERNELS)
    orch_state = tree_where(cold, fast.orch._replace(weights=uniform), orch_state)  # type: ignore[assignment]
    weights = jnp.where(cold, uniform, o.weights)

    # Ensemble forecast and its 95% interval (mixture variance).
    # EMA with a running-mean start, so the first errors are not shrunk towards 0.
    n_err = jnp.maximum(count - 1, 1).astype(jnp.float64)
    rate = jnp.where(ctx.first, 0.0, jnp.maximum(1.0 / n_err, 1.0 / params.entropy_window))
    kernel_sq_err = fast.kernel_sq_err + rate * (ctx.kernel_err**2 - fast.kernel_sq_err)
    y_last = fast.buffer[-1]
    y_hat = jnp.where(cold, y_last, tree_dot(weights, p_val))
    p_next = jnp.where(cold, z[-1], tree_dot(weights, p_z))
    mix_var = tree_dot(weights, kernel_sq_err + (p_val - y_hat) ** 2)
    half = Z95 * jnp.sqrt(jnp.maximum(mix_var, 0.0))
    emergency_entered = bo.entered
    scheduled = refit_scheduled(count, fast.phase, params, cfg)
    cus = ctx.cus

    out = StepOutput(
        predicted_next=p_next,
        holder_exponent=bo.holder,
        # While cold the detector is silent: it reports no drift rather than one it ignores.
        cusum_drift=jnp.where(cold, 0.0, cus.drift),
        distance_to_collapse=jnp.where(cold, cus.threshold, cus.distance),
        free_energy=o.free_energy,
        kurtosis=res.kappa,
        dgm_entropy=fit.kernel_b.dgm_entropy,
        adaptive_threshold=cus.threshold,
        weights=weights,
        sinkhorn_converged=o.converged,
        degraded_inference_mode=ctx.degraded,
        emergency_mode=bo.emergency,
        regime_change_detected=ctx.alarm,
        mode_collapse_warning=collapse,
        mode=jnp.where(cold, orch.MODE_STANDARD, o.mode).astype(jnp.int32),
        predicted_value=y_hat,
        interval_lower=y_hat - half,
        interval_upper=y_hat + half,
        warming_up=warming,
        rejected=jnp.asarray(False),
        reject_reason=jnp.asarray(REJECT_NONE, jnp.int32),
        stale=ctx.stale,
        frequency_warning=ctx.sparse,
        emergency_entered=emergency_entered,
        refit_due=scheduled | ctx.alarm | emergency_entered,
    )
    new = fast._replace(
        prev_kernel_pred=p_val,
        prev_pred=y_hat,
        kernel_sq_err=kernel_sq_err,
        orch=orch_state,
        breaker=breaker,
        kernel_d=kd,
        last_output=out,
    )
    return new, out


def gated_advance(
    fast: FastState, obs: Obs, now_ns: jax.Array, params: Params, cfg: PredictorConfig
) -> tuple[jax.Array, FastState, Advanced]:
    """The gate's reject reason, and ``advance`` as if the tick were accepted.

    A rejected value is replaced by the last one so that its arithmetic stays
    finite; the caller discards what it produced. A tick that completes a
    level shift (``gate_reject``) is accepted as one: the remembered
    outlier joins the window and the older values, with the forecasts made
    for this tick, are moved by the jump ``pending - y_last``, so that the
    history keeps its shape at the new level and no error of the size of the
    jump enters the residual statistics; the regime alarm is raised, which
    resets the weights and the detector and refits.
    """
    reason, shift = gate_reject(fast, obs)
    rejected = reason != REJECT_NONE
    safe = Obs(
        jnp.where(rejected, fast.buffer[-1], obs.y), jnp.where(rejected, 0.0, obs.ref), obs.ts
    )
    jump = jnp.where(shift, fast.gate.pending - fast.buffer[-1], 0.0)
    moved = jnp.concatenate([fast.buffer[1:] + jump, fast.gate.pending[None]])
    start = fast._replace(
        buffer=jnp.where(shift, moved, fast.buffer),
        count=fast.count + shift.astype(fast.count.dtype),
        prev_kernel_pred=fast.prev_kernel_pred + jump,
        prev_pred=fast.prev_pred + jump,
    )
    advanced, ctx = advance(start, safe, now_ns, params, cfg)
    reset = sia.cusum_reset(advanced.cusum, params.grace_period_steps)
    cusum = tree_where(shift, reset, advanced.cusum)
    return reason, advanced._replace(cusum=cusum), ctx._replace(alarm=ctx.alarm | shift)  # type: ignore[arg-type]


def rejected_state(fast: FastState, obs: Obs, reason: jax.Array) -> FastState:
    """The state after a rejected tick: unchanged but for the gate (``rejected_gate``) and flags."""
    return fast._replace(
        gate=rejected_gate(fast.gate, obs, reason),
        last_output=fast.last_output._replace(
            rejected=jnp.asarray(True), reject_reason=reason, refit_due=jnp.asarray(False)
        ),
    )


def rejection_leaves(fast: FastState, obs: Obs, reason: jax.Array) -> dict[str, jax.Array]:
    """The leaves ``rejected_state`` changes, by path (to patch packed rows in place)."""
    r = rejected_state(fast, obs, reason)
    gate, out = r.gate, r.last_output
    return {
        ".gate.last_ts": gate.last_ts,
        ".gate.max_ts": gate.max_ts,
        ".gate.reject_run": gate.reject_run,
        ".gate.pending": gate.pending,
        ".last_output.rejected": out.rejected,
        ".last_output.reject_reason": out.reject_reason,
        ".last_output.refit_due": out.refit_due,
    }


def finish(
    fast: FastState, obs: Obs, reason: jax.Array, new: FastState, out: StepOutput
) -> tuple[FastState, StepOutput]:
    """The accepted tick's state and output, or the rejection's (selected leaf by leaf)."""
    rejected = reason != REJECT_NONE
    rejected_fast = rejected_state(fast, obs, reason)
    final_fast = tree_where(rejected, rejected_fast, new)
    final_out = tree_where(rejected, rejected_fast.last_output, out)
    return final_fast, final_out  # type: ignore[return-value]


def accept(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[jax.Array, FastState, StepOutput]:
    """The gate's reason and the fast rate as if the tick were accepted.

    ``tick`` selects between this and ``rejected_state``; the compiled graphs
    select on packed rows instead, two operations rather than one per leaf.
    """
    reason, advanced, ctx = gated_advance(state.fast, obs, now_ns, params, cfg)
    new, out = forecast(advanced, state.fit, ctx, params, cfg, depth)
    return reason, new, out


def tick(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[FastState, StepOutput]:
    """The fast rate: ``(S_t, obs_t) -> (fast part of S_{t+1}, result_t)``; fits unchanged."""
    reason, new, out = accept(state, obs, now_ns, params, cfg, depth)
    return finish(state.fast, obs, reason, new, out)
