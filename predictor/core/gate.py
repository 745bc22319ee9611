"""The gate: what a tick must pass before it changes any state.

* ``gate_reject``: a non-finite magnitude or reference, or a magnitude
  farther than ``SIGMA_BOUND`` window standard deviations from the window
  mean (once ``GATE_MIN_COUNT`` values are in and the window is not flat),
  is rejected. After ``MAX_CONSECUTIVE_REJECTS`` rejections in a row the
  next tick is accepted: the process has moved, and a permanent level
  shift must not lock the asset out.
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
#: Fresh ticks needed to leave degraded (stale) mode.
FRESH_TICKS_TO_RECOVER = 2

REJECT_NONE, REJECT_NON_FINITE, REJECT_OUTLIER = 0, 1, 2


def window_moments(buffer: jax.Array, count: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and std of the valid part of the window (the last min(count, N) values)."""
    n = buffer.shape[0]
    valid = jnp.arange(n) >= n - jnp.minimum(count, n)
    m = jnp.maximum(tree_sum(valid.astype(jnp.float64)), 1.0)
    mean = tree_sum(jnp.where(valid, buffer, 0.0)) / m
    var = tree_sum(jnp.where(valid, (buffer - mean) ** 2, 0.0)) / m
    return mean, jnp.sqrt(var)


def gate_reject(fast: FastState, obs: Obs) -> jax.Array:
    """Reject reason of an observation (REJECT_*), before any state change."""
    finite = jnp.isfinite(obs.y) & jnp.isfinite(obs.ref)
    mean, std = window_moments(fast.buffer, fast.count)
    scale = jnp.maximum(jnp.abs(mean), 1.0)
    informative = (fast.count >= GATE_MIN_COUNT) & (std > 1e-12 * scale)
    far = jnp.abs(obs.y - mean) > SIGMA_BOUND * std
    outlier = informative & far & (fast.gate.reject_run < MAX_CONSECUTIVE_REJECTS)
    reason = jnp.where(~finite, REJECT_NON_FINITE, jnp.where(outlier, REJECT_OUTLIER, REJECT_NONE))
    return reason.astype(jnp.int32)


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
    )
    return new_gate, stale, degraded, sparse
