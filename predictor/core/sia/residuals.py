"""Residual statistics: EMA volatility, standardised residual, kurtosis, log-squared residual.

Per step, with ``e_t = r_t - yhat_{t|t-1}`` (units of the series):

* ``sigma_t``: square root of the EMA of ``e^2`` at rate ``alpha``
  (``volatility_alpha``), ``sigma_t^2 = (1 - alpha) sigma_{t-1}^2 + alpha e_t^2``,
  seeded with ``|e|`` at the first non-zero residual (leading zeros, e.g.
  a first tick without a previous forecast, leave it unset) and floored
  at ``SIGMA_FLOOR``. Evaluated as
  ``m sqrt((1 - alpha)(sigma / m)^2 + alpha (e / m)^2)``, ``m = max(sigma, |e|)``,
  so that 1e300-scale residuals do not overflow.
* ``u_t = e_t / s_{t-1}``: the residual standardised by the root mean square
  of the *previous* residuals in the ring buffer (the last N before e_t;
  ``u = 0`` until a non-zero residual has set a scale), capped at
  ``|u| <= U_MAX``. This departs from docs/model.md's ``e_t / sigma_t`` on
  purpose: the EMA at alpha = 0.1 forgets in about 10 steps, so ``e_t / sigma``
  re-normalises itself after a variance change (simulated at the defaults
  with the earlier quadratic scale channel of ``cusum``: a x3 variance
  shift, even a x3 standard-deviation shift, went undetected for 200 steps
  in most of 20 seeds); the N-step reference keeps the in-control scale for
  N steps, and using the scale from *before* e_t keeps a shock from damping
  its own standardised value (in-sample, ``|u| <= 1 / sqrt(alpha)``).
  ``sigma_t`` (fast) is still the volatility used for losses and intervals.
  Variance changes are tested on ``w_t`` below, not on u.
* ``kappa_t = m4 / m2^2`` (Pearson, about the mean) of the ring buffer of
  the last N residuals ``e`` (including e_t), clipped to [1, 100]; 3 (the
  Gaussian value, i.e. a neutral threshold) while fewer than 4 residuals
  are stored or they are all equal.
* ``w_t = max(log e_t^2, ln f + g_{t-1})`` (``log_sq``, log of units of e
  squared): the log-squared residual, floored at ``f = LOG_SQ_FLOOR`` = 1e-4
  times the geometric mean ``exp(g)`` of the previous residuals' ``e^2``
  (for Gaussian e, |e| below 0.5% of sigma counts as 0.5%; an exact zero
  stays finite; unlike the RMS, the geometric mean is barely moved by an
  outlier); and ``d_t`` (``log_sq_sd``): the standard deviation of the
  equally floored ``log e_i^2`` over the previous residuals in the ring,
  floored at ``LOG_SQ_SD_MIN``. They feed the scale channels of ``cusum``:
  a variance change by a factor c moves ``w`` by ``ln c`` whatever the
  noise law, and ``w`` is light-tailed even when e is heavy-tailed
  (Gaussian e: ``log chi^2_1``, standard deviation ``pi / sqrt 2`` = 2.22;
  Student-t(3): ``sqrt(pi^2 / 2 + psi'(3/2))`` = 2.42, upper tail decaying
  like ``exp(-3 w / 2)``). ``d_t = 0`` (no scale observation) while fewer
  than ``LOG_SQ_MIN_COUNT`` residuals are stored or they are all zero. The
  ring's values are computed on ``e / max|e|`` and ``w_t`` from ``log|e|``,
  so 1e300-scale residuals neither overflow nor underflow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.config import PredictorConfig
from predictor.core.numerics import tree_max, tree_sum

#: Smallest volatility (units of e); keeps 1 / sigma finite.
SIGMA_FLOOR = 1e-300
#: Cap on |u| so that u^4 (kurtosis, 1e24) and CUSUM sums stay finite; a
#: residual of 1e6 reference scales is an alarm either way.
U_MAX = 1e6
KURTOSIS_MIN = 1.0
KURTOSIS_MAX = 100.0
KURTOSIS_NEUTRAL = 3.0
#: Fewest stored residuals for which a kurtosis is computed.
KURTOSIS_MIN_COUNT = 4
#: Floor of e^2 in ``log_sq``, relative to the geometric mean of the ring's e^2.
LOG_SQ_FLOOR = 1e-4
LOG_FLOOR = math.log(LOG_SQ_FLOOR)
#: Fewest stored residuals for which ``log_sq_sd`` is computed (else 0).
LOG_SQ_MIN_COUNT = 16
#: Floor of ``log_sq_sd`` (log units): a ring of equal |e| has spread 0.
LOG_SQ_SD_MIN = 0.25


class ResidualState(NamedTuple):
    """EMA volatility, ring buffer of residuals, write position and fill count."""

    sigma: jax.Array  # float64, units of e
    buffer: jax.Array  # (N,) float64, raw residuals e
    position: jax.Array  # int64, next slot to write
    filled: jax.Array  # int64, stored residuals (<= N)


class ResidualOut(NamedTuple):
    """Statistics after one residual.

    ``u``: standardised residual (dimensionless, see the module docstring);
    ``sigma``: updated EMA volatility (units of e); ``kappa``: clipped
    Pearson kurtosis of the buffer; ``sigma_ref``: the scale ``u`` was
    divided by (RMS of the previous buffer, units of e); ``log_sq``: the
    log-squared residual ``w_t`` and ``log_sq_sd`` the spread ``d_t`` of its
    previous values (0: no scale observation), see the module docstring.
    """

    u: jax.Array
    sigma: jax.Array
    kappa: jax.Array
    sigma_ref: jax.Array
    log_sq: jax.Array
    log_sq_sd: jax.Array


def residual_init(cfg: PredictorConfig) -> ResidualState:
    """Empty state for a buffer of ``cfg.wtmm_buffer_size`` residuals."""
    n = cfg.wtmm_buffer_size
    return ResidualState(
        sigma=jnp.asarray(SIGMA_FLOOR, dtype=jnp.float64),
        buffer=jnp.zeros((n,), dtype=jnp.float64),
        position=jnp.asarray(0, dtype=jnp.int64),
        filled=jnp.asarray(0, dtype=jnp.int64),
    )


def _masked_scale(x: jax.Array, mask: jax.Array) -> jax.Array:
    s = tree_max(jnp.where(mask, jnp.abs(x), 0.0))
    return jnp.where(s > 0.0, s, 1.0)


def buffer_rms(buffer: jax.Array, filled: jax.Array) -> jax.Array:
    """Root mean square ``sqrt(mean(e^2))`` of the first ``filled`` entries (0 if none)."""
    mask = jnp.arange(buffer.shape[-1]) < filled
    s = _masked_scale(buffer, mask)
    inv_s = 1.0 / s
    ms = tree_sum(jnp.where(mask, jnp.square(buffer * inv_s), 0.0)) / jnp.maximum(filled, 1)
    return s * jnp.sqrt(ms)


def kurtosis(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Pearson kurtosis ``m4 / m2^2`` (central moments) of the entries under ``mask``.

    Computed on ``x / max|x|``; clipped to [1, 100]; returns 3 when fewer
    than 4 entries are selected or their variance is (relatively) zero.
    Gaussian: 3; Student-t(nu): ``3 + 6 / (nu - 4)`` for nu > 4.
    """
    if mask is None:
        mask = jnp.ones(x.shape, dtype=bool)
    count = tree_sum(mask.astype(jnp.int64))
    s = _masked_scale(x, mask)
    v = jnp.where(mask, x * (1.0 / s), 0.0)
    inv_n = 1.0 / jnp.maximum(count, 1)
    mu = tree_sum(v) * inv_n
    d = jnp.where(mask, v - mu, 0.0)
    d2 = d * d
    m2 = tree_sum(d2) * inv_n
    m4 = tree_sum(d2 * d2) * inv_n
    ok = (count >= KURTOSIS_MIN_COUNT) & (m2 > 1e-24)
    k = m4 / jnp.where(ok, m2 * m2, 1.0)
    return jnp.where(ok, jnp.clip(k, KURTOSIS_MIN, KURTOSIS_MAX), KURTOSIS_NEUTRAL)


