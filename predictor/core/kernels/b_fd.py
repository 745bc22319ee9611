"""Kernel B, part 2: the solver grid and the finite-difference backward solver.

Backward Kolmogorov equation over one tick, in time-to-go tau = 1 - t:

    u_tau = b(x) u_x + 0.5 sigma^2(x) u_xx,   u(tau = 0, x) = g(x) = x,

so that u(tau = 1, x) = u(t = 0, x) = E[X_1 | X_0 = x] (z units).

Grid (``solver_grid``): G = ``fd_grid_size`` uniform points over the
window's range padded by ``PAD_FRAC`` of its half-width on each side, the
half-width floored at ``HALF_WIDTH_MIN``. The floor keeps the grid (and the
entropy ``H[g] = log(hi - lo)``, see ``b_dgm``) positive on a constant or
all-zero window: ``hi - lo >= 2 (1 + PAD_FRAC) HALF_WIDTH_MIN = 2.4``.

Space (``fd_generator``): upwind first differences and central second
differences, i.e. the generator A of a birth–death chain on the grid,

    (A u)_i = (b_i^+ / dx + s_i / (2 dx^2)) (u_{i+1} - u_i)
            + (b_i^- / dx + s_i / (2 dx^2)) (u_{i-1} - u_i),

with b^+ = max(b, 0), b^- = max(-b, 0), s = sigma^2. Off-diagonals are
non-negative and rows sum to zero, so the scheme is monotone. At the two
edge nodes u_xx = 0 (linear extrapolation to a ghost node), the inward drift
uses the one-sided difference into the grid, and the outward drift is
dropped: the chain is stopped when it would leave the grid. This keeps the
scheme monotone and makes it exact for solutions linear in x whenever the
drift points inward at the edges (the OU case: the semi-discrete solution is
then the exact one and only the time stepping errs).

Time (``fd_solve``): implicit Euler with K = 2^``log2_steps`` steps of
dt = 1/K, u^{k+1} = M u^k with M = (I - dt A)^(-1). I - dt A is a
non-singular M-matrix (positive diagonal, non-positive off-diagonals, row
sums 1), so M is non-negative with unit row sums: unconditionally stable
and monotone, and u(0, .) stays within [min g, max g]. The global error is
O(dt) (about theta^2 |x - m| e^(-theta) / (2K) for OU). For G <= ``DENSE_MAX``
M is formed densely and raised to the K-th power by ``log2_steps`` squarings
(cost (log2_steps + 1) G^3); larger grids take K tridiagonal solves in a
``lax.scan`` (cost K G). Both give the same implicit Euler solution.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from predictor.core.kernels.b_batch import tree_max, tree_min

#: Padding of the grid beyond the window's range, as a fraction of the half-width.
PAD_FRAC = 0.2
#: Smallest half-width of the window's range, z units.
HALF_WIDTH_MIN = 1.0
#: Default number of implicit Euler steps, as a power of two (K = 4096).
LOG2_STEPS = 12
#: Largest grid solved by dense squaring; larger grids use tridiagonal solves.
DENSE_MAX = 256


class Tridiagonal(NamedTuple):
    """Generator A by diagonals (per tick): ``lower[i] = A[i, i-1]``,
    ``diag[i] = A[i, i]``, ``upper[i] = A[i, i+1]``; ``lower[0]`` and
    ``upper[-1]`` are zero."""

    lower: Float[Array, " G"]
    diag: Float[Array, " G"]
    upper: Float[Array, " G"]


def grid_frame(z: Float[Array, " N"]) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Centre and half width of the padded range of ``z`` (z units)."""
    zmin, zmax = tree_min(z), tree_max(z)
    centre = 0.5 * (zmin + zmax)
    half = jnp.maximum(0.5 * (zmax - zmin), HALF_WIDTH_MIN) * (1.0 + PAD_FRAC)
    return centre, half


