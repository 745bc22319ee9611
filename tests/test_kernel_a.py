"""Kernel A (Wiener–Kolmogorov): Burg / Yule–Walker against statsmodels and scipy,
AIC order choice, AR(2) forecast accuracy, robustness and vmap determinism."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.linalg import solve_toeplitz
from statsmodels.regression.linear_model import burg

from predictor.config import PredictorConfig
from predictor.core.kernels import a_wiener

N = 128
CFG = PredictorConfig()
CFG_YW = PredictorConfig(wiener_method="yule_walker")
UPDATE = jax.jit(a_wiener.update, static_argnames="cfg")
BURG = jax.jit(a_wiener.burg_fit, static_argnums=1)
LEVINSON = jax.jit(a_wiener.levinson_fit)
AUTOCOV = jax.jit(a_wiener.autocovariances, static_argnums=1)


def _standardise(w: np.ndarray) -> np.ndarray:
    return (w - w.mean()) / (w.std() + 1e-12)


def _ar_series(
    rng: np.random.Generator, phi: tuple[float, ...], n: int, burn: int = 200
) -> np.ndarray:
    e = rng.standard_normal(n + burn)
    y = np.zeros(n + burn)
    for t in range(len(phi), n + burn):
        y[t] = sum(p * y[t - 1 - j] for j, p in enumerate(phi)) + e[t]
    return y[burn:]


def _windows() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        _standardise(_ar_series(rng, (0.6, 0.25), N)),
        _standardise(_ar_series(rng, (0.95,), N)),
        _standardise(np.cumsum(rng.standard_normal(N))),
        _standardise(rng.standard_normal(N)),
        _standardise(_ar_series(rng, (0.5, -0.4, 0.2), N)),
    ]


@pytest.mark.parametrize("k", range(5))
def test_burg_matches_statsmodels(k: int) -> None:
    z = _windows()[k]
    fit = BURG(jnp.asarray(z - z.mean()), 8)
    for m in range(1, 9):
        ref, sigma2 = burg(z, order=m, demean=True)
        np.testing.assert_allclose(np.asarray(fit.coefs[m - 1, :m]), ref, rtol=0, atol=1e-8)
        assert np.all(np.asarray(fit.coefs[m - 1, m:]) == 0.0)
        np.testing.assert_allclose(float(fit.variances[m]), sigma2, rtol=1e-8)


def _numpy_autocov(x: np.ndarray, p: int) -> np.ndarray:
    n = len(x)
    r = np.array([np.dot(x[j:], x[: n - j]) / n for j in range(p + 1)])
    r[0] = r[0] * (1.0 + a_wiener.YW_RIDGE_REL) + a_wiener.YW_RIDGE_ABS
    return r


@pytest.mark.parametrize("k", range(5))
def test_yule_walker_matches_solve_toeplitz(k: int) -> None:
    z = _windows()[k]
    x = z - z.mean()
    r = _numpy_autocov(x, 8)
    np.testing.assert_allclose(np.asarray(AUTOCOV(jnp.asarray(x), 8)), r, atol=1e-14)
    fit = LEVINSON(jnp.asarray(r))
    for m in range(1, 9):
        ref = solve_toeplitz(r[:m], r[1 : m + 1])
        np.testing.assert_allclose(np.asarray(fit.coefs[m - 1, :m]), ref, rtol=0, atol=1e-10)
        # Innovation variance of the Yule–Walker fit: r_0 - a . r_{1..m}.
        np.testing.assert_allclose(float(fit.variances[m]), r[0] - ref @ r[1 : m + 1], rtol=1e-10)


def _reference_fits(z: np.ndarray, p: int, method: str) -> list[tuple[np.ndarray, float]]:
    """(coefficients, innovation variance) of orders 1..p from statsmodels / scipy."""
    if method == "burg":
        return [burg(z, order=m, demean=True) for m in range(1, p + 1)]
    r = _numpy_autocov(z - z.mean(), p)
    out = []
    for m in range(1, p + 1):
        a = solve_toeplitz(r[:m], r[1 : m + 1])
        out.append((a, float(r[0] - a @ r[1 : m + 1])))
    return out


@pytest.mark.parametrize(
    ("k", "n", "p", "method"),
    [(k, N, 8, "burg") for k in range(5)]
    + [(k, N, 8, "yule_walker") for k in range(5)]
    + [(0, 100, 3, "burg"), (1, 100, 1, "burg"), (4, 100, 3, "yule_walker")],
)
def test_update_is_aic_choice_of_reference_fits(k: int, n: int, p: int, method: str) -> None:
    """Full update against an independent pipeline: reference fits + AIC + AR forecast."""
    cfg = PredictorConfig(wtmm_buffer_size=n, wiener_order=p, wiener_method=method)
    z = _windows()[k][-n:]
    fits = _reference_fits(z, p, method)
    aic = [n * np.log(s2) + 2 * m for m, (_, s2) in enumerate(fits, start=1)]
    m = int(np.argmin(aic)) + 1
    coefs = fits[m - 1][0]
    x = z - z.mean()
    expected = z.mean() + float(coefs @ x[::-1][:m])
    state, pred, aux = UPDATE(a_wiener.init(cfg), jnp.asarray(z), cfg)
    assert int(aux.order) == m == int(state.order)
    np.testing.assert_allclose(float(pred), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(float(aux.sigma2), fits[m - 1][1], rtol=1e-8)
    np.testing.assert_allclose(np.asarray(state.coefs[:m]), coefs, atol=1e-8)
    assert np.all(np.asarray(state.coefs[m:]) == 0.0)


def test_aic_picks_low_order_on_ar1() -> None:
    rng = np.random.default_rng(3)
    orders = []
    for _ in range(20):
        z = _standardise(_ar_series(rng, (0.7,), N))
        orders.append(int(UPDATE(a_wiener.init(CFG), jnp.asarray(z), CFG)[2].order))
    # AIC over-fits sometimes, but mostly settles on 1 or 2 (fixed order 8 would not).
    assert np.mean(np.array(orders) <= 2) >= 0.7


def _sliding_rmse(y: np.ndarray, steps: int, cfg: PredictorConfig) -> np.ndarray:
    """Kernel forecasts of y[i+N] from window y[i:i+N], standardised as the caller does."""
    state = a_wiener.init(cfg)

    @jax.jit
    def run(yy: jax.Array) -> jax.Array:
        def step(carry: None, i: jax.Array) -> tuple[None, jax.Array]:
            w = jax.lax.dynamic_slice(yy, (i,), (N,))
            mu, sd = jnp.mean(w), jnp.std(w)
            _, p, _ = a_wiener.update(state, (w - mu) / (sd + 1e-12), cfg)
            return carry, mu + sd * p

        return jax.lax.scan(step, None, jnp.arange(steps))[1]

    return np.asarray(run(jnp.asarray(y)))


@pytest.mark.parametrize("cfg", [CFG, CFG_YW], ids=["burg", "yule_walker"])
def test_ar2_rmse_close_to_true_coefficients(cfg: PredictorConfig) -> None:
    phi = (0.5, 0.3)
    steps = 500
    ratios = []
    for seed in (11, 12):
        y = _ar_series(np.random.default_rng(seed), phi, N + steps)
        pred = _sliding_rmse(y, steps, cfg)
        target = y[N : N + steps]
        oracle = phi[0] * y[N - 1 : N + steps - 1] + phi[1] * y[N - 2 : N + steps - 2]
        rmse = np.sqrt(np.mean((target - pred) ** 2))
        rmse_true = np.sqrt(np.mean((target - oracle) ** 2))
        ratios.append(rmse / rmse_true)
    print(f"AR(2) {cfg.wiener_method}: RMSE / RMSE(true coefficients) = {ratios}")
    assert max(ratios) < 1.05


def _edge_windows() -> list[np.ndarray]:
    spike = np.zeros(N)
    spike[N // 2] = 1e6
    last_spike = np.random.default_rng(1).standard_normal(N)
    last_spike[-1] = 1e8
    return [
        np.zeros(N),
        _standardise(np.full(N, 0.1)),
        np.full(N, 3.0),
        _standardise(spike),
        _standardise(last_spike),
        np.arange(N, dtype=float),
    ]


def _assert_finite(out: object) -> None:
    for leaf in jax.tree_util.tree_leaves(out):
        assert np.all(np.isfinite(np.asarray(leaf)))


@pytest.mark.parametrize("cfg", [CFG, CFG_YW], ids=["burg", "yule_walker"])
def test_edge_windows_are_finite(cfg: PredictorConfig) -> None:
    for z in _edge_windows():
        out = UPDATE(a_wiener.init(cfg), jnp.asarray(z), cfg)
        _assert_finite(out)
    # A flat (cold) window forecasts its mean.
    _, pred, _ = UPDATE(a_wiener.init(cfg), jnp.zeros(N), cfg)
    assert float(pred) == 0.0


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, N, elements=st.floats(-1e6, 1e6, allow_nan=False)),
    st.booleans(),
    st.sampled_from(["burg", "yule_walker"]),
)
def test_hypothesis_finite(y: np.ndarray, standardise: bool, method: str) -> None:
    cfg = CFG if method == "burg" else CFG_YW
    z = _standardise(y) if standardise else y
    _assert_finite(UPDATE(a_wiener.init(cfg), jnp.asarray(z), cfg))


@pytest.mark.parametrize("cfg", [CFG, CFG_YW], ids=["burg", "yule_walker"])
def test_vmap_equals_per_item_bitwise(cfg: PredictorConfig) -> None:
    batch = np.stack(_windows() + _edge_windows())
    b = batch.shape[0]
    states = jax.tree_util.tree_map(
        lambda a: jnp.broadcast_to(a, (b, *a.shape)), a_wiener.init(cfg)
    )
    vmapped = jax.jit(jax.vmap(a_wiener.update, in_axes=(0, 0, None)), static_argnums=2)
    out_b = vmapped(states, jnp.asarray(batch), cfg)
    for i in range(b):
        out_i = UPDATE(a_wiener.init(cfg), jnp.asarray(batch[i]), cfg)
        for leaf_b, leaf_i in zip(
            jax.tree_util.tree_leaves(out_b), jax.tree_util.tree_leaves(out_i), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(leaf_b)[i], np.asarray(leaf_i))
