"""Batch-invariant arithmetic helpers.

``step_batch`` must give, per asset, the same bits as single steps. XLA
lowers ``jnp.sum``/``jnp.dot`` to reduce ops whose association order differs
between a 1-D and a batched reduction (1 ulp observed), so reductions that
feed the state use a fixed pairwise tree of elementwise adds instead.

Likewise a vector divided by a scalar, ``v / s``, is rewritten by XLA as
``v * (1 / s)`` in batched graphs but not in single ones; code on the state
path writes ``v * (1.0 / s)`` itself so both graphs round the same way.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def tree_sum(v: jax.Array) -> jax.Array:
    """Sum over the last axis by a fixed pairwise tree (zero-padded to a power of two)."""
    n = v.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    if size != n:
        pad = jnp.zeros((*v.shape[:-1], size - n), v.dtype)
        v = jnp.concatenate([v, pad], axis=-1)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = v[..., :half] + v[..., half:]
    return v[..., 0]


def tree_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """``sum(a * b)`` over the last axis, batch-invariant."""
    return tree_sum(a * b)


def f64(x: float) -> jax.Array:
    """A strongly typed float64 scalar (weak types would change the jit signature)."""
    return jnp.asarray(x, dtype=jnp.float64)


def tree_max(v: jax.Array) -> jax.Array:
    """Maximum over the last axis by a fixed pairwise tree (padded with -inf)."""
    n = v.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    if size != n:
        pad = jnp.full((*v.shape[:-1], size - n), -jnp.inf, v.dtype)
        v = jnp.concatenate([v, pad], axis=-1)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = jnp.maximum(v[..., :half], v[..., half:])
    return v[..., 0]


def logsumexp(v: jax.Array) -> jax.Array:
    """``log(sum(exp(v)))`` over the last axis, stable and batch-invariant.

    An all ``-inf`` row gives ``-inf`` (not NaN).
    """
    m = tree_max(v)
    safe_m = jnp.where(jnp.isfinite(m), m, 0.0)
    return safe_m + jnp.log(tree_sum(jnp.exp(v - safe_m[..., None])))
