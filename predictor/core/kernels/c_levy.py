"""Kernel C, Itô / Lévy jump-diffusion, and a Chambers–Mallows–Stuck sampler.

Model of the window-standardised series z (time unit: one tick):

    dz = theta (m - z) dt + sigma dW + J dN_t,    N_t Poisson(lambda per tick).

Estimation, from the N-1 increments ``d_k = z_{k+1} - z_k`` of the window:

1. Diffusive scale by bipower variation (robust to isolated jumps),
   ``sigma_bpv^2 = (pi/2) mean_k |d_k| |d_{k-1}|`` (z^2 per tick).
2. Jumps: ``|d_k| > jump_threshold_sigma * sigma_bpv``. Bipower is only
   asymptotically jump-robust: each jump still enters two products, and at
   5% intensity with 8-sigma jumps it inflates sigma_bpv by about 40%, which
   hides the smaller jumps. So the scale is re-estimated BPV_REFINEMENTS
   times from the products that touch no detected jump (the usual
   truncated-bipower iteration) and the test repeated. Intensity
   ``lambda = #jumps / (N-1)`` (per tick), mean size ``mu_J`` = mean of the
   jump increments (z units; 0 when there is none).
3. OU drift ``b(x) = theta (m - x)`` by least squares on the non-jump pairs,
   ``d_k = alpha + beta z_k + e_k``. The slope estimates the exact OU
   transition, ``1 + beta = e^{-theta}`` (the regression is on one-tick
   increments), so ``theta = -log(1 + beta)`` and ``m = -alpha / beta``;
   with ``1 + beta <= e^{-THETA_MAX}`` (white noise or anti-persistence)
   theta is capped at THETA_MAX, the stiff limit whose expectation is m.
   Shrinkage: with the one-sided t-statistic ``t = -beta / se(beta)``,
   beta is multiplied by ``max(0, 1 - 4/t^2)`` when t > 2 and by 0
   otherwise (positive-part Stein factor). So theta = 0 unless mean
   reversion is significant, and a barely significant theta is damped. On a
   random walk the Dickey–Fuller distribution of t makes t > 2 happen in
   about a quarter of the windows; on 128-point windows a hard cut at 2
   cost 0.5-0.7% RMSE against the naive forecast (five seeds), this factor
   0.1-0.3%.
4. One-step expectation of the drift part, from ``x_0 = z_t`` over
   ``n = levy_substeps`` sub-steps of size ``h = 1/n`` with stiffness
   ``S = theta h``:

       explicit  x <- x + h theta (m - x)                (stable for S < 2)
       implicit  x <- (x + h theta m) / (1 + S)          (stable for all S)
       blend     x <- (1 - w) explicit + w implicit,
                 w = clip((S - stiffness_low) / (stiffness_high - stiffness_low), 0, 1),

   i.e. explicit for ``S <= stiffness_low``, implicit for
   ``S >= stiffness_high``, a convex blend between. Then

       p_C = x_n + lambda mu_J       (z units).

   This is an expectation, never a sampled path.

Batch invariance as in kernel A: sums by ``tree_sum``, divisions by
unbatched scalars written as products with a reciprocal.

Every quantity has a fixed shape; degenerate windows (all zero, constant)
give sigma_bpv = 0, no jumps, theta = 0 and p_C = z_t.

Two rates: ``refit`` (every ``refit_interval`` ticks) caches the fit in the
state; ``forecast`` (every tick) integrates the cached drift from the
current z_t, O(levy_substeps). ``update`` is both at once.

The Chambers–Mallows–Stuck sampler ``cms_sample`` draws standard
alpha-stable variates in the S1 parameterisation (Samorodnitsky & Taqqu;
scipy's ``levy_stable`` with ``parameterization = "S1"``) for simulation and
tests.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from predictor.config import PredictorConfig
from predictor.core.numerics import tree_sum
from predictor.core.types import Scalar

#: Cap on the mean-reversion rate (per tick): e^{-50} ~ 2e-22, the stiff limit.
THETA_MAX = 50.0
#: Re-estimations of sigma_bpv without the products that touch a detected jump.
BPV_REFINEMENTS = 2
#: Minimum t-statistic of the mean reversion before theta is kept.
T_CRIT = 2.0
#: Denominators at or below this are treated as zero.
_TINY = 1e-300
#: Euler sub-steps unrolled in the compiled graph (more run as a loop).
UNROLL_MAX = 16

# Array shapes (aliases keep jaxtyping's dimension strings out of annotations).
Vector = Float[Array, " n"]
Samples = Float[Array, "..."]


class CState(NamedTuple):
    """Last fit of kernel C (diagnostic only).

    ``theta`` (per tick), ``m`` (z units), ``lam`` (jumps per tick),
    ``mu_j`` (z units), ``sigma_bpv`` (z units per sqrt tick).
    """

    theta: Scalar
    m: Scalar
    lam: Scalar
    mu_j: Scalar
    sigma_bpv: Scalar


class CAux(NamedTuple):
    """Per-step diagnostics of kernel C (float64 scalars).

    ``lam``, ``mu_j``, ``theta``, ``m``, ``sigma_bpv`` as in ``CState``;
    ``t_stat``: one-sided t-statistic of the mean reversion; ``stiffness``:
    S = theta h; ``blend_weight``: w, the implicit share of each sub-step;
    ``frac_explicit`` / ``frac_blend`` / ``frac_implicit``: the fraction of
    sub-steps done by each scheme (they sum to 1; all sub-steps of a tick
    share S, so each is 0 or 1 per tick and their averages over ticks are
    the scheme fractions of a run).
    """

    lam: Scalar
    mu_j: Scalar
    theta: Scalar
    m: Scalar
    sigma_bpv: Scalar
    t_stat: Scalar
    stiffness: Scalar
    blend_weight: Scalar
    frac_explicit: Scalar
    frac_blend: Scalar
    frac_implicit: Scalar


class JumpDiffusionFit(NamedTuple):
    """Estimated parameters of one window (units as in ``CState``)."""

    theta: Scalar
    m: Scalar
    lam: Scalar
    mu_j: Scalar
    sigma_bpv: Scalar
    t_stat: Scalar


def init(cfg: PredictorConfig) -> CState:
    """Cold state: no drift, no jumps, zero scale."""
    del cfg
    zero = jnp.asarray(0.0, jnp.float64)
    return CState(theta=zero, m=zero, lam=zero, mu_j=zero, sigma_bpv=zero)


def _div(num: jax.Array, den: jax.Array, default: float = 0.0) -> jax.Array:
    """``num / den`` where ``|den| > _TINY``, else ``default``."""
    ok = jnp.abs(den) > _TINY
    out: jax.Array = jnp.where(ok, num / jnp.where(ok, den, 1.0), default)
    return out


def fit_window(z: Vector, jump_threshold_sigma: float) -> JumpDiffusionFit:
    """Bipower scale, jumps and the shrunk OU drift of one window (module docstring)."""
    x = z[:-1]
    d = jnp.diff(z)
    n = d.shape[0]
    ad = jnp.abs(d)
    pair = ad[1:] * ad[:-1]
    sigma_bpv = jnp.sqrt(tree_sum(pair) * (0.5 * math.pi / (n - 1)))
    jump = (ad > jump_threshold_sigma * sigma_bpv) & (sigma_bpv > _TINY)
    for _ in range(BPV_REFINEMENTS):
        # Drop the products that touch a detected jump and re-test against the cleaner scale.
        clean = ~(jump[1:] | jump[:-1])
        n_clean = tree_sum(clean.astype(jnp.float64))
        sigma_bpv = jnp.where(
            n_clean > 0.0,
            jnp.sqrt(0.5 * math.pi * _div(tree_sum(jnp.where(clean, pair, 0.0)), n_clean)),
            sigma_bpv,
        )
        jump = (ad > jump_threshold_sigma * sigma_bpv) & (sigma_bpv > _TINY)
    n_jump = tree_sum(jump.astype(jnp.float64))
    lam = n_jump * (1.0 / n)
    mu_j = _div(tree_sum(jnp.where(jump, d, 0.0)), n_jump)

    w = (~jump).astype(jnp.float64)
    n_w = tree_sum(w)
    xm = _div(tree_sum(w * x), n_w)
    dm = _div(tree_sum(w * d), n_w)
    xc = x - xm
    sxx = tree_sum(w * xc * xc)
    beta = _div(tree_sum(w * xc * (d - dm)), sxx)
    alpha = dm - beta * xm
    resid = d - alpha - beta * x
    s2 = _div(tree_sum(w * resid * resid), jnp.maximum(n_w - 2.0, 1.0))
    se = jnp.sqrt(_div(s2, sxx))
    # se = 0 with beta < 0 is an exact fit: as significant as it gets.
    t_stat = jnp.where(se > _TINY, -beta / jnp.where(se > _TINY, se, 1.0), -jnp.sign(beta) * 1e300)
    t_stat = jnp.where(sxx > _TINY, t_stat, 0.0)
    shrink = jnp.where(t_stat > T_CRIT, 1.0 - (T_CRIT / jnp.maximum(t_stat, T_CRIT)) ** 2, 0.0)

    phi = 1.0 + beta * shrink
    theta = 0.0 - jnp.log(jnp.clip(phi, math.exp(-THETA_MAX), 1.0))  # +0, not -0
    m = jnp.where(beta < 0.0, _div(-alpha, beta, 0.0), xm)
    return JumpDiffusionFit(theta, m, lam, mu_j, sigma_bpv, t_stat)


def implicit_weight(stiffness: jax.Array, low: float, high: float) -> jax.Array:
    """Implicit share w of a sub-step: 0 for S <= low, 1 for S >= high, linear between."""
    if high <= low:
        return (stiffness >= high).astype(jnp.float64)
    return jnp.clip((stiffness - low) * (1.0 / (high - low)), 0.0, 1.0)


def euler_mean(
    x0: jax.Array, theta: jax.Array, m: jax.Array, n_sub: int, w: jax.Array
) -> jax.Array:
    """Drift-only expectation after one tick by ``n_sub`` blended Euler sub-steps.

    Each sub-step of size h = 1/n_sub:
    ``x <- (1 - w) (x + h theta (m - x)) + w (x + h theta m) / (1 + h theta)``.
    ``w = 0`` is explicit Euler, ``w = 1`` implicit Euler.
    """
    h = 1.0 / n_sub
    s = theta * h

    def sub_step(_: int, x: jax.Array) -> jax.Array:
        explicit = x + s * (m - x)
        implicit = (x + s * m) / (1.0 + s)
        return (1.0 - w) * explicit + w * implicit

    # A few sub-steps are unrolled: a loop costs a dispatch per iteration on one asset.
    out: jax.Array = jax.lax.fori_loop(0, n_sub, sub_step, x0, unroll=min(n_sub, UNROLL_MAX))
    return out


def refit(z: Vector, cfg: PredictorConfig) -> CState:
    """Slow rate: the jump-diffusion fit of the window, cached (z units of ``z``)."""
    est = fit_window(z, cfg.jump_threshold_sigma)
    return CState(theta=est.theta, m=est.m, lam=est.lam, mu_j=est.mu_j, sigma_bpv=est.sigma_bpv)


def forecast(
    state: CState, z_t: Scalar, gain: Scalar, offset: Scalar, cfg: PredictorConfig
) -> Scalar:
    """Fast rate: E[z_{t+1}] from the cached fit, in current z units.

    ``z = offset + gain r`` maps the refit window's units r to the current
    window's: the level ``m`` and the jump mean ``mu_J`` move with it, the
    rates theta and lambda (per tick) do not. At ``gain = 1, offset = 0``
    this is the full recomputation's forecast.
    """
    n_sub = cfg.levy_substeps
    w = implicit_weight(state.theta * (1.0 / n_sub), cfg.stiffness_low, cfg.stiffness_high)
    m = offset + gain * state.m
    drift_mean = euler_mean(z_t, state.theta, m, n_sub, w)
    return drift_mean + state.lam * (gain * state.mu_j)


def update(state: CState, z: Vector, cfg: PredictorConfig) -> tuple[CState, Scalar, CAux]:
    """Both rates at once: fit the jump-diffusion on the window, return E[z_{t+1}] (z units)."""
    del state  # the fit is recomputed from the window
    est = fit_window(z, cfg.jump_threshold_sigma)
    n_sub = cfg.levy_substeps
    stiffness = est.theta * (1.0 / n_sub)
    w = implicit_weight(stiffness, cfg.stiffness_low, cfg.stiffness_high)
    drift_mean = euler_mean(z[-1], est.theta, est.m, n_sub, w)
    pred = drift_mean + est.lam * est.mu_j

    frac_explicit = (w <= 0.0).astype(jnp.float64)
    frac_implicit = (w >= 1.0).astype(jnp.float64)
    new_state = CState(
        theta=est.theta, m=est.m, lam=est.lam, mu_j=est.mu_j, sigma_bpv=est.sigma_bpv
    )
    aux = CAux(
        lam=est.lam,
        mu_j=est.mu_j,
        theta=est.theta,
        m=est.m,
        sigma_bpv=est.sigma_bpv,
        t_stat=est.t_stat,
        stiffness=stiffness,
        blend_weight=w,
        frac_explicit=frac_explicit,
        frac_blend=1.0 - frac_explicit - frac_implicit,
        frac_implicit=frac_implicit,
    )
    return new_state, pred, aux


def cms_sample(
    key: jax.Array, alpha: float | jax.Array, beta: float | jax.Array, shape: tuple[int, ...]
) -> Samples:
    """Standard alpha-stable variates S_alpha(1, beta, 0) by Chambers–Mallows–Stuck.

    S1 parameterisation (scale 1, location 0; scipy ``levy_stable`` with
    ``parameterization = "S1"``), 0 < alpha <= 2, -1 <= beta <= 1. With
    ``V ~ U(-pi/2, pi/2)`` and ``W ~ Exp(1)`` independent:

    * alpha != 1: ``B = arctan(beta tan(pi alpha/2)) / alpha``,
      ``S = (1 + beta^2 tan^2(pi alpha/2))^(1/(2 alpha))``,
      ``X = S sin(alpha (V + B)) / cos(V)^(1/alpha)
      * (cos(V - alpha (V + B)) / W)^((1 - alpha)/alpha)``;
    * alpha == 1: ``X = (2/pi) ((pi/2 + beta V) tan V
      - beta log((pi/2) W cos V / (pi/2 + beta V)))``.

    ``alpha`` and ``beta`` may be traced scalars; both branches are computed
    on safe arguments and selected with ``jnp.where``.
    """
    alpha = jnp.asarray(alpha, jnp.float64)
    beta = jnp.asarray(beta, jnp.float64)
    k_v, k_w = jax.random.split(key)
    half_pi = 0.5 * math.pi
    # Open interval: the endpoints make cos(V) = 0.
    v = jax.random.uniform(k_v, shape, jnp.float64, minval=-half_pi, maxval=half_pi)
    v = jnp.clip(v, -half_pi + 1e-15, half_pi - 1e-15)
    w = jax.random.exponential(k_w, shape, jnp.float64)
    w = jnp.maximum(w, _TINY)  # log(W) and 1/W stay finite

    is_one = alpha == 1.0
    a = jnp.where(is_one, 0.5, alpha)  # any alpha != 1 keeps the unused branch finite
    tan_pa = jnp.tan(half_pi * a)
    b_shift = jnp.arctan(beta * tan_pa) / a
    scale = (1.0 + beta**2 * tan_pa**2) ** (1.0 / (2.0 * a))
    avb = a * (v + b_shift)
    x_gen = (
        scale * jnp.sin(avb) / jnp.cos(v) ** (1.0 / a) * (jnp.cos(v - avb) / w) ** ((1.0 - a) / a)
    )
    pb = half_pi + beta * v
    x_one = (pb * jnp.tan(v) - beta * jnp.log(half_pi * w * jnp.cos(v) / pb)) / half_pi
    return jnp.where(is_one, x_one, x_gen)
