"""Truncated tensor algebra: signatures, tensor logarithm, Lyndon coordinates.

Conventions
-----------
A truncated tensor of depth ``M`` over ``R^d`` is a tuple ``(T_1, ..., T_M)``
of arrays; ``T_m`` has shape ``(..., d**m)`` (leading batch axes allowed)
and holds the coefficients of the words of length ``m``. Letters are
``0 .. d-1`` and a word ``(i_1, ..., i_m)`` sits at flat index
``sum_k i_k d**(m-k)`` (first letter most significant), which is exactly
the row-major flattening of ``T_a (x) T_b``. The scalar level is implicit:
1 for group-like elements (signatures, segment exponentials), 0 for Lie
elements (log-signatures).

* ``segment_exp``: the signature of one linear segment with increment ``v``
  is ``exp(v) = sum_m v^(x m) / m!`` (exact, no quadrature).
* ``signature``: Chen's identity ``S(X * Y) = S(X) (x) S(Y)``; the product of
  the segment exponentials of a piecewise-linear path is taken by a balanced
  pairwise reduction (log2 of the number of segments rounds of batched
  products, associativity keeps the order of the factors).
* ``tensor_log``: ``log(1 + X) = sum_{k=1}^{M} (-1)^(k+1) X^k / k`` for the
  nilpotent part ``X`` of a group-like element (exact in the truncation).
* ``lyndon_project``: coordinates of a Lie element in the Lyndon basis.

Lyndon basis (matches iisignature's ``logsig`` with ``prepare(d, M)``)
--------------------------------------------------------------------
Basis elements are ordered by level, and within a level by the
lexicographic order of their Lyndon words (letters named ``1 .. d`` below,
as iisignature prints them). Each Lyndon word ``w`` of length >= 2 is
bracketed by its standard factorisation ``w = u v``, ``v`` the longest
proper suffix of ``w`` that is a Lyndon word: ``P(w) = [P(u), P(v)]``,
``[a, b] = a (x) b - b (x) a``, ``P(letter) = letter``. The log-signature is
``log S = sum_w c_w P(w)`` and ``lyndon_project`` returns the ``c_w``. For
``d = 2`` the dimensions are 2, 3, 5, 8, 14 at depth 1..5 and the basis is::

    level 1: 1, 2
    level 2: [1,2]
    level 3: [1,[1,2]], [[1,2],2]
    level 4: [1,[1,[1,2]]], [1,[[1,2],2]], [[[1,2],2],2]
    level 5: [1,[1,[1,[1,2]]]], [1,[1,[[1,2],2]]], [[1,[1,2]],[1,2]],
             [1,[[[1,2],2],2]], [[1,2],[[1,2],2]], [[[[1,2],2],2],2]

Because ``P(w) = w + (lexicographically larger words)``, the matrix
``A[i, j] = <P(w_j), w_i>`` over the Lyndon words of one level is
unitriangular with integer entries; ``c = A^{-1} (log S)|_{Lyndon words}``.
``A^{-1}`` is integer too and is applied as a fixed sparse sum, so the
projection has no data-dependent reduction order (``vmap`` is bit-exact).

Every public function is jitted (``depth`` static), so eager calls compile
once per shape instead of dispatching hundreds of tiny operations; inside
another jitted function the wrappers are inlined.

Units: every coefficient at level ``m`` has the units of the path to the
power ``m``.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

Tensor = tuple[Float[Array, "..."], ...]

__all__ = [
    "Tensor",
    "flatten",
    "logsig",
    "logsig_dim",
    "logsig_from_increments",
    "lyndon_brackets",
    "lyndon_project",
    "lyndon_words",
    "segment_exp",
    "signature",
    "signature_from_increments",
    "tensor_log",
    "tensor_mul",
]


# ---------------------------------------------------------------------------
# Lyndon words and the projection matrices (host-side constants, numpy)
# ---------------------------------------------------------------------------


@functools.cache
def lyndon_words(d: int, depth: int) -> tuple[tuple[int, ...], ...]:
    """Lyndon words over letters ``0..d-1`` of length 1..depth.

    Ordered by length, then lexicographically (Duval's algorithm yields the
    lexicographic order of all Lyndon words up to ``depth``).
    """
    if d < 1 or depth < 1:
        raise ValueError(f"need d >= 1 and depth >= 1, got d={d}, depth={depth}")
    out: list[tuple[int, ...]] = []
    w = [-1]
    while w:
        w[-1] += 1
        out.append(tuple(w))
        m = len(w)
        while len(w) < depth:
            w.append(w[len(w) - m])
        while w and w[-1] == d - 1:
            w.pop()
    return tuple(sorted(out, key=lambda u: (len(u), u)))


def logsig_dim(depth: int, d: int = 2) -> int:
    """Number of Lyndon words of length <= depth (Witt): 2, 3, 5, 8, 14 for d = 2."""
    return len(lyndon_words(d, depth))


def _is_lyndon(w: tuple[int, ...]) -> bool:
    return all(w < w[k:] + w[:k] for k in range(1, len(w)))


def _standard_split(w: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``w = u v`` with ``v`` the longest proper Lyndon suffix."""
    for k in range(1, len(w)):
        if _is_lyndon(w[k:]):
            return w[:k], w[k:]
    raise AssertionError(f"{w} has no proper Lyndon suffix")


