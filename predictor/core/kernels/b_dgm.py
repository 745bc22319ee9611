"""Kernel B, Markov / Fokker–Planck: the backward Kolmogorov equation over one tick.

Prediction (z units)::

    p_B = u(0, z_t) = E[z_{t+1} | z_t],
    u_t + b(x) u_x + 0.5 sigma^2(x) u_xx = 0  on [0, 1] x [lo, hi],  u(1, x) = x,

with the drift ``b`` (z units per tick) and diffusion ``sigma^2`` (squared z
units per tick) estimated from the window by Nadaraya–Watson (``b_nw``) and
[lo, hi] the padded range of the window (``b_fd.solver_grid``). The solver is
chosen statically by ``cfg.dgm_solver``; both share one state layout.

``dgm`` (default), the Deep Galerkin Method (``b_net``): an MLP V(t, x) with
the terminal condition built in, trained online by ``train_steps`` (default
``dgm_train_steps``) ``optax.adam`` steps per call on the squared PDE
residual, warm-started from the previous weights and Adam moments, the
collocation points drawn from the threefry key carried in the state;
p_B = V(0, z_t).

``fd``: the monotone upwind implicit finite-difference solver of ``b_fd`` on
the G = ``fd_grid_size`` grid, u(0, z_t) by linear interpolation. Its
parameters in the state are carried unchanged.

Diagnostics (both solvers), on the same grid:

* ``dgm_entropy`` = -sum_j p_j log(p_j / dv), the differential entropy (nats,
  of a quantity in z units) of the ``HIST_BINS``-bin histogram of V(0, grid)
  over [min V, max V] (bin width dv floored at ``BIN_WIDTH_MIN``);
* ``terminal_entropy`` = H[g], the same for g(x) = x on the grid (about
  log(hi - lo) >= log 2.4 > 0);
* ``mode_collapse_warning`` when ``dgm_entropy < H[m] + ln(COLLAPSE_CONTRACTION)``
  for more than ``COLLAPSE_PATIENCE`` consecutive refits (counter in the
  state), where ``H[m]`` is the entropy of the one-step conditional-mean map
  ``m(x) = x + b(x)`` implied by the Nadaraya-Watson drift on the grid. A
  map contracted by c has entropy ``H + ln c``, so the rule says: the
  solution is more than ``1 / COLLAPSE_CONTRACTION`` times as contracted as
  the drift it was trained on, i.e. the network has collapsed towards a
  constant that the data do not support. A strongly mean-reverting series
  (white noise: ``m`` nearly constant) contracts both alike and is not a
  collapse.

Guards: ``z`` is sanitised (NaN -> 0) and clipped to ``[-Z_CLIP, Z_CLIP]``
(a standardised window has |z| <= sqrt(N)); the DGM prediction is clipped to
[lo, hi], the range the exact solution (a conditional mean of a process
stopped at the grid's edges) cannot leave; an Adam step that produced
non-finite weights or loss is discarded (state kept).

Batches: ``jax.vmap(update, in_axes=(0, 0, None))`` equals the per-item calls
bit for bit in every case tested (``b_batch`` explains how and what XLA:CPU
does and does not guarantee).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Bool, Float, Int

from predictor.config import PredictorConfig
from predictor.core.kernels.b_batch import sequential_vmap, tree_max, tree_min, tree_sum
from predictor.core.kernels.b_fd import fd_solve, grid_frame, interp_uniform
from predictor.core.kernels.b_net import dgm_train, init_params, optimizer, pde_residual
from predictor.core.kernels.b_nw import nw_coefficients, nw_fit

#: Histogram bins of the entropies.
HIST_BINS = 50
#: Smallest histogram bin width (z units): a constant V has entropy log(BIN_WIDTH_MIN).
BIN_WIDTH_MIN = 1e-12
#: Mode collapse when the solution is this much more contracted than the drift's map ...
COLLAPSE_CONTRACTION = 0.25
#: ... for more than this many consecutive calls.
COLLAPSE_PATIENCE = 10
#: Saturation of the collapse counter (keeps int32 from overflowing).
_COUNT_CAP = 1_000_000
#: Bound on |z| (z units).
Z_CLIP = 1e4
#: Seed of the default key of ``init``.
DEFAULT_SEED = 0xB


class BState(NamedTuple):
    """Kernel B state.

    Training: network ``params``, Adam ``opt_state``, threefry ``key``
    (uint32[2]) and ``collapse_count``, the number of consecutive refits
    that met the collapse rule (module doc). Cache of the last refit, in
    the z units of the refit's window: the solver grid ``centre`` and
    ``half`` width (grid = centre + half linspace(-1, 1, G)), ``table`` =
    u(0, grid) (the fd solution, or V(0, grid) for dgm), and the entropies
    ``dgm_entropy`` and ``terminal_entropy`` (nats).
    """

    params: Float[Array, " p"]
    opt_state: optax.OptState
    key: Array
    collapse_count: Int[Array, ""]
    centre: Float[Array, ""]
    half: Float[Array, ""]
    table: Float[Array, " G"]
    dgm_entropy: Float[Array, ""]
    terminal_entropy: Float[Array, ""]


class BAux(NamedTuple):
    """Per-call diagnostics of kernel B (scalars).

    ``dgm_entropy``, ``terminal_entropy``: nats (module doc);
    ``mode_collapse_warning``: bool; ``pde_residual``: RMS of
    V_t + b V_x + 0.5 sigma^2 V_xx over (0, grid) after training (z units per
    tick; 0 for ``fd``, whose discrete equation holds exactly);
    ``train_loss``: mean DGM loss over this call's Adam steps (the t = 0
    squared residual when none ran; 0 for ``fd``); ``drift``, ``diffusion``:
    b(z_t), sigma^2(z_t); ``bandwidth``: NW bandwidth h (z units).
    """

    dgm_entropy: Float[Array, ""]
    terminal_entropy: Float[Array, ""]
    mode_collapse_warning: Bool[Array, ""]
    pde_residual: Float[Array, ""]
    train_loss: Float[Array, ""]
    drift: Float[Array, ""]
    diffusion: Float[Array, ""]
    bandwidth: Float[Array, ""]


# --- diagnostics -------------------------------------------------------------


def histogram_entropy(v: Float[Array, " m"]) -> Float[Array, ""]:
    """-sum_j p_j log(p_j / dv) over ``HIST_BINS`` bins spanning [min v, max v] (nats)."""
    vmin = tree_min(v)
    dv = jnp.maximum((tree_max(v) - vmin) * (1.0 / HIST_BINS), BIN_WIDTH_MIN)
    idx = jnp.clip(jnp.floor((v - vmin) * (1.0 / dv)), 0, HIST_BINS - 1).astype(jnp.int32)
    counts = jnp.bincount(idx, length=HIST_BINS)
    p = counts / v.shape[0]
    safe = jnp.where(p > 0.0, p, 1.0)
    return -tree_sum(jnp.where(p > 0.0, p * (jnp.log(safe) - jnp.log(dv)), 0.0))


# --- kernel --------------------------------------------------------------------


def init(cfg: PredictorConfig, key: Array | None = None) -> BState:
    """Cold state: V = x (predicts z_t), fresh Adam moments, counter 0.

    ``key`` (a threefry ``jax.random.PRNGKey``) defaults to ``PRNGKey(DEFAULT_SEED)``.
    The cold cache spans [-Z_CLIP, Z_CLIP] with u(0, x) = x.
    """
    if key is None:
        key = jax.random.PRNGKey(DEFAULT_SEED)
    k_params, k_state = jax.random.split(key)
    params = init_params(k_params, cfg)
    zero = jnp.zeros((), dtype=jnp.float64)
    return BState(
        params=params,
        opt_state=optimizer(cfg).init(params),
        key=k_state,
        collapse_count=jnp.zeros((), dtype=jnp.int32),
        centre=zero,
        half=jnp.asarray(Z_CLIP, jnp.float64),
        table=Z_CLIP * jnp.linspace(-1.0, 1.0, cfg.fd_grid_size),
        dgm_entropy=zero,
        terminal_entropy=zero,
    )


def collapse_warning(state: BState) -> Bool[Array, ""]:
    """``mode_collapse_warning`` of the last refit (module doc)."""
    return state.collapse_count > COLLAPSE_PATIENCE


def update(
    state: BState,
    z: Float[Array, " N"],
    cfg: PredictorConfig,
    train_steps: int | None = None,
) -> tuple[BState, Float[Array, ""], BAux]:
    """One tick of both rates: refit on the window, then forecast z_{t+1}.

    ``z``: the standardised window (length ``cfg.wtmm_buffer_size``, oldest
    first). ``cfg`` and ``train_steps`` (Adam steps this call, default
    ``cfg.dgm_train_steps``; 0 evaluates the current network) are static.
    Returns the new state, p_B = u(0, z_t) (z units) and ``BAux``.
    """
    new_state, aux = refit(state, z, cfg, train_steps)
    one = jnp.ones((), jnp.float64)
    pred = forecast(new_state, jnp.asarray(z, jnp.float64)[-1], one, 0.0 * one, cfg)
    return new_state, pred, aux


def refit(
    state: BState,
    z: Float[Array, " N"],
    cfg: PredictorConfig,
    train_steps: int | None = None,
) -> tuple[BState, BAux]:
    """Slow rate: fit b and sigma^2 on the window, train or solve, cache u(0, .).

    Arguments as in ``update``. Under ``vmap`` the items run one after
    another (``sequential_vmap``), so a batched refit is bit-identical to
    single ones.
    """
    if z.shape != (cfg.wtmm_buffer_size,):
        raise ValueError(f"window shape {z.shape}, expected ({cfg.wtmm_buffer_size},)")
    steps = cfg.dgm_train_steps if train_steps is None else train_steps

    def one(state: BState, z: Array) -> tuple[BState, BAux]:
        return _refit_one(state, z, cfg, steps)

    run = sequential_vmap(one) if cfg.dgm_solver == "dgm" else one
    out: tuple[BState, BAux] = run(state, jnp.asarray(z, jnp.float64))
    return out


def forecast(
    state: BState,
    z_t: Float[Array, ""],
    gain: Float[Array, ""],
    offset: Float[Array, ""],
    cfg: PredictorConfig,
) -> Float[Array, ""]:
    """Fast rate: p_B in current z units from the tabulated solution, in drift form.

    The refit tabulates u(0, .) on the solver grid (the fd solution, or the
    trained network V(0, .)); a tick interpolates it linearly. On the
    default grid (65 points over the window's padded range, spacing about
    0.1 z units) the interpolation error of the smooth one-step solution is
    far below the forecast's own error, and a tick costs a few operations
    instead of a network evaluation.

    The refit's window and the current one standardise differently:
    ``z = offset + gain r`` maps the refit's units r to the current ones.
    With ``x = (z_t - offset) / gain`` clamped to the refit's grid, ``x_c``,

        p_B = z_t + gain (clip(u(0, x_c), lo, hi) - x_c),

    i.e. the drift of the cached solution at the nearest point it knows is
    added to the current value. Clamping the forecast itself instead would
    pin it inside a stale range and, on a trending series, far from z_t.
    At ``gain = 1, offset = 0`` (the refit's own window) this is
    clip(u(0, z_t), lo, hi), the full recomputation's forecast.
    """
    x = (z_t - offset) / gain
    x = jnp.clip(jnp.nan_to_num(x, nan=0.0, posinf=Z_CLIP, neginf=-Z_CLIP), -Z_CLIP, Z_CLIP)
    grid = state.centre + state.half * jnp.linspace(-1.0, 1.0, cfg.fd_grid_size)
    lo, hi = grid[0], grid[-1]
    xc = jnp.clip(x, lo, hi)
    v = interp_uniform(xc, grid, state.table)
    drift = jnp.clip(v, lo, hi) - xc
    return z_t + gain * drift


def _refit_one(
    state: BState, z: Float[Array, " N"], cfg: PredictorConfig, steps: int
) -> tuple[BState, BAux]:
    z = jnp.clip(jnp.nan_to_num(z, nan=0.0, posinf=Z_CLIP, neginf=-Z_CLIP), -Z_CLIP, Z_CLIP)
    fit = nw_fit(z)
    centre, half = grid_frame(z)
    grid = centre + half * jnp.linspace(-1.0, 1.0, cfg.fd_grid_size)
    lo, hi = grid[0], grid[-1]
    key, sub = jax.random.split(state.key)

    def coef(x: Float[Array, " m"]) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        return nw_coefficients(fit, x)

    points = jnp.concatenate([grid, z[-1:]])
    b, s2 = coef(points)
    params, opt_state = state.params, state.opt_state
    zero = jnp.zeros((), dtype=jnp.float64)
    if cfg.dgm_solver == "fd":
        u0 = fd_solve(grid, b[:-1], s2[:-1])
        residual, loss = zero, zero
    else:
        new_params, new_opt, loss = dgm_train(
            params, opt_state, sub, coef, lo=lo, hi=hi, steps=steps, cfg=cfg
        )
        # A non-finite step (not expected for clipped finite windows) is
        # discarded whole, so that one bad tick cannot poison the state.
        ok = jnp.all(jnp.isfinite(new_params)) & jnp.isfinite(loss)
        params = jnp.where(ok, new_params, params)
        opt_state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new_opt, opt_state)
        loss = jnp.where(ok, loss, 0.0)
        v, r = pde_residual(params, jnp.zeros_like(grid), grid, b[:-1], s2[:-1], cfg=cfg)
        u0 = v
        residual = jnp.sqrt(tree_sum(r * r) * (1.0 / cfg.fd_grid_size))
        if steps == 0:
            loss = residual**2
    h_v = histogram_entropy(u0)
    h_g = histogram_entropy(grid)
    h_m = histogram_entropy(grid + b[:-1])
    collapsed = h_v < h_m + math.log(COLLAPSE_CONTRACTION)
    count = jnp.where(collapsed, jnp.minimum(state.collapse_count + 1, _COUNT_CAP), 0).astype(
        jnp.int32
    )
    aux = BAux(
        dgm_entropy=h_v,
        terminal_entropy=h_g,
        mode_collapse_warning=count > COLLAPSE_PATIENCE,
        pde_residual=residual,
        train_loss=loss,
        drift=b[-1],
        diffusion=s2[-1],
        bandwidth=fit.h,
    )
    new = BState(params, opt_state, key, count, centre, half, u0, h_v, h_g)
    return new, aux
