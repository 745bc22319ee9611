"""Hölder exponent of a window by the wavelet-transform modulus-maxima method.

Pipeline (Muzy, Bacry & Arneodo 1993; docs/model.md "Identification"), for a
window ``z`` of N samples (unit: samples of the series):

1. **CWT by FFT.** ``W(a, b) = sum_t x(t) psi_a(t - b)`` with
   ``psi_a(t) = psi(t / a) / a`` (L1 normalisation, so ``|W| ~ a^h`` at a
   point of Hölder regularity h) and ``psi`` the n-th derivative of the
   Gaussian, ``psi_hat(w) = (i w)^n exp(-w^2 / 2)`` (n = ``wtmm_wavelet_order``,
   n vanishing moments). ``x`` is the window divided by ``max |z|`` (scale
   free: only log-slopes are used), centred, and extended by mirror
   symmetry to 2N samples: the periodic FFT then sees a continuous path
   rather than the jump ``z[N-1] -> z[0]``.
2. **Scales.** ``S = wtmm_num_scales`` log-spaced scales from 2 to N/4 enter
   the regressions. Below them, *seed* scales continue the same geometric
   grid down to about 1 sample; they only feed the running supremum (step
   4), so that at a = 2 the supremum already carries a history. Without
   them the supremum has a transient over the first scales that biases H up
   by 0.1-0.2 (measured on fBm, bench/holder.py).
3. **Modulus maxima** along b at each scale: ``|W(a, b)| >= |W(a, b - 1)|``,
   ``|W(a, b)| > |W(a, b + 1)|`` and ``|W(a, b)| > 1e-3 max_b |W(a, .)|``
   (the relative threshold discards round-off ripples on smooth stretches).
4. **Maxima lines with running supremum.** A maximum at scale ``a_j`` links
   to the maxima of scale ``a_{j-1}`` inside the cone
   ``|b - b'| <= besov_cone_c a_j`` and carries
   ``T(a_j, b) = max(|W(a_j, b)|, max_{b' in cone} T(a_{j-1}, b'))``; the
   strongest maximum in the cone is the one whose supremum is carried.
   Fixed shapes: ``T`` is zero off the maxima and the cone maximum is a
   sliding-window maximum of width ``2 floor(c a_j) + 1`` (sparse table,
   one ``lax.scan`` over scales).
5. **Partition function** over the lines alive at scale a, leaving out the
   cone of influence of the window's edges (``min(b, N - 1 - b) < a``):
   ``Z(q, a) = sum_lines T^q``, with non-maxima masked before the power
   (negative q never touches them) and the powers taken of ratios in
   [0, 1] to the strongest (q > 0) or weakest (q < 0) line, so that no
   power overflows. With it,
   ``h(q, a) = sum_lines T^q log T / Z(q, a)`` (= d log Z / dq).
6. **Scaling exponents.** ``tau(q)`` and ``h(q)`` are the weighted
   least-squares slopes of ``log Z(q, a)`` and ``h(q, a)`` against
   ``log a``; the weight of a scale is its number of lines, which is the
   inverse variance of a mean over lines. ``h(q) = tau'(q)`` exactly.
7. **Legendre spectrum** (parametric form):
   ``D(q) = q h(q) - tau(q)`` at ``h = h(q)``; H is the h at the peak of D
   over the q grid, clipped to [0, 1]. For a concave tau the peak is at
   q = 0, i.e. H is the scaling of the mean log-supremum over lines (the
   first log-cumulant), the most robust part of the spectrum.

A window with fewer than two scales holding a line in the interior (a
constant, linear or otherwise singularity-free window) has no measurable
singularity and gets H = 1.

Accuracy on fBm paths (40 seeds, bench/holder.py): RMSE about 0.03 at
N = 1024 and 0.07-0.13 at N = 128 for H in {0.3, 0.5, 0.7}, on a par with
MFDFA (q = 2).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from predictor.config import PredictorConfig

#: q grid of the partition function: negative q (masked) and positive q.
Q_GRID: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
#: Smallest regression scale (samples) and largest as a fraction of N.
SCALE_MIN = 2.0
SCALE_MAX_FRACTION = 0.25
#: Finest seed scale of the running supremum (samples).
SEED_SCALE_MIN = 1.0
#: Maxima below this fraction of their scale's largest modulus are dropped.
MAXIMA_REL_THRESHOLD = 1e-3
#: Cone of influence of the edges: positions closer than this many scales
#: to either end of the window are left out of the partition function.
EDGE_FACTOR = 1.0
#: H of a window without any measurable singularity.
H_REGULAR = 1.0


class WTMMLayout(NamedTuple):
    """Static (numpy) geometry of the transform for one config.

    ``scales`` holds the seed scales first, then the ``num_scales``
    regression scales; ``n_seed`` counts the seed scales; ``halfwidths[j]``
    is ``floor(c a_j)`` (at most N); ``interior[j, b]`` is false inside the
    edge cone of influence of regression scale j.
    """

    scales: np.ndarray
    n_seed: int
    halfwidths: tuple[int, ...]
    interior: np.ndarray


class WTMMAnalysis(NamedTuple):
    """Everything the estimate is built from (for tests and diagnostics).

    ``log_z`` and ``h_qa`` have shape (Q, S) over the regression scales;
    ``tau``, ``h``, ``d`` have shape (Q,) over ``q``; ``counts`` (S,) is
    the number of lines per regression scale; ``valid`` says whether at
    least two scales carry lines; ``holder`` is the clipped H.
    """

    q: jax.Array
    log_scales: jax.Array
    counts: jax.Array
    log_z: jax.Array
    h_qa: jax.Array
    tau: jax.Array
    h: jax.Array
    d: jax.Array
    valid: jax.Array
    holder: jax.Array


def regression_scales(n: int, num_scales: int) -> np.ndarray:
    """``num_scales`` log-spaced scales from 2 to ``n / 4`` (samples)."""
    hi = max(SCALE_MAX_FRACTION * n, SCALE_MIN * 1.5)
    return np.exp(np.linspace(np.log(SCALE_MIN), np.log(hi), num_scales))


@functools.lru_cache(maxsize=64)
def wtmm_layout(n: int, num_scales: int, cone_c: float) -> WTMMLayout:
    """Scales (seed + regression), cone half-widths and edge mask for a window of ``n``."""
    reg = regression_scales(n, num_scales)
    ratio = reg[1] / reg[0]
    n_seed = round(np.log(SCALE_MIN / SEED_SCALE_MIN) / np.log(ratio))
    seed = SCALE_MIN * ratio ** -np.arange(n_seed, 0, -1, dtype=np.float64)
    scales = np.concatenate([seed, reg])
    halfwidths = tuple(min(int(np.floor(cone_c * a)), n) for a in scales)
    b = np.arange(n)
    dist = np.minimum(b, n - 1 - b)
    interior = dist[None, :] >= EDGE_FACTOR * reg[:, None]
    return WTMMLayout(scales, int(n_seed), halfwidths, interior)


def wavelet_fourier(scales: np.ndarray, order: int, n_fft: int) -> np.ndarray:
    """``psi_hat(a w) = (i a w)^n exp(-(a w)^2 / 2)`` on the rfft grid ``w = 2 pi k / n_fft``.

    Shape (len(scales), n_fft // 2 + 1), complex. The transform of
    ``psi(t / a) / a``, hence L1 normalisation.
    """
    omega = 2.0 * np.pi * np.fft.rfftfreq(n_fft)
    aw = np.asarray(scales, dtype=np.float64)[:, None] * omega[None, :]
    return np.asarray((1j * aw) ** order * np.exp(-0.5 * aw * aw), dtype=np.complex128)


def cwt(x: jax.Array, scales: np.ndarray, order: int) -> jax.Array:
    """Continuous wavelet transform ``W(a, b)``, shape (len(scales), N).

    ``x`` is extended by mirror symmetry (``[x, x reversed]``, 2N samples,
    continuous at both joins) and correlated with the L1-normalised
    derivative-of-Gaussian wavelet by rfft; ``scales`` is static.
    """
    n = x.shape[-1]
    ext = jnp.concatenate([x, x[::-1]])
    filt = jnp.asarray(np.conj(wavelet_fourier(scales, order, 2 * n)))
    spec = jnp.fft.rfft(ext)
    w = jnp.fft.irfft(spec[None, :] * filt, n=2 * n, axis=-1)
    return w[:, :n]


def modulus_maxima(abs_w: jax.Array, rel_threshold: float = MAXIMA_REL_THRESHOLD) -> jax.Array:
    """Boolean mask of local maxima of ``|W|`` along b at each scale.

    A maximum satisfies ``|W(b)| >= |W(b - 1)|``, ``|W(b)| > |W(b + 1)|``
    (one strict side so a plateau yields one maximum) and
    ``|W(b)| > rel_threshold * max_b |W|``; outside the window counts as 0.
    """
    pad = jnp.zeros_like(abs_w[:, :1])
    left = jnp.concatenate([pad, abs_w[:, :-1]], axis=1)
    right = jnp.concatenate([abs_w[:, 1:], pad], axis=1)
    top = jnp.max(abs_w, axis=1, keepdims=True)
    return (abs_w >= left) & (abs_w > right) & (abs_w > rel_threshold * top)


def _sparse_table(x: jax.Array, pad: int, depth: int) -> jax.Array:
    """Levels ``m_k[i] = max(xp[i .. i + 2^k - 1])``, k = 0..depth, of x zero-padded by ``pad``.

    Shape (depth + 1, N + 2 pad); entries past the end count as 0 (x >= 0).
    """
    level = jnp.pad(x, (pad, pad))
    levels = [level]
    for k in range(depth):
        span = 1 << k
        shifted = jnp.concatenate([level[span:], jnp.zeros_like(level[:span])])
        level = jnp.maximum(level, shifted)
        levels.append(level)
    return jnp.stack(levels)


def _cone_plan(halfwidths: tuple[int, ...]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """Padding, table depth and, per scale, the level and the two block starts.

    A window ``[i - w, i + w]`` of length ``L = 2w + 1`` is covered by two
    blocks of ``2^p <= L`` samples starting at ``i - w`` and ``i + w - 2^p + 1``.
    """
    pad = max(*halfwidths, 1)
    lengths = 2 * np.asarray(halfwidths, dtype=np.int64) + 1
    levels = np.floor(np.log2(lengths)).astype(np.int64)
    spans = 1 << levels
    start_lo = pad - np.asarray(halfwidths, dtype=np.int64)
    start_hi = pad + np.asarray(halfwidths, dtype=np.int64) - spans + 1
    return pad, int(levels.max()), levels, start_lo, start_hi


def _windowed(
    table: jax.Array, level: jax.Array, lo: jax.Array, hi: jax.Array, n: int
) -> jax.Array:
    row = table[level]
    return jnp.maximum(
        jax.lax.dynamic_slice(row, (lo,), (n,)), jax.lax.dynamic_slice(row, (hi,), (n,))
    )


def window_max(x: jax.Array, halfwidth: int) -> jax.Array:
    """``out[i] = max(x[i - w .. i + w])`` with zeros outside (x >= 0), ``w`` static.

    Sliding maximum by a sparse table: level k holds maxima of ``2^k``
    consecutive samples and two overlapping blocks cover the window.
    Cost O(N log w).
    """
    pad, depth, levels, lo, hi = _cone_plan((halfwidth,))
    table = _sparse_table(x, pad, depth)
    return _windowed(
        table, jnp.asarray(levels[0]), jnp.asarray(lo[0]), jnp.asarray(hi[0]), x.shape[-1]
    )


def link_maxima(abs_w: jax.Array, maxima: jax.Array, halfwidths: tuple[int, ...]) -> jax.Array:
    """Running supremum along maxima lines, ``T(a_j, b)``, zero off the maxima.

    ``T(a_0, b) = |W(a_0, b)|`` and, for j >= 1,
    ``T(a_j, b) = max(|W(a_j, b)|, max_{|b - b'| <= w_j} T(a_{j-1}, b'))``
    at maxima ``(a_j, b)``, with ``w_j = halfwidths[j]`` (the cone
    ``|b - b'| <= c a_j``). Maxima of scale ``a_{j-1}`` outside the cone do
    not contribute. One ``lax.scan`` over scales (one compiled body).
    """
    n = abs_w.shape[-1]
    pad, depth, levels, lo, hi = _cone_plan(halfwidths)
    first = jnp.where(maxima[0], abs_w[0], 0.0)

    def step(prev: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
        w_row, m_row, level, start_lo, start_hi = xs
        inherited = _windowed(_sparse_table(prev, pad, depth), level, start_lo, start_hi, n)
        t = jnp.where(m_row, jnp.maximum(w_row, inherited), 0.0)
        return t, t

    xs = (abs_w[1:], maxima[1:], jnp.asarray(levels[1:]), jnp.asarray(lo[1:]), jnp.asarray(hi[1:]))
    _, rest = jax.lax.scan(step, first, xs)
    return jnp.concatenate([first[None], rest])


def _unit_powers(x: jax.Array, exponents: Sequence[float]) -> list[jax.Array]:
    """``x^e`` for ``x`` in [0, 1] and static ``e >= 0``.

    Half-integer exponents use products of ``sqrt(x)`` (no exp/log: 5-10x
    cheaper on CPU); others ``exp(e log x)``. Results lie in [0, 1].
    """
    root = jnp.sqrt(x)
    chain = [jnp.ones_like(x)]
    out = []
    for e in exponents:
        k = 2.0 * e
        if k == round(k):
            while len(chain) <= int(k):
                chain.append(chain[-1] * root)
            out.append(chain[int(k)])
        else:
            out.append(jnp.where(x > 0.0, jnp.exp(e * jnp.log(jnp.where(x > 0.0, x, 1.0))), 0.0))
    return out


def partition_function(
    sup: jax.Array, keep: jax.Array, qs: Sequence[float]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``log Z(q, a)``, ``h(q, a)`` and the line counts, masked.

    ``Z(q, a) = sum_{b in keep} T(a, b)^q`` and
    ``h(q, a) = sum T^q log T / Z`` over the static grid ``qs``. Entries
    outside ``keep`` are masked before any power. For q > 0 the powers are
    taken of ``T / T_max`` and for q < 0 of ``T_min / T`` (both in [0, 1],
    the extreme line giving exactly 1), so that
    ``log Z = q log T_ref + log sum (ratio)^|q|`` never overflows nor takes
    the log of 0. Scales without lines give 0 in both (their regression
    weight is 0). Shapes: (Q, S), (Q, S), (S,).
    """
    counts = jnp.sum(keep, axis=-1).astype(jnp.float64)
    alive = counts > 0
    t = jnp.where(keep, sup, 1.0)
    log_t = jnp.log(t)
    t_max = jnp.max(jnp.where(keep, t, 0.0), axis=-1, keepdims=True)
    t_min = jnp.min(jnp.where(keep, t, jnp.inf), axis=-1, keepdims=True)
    t_max = jnp.where(alive[:, None], t_max, 1.0)
    t_min = jnp.where(alive[:, None], t_min, 1.0)
    down = jnp.where(keep, t / t_max, 0.0)
    up = jnp.where(keep, t_min / t, 0.0)
    pos = [abs(q) for q in qs if q > 0]
    neg = [abs(q) for q in qs if q < 0]
    pos_pow = iter(_unit_powers(down, pos))
    neg_pow = iter(_unit_powers(up, neg))
    log_z_rows, h_rows = [], []
    for q in qs:
        if q > 0:
            w, log_ref = next(pos_pow), q * jnp.log(t_max[:, 0])
        elif q < 0:
            w, log_ref = next(neg_pow), q * jnp.log(t_min[:, 0])
        else:
            w, log_ref = keep.astype(jnp.float64), jnp.zeros_like(counts)
        total = jnp.where(alive, jnp.sum(w, axis=-1), 1.0)
        log_z_rows.append(jnp.where(alive, log_ref + jnp.log(total), 0.0))
        h_rows.append(jnp.where(alive, jnp.sum(w * log_t, axis=-1) / total, 0.0))
    return jnp.stack(log_z_rows), jnp.stack(h_rows), counts


def weighted_slopes(x: jax.Array, y: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted least-squares slopes of each row of ``y`` against ``x``.

    ``slope = sum w (x - xbar)(y - ybar) / sum w (x - xbar)^2``; returns the
    slopes and a validity flag (at least two weighted abscissae), with
    slopes 0 where invalid.
    """
    wsum = jnp.sum(weights)
    safe_wsum = jnp.where(wsum > 0, wsum, 1.0)
    xbar = jnp.sum(weights * x) / safe_wsum
    dx = x - xbar
    sxx = jnp.sum(weights * dx * dx)
    valid = (jnp.sum(weights > 0) >= 2) & (sxx > 0)
    ybar = jnp.sum(weights * y, axis=-1, keepdims=True) / safe_wsum
    sxy = jnp.sum(weights * dx * (y - ybar), axis=-1)
    return jnp.where(valid, sxy / jnp.where(valid, sxx, 1.0), 0.0), valid


def legendre_spectrum(q: jax.Array, tau: jax.Array, h_grid: jax.Array) -> jax.Array:
    """Legendre transform ``D(h) = min_q (q h - tau(q))`` on ``h_grid``."""
    return jnp.min(q[None, :] * h_grid[:, None] - tau[None, :], axis=-1)


def wtmm_analysis(z: jax.Array, cfg: PredictorConfig) -> WTMMAnalysis:
    """Full WTMM analysis of a window; ``cfg`` static (its WTMM fields only)."""
    n = z.shape[-1]
    layout = wtmm_layout(n, cfg.wtmm_num_scales, cfg.besov_cone_c)
    s = jnp.max(jnp.abs(z))
    x = z / jnp.where(s > 0.0, s, 1.0)
    x = x - jnp.mean(x)
    abs_w = jnp.abs(cwt(x, layout.scales, cfg.wtmm_wavelet_order))
    maxima = modulus_maxima(abs_w)
    sup = link_maxima(abs_w, maxima, layout.halfwidths)
    keep = maxima[layout.n_seed :] & jnp.asarray(layout.interior)
    q = jnp.asarray(Q_GRID)
    log_z, h_qa, counts = partition_function(sup[layout.n_seed :], keep, Q_GRID)
    log_a = jnp.asarray(np.log(layout.scales[layout.n_seed :]))
    tau, valid = weighted_slopes(log_a, log_z, counts)
    h, _ = weighted_slopes(log_a, h_qa, counts)
    d = q * h - tau
    peak = h[jnp.argmax(d)]
    holder = jnp.where(valid, jnp.clip(peak, 0.0, 1.0), H_REGULAR)
    return WTMMAnalysis(q, log_a, counts, log_z, h_qa, tau, h, d, valid, holder)


def holder_exponent(z: jax.Array, cfg: PredictorConfig) -> jax.Array:
    """Hölder exponent H in [0, 1] of the window ``z`` by WTMM (float64 scalar).

    ``cfg`` is static: ``jax.jit(holder_exponent, static_argnames="cfg")``.
    Scale- and shift-invariant in ``z``; finite for every finite input.
    """
    return wtmm_analysis(z, cfg).holder
