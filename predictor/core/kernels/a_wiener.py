"""Kernel A, Wiener–Kolmogorov: the optimal linear (AR) predictor of z_{t+1}.

Input: the window ``z`` (length N, oldest first, already standardised by the
caller, ``z[-1] = z_t``). The kernel works on the window-demeaned levels
``x_k = z_k - mean(z)`` (levels, not increments: differencing a stationary
series makes a non-invertible moving average that no finite AR fits).

Fit, for every order m = 1..P (P = ``cfg.wiener_order``), in one fixed-shape
Levinson–Durbin pass over the reflection coefficients k_m:

* ``burg`` (default): Burg's reflection coefficients from the forward and
  backward prediction errors f_m, b_m (Brockwell & Davis 2016, §5.1.2),

      k_m = 2 sum_{t=m}^{N-1} f_{m-1}(t) b_{m-1}(t-1)
            / sum_{t=m}^{N-1} (f_{m-1}(t)^2 + b_{m-1}(t-1)^2),
      f_m(t) = f_{m-1}(t) - k_m b_{m-1}(t-1),
      b_m(t) = b_{m-1}(t-1) - k_m f_{m-1}(t),     f_0 = b_0 = x.

  |k_m| <= 1 by Cauchy–Schwarz, so the fitted AR is always stable. This is
  statsmodels' ``burg(x, order, demean=True)`` (which forms the same
  denominator by a recursive update instead of the direct sum).
* ``yule_walker``: biased sample autocovariances
  ``r_j = (1/N) sum_{t=j}^{N-1} x_t x_{t-j}`` with a ridge on lag 0,
  ``r_0 <- r_0 (1 + YW_RIDGE_REL) + YW_RIDGE_ABS`` (keeps the Toeplitz
  system positive definite on a flat window), and the classical recursion
  ``k_m = (r_m - sum_{j=1}^{m-1} a_{m-1,j} r_{m-j}) / E_{m-1}``.

Both share the step-up ``a_{m,j} = a_{m-1,j} - k_m a_{m-1,m-j}``,
``a_{m,m} = k_m``. The innovation variance E_m (squared z units) is the
prediction-error sequence each recursion yields for free: for Burg the mean
forward/backward error energy ``E_m = (1 - k_m^2) den_m / (2 (N - m))``,
``E_0 = mean(x^2)`` (statsmodels' ``sigma2``); for Yule–Walker
``E_m = E_{m-1} (1 - k_m^2)``, ``E_0 = r_0``. The order is the AIC minimiser
``p* = argmin_{m in 1..P} N log E_m + 2 m`` (first minimum on ties), and the
forecast is the mean-adjusted AR prediction

    p_A = mean(z) + sum_{j=1}^{p*} a_{p*,j} x_{N-j}      (z units).

Every array has a shape fixed by ``cfg``; orders above p* are masked, never
sliced. Reflection coefficients are clipped to ``|k| <= K_MAX`` and zero
denominators give ``k = 0`` so that an all-zero (cold) or constant window
yields the finite forecast ``mean(z)``.

Batch invariance (``vmap`` must equal per-item calls bit for bit): sums
use ``tree_sum`` (a fixed pairwise tree of elementwise adds) instead of an
XLA reduce, and nothing batched is divided by an unbatched scalar
(XLA rewrites ``A / broadcast(c)`` into ``A * broadcast(1/c)`` only in the
batched graph); such divisions are written as products with a reciprocal.

Two rates: ``refit`` (every ``refit_interval`` ticks) runs the recursion
and the AIC choice and caches the chosen coefficients in the state;
``forecast`` (every tick) applies them to the current window's lags, O(P).
``update`` is both at once, the full recomputation.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from predictor.config import PredictorConfig
from predictor.core.numerics import tree_sum
from predictor.core.types import Scalar

#: Relative ridge on the lag-0 autocovariance (Yule–Walker).
YW_RIDGE_REL = 1e-8
#: Absolute ridge on the lag-0 autocovariance, in squared z units (Yule–Walker).
YW_RIDGE_ABS = 1e-12
#: Bound on |k_m|: keeps E_m > 0 and the AR polynomial strictly stable.
K_MAX = 1.0 - 1e-12
#: Denominators at or below this are treated as zero (k = 0).
_TINY = 1e-300

# Array shapes (aliases keep jaxtyping's dimension strings out of annotations).
Vector = Float[Array, " n"]
Matrix = Float[Array, "p p"]
IntScalar = Int[Array, ""]


class AState(NamedTuple):
    """Last fit of kernel A (diagnostic only; ``update`` does not read it).

    ``coefs``: AR coefficients a_{p*,1..P} of the chosen order, zero-padded
    (dimensionless); ``order``: p*; ``sigma2``: innovation variance E_{p*}
    (z units squared).
    """

    coefs: Vector
    order: IntScalar
    sigma2: Scalar


class AAux(NamedTuple):
    """Per-step diagnostics of kernel A (float64 scalars).

    ``order``: AIC-chosen order p*; ``sigma2``: innovation variance E_{p*}
    (z^2); ``aic``: N log E_{p*} + 2 p*; ``max_abs_reflection``: max |k_m|
    over m <= p* (near 1: near a unit root); ``coef_sum``: sum_j a_{p*,j}
    (1 - coef_sum is the mean-reversion strength per step).
    """

    order: Scalar
    sigma2: Scalar
    aic: Scalar
    max_abs_reflection: Scalar
    coef_sum: Scalar


class ARFit(NamedTuple):
    """AR fits of every order 1..P from one Levinson–Durbin pass.

    ``coefs[m-1, j-1] = a_{m,j}`` (zero for j > m); ``reflections[m-1] = k_m``;
    ``variances[m] = E_m`` for m = 0..P (z units squared).
    """

    coefs: Matrix
    reflections: Vector
    variances: Vector


def init(cfg: PredictorConfig) -> AState:
    """Cold state: no coefficients, order 1, unit innovation variance."""
    return AState(
        coefs=jnp.zeros((cfg.wiener_order,), jnp.float64),
        order=jnp.asarray(1, jnp.int32),
        sigma2=jnp.asarray(1.0, jnp.float64),
    )


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` clipped to ``[-K_MAX, K_MAX]``; 0 where ``den`` is ~0."""
    ok = den > _TINY
    k = jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)
    return jnp.clip(k, -K_MAX, K_MAX)


