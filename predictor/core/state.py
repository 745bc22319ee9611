"""The per-asset state, observations and step outputs, as pytrees of arrays.

An asset's state has two parts with two write rates (the model
documentation, "Two rates"):

* ``FastState``, written on every tick: the window (ring of the last N
  magnitudes, oldest first), the gate, residual statistics and CUSUM, the
  orchestrator, kernel D's recursive least squares and the last output;
* ``FitState``, written only by a refit (every ``refit_interval`` ticks,
  staggered by ``FastState.phase``, and at once after a regime alarm or on
  entering emergency mode): the Hölder exponent, kernel A's AR
  coefficients, kernel B's network, optimiser and tabulated solution,
  kernel C's jump-diffusion fit, and the window frame (mean, scale) those
  fits are expressed in.

``PackedState`` is the same state as four flat rows (``predictor.core.packing``):
what the compiled graphs take and return, what the daemon's table stacks,
and what ``FunctionalPredictor`` hands to its callers. ``AssetState`` is the
readable view (``FunctionalPredictor.view``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from predictor.core import breaker as brk
from predictor.core import orchestrator as orch
from predictor.core import sia
from predictor.core.kernels import a_wiener, b_dgm, c_levy, d_signature
from predictor.core.packing import Rows


class Obs(NamedTuple):
    """Observation(s): magnitude, reference, timestamp (ns).

    Traced arrays inside a graph; host (numpy) arrays on the way in.
    """

    y: Any  # float64
    ref: Any  # float64
    ts: Any  # int64


class StepOutput(NamedTuple):
    """Every PredictionResult field as arrays, plus gate and scheduling diagnostics."""

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
    refit_due: jax.Array  # bool: a refit follows this tick


class GateState(NamedTuple):
    """Bookkeeping of the gate (timestamps, degraded mode, frozen feed)."""

    last_ts: jax.Array  # int64, 0 before the first tick
    max_ts: jax.Array  # int64, the event clock
    degraded: jax.Array  # bool, stale-tick degraded mode
    fresh_streak: jax.Array  # int64, fresh ticks since the last stale one
    same_run: jax.Array  # int64, length of the current run of identical magnitudes
    reject_run: jax.Array  # int64, consecutive outlier rejections
    pending: jax.Array  # float64, the last rejected outlier (NaN when none): a level shift?


class FastState(NamedTuple):
    """The part of an asset's state that every accepted tick writes."""

    buffer: jax.Array  # (N,) last N magnitudes, oldest first
    count: jax.Array  # type: ignore[assignment]  # int64, accepted ticks (shadows tuple.count)
    phase: jax.Array  # int64, refit phase: refit when (count + phase) % K == 0
    refit_pending: jax.Array  # bool, emergency entered: refit on the next tick ("before")
    gate: GateState
    prev_kernel_pred: jax.Array  # (4,) kernel forecasts of y_t made at t-1, input units
    prev_pred: jax.Array  # ensemble forecast of y_t made at t-1, input units
    kernel_sq_err: jax.Array  # (4,) EMA of squared kernel errors, input units^2
    residual: sia.ResidualState
    cusum: sia.CusumState
    orch: orch.OrchState
    breaker: brk.BreakerState
    kernel_d: d_signature.DState
    last_output: StepOutput


class FitState(NamedTuple):
    """The cached fits that only a refit writes (read-only for a tick).

    ``mean`` and ``scale`` (input units) are the frame of the refit's window:
    its z-values are ``(y - mean) / scale``, the units of kernels B's and
    C's cached fits. ``holder`` is the window's Hölder exponent, ``refits``
    the number of refits so far.
    """

    holder: jax.Array
    mean: jax.Array
    scale: jax.Array
    kernel_a: a_wiener.AState
    kernel_b: b_dgm.BState
    kernel_c: c_levy.CState
    refits: jax.Array  # int64


class AssetState(NamedTuple):
    """Readable view of one asset's state: the fast part and the cached fits."""

    fast: FastState
    fit: FitState

    # Shortcuts for the fields that callers most often read.
    @property
    def buffer(self) -> jax.Array:
        """The window, oldest first (input units)."""
        return self.fast.buffer

    @property
    def ticks(self) -> jax.Array:
        """Accepted ticks so far."""
        return self.fast.count

    @property
    def last_output(self) -> StepOutput:
        """The last published output (the last valid one after a rejection)."""
        return self.fast.last_output


class PackedState(NamedTuple):
    """An asset's state as flat rows: the fast part and the fit part (see ``Rows``)."""

    fast: Rows
    fit: Rows