def _bracket_str(w: tuple[int, ...]) -> str:
    if len(w) == 1:
        return str(w[0] + 1)
    u, v = _standard_split(w)
    return f"[{_bracket_str(u)},{_bracket_str(v)}]"


def lyndon_brackets(depth: int, d: int = 2) -> tuple[str, ...]:
    """The basis as bracket strings, letters ``1..d`` (iisignature's ``basis`` format)."""
    return tuple(_bracket_str(w) for w in lyndon_words(d, depth))


@functools.cache
def _expansion(w: tuple[int, ...], d: int) -> np.ndarray:
    """Dense coefficients (length ``d**len(w)``) of the bracket ``P(w)``."""
    if len(w) == 1:
        e = np.zeros(d)
        e[w[0]] = 1.0
        return e
    u, v = _standard_split(w)
    pu, pv = _expansion(u, d), _expansion(v, d)
    return np.outer(pu, pv).ravel() - np.outer(pv, pu).ravel()


def _word_index(w: tuple[int, ...], d: int) -> int:
    idx = 0
    for letter in w:
        idx = idx * d + letter
    return idx


@functools.cache
def _projection_terms(d: int, level: int) -> tuple[tuple[tuple[tuple[int, float], ...], ...], int]:
    """Per Lyndon word of ``level``: the (flat index, weight) pairs of ``A^{-1}``.

    Returns the terms and the level's offset in the full basis.
    """
    words = [w for w in lyndon_words(d, level) if len(w) == level]
    offset = sum(1 for w in lyndon_words(d, level) if len(w) < level)
    idx = [_word_index(w, d) for w in words]
    a = np.array([[_expansion(wj, d)[i] for wj in words] for i in idx])
    a_inv = np.linalg.inv(a)
    a_int = np.rint(a_inv)
    # A is unitriangular over the integers, so its inverse is an integer matrix.
    if not np.array_equal(a_inv.round(9), a_int):
        raise AssertionError("Lyndon projection matrix is not integral")
    terms = tuple(
        tuple((idx[i], float(a_int[j, i])) for i in range(len(words)) if a_int[j, i] != 0.0)
        for j in range(len(words))
    )
    return terms, offset


# ---------------------------------------------------------------------------
# Tensor algebra (JAX)
# ---------------------------------------------------------------------------


def _outer(a: Float[Array, "..."], b: Float[Array, "..."]) -> Float[Array, "..."]:
    """Flattened tensor product of two homogeneous levels (batch axes broadcast)."""
    prod = a[..., :, None] * b[..., None, :]
    return prod.reshape(*prod.shape[:-2], a.shape[-1] * b.shape[-1])


def _sum(terms: Sequence[Float[Array, "..."]]) -> Float[Array, "..."]:
    """Left-to-right sum in a fixed order."""
    acc = terms[0]
    for term in terms[1:]:
        acc = acc + term
    return acc


@jax.jit
def tensor_mul(a: Tensor, b: Tensor) -> Tensor:
    """Product of two group-like truncated tensors (scalar parts 1).

    ``(a (x) b)_n = a_n + b_n + sum_{i=1}^{n-1} a_i (x) b_{n-i}``.
    """
    depth = len(a)
    pairs = [(n, i) for n in range(2, depth + 1) for i in range(1, n)]
    prods = [_outer(a[i - 1], b[n - i - 1]) for n, i in pairs]
    out = []
    for n in range(1, depth + 1):
        same_level = [p for (m, _), p in zip(pairs, prods, strict=True) if m == n]
        out.append(_sum([a[n - 1], b[n - 1], *same_level]))
    return tuple(out)


