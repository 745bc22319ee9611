"""The gate: what a tick must pass before it changes any state.

* ``gate_reject``: a non-finite magnitude or reference is rejected
  (``non_finite``); so is a timestamp that is not positive or not later
  than the last one seen (``out_of_order``), and a magnitude farther than
  ``SIGMA_BOUND`` window standard deviations from the window mean (once
  ``GATE_MIN_COUNT`` values are in and the window is not flat;
  ``outlier``). An outlier is remembered (``GateState.pending``): when the
  next tick is far too and agrees with it (``|y - pending| <=
  SHIFT_AGREEMENT |pending - mean|``), the two are a level shift, not two
  outliers: the tick is accepted as a shift (``step.gated_advance``). After
  ``MAX_CONSECUTIVE_REJECTS`` outliers in a row the next tick is accepted
  whatever it is, so that no input can lock the asset out.
* ``gate_flags``: staleness (``now - ts > staleness_ttl_ns`` with the wall
  clock; never with the event clock), degraded mode with its recovery after
  ``FRESH_TICKS_TO_RECOVER`` fresh ticks, and sparse arrival
  (``ts - last_ts > besov_nyquist_interval_ns``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from predictor.config import PredictorConfig
from predictor.core.numerics import tree_sum
from predictor.core.params import Params
from predictor.core.state import FastState, GateState, Obs

#: Catastrophic-outlier bound in window standard deviations (specification).
SIGMA_BOUND = 20.0
#: The outlier test needs this many values in the window to estimate sigma.
GATE_MIN_COUNT = 8
#: After this many consecutive rejections the next tick is accepted.
MAX_CONSECUTIVE_REJECTS = 16
#: A run of this many identical magnitudes is a frozen feed.
FROZEN_RUN = 5
#: Two far ticks within this fraction of the jump of each other are a level shift.
SHIFT_AGREEMENT = 0.25
#: Fresh ticks needed to leave degraded (stale) mode.
FRESH_TICKS_TO_RECOVER = 2

REJECT_NONE, REJECT_NON_FINITE, REJECT_OUTLIER, REJECT_OUT_OF_ORDER = 0, 1, 2, 3
#: Names of the reject reasons, indexed by code (published and counted).
REJECT_NAMES: tuple[str, ...] = ("none", "non_finite", "outlier", "out_of_order")


def window_moments(buffer: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and std of the valid part of the window (the last min(count, N) values)."""
    n = buffer.shape[0]
    valid = jnp.arange(n) >= n - jnp.minimum(count, n)
    m = jnp.maximum(tree_sum(valid.astype(jnp.float64)), 1.0)
    mean = tree_sum(jnp.where(valid, buffer, 0.0)) / m
    var = tree_sum(jnp.where(valid, (buffer - mean) ** 2, 0.0)) / m
    return mean, jnp.sqrt(var)


def gate_reject(fast: FastState, obs: Obs) -> tuple[jax.Array, jax.Array]:
    """Reject reason of an observation (REJECT_*) and whether it completes a level shift."""
    finite = jnp.isfinite(obs.y) & jnp.isfinite(obs.ref)
    # A timestamp must be positive and later than the last accepted one.
    ordered = (obs.ts > 0) & ((fast.count == 0) | (obs.ts > fast.gate.last_ts))
    mean, std = window_moments(fast.buffer, fast.count)
    scale = jnp.maximum(jnp.abs(mean), 1.0)
    informative = (fast.count >= GATE_MIN_COUNT) & (std > 1e-12 * scale)
    far = informative & (jnp.abs(obs.y - mean) > SIGMA_BOUND * std)
    pending = fast.gate.pending
    agrees = jnp.abs(obs.y - pending) <= SHIFT_AGREEMENT * jnp.abs(pending - mean)
    shift = far & jnp.isfinite(pending) & agrees & finite & ordered
    outlier = far & ~shift & (fast.gate.reject_run < MAX_CONSECUTIVE_REJECTS)
    reason = jnp.where(
        ~finite,
        REJECT_NON_FINITE,
        jnp.where(~ordered, REJECT_OUT_OF_ORDER, jnp.where(outlier, REJECT_OUTLIER, REJECT_NONE)),
    )
    return reason.astype(jnp.int32), shift


def rejected_gate(gate: GateState, obs: Obs, reason: jax.Array) -> GateState:
    """The gate after a rejection.

    An outlier is remembered as a possible level shift and counted; an
    outlier or a non-finite value still advances the clock (the feed did
    tick), so the next tick is not taken for a sparse arrival. An
    out-of-order tick changes nothing.
    """
    outlier = reason == REJECT_OUTLIER
    clocked = reason != REJECT_OUT_OF_ORDER
    return gate._replace(
        last_ts=jnp.where(clocked, obs.ts, gate.last_ts),
        max_ts=jnp.where(clocked, jnp.maximum(gate.max_ts, obs.ts), gate.max_ts),
        reject_run=jnp.where(outlier, gate.reject_run + 1, gate.reject_run),
        pending=jnp.where(outlier, obs.y, gate.pending),
    )


def gate_flags(
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
        pending=jnp.asarray(jnp.nan, jnp.float64),
    )
    return new_gate, stale, degraded, sparse
