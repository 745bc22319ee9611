"""Window statistics of the ring buffer and the window z-score.

Numerics: the buffer is taken relative to its first sample,
``v = y / c - y_0 / c`` with ``c = 2`` when ``max |y| > 8e307`` (halving is
exact there and keeps the difference of two finite doubles finite) and
``c = 1`` otherwise (halving would flush the smallest subnormals to 0),
then divided by ``s = max |v|`` so that no power can overflow (inputs of
order 1e300 stay finite). XLA on CPU flushes subnormals to zero, so a
window that varies only by subnormal amounts is a constant window. A constant window gives
``v = 0`` exactly, hence ``std = 0`` and ``z = 0`` exactly (a plain mean of
identical values can be off by an ulp, which the z-score would amplify).
Moments are two-pass (mean, then centred second moment).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from predictor.core.numerics import tree_max, tree_sum

#: Standard deviations below this fraction of ``max |y|`` are round-off:
#: float64 resolves about 1e-16 relative, so a spread of 1e-12 relative is
#: already 10^4 ulps. ``standardize`` divides by at least this floor.
STD_REL_FLOOR = 1e-12
#: Smallest normal float64: the denominator of an all-zero window.
_TINY = 2.2250738585072014e-308


#: Above this magnitude differences of two samples can overflow: halve first.
_HALVE_ABOVE = 8e307


def _relative(buf: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``w = v / s``, ``s``, ``mean(w)`` and ``c``, for ``v = y / c - y_0 / c``, ``s = max |v|``."""
    # Batch-invariant arithmetic (numerics): tree reductions, and vectors scaled
    # by a reciprocal (exact for c in {1, 2}; w only needs to be well scaled).
    c = jnp.where(tree_max(jnp.abs(buf)) > _HALVE_ABOVE, 2.0, 1.0)
    inv_c = 1.0 / c
    v = buf * inv_c - buf[0] * inv_c
    s = tree_max(jnp.abs(v))
    s = jnp.where(s > 0.0, s, 1.0)
    # 1 / s is subnormal (flushed to 0 on CPU) for s > ~5e307: scale by the
    # exact power of two of s first, then by the reciprocal of its mantissa.
    mant, expo = jnp.frexp(s)
    w = jnp.ldexp(v, -expo) * (1.0 / mant)
    return w, s, _mean(w), c


def _mean(x: jax.Array) -> jax.Array:
    return tree_sum(x) * (1.0 / x.shape[-1])


def window_stats(buf: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and population standard deviation of the window (units of ``buf``).

    With ``w = (y / c - y_0 / c) / s``: ``mean = c (y_0 / c + s mean(w))`` and
    ``std = c s sqrt(mean((w - mean(w))^2))``. A constant window gives
    ``std = 0`` exactly.
    """
    w, s, mu, c = _relative(buf)
    sd = jnp.sqrt(_mean(jnp.square(w - mu)))
    return c * (buf[0] / c + s * mu), c * (s * sd)


def standardize(buf: jax.Array) -> jax.Array:
    """Window z-score ``z = (y - mean) / max(std, STD_REL_FLOOR * max |y|)``.

    Computed in the relative units of ``window_stats`` so that it never
    overflows. A constant (or all-zero) window gives ``z = 0`` everywhere,
    never NaN.
    """
    w, s, mu, c = _relative(buf)
    d = w - mu
    sd = jnp.sqrt(_mean(jnp.square(d)))
    # max|y| / (c s) in w units; inf when s underflows relative to |y| (z -> 0).
    floor = STD_REL_FLOOR * (tree_max(jnp.abs(buf)) / c / s)
    den = jnp.maximum(jnp.maximum(sd, floor), _TINY)
    return d * (1.0 / den)


def standardize_frame(buf: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(z, mean, den)`` with ``z = standardize(buf)`` and ``z ~ (y - mean) / den``.

    ``mean`` and ``den`` (units of ``buf``) are the frame in which ``z`` is
    expressed: the mean of ``window_stats`` and the floored deviation that
    ``standardize`` divides by. A fit cached in one window's z units maps to
    another window's by ``z_new = (mean_old - mean_new) / den_new
    + (den_old / den_new) z_old``.
    """
    w, s, mu, c = _relative(buf)
    d = w - mu
    sd = jnp.sqrt(_mean(jnp.square(d)))
    floor = STD_REL_FLOOR * (tree_max(jnp.abs(buf)) / c / s)
    den = jnp.maximum(jnp.maximum(sd, floor), _TINY)
    z = d * (1.0 / den)
    return z, c * (buf[0] / c + s * mu), c * (s * den)


def history(buf: jax.Array, count: jax.Array) -> jax.Array:
    """The window as the fits see it while it is filling: the valid part, mirrored back.

    The last ``c = min(count, N)`` samples of ``buf`` are observations; the
    rest is filled by reflecting them back in time (ages
    ``0, 1, ..., c - 1, c - 2, ..., 1, 0, 1, ...`` from the newest), so that
    every statistic, fit and forecast of a partial window is computed from
    observed values only, with the increments' distribution and the
    autocovariances of the valid part. A full window is returned unchanged.
    """
    n = buf.shape[-1]
    c = jnp.clip(count, 1, n)
    age = (n - 1) - jnp.arange(n)
    period = jnp.maximum(2 * (c - 1), 1)
    folded = age % period
    mirrored = jnp.where(folded <= c - 1, folded, period - folded)
    return buf[(n - 1) - jnp.where(c > 1, mirrored, 0)]