def _step_up(a: jax.Array, k: jax.Array, m: jax.Array) -> jax.Array:
    """Levinson step-up from order m-1 to m on a zero-padded length-P vector.

    ``a_new[j] = a[j] - k a[m-2-j]`` for 0 <= j < m-1 (0-based lags),
    ``a_new[m-1] = k``, entries beyond m-1 stay zero.
    """
    p = a.shape[0]
    j = jnp.arange(p)
    partner = jnp.take(a, jnp.clip(m - 2 - j, 0, p - 1))
    a_new = jnp.where(j < m - 1, a - k * partner, a)
    return jnp.where(j == m - 1, k, a_new)


def burg_fit(x: Vector, order: int) -> ARFit:
    """Burg AR fits of orders 1..``order`` for the (already demeaned) ``x``."""
    n = x.shape[0]
    t = jnp.arange(n)
    e0 = tree_sum(x * x) * (1.0 / n)

    def body(
        carry: tuple[jax.Array, jax.Array, jax.Array], xs: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[jax.Array, ...]]:
        f, b, a = carry
        m, inv_count = xs
        # b_{m-1}(t-1) aligned with f_{m-1}(t); position 0 is outside the mask.
        bs = jnp.concatenate([jnp.zeros((1,), x.dtype), b[:-1]])
        mask = t >= m
        num = 2.0 * tree_sum(jnp.where(mask, f * bs, 0.0))
        den = tree_sum(jnp.where(mask, f * f + bs * bs, 0.0))
        k = _safe_ratio(num, den)
        f_new = f - k * bs
        b_new = bs - k * f
        a_new = _step_up(a, k, m)
        # (1 - k^2) den = sum_{t>=m} f_m(t)^2 + b_m(t)^2: the order-m error energy.
        e_new = (1.0 - k * k) * den * inv_count
        return (f_new, b_new, a_new), (a_new, k, e_new)

    a0 = jnp.zeros((order,), x.dtype)
    ms = np.arange(1, order + 1)
    inv_counts = 1.0 / (2.0 * (n - ms))
    _, (coefs, ks, es) = jax.lax.scan(body, (x, x, a0), (jnp.asarray(ms), jnp.asarray(inv_counts)))
    return ARFit(coefs, ks, jnp.concatenate([e0[None], es]))


