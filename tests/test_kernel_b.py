"""Kernel B (backward Kolmogorov equation): NW coefficients, fd and dgm solvers.

References: statsmodels (Silverman bandwidth, local-constant kernel
regression), numpy's histogram, and the OU closed form
E[X_1 | X_0 = x] = m + (x - m) e^(-theta).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from predictor.config import PredictorConfig
from predictor.core.kernels import b_dgm, b_fd, b_net, b_nw

N = 64
CFG = PredictorConfig(wtmm_buffer_size=N, wiener_order=4, signature_window=16)
CFG_FD = CFG.replace(dgm_solver="fd")
UPDATE = jax.jit(b_dgm.update, static_argnames=("cfg", "train_steps"))


def _standardise(y: np.ndarray) -> jnp.ndarray:
    return jnp.asarray((y - y.mean()) / (y.std() + 1e-12))


def _ar1(n: int, phi: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.standard_normal()
    return x


def _spike() -> jnp.ndarray:
    y = np.random.default_rng(5).standard_normal(N)
    y[N // 2] = 1e9
    return _standardise(y)


WINDOWS = {
    "zeros": jnp.zeros(N),
    "constant": jnp.full(N, 3.0),
    "spike": _spike(),
    "spike_last": _standardise(np.r_[np.zeros(N - 1), 1e12]),
    "ar1": _standardise(_ar1(N, 0.7, 0)),
}


# --- Nadaraya–Watson -----------------------------------------------------------


def test_bandwidth_and_nw_match_statsmodels() -> None:
    from statsmodels.nonparametric.bandwidths import bw_silverman
    from statsmodels.nonparametric.kernel_regression import KernelReg

    for seed in range(3):
        z = np.asarray(_standardise(np.random.default_rng(seed).standard_normal(128).cumsum()))
        fit = b_nw.nw_fit(jnp.asarray(z))
        x, d = z[:-1], np.diff(z)
        h = float(fit.h)
        assert h == pytest.approx(bw_silverman(x), rel=1e-12)
        pts = np.linspace(-2.5, 2.5, 11)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean_d, _ = KernelReg(d, x, var_type="c", reg_type="lc", bw=[h]).fit(pts)
            mean_d2, _ = KernelReg(d**2, x, var_type="c", reg_type="lc", bw=[h]).fit(pts)
        b, s2 = b_nw.nw_coefficients(fit, jnp.asarray(pts))
        np.testing.assert_allclose(b, mean_d, atol=1e-10)
        np.testing.assert_allclose(
            s2, np.maximum(mean_d2 - mean_d**2, float(fit.floor)), atol=1e-10
        )


def test_nw_constant_window_is_finite() -> None:
    fit = b_nw.nw_fit(jnp.zeros(N))
    b, s2 = b_nw.nw_coefficients(fit, jnp.linspace(-1e3, 1e3, 7))
    assert float(fit.h) == b_nw.H_MIN
    np.testing.assert_array_equal(b, 0.0)
    np.testing.assert_array_equal(s2, b_nw.VAR_FLOOR_ABS)


# --- finite differences ----------------------------------------------------------


@pytest.mark.parametrize("size", [65, 300])  # dense squaring, then tridiagonal steps
@pytest.mark.parametrize("theta", [0.5, 1.5])
def test_fd_matches_ou_closed_form(size: int, theta: float) -> None:
    m, sigma = 0.4, 0.8
    grid = jnp.linspace(-3.0, 3.5, size)
    u0 = b_fd.fd_solve(grid, theta * (m - grid), jnp.full(size, sigma**2))
    exact = m + (np.asarray(grid) - m) * np.exp(-theta)
    err = np.max(np.abs(np.asarray(u0) - exact))
    print(f"fd OU theta={theta} G={size}: max error {err:.2e}")
    assert err < 1e-3


def test_fd_pure_diffusion_keeps_identity() -> None:
    grid = jnp.linspace(-2.0, 2.0, 65)
    u0 = b_fd.fd_solve(grid, jnp.zeros(65), jnp.full(65, 0.7))
    np.testing.assert_allclose(u0, grid, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_fd_scheme_is_monotone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = 41
    grid = jnp.linspace(-2.0, 3.0, size)
    b = jnp.asarray(3.0 * rng.standard_normal(size))  # outward drift at the edges too
    s2 = jnp.asarray(rng.uniform(0.0, 2.0, size))
    gen = b_fd.fd_generator(grid, b, s2)
    assert float(jnp.min(gen.lower)) >= 0.0
    assert float(jnp.min(gen.upper)) >= 0.0
    np.testing.assert_allclose(gen.lower + gen.diag + gen.upper, 0.0, atol=1e-12)
    u0 = np.asarray(b_fd.fd_solve(grid, b, s2))
    assert np.all(np.diff(u0) >= -1e-12)  # order preserving
    assert u0.min() >= float(grid[0]) - 1e-12
    assert u0.max() <= float(grid[-1]) + 1e-12


def test_interp_uniform_matches_numpy() -> None:
    grid = jnp.linspace(-1.3, 2.1, 17)
    u = jnp.sin(3.0 * grid)
    for x in [-1.3, -0.71, 0.0, 1.55, 2.1]:
        got = float(b_fd.interp_uniform(jnp.asarray(x), grid, u))
        assert got == pytest.approx(float(np.interp(x, grid, u)), abs=1e-14)


# --- DGM ---------------------------------------------------------------------------


def test_dgm_matches_fd_on_ou() -> None:
    """Budget: 3 x 500 Adam steps at lr 3e-3, 64 points, width 32, depth 2, tanh."""
    cfg = CFG.replace(dgm_learning_rate=3e-3)
    m, sigma = 0.3, 0.7
    lo, hi = jnp.asarray(-3.0), jnp.asarray(3.0)
    grid = jnp.linspace(lo, hi, 65)
    central = np.abs(np.asarray(grid)) <= 0.9 * 3.0

    @jax.jit
    def train(theta_p: jax.Array, opt: object, key: jax.Array, theta: jax.Array) -> tuple:
        def coef(x: jax.Array) -> tuple[jax.Array, jax.Array]:
            return theta * (m - x), jnp.full_like(x, sigma**2)

        return b_net.dgm_train(theta_p, opt, key, coef, lo=lo, hi=hi, steps=500, cfg=cfg)

    for theta in (0.5, 2.0):
        state = b_dgm.init(cfg)
        params, opt = state.params, state.opt_state
        for key in jax.random.split(state.key, 3):
            params, opt, _ = train(params, opt, key, jnp.asarray(theta))
        v = b_net.dgm_value(params, jnp.zeros(65), grid, cfg)
        u_fd = b_fd.fd_solve(grid, theta * (m - grid), jnp.full(65, sigma**2))
        err = float(jnp.max(jnp.abs(v - u_fd)[central]))
        print(f"dgm vs fd OU theta={theta}: L-inf (central 90%) {err:.2e}")
        assert err < 2e-2


def test_dgm_fields_match_finite_differences() -> None:
    state = b_dgm.init(CFG)
    theta = state.params + 0.05 * jax.random.normal(jax.random.PRNGKey(1), state.params.shape)
    t = jnp.linspace(0.1, 0.9, 7)
    x = jnp.linspace(-2.0, 2.0, 7)
    v, vt, vx, vxx = b_net.dgm_fields(theta, t, x, CFG)
    eps = 1e-4

    def f(tt: jax.Array, xx: jax.Array) -> jax.Array:
        return b_net.dgm_value(theta, tt, xx, CFG)

    np.testing.assert_allclose(v, f(t, x), atol=1e-14)
    np.testing.assert_allclose(vt, (f(t + eps, x) - f(t - eps, x)) / (2 * eps), atol=1e-7)
    np.testing.assert_allclose(vx, (f(t, x + eps) - f(t, x - eps)) / (2 * eps), atol=1e-7)
    fd2 = (f(t, x + eps) - 2 * f(t, x) + f(t, x - eps)) / eps**2
    np.testing.assert_allclose(vxx, fd2, atol=1e-5)
    np.testing.assert_array_equal(f(jnp.ones(7), x), x)  # terminal condition is exact


def test_update_dgm_agrees_with_fd_end_to_end() -> None:
    """Same window, NW coefficients: dgm (1,500 Adam steps, lr 3e-3) vs fd."""
    cfg = CFG.replace(wtmm_buffer_size=128, dgm_learning_rate=3e-3)
    z = _standardise(_ar1(300, 0.6, 1)[-128:])
    state = b_dgm.init(cfg)
    for _ in range(3):
        state, p_dgm, aux = UPDATE(state, z, cfg, 500)
    _, p_fd, aux_fd = UPDATE(b_dgm.init(cfg), z, cfg.replace(dgm_solver="fd"))
    print(f"end to end: p_dgm {float(p_dgm):.4f} p_fd {float(p_fd):.4f}")
    assert abs(float(p_dgm) - float(p_fd)) < 5e-2
    assert abs(float(aux.dgm_entropy) - float(aux_fd.dgm_entropy)) < 0.1
    assert not bool(aux.mode_collapse_warning)


# --- entropies and mode collapse -------------------------------------------------


def test_histogram_entropy_matches_numpy() -> None:
    v = np.random.default_rng(2).standard_normal(300) ** 3
    counts, edges = np.histogram(v, bins=b_dgm.HIST_BINS)
    p = counts / counts.sum()
    dv = edges[1] - edges[0]
    expected = -np.sum(p[p > 0] * np.log(p[p > 0] / dv))
    assert float(b_dgm.histogram_entropy(jnp.asarray(v))) == pytest.approx(expected, abs=1e-12)
    constant = b_dgm.histogram_entropy(jnp.full(9, 2.0))
    assert float(constant) == pytest.approx(np.log(b_dgm.BIN_WIDTH_MIN))


def test_mode_collapse_fires_for_constant_network() -> None:
    state = b_dgm.init(CFG)
    # skip a = -X_SCALE with the zero output layer: V(0, x) = x - x = 0.
    state = state._replace(params=state.params.at[b_net.SKIP_INDEX].set(-b_net.X_SCALE))
    z = WINDOWS["ar1"]
    flags = []
    for _ in range(13):
        state, pred, aux = UPDATE(state, z, CFG, 0)
        flags.append(bool(aux.mode_collapse_warning))
        assert float(pred) == 0.0
        assert float(aux.dgm_entropy) == pytest.approx(np.log(b_dgm.BIN_WIDTH_MIN))
    assert flags == [False] * b_dgm.COLLAPSE_PATIENCE + [True] * 3
    healthy = b_dgm.init(CFG)._replace(
        opt_state=state.opt_state, collapse_count=state.collapse_count
    )
    _, _, aux = UPDATE(healthy, z, CFG, 0)
    assert not bool(aux.mode_collapse_warning)  # the counter resets


@pytest.mark.parametrize("cfg", [CFG, CFG_FD], ids=["dgm", "fd"])
def test_no_mode_collapse_for_healthy_solution(cfg: PredictorConfig) -> None:
    state = b_dgm.init(cfg)
    z = WINDOWS["ar1"]
    for _ in range(15):
        state, _, aux = UPDATE(state, z, cfg)
        assert not bool(aux.mode_collapse_warning)
    assert float(aux.terminal_entropy) > 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_mode_collapse_on_white_noise(seed: int) -> None:
    # White noise reverts fully in one tick: the drift's own map x + b(x) is
    # nearly constant, so a nearly constant solution is right, not collapsed.
    state = b_dgm.init(CFG)
    rng = np.random.default_rng(seed)
    for _ in range(b_dgm.COLLAPSE_PATIENCE + 5):
        z = rng.standard_normal(CFG.wtmm_buffer_size)
        z = jnp.asarray((z - z.mean()) / z.std())
        state, _, aux = UPDATE(state, z, CFG)
        assert not bool(aux.mode_collapse_warning)


# --- kernel contract -------------------------------------------------------------------


def test_cold_start_predicts_last_value_and_zero_steps_keep_weights() -> None:
    state = b_dgm.init(CFG)
    z = WINDOWS["ar1"]
    new, pred, _ = UPDATE(state, z, CFG, 0)
    # V = x tabulated on the grid and interpolated back: z_t to rounding.
    assert float(pred) == pytest.approx(float(z[-1]), rel=0.0, abs=1e-14)
    np.testing.assert_array_equal(new.params, state.params)
    assert not np.array_equal(new.key, state.key)
    trained, _, aux = UPDATE(state, z, CFG)
    assert not np.array_equal(trained.params, state.params)
    assert float(aux.train_loss) > 0.0


def test_init_is_deterministic() -> None:
    a, b = b_dgm.init(CFG), b_dgm.init(CFG)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    c = b_dgm.init(CFG, jax.random.PRNGKey(7))
    assert not np.array_equal(a.params, c.params)
    assert a.params.shape == (b_net.param_count(CFG),)
    assert a.params.dtype == jnp.float64
    with pytest.raises(ValueError, match="window shape"):
        b_dgm.update(a, jnp.zeros(N + 1), CFG)


@pytest.mark.parametrize("cfg", [CFG, CFG_FD], ids=["dgm", "fd"])
@pytest.mark.parametrize("name", sorted(WINDOWS))
def test_nan_free_on_edge_windows(cfg: PredictorConfig, name: str) -> None:
    state = b_dgm.init(cfg)
    z = WINDOWS[name]
    for _ in range(3):
        state, pred, aux = UPDATE(state, z, cfg)
        for leaf in jax.tree.leaves((state, pred, aux)):
            assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64)))
    grid = b_fd.solver_grid(jnp.asarray(z), cfg.fd_grid_size)
    assert float(grid[0]) <= float(pred) <= float(grid[-1])


@settings(max_examples=25, deadline=None)
@given(
    y=arrays(np.float64, N, elements=st.floats(-1e12, 1e12, allow_nan=False)),
    standardise=st.booleans(),
)
def test_nan_free_on_generated_windows(y: np.ndarray, standardise: bool) -> None:
    z = _standardise(y) if standardise else jnp.asarray(y)
    for cfg in (CFG, CFG_FD):
        state, pred, aux = UPDATE(b_dgm.init(cfg), z, cfg)
        for leaf in jax.tree.leaves((state, pred, aux)):
            assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64)))


@pytest.mark.parametrize("size", [2, 5])
@pytest.mark.parametrize("cfg", [CFG, CFG_FD], ids=["dgm", "fd"])
def test_vmap_equals_single_calls_bitwise(cfg: PredictorConfig, size: int) -> None:
    names = ["ar1", "spike", "zeros", "constant", "spike_last"][:size]
    zs = jnp.stack([WINDOWS[n] for n in names])
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(size))
    batch = jax.vmap(lambda k: b_dgm.init(cfg, k))(keys)
    singles = [b_dgm.init(cfg, k) for k in keys]
    vupdate = jax.jit(jax.vmap(b_dgm.update, in_axes=(0, 0, None)), static_argnums=2)
    for _ in range(3):  # non-zero Adam moments after the first tick
        batch, preds, auxes = vupdate(batch, zs, cfg)
        outs = [UPDATE(s, z, cfg) for s, z in zip(singles, zs, strict=True)]
        singles = [o[0] for o in outs]
        for i, (s, p, a) in enumerate(outs):
            got = jax.tree.leaves((s, p, a))
            want = jax.tree.leaves(jax.tree.map(lambda leaf, i=i: leaf[i], (batch, preds, auxes)))
            for x, y in zip(got, want, strict=True):
                np.testing.assert_array_equal(x, y)
