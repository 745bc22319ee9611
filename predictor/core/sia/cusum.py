"""Adaptive CUSUM with re-referencing: mean channels on u, scale channels on log e^2.

Per step, on the standardised residual ``u_t`` (dimensionless), the residual
kurtosis ``kappa_t`` and the log-squared residual ``w_t`` with the spread
``d_t`` of its previous values (``residual_update``'s ``log_sq`` and
``log_sq_sd``; ``d_t = 0``: no scale observation):

* mean channels (two-sided Page test, docs/model.md):
  ``G+ = max(0, G+ + x - k)``, ``G- = max(0, G- - x - k)`` on
  ``x_t = u_t`` until the first alarm, then on the self-starting innovation
  ``x_t = (u_t - r_n) sqrt(n / (n + 1))``, ``r_n`` the mean of the ``n``
  values of ``u`` (each clipped to ``+-REF_CLIP`` = 4) since the reference
  restarted (``x = 0`` while ``n = 0``). A forecaster that stays biased after
  a change (a steady trend it lags) therefore gives one alarm, not one per
  grace period, while a further shift relative to the new reference still
  alarms. For Gaussian u of any mean the innovations are independent N(0, 1)
  (recursive residuals), so Siegmund's run length below holds after every
  restart too. ``|mean u| <= 1`` in a steady state (u is divided by the RMS of
  e, bias included), so the clip only trims outliers;
* scale channels (variance up and down):
  ``V+ = max(0, V+ + v - k_v)``, ``V- = max(0, V- - v - k_v)`` with
  ``v_t = clip((w_t - m) sqrt(n_v / (n_v + 1)) / d_t, -3, 3)``, ``m`` the
  mean of ``w`` since the restart (an EMA of rate ``1 / 512`` once 512 values
  are in, so the reference follows volatility that drifts over thousands of
  ticks; each step ``w - m`` winsorised at ``+-3 d``, so one outlier moves it
  by at most ``3 d / n_v``), ``n_v = min(values since the restart, 512)``,
  slack ``k_v = 0.2`` and threshold ``h_v = 3 h`` (24 at the default
  h = 8), *not* raised by the kurtosis: ``w`` is light-tailed under any
  residual law, and a variance change by a factor c shifts it by ``ln c``,
  i.e. ``ln c / d`` standard deviations (x4: 0.62 for Gaussian e, 0.57 for
  Student-t(3)). Before the first alarm ``m`` runs from the first scale
  observation;
* threshold ``h_t = h (1 + ln(max(kappa, 3) / 3))`` for the mean channels;
* ``u`` is capped at ``|u| <= 1e6`` (as in ``residual_update``);
* ``drift`` is the largest channel on the mean channels' scale,
  ``max(G+, G-, (h_t / h_v) max(V+, V-))``; ``distance = h_t - drift``;
* alarm when ``drift > h_t`` (a mean channel above ``h_t`` or a scale channel
  above ``h_v``) and the grace counter is zero. The counter then restarts at
  ``grace_steps``; at the alarm and through the grace period every channel
  is held at 0 and both references restart, so they are re-estimated from
  the ticks after the grace period (the forecaster's transient after a
  change stays out of the new reference). Consequence: a change within
  ``grace_steps`` of an alarm belongs to the same regime change.

Calibration. Mean channels (Gaussian u, k = 0.5): Siegmund's approximation of
the one-sided run length ``ARL = (exp(2 k b) - 2 k b - 1) / (2 k^2)``,
``b = h + 1.166``, halved for two sides, gives about 470 steps at h = 5 and
9,600 at h = 8 (the shipped default), while a 1.5 sigma mean shift is caught
in about 10. Scale channels: ``k_v``, ``h_v``, the clip and the memory were
set by simulating the residual statistics and this detector at the defaults
(N = 128, grace 20) on i.i.d. residuals, 64 series x 200,000 steps per law:
run length to a false alarm of the scale channels alone about 3.5e5 steps
(Gaussian, 37 alarms) and 3.3e5 (Student-t(3), 39 alarms); of the whole
detector about 1.0e4 (Gaussian, 1,248 alarms: the mean channels' Siegmund
value) and 4.6e4 (Student-t(3), 281 alarms). A variance step after 700
in-control steps (400 seeds), first alarm within 128 steps: x4 under
Student-t(3) 95% (median delay 61, 90th percentile 109), x4 Gaussian 97%,
/4 96-99%; x2 within 256 steps: 42% (t(3)) and 55% (Gaussian).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.core.sia.residuals import U_MAX

#: Clip of each u entering the mean channels' reference (dimensionless).
REF_CLIP = 4.0
#: Slack of the scale channels (standard deviations of log e^2).
SCALE_K = 0.2
#: Threshold of the scale channels as a multiple of ``h``.
SCALE_H_RATIO = 3.0
#: Clip of the standardised log-squared residual ``v``.
SCALE_CLIP = 3.0
#: Memory of the scale reference (steps): a running mean up to this many
#: values, an EMA of rate 1 / SCALE_MEMORY after.
SCALE_MEMORY = 512.0
#: Kurtosis below which the threshold is not raised (Gaussian value).
KAPPA_REF = 3.0


class CusumState(NamedTuple):
    """Channel statistics (dimensionless), grace counter and references.

    ``ref_mean``/``ref_count``: running mean of u since the restart and its
    count; ``rereferenced``: an alarm has occurred (before it the mean
    channels' reference is 0); ``scale_mean``/``scale_count``: reference of
    ``log e^2`` (log units) and its count (capped at ``SCALE_MEMORY``).
    """

    g_pos: jax.Array
    g_neg: jax.Array
    g_up: jax.Array
    g_down: jax.Array
    grace: jax.Array  # int64
    ref_mean: jax.Array
    ref_count: jax.Array
    rereferenced: jax.Array  # bool
    scale_mean: jax.Array
    scale_count: jax.Array


class CusumOut(NamedTuple):
    """Telemetry of one step.

    ``drift`` is ``max(G+, G-, (h_t / h_v) max(V+, V-))`` before any reset
    (the value tested, in units of the mean channels); ``threshold`` the
    adaptive ``h_t``; ``distance = threshold - drift``; ``alarm`` the
    regime-change flag; ``in_grace`` whether alarms were suppressed this step.
    """

    drift: jax.Array
    threshold: jax.Array
    distance: jax.Array
    alarm: jax.Array
    in_grace: jax.Array


def cusum_init() -> CusumState:
    """All channels at 0, no grace period running, reference 0 for the mean."""
    zero = jnp.asarray(0.0, dtype=jnp.float64)
    return CusumState(
        g_pos=zero,
        g_neg=zero,
        g_up=zero,
        g_down=zero,
        grace=jnp.asarray(0, dtype=jnp.int64),
        ref_mean=zero,
        ref_count=zero,
        rereferenced=jnp.asarray(False),
        scale_mean=zero,
        scale_count=zero,
    )


def cusum_reset(state: CusumState, grace_steps: jax.Array | int) -> CusumState:
    """The state right after an alarm raised elsewhere (an accepted level shift).

    As after an alarm of the detector itself: channels at 0, both references
    restarting, the mean channels re-referenced, the grace period running.
    """
    zero = jnp.zeros_like(state.g_pos)
    return CusumState(
        g_pos=zero,
        g_neg=zero,
        g_up=zero,
        g_down=zero,
        grace=jnp.asarray(grace_steps, dtype=jnp.int64),
        ref_mean=zero,
        ref_count=zero,
        rereferenced=jnp.asarray(True),
        scale_mean=zero,
        scale_count=zero,
    )


def adaptive_threshold(h: jax.Array | float, kappa: jax.Array | float) -> jax.Array:
    """``h_t = h (1 + ln(max(kappa, 3) / 3))``: raised for heavy-tailed residuals."""
    kappa = jnp.asarray(kappa, dtype=jnp.float64)
    return jnp.asarray(h, dtype=jnp.float64) * (
        1.0 + jnp.log(jnp.maximum(kappa, KAPPA_REF) / KAPPA_REF)
    )


def siegmund_arl(h: float, k: float, two_sided: bool = True) -> float:
    """Siegmund's approximation of the in-control ARL of a Page test on N(0, 1) data.

    ``ARL_1 = (exp(2 k b) - 2 k b - 1) / (2 k^2)``, ``b = h + 1.166``; two
    sides with symmetric k: ``ARL_1 / 2``. Reference for the calibration.
    """
    b = h + 1.166
    one = (math.exp(2.0 * k * b) - 2.0 * k * b - 1.0) / (2.0 * k * k)
    return one / 2.0 if two_sided else one


def _self_starting(x: jax.Array, mean: jax.Array, count: jax.Array) -> jax.Array:
    """``(x - mean) sqrt(n / (n + 1))``: unit variance when mean averages n draws of x."""
    return (x - mean) * jnp.sqrt(count / (count + 1.0))


def cusum_update(
    state: CusumState,
    u: jax.Array | float,
    kappa: jax.Array | float,
    h: jax.Array | float,
    k: jax.Array | float,
    grace_steps: jax.Array | int,
    log_sq: jax.Array | float = 0.0,
    log_sq_sd: jax.Array | float = 0.0,
) -> tuple[CusumState, CusumOut]:
    """One CUSUM step; ``h``, ``k`` and ``grace_steps`` are traced scalars.

    ``log_sq``/``log_sq_sd``: ``ResidualOut``'s ``w_t`` and ``d_t``; with
    ``log_sq_sd = 0`` (the default) there is no scale observation and the
    scale channels only decay.
    """
    # Same cap as residual_update: keeps every channel finite for any finite u.
    u = jnp.clip(jnp.asarray(u, dtype=jnp.float64), -U_MAX, U_MAX)
    k = jnp.asarray(k, dtype=jnp.float64)
    h = jnp.asarray(h, dtype=jnp.float64)
    w = jnp.asarray(log_sq, dtype=jnp.float64)
    d = jnp.asarray(log_sq_sd, dtype=jnp.float64)

    n = state.ref_count
    x_ref = jnp.where(n > 0.0, _self_starting(u, state.ref_mean, n), 0.0)
    x = jnp.where(state.rereferenced, x_ref, u)
    g_pos = jnp.maximum(0.0, state.g_pos + x - k)
    g_neg = jnp.maximum(0.0, state.g_neg - x - k)

    has_scale = d > 0.0
    n_v = state.scale_count
    v = _self_starting(w, state.scale_mean, n_v) * (1.0 / jnp.where(has_scale, d, 1.0))
    v = jnp.where(has_scale & (n_v > 0.0), jnp.clip(v, -SCALE_CLIP, SCALE_CLIP), 0.0)
    g_up = jnp.maximum(0.0, state.g_up + v - SCALE_K)
    g_down = jnp.maximum(0.0, state.g_down - v - SCALE_K)

    threshold = adaptive_threshold(h, kappa)
    # Scale channels on the mean channels' scale: above h_t exactly when above h_v.
    to_mean_units = threshold * (1.0 / (SCALE_H_RATIO * h))
    drift = jnp.maximum(jnp.maximum(g_pos, g_neg), jnp.maximum(g_up, g_down) * to_mean_units)
    in_grace = state.grace > 0
    alarm = (drift > threshold) & ~in_grace
    grace = jnp.where(
        alarm,
        jnp.asarray(grace_steps, dtype=jnp.int64),
        jnp.maximum(state.grace - 1, 0),
    )

    # References: running means since the restart (the scale one an EMA past
    # SCALE_MEMORY values); alarm and grace restart them and hold the channels.
    restart = alarm | in_grace
    ref_count = n + 1.0
    ref_mean = state.ref_mean + (jnp.clip(u, -REF_CLIP, REF_CLIP) - state.ref_mean) / ref_count
    scale_count = jnp.where(has_scale, jnp.minimum(n_v + 1.0, SCALE_MEMORY), n_v)
    # Winsorised at the clip of v: one outlier moves the reference by <= 3 d / n.
    step_v = w - state.scale_mean
    step_v = jnp.where(n_v > 0.0, jnp.clip(step_v, -SCALE_CLIP * d, SCALE_CLIP * d), step_v)
    scale_mean = jnp.where(has_scale, state.scale_mean + step_v / scale_count, state.scale_mean)
    zero = jnp.zeros_like(g_pos)
    new = CusumState(
        g_pos=jnp.where(restart, zero, g_pos),
        g_neg=jnp.where(restart, zero, g_neg),
        g_up=jnp.where(restart, zero, g_up),
        g_down=jnp.where(restart, zero, g_down),
        grace=grace,
        ref_mean=jnp.where(restart, zero, ref_mean),
        ref_count=jnp.where(restart, zero, ref_count),
        rereferenced=state.rereferenced | alarm,
        scale_mean=jnp.where(restart, zero, scale_mean),
        scale_count=jnp.where(restart, zero, scale_count),
    )
    return new, CusumOut(drift, threshold, threshold - drift, alarm, in_grace)
