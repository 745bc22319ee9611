"""Kernel B, part 1: Nadaraya–Watson drift and diffusion of the window.

From the window ``z`` (length N, standardised, oldest first) the kernel
forms the n = N - 1 pairs ``(x_k, d_k) = (z_k, z_{k+1} - z_k)``; one tick is
one unit of time, so the drift ``b`` is in z units per tick and the
diffusion ``sigma^2`` in squared z units per tick:

    w_k(x)     = exp(-(x - x_k)^2 / (2 h^2)) / sum_j exp(-(x - x_j)^2 / (2 h^2))
    b(x)       = sum_k w_k(x) d_k
    sigma^2(x) = max( sum_k w_k(x) (d_k - b(x))^2 , floor ),
    floor      = VAR_FLOOR_REL * mean((d - mean d)^2) + VAR_FLOOR_ABS.

The weights are a softmax over k, so they never underflow to 0/0: far from
the data every weight goes to the nearest pair, and the estimates extend as
constants. The local variance is the weighted variance around b(x), never
negative; the floor keeps the backward equation non-degenerate where few
pairs fall within a bandwidth.

Bandwidth: Silverman's rule of thumb, as statsmodels' ``bw_silverman``,

    h = max(0.9 A n^(-1/5), H_MIN),  A = min(std(x, ddof=1), IQR(x) / 1.349)
    (A = std when IQR = 0),

with IQR from linearly interpolated percentiles. ``H_MIN`` (z units) keeps
h positive on a constant window.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

from predictor.core.kernels.b_batch import tree_max, tree_sum

#: Floor of the local variance, relative to the variance of all increments.
VAR_FLOOR_REL = 1e-2
#: Absolute floor of the local variance, squared z units per tick.
VAR_FLOOR_ABS = 1e-8
#: Smallest bandwidth, z units.
H_MIN = 1e-3


class NWFit(NamedTuple):
    """The pairs and smoothing constants of one window.

    ``x``: levels z_k (z units); ``d``: increments z_{k+1} - z_k (z units
    per tick); ``h``: bandwidth (z units); ``floor``: variance floor
    (squared z units per tick).
    """

    x: Float[Array, " n"]
    d: Float[Array, " n"]
    h: Float[Array, ""]
    floor: Float[Array, ""]


def _quantile(xs: Float[Array, " n"], q: float) -> Float[Array, ""]:
    # numpy's default ("linear") quantile of sorted data; n and q are static,
    # so the two order statistics and the weight are Python constants.
    pos = q * (xs.shape[0] - 1)
    lo = int(pos)
    hi = min(lo + 1, xs.shape[0] - 1)
    return xs[lo] + (pos - lo) * (xs[hi] - xs[lo])


def silverman_bandwidth(x: Float[Array, " n"]) -> Float[Array, ""]:
    """Silverman's rule ``0.9 min(std, IQR / 1.349) n^(-1/5)``, floored at ``H_MIN``."""
    n = x.shape[0]
    xc = x - tree_sum(x) * (1.0 / n)
    std = jnp.sqrt(tree_sum(xc * xc) * (1.0 / (n - 1)))
    xs = jnp.sort(x)
    iqr = (_quantile(xs, 0.75) - _quantile(xs, 0.25)) * (1.0 / 1.349)
    spread = jnp.where(iqr > 0.0, jnp.minimum(std, iqr), std)
    return jnp.maximum(0.9 * spread * n ** (-0.2), H_MIN)


def nw_fit(z: Float[Array, " N"]) -> NWFit:
    """Pairs, bandwidth and variance floor of the window ``z``."""
    x = z[:-1]
    d = z[1:] - z[:-1]
    inv_n = 1.0 / d.shape[0]
    dc = d - tree_sum(d) * inv_n
    floor = VAR_FLOOR_REL * tree_sum(dc * dc) * inv_n + VAR_FLOOR_ABS
    return NWFit(x=x, d=d, h=silverman_bandwidth(x), floor=floor)


def nw_coefficients(
    fit: NWFit, x: Float[Array, " m"]
) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
    """Drift b(x) and floored diffusion sigma^2(x) at the points ``x``.

    Sums and maxima over the pairs use ``b_batch`` (bitwise-equal under vmap).
    """
    # Reciprocal, not a division by a traced scalar: see b_fd.fd_generator.
    u = (x[:, None] - fit.x[None, :]) * (1.0 / fit.h)
    logit = -0.5 * u * u
    e = jnp.exp(logit - tree_max(logit)[:, None])
    w = e * (1.0 / tree_sum(e))[:, None]
    b = tree_sum(w * fit.d[None, :])
    r = fit.d[None, :] - b[:, None]
    s2 = tree_sum(w * r * r)
    return b, jnp.maximum(s2, fit.floor)
