"""Orchestrator: entropic JKO weights over the four kernels, circuit breaker.

Per kernel i, ``L_i`` is the EMA (rate ``1 / entropy_window``) of its loss on
standardised errors ``e_i / sigma_t``: squared in Standard mode, Huber
(delta 1) in Robust and Emergency modes. With
``eps_t = max(eps_min, epsilon (1 + sinkhorn_alpha sigma_z))`` and the
ground cost ``C_ij = (p_i - p_j)^2 / sigma_t^2``, one JKO step

    w_{k+1} = argmin_w  <L, w> + eps_t <w, log w> + W_C(w, w_k) / (2 tau)

is solved in its entropic form (Peyré 2015, "Entropic approximation of
Wasserstein gradient flows") by log-domain scaling iterations on the 4x4
plan ``pi = diag(a) K diag(b)``, ``K = exp(-C / (2 tau eps_t))``:

    a <- w_k / (K b);   q = K^T a;   b <- (q exp(-(L + eps_t) / eps_t))^(1/2) / q

and ``w_{k+1} = pi^T 1``. Limits (tested): tau -> inf gives the Gibbs
weights softmax(-L / (2 eps_t)); tau -> 0 keeps w_k; eps_t -> inf gives
uniform weights.

Overrides, in order: a frozen gate keeps w_k; a CUSUM alarm resets the
weights to uniform; mode collapse of kernel B publishes weight 0 for B; the
circuit breaker (``predictor.core.breaker``) publishes [0, 0, 0, 1]. The
breaker and collapse rules act on the *published* weights only: the JKO
weights keep evolving underneath, so the ensemble resumes from informed
weights when the override lifts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.core.numerics import logsumexp, tree_dot, tree_sum
from predictor.core.params import Params

N_KERNELS = 4
KERNEL_D = 3
KERNEL_B = 1
#: Tolerance of the first-marginal error |pi 1 - w_k|_1 (docs/model.md).
MARGINAL_TOL = 1e-6
#: Floor under log(w) so that exact zeros (after an override) stay finite.
_LOG_FLOOR = -700.0

MODE_STANDARD, MODE_ROBUST, MODE_EMERGENCY = 0, 1, 2


class JKOResult(NamedTuple):
    """One entropic JKO step: new weights, plan, convergence and diagnostics."""

    weights: jax.Array  # (4,), on the simplex
    plan: jax.Array  # (4, 4) transport plan pi
    converged: jax.Array  # bool
    iterations: jax.Array  # int
    marginal_error: jax.Array  # |pi 1 - w_k|_1
    dual: jax.Array  # (4,) the second scaling potential g (log domain), for a warm start


def huber(x: jax.Array, delta: float = 1.0) -> jax.Array:
    """Huber loss: x^2 / 2 for |x| <= delta, delta (|x| - delta / 2) beyond.

    Scaled by 2 so that it equals x^2 near zero, like the squared loss it
    replaces, and the two modes' losses are on one scale.
    """
    ax = jnp.abs(x)
    return 2.0 * jnp.where(ax <= delta, 0.5 * x * x, delta * (ax - 0.5 * delta))


def jko_step(
    w: jax.Array,
    losses: jax.Array,
    cost: jax.Array,
    eps: jax.Array,
    tau: jax.Array,
    max_iter: int,
    tol: float = MARGINAL_TOL,
    g0: jax.Array | None = None,
) -> JKOResult:
    """Entropic JKO step by log-domain scaling iterations (see module doc).

    ``w`` (4,) previous weights, ``losses`` (4,) normalised losses L,
    ``cost`` (4, 4) normalised ground cost, ``eps`` entropic
    regularisation, ``tau`` JKO step; ``g0`` the starting potential g (zeros
    when None; the previous step's g warm-starts). When the first-marginal error does
    not fall below ``tol`` within ``max_iter`` iterations the previous
    weights are returned with ``converged = False``.
    """
    log_w = jnp.maximum(jnp.log(w), _LOG_FLOOR)
    # Vectors are scaled by a scalar's reciprocal, never divided by it: XLA turns
    # v / broadcast(s) into v * (1 / s) in batched graphs only (see numerics).
    log_k = -cost * (1.0 / (2.0 * tau * eps))
    prox = (losses + eps) * (1.0 / eps)  # exp(-prox) is the KL-prox factor of F

    def scale(g: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        f = log_w - logsumexp(log_k + g[None, :])
        log_q = logsumexp((log_k + f[:, None]).T)
        g_new = -0.5 * log_q - 0.5 * prox
        return f, g_new, log_q

    def marginal_error(f: jax.Array, g: jax.Array) -> jax.Array:
        rows = jnp.exp(f + logsumexp(log_k + g[None, :]))
        return tree_sum(jnp.abs(rows - w))

    def cond(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, _, err, it = carry
        return (err > tol) & (it < max_iter)

    def body(
        carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        _, g, _, it = carry
        f, g_new, _ = scale(g)
        return f, g_new, marginal_error(f, g_new), it + 1

    zeros = jnp.zeros_like(w)
    g_start = zeros if g0 is None else jnp.where(jnp.isfinite(g0), g0, 0.0)
    init = (zeros, g_start, jnp.asarray(jnp.inf, w.dtype), jnp.asarray(0, jnp.int32))
    f, g, err, iters = jax.lax.while_loop(cond, body, init)
    log_plan = f[:, None] + log_k + g[None, :]
    plan = jnp.exp(log_plan)
    new_w = tree_sum(plan.T)
    new_w = new_w * (1.0 / tree_sum(new_w))
    converged = (err <= tol) & jnp.all(jnp.isfinite(new_w))
    return JKOResult(jnp.where(converged, new_w, w), plan, converged, iters, err, g)


def free_energy(
    w: jax.Array,
    losses: jax.Array,
    eps: jax.Array,
    cost: jax.Array,
    plan: jax.Array,
    tau: jax.Array,
) -> jax.Array:
    """``F(w) + <C, pi> / (2 tau)`` with ``F(w) = <L, w> + eps <w, log w>`` (0 log 0 = 0)."""
    entropy_term = tree_sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0))
    transport = tree_sum(tree_sum(cost * plan))
    # Multiply by the reciprocal: XLA rewrites x / c that way only in batched graphs.
    return tree_dot(losses, w) + eps * entropy_term + transport * (0.5 / tau)


class OrchState(NamedTuple):
    """Orchestrator state of one asset."""

    weights: jax.Array  # (4,) JKO weights (before overrides)
    losses: jax.Array  # (4,) EMA of normalised kernel losses
    dual: jax.Array  # (4,) last JKO step's potential g: the next step starts from it


class OrchOut(NamedTuple):
    """Published weights and telemetry of one step."""

    weights: jax.Array  # (4,) after overrides, on the simplex
    free_energy: jax.Array
    converged: jax.Array  # bool
    mode: jax.Array  # int: MODE_STANDARD / MODE_ROBUST / MODE_EMERGENCY
    eps: jax.Array


def init() -> OrchState:
    """Uniform weights, zero losses, a cold dual potential."""
    return OrchState(
        weights=jnp.full((N_KERNELS,), 1.0 / N_KERNELS, dtype=jnp.float64),
        losses=jnp.zeros((N_KERNELS,), dtype=jnp.float64),
        dual=jnp.zeros((N_KERNELS,), dtype=jnp.float64),
    )


def update(
    state: OrchState,
    *,
    errors: jax.Array,
    predictions: jax.Array,
    sigma: jax.Array,
    sigma_z: jax.Array,
    emergency: jax.Array,
    kurtosis: jax.Array,
    alarm: jax.Array,
    freeze: jax.Array,
    collapse: jax.Array,
    params: Params,
    max_iter: int,
) -> tuple[OrchState, OrchOut]:
    """One orchestrator step.

    ``errors`` (4,) are the kernels' errors on this tick in input units,
    ``predictions`` (4,) their new forecasts in input units, ``sigma`` the
    EMA residual scale in input units (normalises losses and cost), and
    ``sigma_z`` the same scale in window-standard units (couples eps_t to
    volatility, dimensionless). ``emergency`` is the circuit breaker's
    state; ``alarm``, ``freeze``, ``collapse`` are the CUSUM alarm, the
    gate's freeze and kernel B's mode-collapse flags.
    """
    robust = emergency | (kurtosis > params.robust_kurtosis)
    mode = jnp.where(emergency, MODE_EMERGENCY, jnp.where(robust, MODE_ROBUST, MODE_STANDARD))

    # Kernel losses on standardised errors.
    x = errors * (1.0 / sigma)
    loss_now = jnp.where(robust, huber(x), x * x)
    rate = 1.0 / params.entropy_window.astype(loss_now.dtype)
    losses = (1.0 - rate) * state.losses + rate * loss_now

    eps = jnp.maximum(params.epsilon_min, params.epsilon * (1.0 + params.sinkhorn_alpha * sigma_z))
    diff = predictions[:, None] - predictions[None, :]
    cost = diff * diff * (1.0 / (sigma * sigma))
    jko = jko_step(state.weights, losses, cost, eps, params.learning_rate, max_iter, g0=state.dual)
    weights = jnp.where(freeze, state.weights, jko.weights)
    uniform = jnp.full_like(weights, 1.0 / N_KERNELS)
    weights = jnp.where(alarm, uniform, weights)

    published = jnp.where(collapse, weights.at[KERNEL_B].set(0.0), weights)
    published = published * (1.0 / tree_sum(published))
    published = jnp.where(emergency, jax.nn.one_hot(KERNEL_D, N_KERNELS), published)

    fe = free_energy(weights, losses, eps, cost, jko.plan, params.learning_rate)
    # Warm start: losses and costs move little per tick, so the last potential
    # is close to the next solution.
    dual = jnp.where(jko.converged, jko.dual, state.dual)
    new_state = OrchState(weights, losses, dual)
    out = OrchOut(published, fe, jko.converged, mode, eps)
    return new_state, out