def solver_grid(z: Float[Array, " N"], size: int) -> Float[Array, " G"]:
    """``size`` uniform points over the padded range of ``z`` (z units)."""
    centre, half = grid_frame(z)
    return centre + half * jnp.linspace(-1.0, 1.0, size)


def fd_generator(
    grid: Float[Array, " G"], b: Float[Array, " G"], s2: Float[Array, " G"]
) -> Tridiagonal:
    """Monotone upwind generator of the backward equation (see the module doc)."""
    # Multiplying by an explicit reciprocal (not dividing by a traced scalar)
    # keeps XLA from choosing differently under vmap: bitwise batch equality.
    inv_dx = 1.0 / (grid[1] - grid[0])
    bp = jnp.maximum(b, 0.0) * inv_dx
    bm = jnp.maximum(-b, 0.0) * inv_dx
    diff = (0.5 * inv_dx * inv_dx) * s2
    interior = jnp.ones_like(grid).at[0].set(0.0).at[-1].set(0.0)
    upper = (bp + diff * interior).at[-1].set(0.0)
    lower = (bm + diff * interior).at[0].set(0.0)
    return Tridiagonal(lower=lower, diag=-(lower + upper), upper=upper)


def _dense_power(gen: Tridiagonal, g: Float[Array, " G"], log2_steps: int) -> Float[Array, " G"]:
    dt = 2.0 ** (-log2_steps)
    m = jax.lax.linalg.tridiagonal_solve(
        -dt * gen.lower, 1.0 - dt * gen.diag, -dt * gen.upper, jnp.eye(g.shape[0])
    )
    power: Array = jax.lax.fori_loop(0, log2_steps, lambda _, p: p @ p, m)
    return power @ g


def _tridiagonal_steps(
    gen: Tridiagonal, g: Float[Array, " G"], log2_steps: int
) -> Float[Array, " G"]:
    dt = 2.0 ** (-log2_steps)
    dl = -dt * gen.lower
    du = -dt * gen.upper
    d = 1.0 - dt * gen.diag

    def step(u: Float[Array, " G"], _: None) -> tuple[Float[Array, " G"], None]:
        nxt: Array = jax.lax.linalg.tridiagonal_solve(dl, d, du, u[:, None])[:, 0]
        return nxt, None

    u, _ = jax.lax.scan(step, g, None, length=2**log2_steps)
    return u


def fd_solve(
    grid: Float[Array, " G"],
    b: Float[Array, " G"],
    s2: Float[Array, " G"],
    log2_steps: int = LOG2_STEPS,
) -> Float[Array, " G"]:
    """u(t = 0, grid) = E[X_1 | X_0 = grid] for drift ``b`` and diffusion ``s2`` on the grid.

    ``grid`` must be uniform and increasing (z units); ``b`` in z units per
    tick, ``s2`` in squared z units per tick; terminal condition g(x) = x.
    """
    gen = fd_generator(grid, b, s2)
    if grid.shape[0] <= DENSE_MAX:
        return _dense_power(gen, grid, log2_steps)
    return _tridiagonal_steps(gen, grid, log2_steps)


def interp_uniform(
    x: Float[Array, ""], grid: Float[Array, " G"], u: Float[Array, " G"]
) -> Float[Array, ""]:
    """Linear interpolation of ``u`` on the uniform ``grid`` at ``x`` (clamped to the grid).

    Written with an explicit reciprocal of dx instead of ``jnp.interp`` (which
    divides by traced spacings) so that vmap gives bitwise-equal results.
    """
    inv_dx = 1.0 / (grid[1] - grid[0])
    s = jnp.clip((x - grid[0]) * inv_dx, 0.0, grid.shape[0] - 1.0)
    i = jnp.minimum(jnp.floor(s).astype(jnp.int32), grid.shape[0] - 2)
    w = s - i
    return (1.0 - w) * u[i] + w * u[i + 1]