def _mul_nilpotent(a: Tensor, b: Tensor, low_a: int, low_b: int) -> Tensor:
    """Product of Lie-type tensors (scalar parts 0) whose levels below ``low_*`` vanish."""
    depth = len(a)
    lo_a, lo_b = max(1, low_a), max(1, low_b)
    pairs = [(n, i) for n in range(1, depth + 1) for i in range(lo_a, n - lo_b + 1)]
    prods = [_outer(a[i - 1], b[n - i - 1]) for n, i in pairs]
    out = []
    for n in range(1, depth + 1):
        terms = [p for (m, _), p in zip(pairs, prods, strict=True) if m == n]
        out.append(_sum(terms) if terms else jnp.zeros_like(a[n - 1]))
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("depth",))
def segment_exp(v: Float[Array, "... d"], depth: int) -> Tensor:
    """Signature of a linear segment with increment ``v``: ``(v, v^2/2!, ..., v^M/M!)``."""
    levels = [v]
    for m in range(2, depth + 1):
        levels.append(_outer(levels[-1], v) / m)
    return tuple(levels)


@functools.partial(jax.jit, static_argnames=("depth",))
def signature_from_increments(inc: Float[Array, "... s d"], depth: int) -> Tensor:
    """Signature of the piecewise-linear path with segment increments ``inc``.

    ``S = exp(inc_1) (x) exp(inc_2) (x) ... (x) exp(inc_s)`` (Chen), reduced
    pairwise; an odd element is carried to the next round unchanged.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    terms = segment_exp(inc, depth)
    while terms[0].shape[-2] > 1:
        s = terms[0].shape[-2]
        half = s // 2
        left = tuple(t[..., 0 : 2 * half : 2, :] for t in terms)
        right = tuple(t[..., 1 : 2 * half : 2, :] for t in terms)
        prod = tensor_mul(left, right)
        if s % 2:
            prod = tuple(
                jnp.concatenate([p, t[..., s - 1 :, :]], axis=-2)
                for p, t in zip(prod, terms, strict=True)
            )
        terms = prod
    return tuple(t[..., 0, :] for t in terms)


@functools.partial(jax.jit, static_argnames=("depth",))
def signature(path: Float[Array, "... n d"], depth: int) -> Tensor:
    """Signature of the piecewise-linear interpolation of ``path`` (``n >= 2`` points)."""
    out: Tensor = signature_from_increments(jnp.diff(path, axis=-2), depth)
    return out


@jax.jit
def tensor_log(sig: Tensor) -> Tensor:
    """Logarithm of a group-like tensor: ``sum_{k=1}^{M} (-1)^(k+1) X^k / k``, ``X = sig - 1``."""
    depth = len(sig)
    power = sig
    terms: list[list[Array]] = [[level] for level in sig]
    for k in range(2, depth + 1):
        power = _mul_nilpotent(power, sig, k - 1, 1)
        coef = (-1.0) ** (k + 1) / k
        for n in range(k, depth + 1):
            terms[n - 1].append(coef * power[n - 1])
    return tuple(_sum(t) for t in terms)


@jax.jit
def lyndon_project(log_sig: Tensor) -> Float[Array, "... k"]:
    """Coordinates of a Lie element in the Lyndon basis (see the module docstring)."""
    depth = len(log_sig)
    d = log_sig[0].shape[-1]
    coords = []
    for level in range(1, depth + 1):
        terms, _ = _projection_terms(d, level)
        x = log_sig[level - 1]
        for word_terms in terms:
            coords.append(_sum([weight * x[..., flat] for flat, weight in word_terms]))
    return jnp.stack(coords, axis=-1)


@functools.partial(jax.jit, static_argnames=("depth",))
def logsig(path: Float[Array, "... n d"], depth: int) -> Float[Array, "... k"]:
    """Log-signature of ``path`` in the Lyndon basis (iisignature ``logsig`` layout)."""
    out: Float[Array, "... k"] = lyndon_project(tensor_log(signature(path, depth)))
    return out


@functools.partial(jax.jit, static_argnames=("depth",))
def logsig_from_increments(inc: Float[Array, "... s d"], depth: int) -> Float[Array, "... k"]:
    """Log-signature in the Lyndon basis of the path with segment increments ``inc``."""
    out: Float[Array, "... k"] = lyndon_project(tensor_log(signature_from_increments(inc, depth)))
    return out


def flatten(t: Sequence[Float[Array, "..."]]) -> Float[Array, "... k"]:
    """Concatenate the levels ``(T_1, ..., T_M)`` (iisignature ``sig`` layout)."""
    return jnp.concatenate(list(t), axis=-1)