def autocovariances(x: Vector, order: int) -> Vector:
    """Biased sample autocovariances r_0..r_order of ``x`` (already demeaned), ridge on r_0.

    ``r_j = (1/N) sum_{t=j}^{N-1} x_t x_{t-j}``;
    ``r_0 <- r_0 (1 + YW_RIDGE_REL) + YW_RIDGE_ABS``.
    """
    n = x.shape[0]

    def lag(j: jax.Array) -> jax.Array:
        shifted = jnp.roll(x, j)  # shifted[t] = x[t - j] for t >= j
        return tree_sum(jnp.where(jnp.arange(n) >= j, x * shifted, 0.0)) * (1.0 / n)

    r = jax.vmap(lag)(jnp.arange(order + 1))
    return r.at[0].set(r[0] * (1.0 + YW_RIDGE_REL) + YW_RIDGE_ABS)


def levinson_fit(r: Vector) -> ARFit:
    """Levinson–Durbin AR fits of orders 1..P from autocovariances r_0..r_P."""
    order = r.shape[0] - 1

    def body(
        carry: tuple[jax.Array, jax.Array], m: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
        a, e = carry
        j = jnp.arange(order)
        # sum_{j=1}^{m-1} a_{m-1,j} r_{m-j}, 0-based: a[j] * r[m-1-j] for j < m-1.
        r_lag = jnp.take(r, jnp.clip(m - 1 - j, 0, order))
        acc = r[m] - tree_sum(jnp.where(j < m - 1, a * r_lag, 0.0))
        k = _safe_ratio(acc, e)
        a_new = _step_up(a, k, m)
        e_new = e * (1.0 - k * k)
        return (a_new, e_new), (a_new, k, e_new)

    a0 = jnp.zeros((order,), r.dtype)
    ms = jnp.arange(1, order + 1)
    _, (coefs, ks, es) = jax.lax.scan(body, (a0, r[0]), ms)
    return ARFit(coefs, ks, jnp.concatenate([r[:1], es]))


def fit(x: Vector, cfg: PredictorConfig) -> ARFit:
    """AR fits of orders 1..``cfg.wiener_order`` by ``cfg.wiener_method``."""
    if cfg.wiener_method == "burg":
        return burg_fit(x, cfg.wiener_order)
    if cfg.wiener_method == "yule_walker":
        return levinson_fit(autocovariances(x, cfg.wiener_order))
    raise ValueError(f"unknown wiener_method {cfg.wiener_method!r}")


def refit(z: Vector, cfg: PredictorConfig) -> tuple[AState, AAux]:
    """Fit every order 1..P on the window ``z`` and keep the AIC choice (slow rate)."""
    n = z.shape[0]
    p = cfg.wiener_order
    mean = tree_sum(z) * (1.0 / n)
    ar = fit(z - mean, cfg)

    orders = jnp.arange(1, p + 1)
    log_e = jnp.log(jnp.maximum(ar.variances[1:], _TINY))
    aic = n * log_e + 2.0 * orders
    idx = jnp.argmin(aic)
    coefs = ar.coefs[idx]
    order = idx + 1
    sigma2 = ar.variances[order]
    max_k = jnp.max(jnp.where(orders <= order, jnp.abs(ar.reflections), 0.0))
    new_state = AState(coefs=coefs, order=order.astype(jnp.int32), sigma2=sigma2)
    aux = AAux(
        order=order.astype(jnp.float64),
        sigma2=sigma2,
        aic=aic[idx],
        max_abs_reflection=max_k,
        coef_sum=tree_sum(coefs),
    )
    return new_state, aux


def forecast(state: AState, z: Vector) -> Scalar:
    """Mean-adjusted AR forecast of z_{t+1} from the cached coefficients (fast rate).

    ``p_A = mean(z) + sum_j a_j (z_{N-j} - mean(z))`` on the current window:
    the coefficients are dimensionless, so a fit made on an earlier window
    applies to the current window's standardisation as it is.
    """
    n = z.shape[0]
    p = state.coefs.shape[0]
    mean = tree_sum(z) * (1.0 / n)
    lags = z[::-1][:p] - mean  # x_{N-1}, x_{N-2}, ..., x_{N-P}
    return mean + tree_sum(state.coefs * lags)


def update(state: AState, z: Vector, cfg: PredictorConfig) -> tuple[AState, Scalar, AAux]:
    """Refit on the window and forecast z_{t+1} (z units): both rates at once."""
    del state  # the fit is recomputed from the window
    new_state, aux = refit(z, cfg)
    return new_state, forecast(new_state, z), aux
