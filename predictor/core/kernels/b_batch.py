"""Bitwise batch invariance for kernel B: ``vmap`` as a loop, tree reductions.

``jax.vmap(update)`` must equal the per-item calls bit for bit. XLA:CPU does
not guarantee that for batched code: the summation order of a reduce, the
code path of transcendental functions fused next to one, FMA contraction
(always on in XLA:CPU) and the rewriting of thin matrix products into
reductions all depend on the shapes, i.e. on the batch size. Measured with
jax 0.10: ``exp(x - max(x))`` on a 64 x 63 array, and the DGM weight
gradients, differ in the last bit between vmap over 2 items and single calls.

Two defences:

* ``sequential_vmap``: under ``vmap`` the wrapped function runs as a
  ``lax.map`` over the items, i.e. the same unbatched computation once per
  item, instead of being rewritten into batched operations. Items are then
  processed one after another (no SIMD across the batch).
* ``tree_sum`` / ``tree_max`` / ``tree_min``: reductions by pairwise halving on
  static slices, so that the order is fixed by the code and the fusions of the
  unbatched computation contain no XLA reduce either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

F = TypeVar("F", bound=Callable[..., Any])


def sequential_vmap(fn: F) -> F:
    """``fn`` unchanged, except that ``jax.vmap`` of it loops over the items.

    ``fn`` takes and returns pytrees of arrays; arguments not batched by the
    caller are broadcast to the batch, and every output is batched.
    """
    wrapped = jax.custom_batching.custom_vmap(fn)

    @wrapped.def_vmap
    def _rule(axis_size: int, in_batched: list[Any], *args: Any) -> tuple[Any, Any]:
        def widen(arg: Any, batched: Any) -> Any:
            return jax.tree.map(
                lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *jnp.shape(a))),
                arg,
                batched,
            )

        items = tuple(widen(a, b) for a, b in zip(args, in_batched, strict=True))
        out = jax.lax.map(lambda xs: fn(*xs), items)
        return out, jax.tree.map(lambda _: True, out)

    return wrapped  # type: ignore[return-value]


def _tree(
    a: Float[Array, "*batch n"], op: Callable[[Array, Array], Array], fill: float
) -> Float[Array, "*batch"]:
    n = a.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    if size != n:
        pad = jnp.full((*a.shape[:-1], size - n), fill, dtype=a.dtype)
        a = jnp.concatenate([a, pad], axis=-1)
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        a = op(a[..., :half], a[..., half:])
    return a[..., 0]


def tree_sum(a: Float[Array, "*batch n"]) -> Float[Array, "*batch"]:
    """Sum over the last axis, pairwise (zero-padded to a power of two)."""
    return _tree(a, jnp.add, 0.0)


def tree_max(a: Float[Array, "*batch n"]) -> Float[Array, "*batch"]:
    """Maximum over the last axis (exact; written without an XLA reduce)."""
    return _tree(a, jnp.maximum, -jnp.inf)


def tree_min(a: Float[Array, "*batch n"]) -> Float[Array, "*batch"]:
    """Minimum over the last axis (exact; written without an XLA reduce)."""
    return _tree(a, jnp.minimum, jnp.inf)
