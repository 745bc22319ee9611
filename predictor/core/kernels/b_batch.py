"""Bitwise batch invariance for kernel B: ``vmap`` as a loop, tree reductions.

``jax.vmap(update)`` must equal the per-item calls bit for bit. XLA:CPU does
not promise that: the summation order of a reduce, the code path of a
transcendental function fused next to one, the rewriting of thin matrix
products into reductions and FMA contraction in fused loops all depend on
the shapes, i.e. on the batch size, and on the surrounding program. Measured
with jax 0.10 (default CPU fusion emitters): ``exp(x - max(x))`` on a 64 x 63
array differs in the last bit between vmap over 2 items and single calls;
so do the DGM weight gradients; and ``b - dt a`` style generator arithmetic
of the fd solver differs between a ``lax.map`` body and a standalone call.

Kernel B therefore uses two defences, chosen per solver by what held in the
tests (every config, batch size 1 to 7, several ticks, bit for bit):

* ``sequential_vmap`` (dgm): under ``vmap`` the wrapped function runs as a
  ``lax.map`` over the items, i.e. the unbatched computation once per item,
  instead of being rewritten into batched operations. Items are then
  processed one after another (no SIMD across the batch).
* ``tree_sum`` / ``tree_max`` / ``tree_min`` (everywhere; what lets the fd
  solver batch normally): reductions by pairwise halving on static slices, so
  that the order is fixed by the code and the fusions contain no XLA reduce.
  Divisions by traced scalars are written as products with a reciprocal for
  the same reason.

With ``XLA_FLAGS=--xla_cpu_use_fusion_emitters=false`` plain ``vmap`` was
bitwise equal for both solvers in the same tests; that flag is a process-wide
choice for the daemon, not for a kernel.
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
