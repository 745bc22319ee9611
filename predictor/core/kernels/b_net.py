"""Kernel B, part 3: the DGM network V(t, x) and its online training.

The network (z units in and out)::

    V(t, x) = x + (1 - t) [ a x / X_SCALE + MLP(2t - 1, x / X_SCALE) ],

an MLP with ``dgm_depth`` hidden layers of ``dgm_width_size`` units
(``dgm_activation``) and a learned linear skip ``a``. The factor (1 - t)
enforces the terminal condition V(1, x) = x exactly, so the terminal
mismatch term of the DGM loss is identically zero and the loss is the mean
squared residual of the backward equation,

    L = mean_i (V_t + b V_x + 0.5 sigma^2 V_xx)^2 (t_i, x_i),

over ``dgm_collocation_points`` points per Adam step (``collocation``). The
network learns a correction around the identity: with the output layer and
``a`` at zero, a cold network predicts z_t (the random walk), and the OU
solution m + (x - m) e^(-theta (1 - t)) is close to the linear skip. Inputs
are scaled by the fixed ``X_SCALE`` (z is standardised, so |x| is a few
units) rather than by the window's range, so that the function the network
holds keeps its meaning from tick to tick and warm starts help.

Derivatives V_t, V_x, V_xx are forward mode (``jax.jvp``, nested for V_xx);
only the gradient with respect to the weights is reverse mode.

Weights are one flat float64 vector (``param_shapes`` gives the layout), so
that Adam's state is a single array: optax's per-leaf arithmetic on a tree of
several leaves compiles differently batched and unbatched.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float

from predictor.config import PredictorConfig
from predictor.core.kernels.b_batch import tree_sum

#: Scale of the network's x input (z units).
X_SCALE = 2.0
#: Index of the skip coefficient ``a`` in the flat parameter vector, from the end.
SKIP_INDEX = -2
#: Golden ratio conjugate, (sqrt 5 - 1) / 2: the t-increment of the collocation lattice.
_PHI = 0.6180339887498949

CoefFn = Callable[[Float[Array, " m"]], tuple[Float[Array, " m"], Float[Array, " m"]]]


def _activation(name: str) -> Callable[[Array], Array]:
    if name == "tanh":
        return jnp.tanh
    if name == "softplus":
        return jax.nn.softplus
    if name == "sin":
        return jnp.sin
    raise ValueError(f"unknown dgm_activation {name!r}")


def param_shapes(cfg: PredictorConfig) -> list[tuple[int, int]]:
    """Shapes of the layer matrices (rows = inputs, columns = outputs).

    Hidden layer i: (fan_in + 1, width), the last row being the bias. Output
    layer: (width + 2, 1), rows = hidden units, then the skip ``a`` (on
    x / X_SCALE), then the bias.
    """
    sizes = [2] + [cfg.dgm_width_size] * cfg.dgm_depth
    hidden = [(fi + 1, fo) for fi, fo in itertools.pairwise(sizes)]
    return [*hidden, (cfg.dgm_width_size + 2, 1)]


def param_count(cfg: PredictorConfig) -> int:
    """Length of the flat parameter vector (all layer matrices, row-major)."""
    return sum(r * c for r, c in param_shapes(cfg))


def unflatten(theta: Float[Array, " p"], cfg: PredictorConfig) -> list[Array]:
    """Layer matrices from the flat vector (static slices)."""
    mats = []
    offset = 0
    for r, c in param_shapes(cfg):
        mats.append(theta[offset : offset + r * c].reshape(r, c))
        offset += r * c
    return mats


def init_params(key: Array, cfg: PredictorConfig) -> Float[Array, " p"]:
    """Flat parameters: LeCun-normal hidden weights, zero biases, zero output
    layer (skip included), so that the cold network is V = x."""
    shapes = param_shapes(cfg)
    keys = jax.random.split(key, len(shapes) - 1)
    parts = []
    for k, (r, c) in zip(keys, shapes[:-1], strict=True):
        w = jax.random.normal(k, (r - 1, c), dtype=jnp.float64) / jnp.sqrt(float(r - 1))
        parts += [w.ravel(), jnp.zeros(c, dtype=jnp.float64)]
    r, c = shapes[-1]
    parts.append(jnp.zeros(r * c, dtype=jnp.float64))
    return jnp.concatenate(parts)


def _affine(h: Array, m: Array) -> Array:
    # The bias is the last row of m, applied through a column of ones.
    return jnp.concatenate([h, jnp.ones_like(h[:, :1])], axis=1) @ m


def dgm_value(
    theta: Float[Array, " p"], t: Float[Array, " m"], x: Float[Array, " m"], cfg: PredictorConfig
) -> Float[Array, " m"]:
    """V(t, x) at the points (t_i, x_i) (z units)."""
    act = _activation(cfg.dgm_activation)
    mats = unflatten(theta, cfg)
    xs = x * (1.0 / X_SCALE)
    h = jnp.stack([2.0 * t - 1.0, xs], axis=-1)
    for m in mats[:-1]:
        h = act(_affine(h, m))
    # The skip a x / X_SCALE is one more input of the output layer.
    correction = _affine(jnp.concatenate([h, xs[:, None]], axis=1), mats[-1])[:, 0]
    return x + (1.0 - t) * correction


def dgm_fields(
    theta: Float[Array, " p"], t: Float[Array, " m"], x: Float[Array, " m"], cfg: PredictorConfig
) -> tuple[Float[Array, " m"], Float[Array, " m"], Float[Array, " m"], Float[Array, " m"]]:
    """V, V_t, V_x, V_xx at the points, by forward mode.

    V is pointwise in (t_i, x_i), so one jvp with an all-ones tangent gives
    every point's partial derivative; V_xx is a jvp of that jvp.
    """
    ones = jnp.ones_like(x)

    def along_x(xx: Float[Array, " m"]) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        return jax.jvp(lambda y: dgm_value(theta, t, y, cfg), (xx,), (ones,))

    (v, vx), (_, vxx) = jax.jvp(along_x, (x,), (ones,))
    _, vt = jax.jvp(lambda s: dgm_value(theta, s, x, cfg), (t,), (ones,))
    return v, vt, vx, vxx


def pde_residual(
    theta: Float[Array, " p"],
    t: Float[Array, " m"],
    x: Float[Array, " m"],
    b: Float[Array, " m"],
    s2: Float[Array, " m"],
    *,
    cfg: PredictorConfig,
) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
    """(V, V_t + b V_x + 0.5 s2 V_xx) at the points."""
    v, vt, vx, vxx = dgm_fields(theta, t, x, cfg)
    return v, vt + b * vx + 0.5 * s2 * vxx


def optimizer(cfg: PredictorConfig) -> optax.GradientTransformation:
    """``optax.adam`` at ``cfg.dgm_learning_rate``."""
    return optax.adam(cfg.dgm_learning_rate)


def collocation(
    u: Float[Array, " 2"], lo: Float[Array, ""], hi: Float[Array, ""], n: int
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """``n`` points of a randomly shifted lattice on [0, 1] x [lo, hi].

    ``x_i = lo + (hi - lo) (i + u_0) / n`` (one point per x-stratum) and
    ``t_i = frac(u_1 + i phi)`` with phi the golden ratio conjugate: a
    Kronecker lattice with a uniform random shift ``u`` in [0, 1)^2, so every
    point is uniform on the domain, the points cover it evenly (lower-variance
    loss gradients than i.i.d. points), and one step costs two random numbers.
    """
    i = jnp.arange(n, dtype=jnp.float64)
    x = lo + (hi - lo) * ((i + u[0]) * (1.0 / n))
    t = jnp.mod(u[1] + i * _PHI, 1.0)
    return t, x


def dgm_train(
    theta: Float[Array, " p"],
    opt_state: optax.OptState,
    key: Array,
    coef: CoefFn,
    *,
    lo: Float[Array, ""],
    hi: Float[Array, ""],
    steps: int,
    cfg: PredictorConfig,
) -> tuple[Float[Array, " p"], optax.OptState, Float[Array, ""]]:
    """``steps`` Adam steps on the mean squared residual; returns the mean loss.

    ``coef`` maps points x to (b(x), sigma^2(x)); it does not depend on the
    weights. With ``steps == 0`` nothing changes and the loss is 0.
    """
    tx = optimizer(cfg)

    inv_p = 1.0 / cfg.dgm_collocation_points

    def loss_fn(p: Array, t: Array, x: Array, b: Array, s2: Array) -> Array:
        _, r = pde_residual(p, t, x, b, s2, cfg=cfg)
        return tree_sum(r * r) * inv_p

    def step(
        carry: tuple[Array, optax.OptState], u: Array
    ) -> tuple[tuple[Array, optax.OptState], Array]:
        p, s = carry
        t, x = collocation(u, lo, hi, cfg.dgm_collocation_points)
        b, s2 = coef(x)
        loss, grads = jax.value_and_grad(loss_fn)(p, t, x, b, s2)
        updates, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, updates), s), loss

    if steps == 0:
        return theta, opt_state, jnp.zeros((), dtype=jnp.float64)
    shifts = jax.random.uniform(key, (steps, 2), dtype=jnp.float64)
    (theta, opt_state), losses = jax.lax.scan(step, (theta, opt_state), shifts)
    return theta, opt_state, tree_sum(losses) * (1.0 / steps)