def log_sq_stats(
    buffer: jax.Array, filled: jax.Array, ref: jax.Array, e: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(w, d)``: floored log-squared residual of ``e`` and the spread of the buffer's.

    ``w = max(log e^2, L)`` with ``L = ln f + g``, ``g`` the mean of the
    floored ``log e_i^2`` over the first ``filled`` entries (log of their
    geometric mean square; computed twice, the first time with every entry
    floored at ``1e-30 max e_i^2`` only, so exact zeros barely move it);
    ``d`` = standard deviation of ``max(log e_i^2, L)`` over those entries,
    floored at ``LOG_SQ_SD_MIN``. ``(0, 0)`` while ``filled <
    LOG_SQ_MIN_COUNT`` or ``ref = 0`` (``ref``: RMS of the buffer).
    """
    mask = jnp.arange(buffer.shape[-1]) < filled
    ok = (filled >= LOG_SQ_MIN_COUNT) & (ref > 0.0)
    a = _masked_scale(buffer, mask)
    inv_a = 1.0 / a
    inv_n = 1.0 / jnp.maximum(filled, 1)
    # Relative to max e_i^2 (<= 1, no overflow); 1e-30 only keeps log(0) finite.
    w_rel = jnp.log(jnp.square(buffer * inv_a) + 1e-30)
    g0 = tree_sum(jnp.where(mask, w_rel, 0.0)) * inv_n
    g1 = tree_sum(jnp.where(mask, jnp.maximum(w_rel, g0 + LOG_FLOOR), 0.0)) * inv_n
    lo_rel = g1 + LOG_FLOOR
    w_ring = jnp.maximum(w_rel, lo_rel)
    mean = tree_sum(jnp.where(mask, w_ring, 0.0)) * inv_n
    dev = jnp.where(mask, w_ring - mean, 0.0)
    d = jnp.sqrt(tree_sum(dev * dev) * inv_n)
    # log(0) = -inf is floored away; ok implies a > 0.
    w = jnp.maximum(2.0 * jnp.log(jnp.abs(e)), lo_rel + 2.0 * jnp.log(a))
    return jnp.where(ok, w, 0.0), jnp.where(ok, jnp.maximum(d, LOG_SQ_SD_MIN), 0.0)


def _ema_sigma(sigma: jax.Array, e: jax.Array, alpha: jax.Array, first: jax.Array) -> jax.Array:
    m = jnp.maximum(sigma, jnp.abs(e))
    m = jnp.where(m > 0.0, m, 1.0)
    updated = m * jnp.sqrt((1.0 - alpha) * jnp.square(sigma / m) + alpha * jnp.square(e / m))
    return jnp.maximum(jnp.where(first, jnp.abs(e), updated), SIGMA_FLOOR)


def residual_update(
    state: ResidualState, e: jax.Array, alpha: jax.Array | float
) -> tuple[ResidualState, ResidualOut]:
    """Fold residual ``e`` in; ``alpha`` is a traced EMA rate in (0, 1]."""
    e = jnp.asarray(e, dtype=jnp.float64)
    alpha = jnp.asarray(alpha, dtype=jnp.float64)
    n = state.buffer.shape[-1]
    ref = buffer_rms(state.buffer, state.filled)
    has_ref = ref > 0.0
    u = jnp.where(has_ref, e / jnp.where(has_ref, ref, 1.0), 0.0)
    u = jnp.clip(u, -U_MAX, U_MAX)
    log_sq, log_sq_sd = log_sq_stats(state.buffer, state.filled, ref, e)
    # Unset (at the floor) until a non-zero residual arrives: seed, not average.
    sigma = _ema_sigma(state.sigma, e, alpha, state.sigma <= SIGMA_FLOOR)
    buffer = state.buffer.at[state.position].set(e)
    filled = jnp.minimum(state.filled + 1, n)
    position = (state.position + 1) % n
    kappa = kurtosis(buffer, jnp.arange(n) < filled)
    new = ResidualState(sigma, buffer, position, filled)
    return new, ResidualOut(u, sigma, kappa, ref, log_sq, log_sq_sd)
