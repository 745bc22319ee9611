"""Kernel C (jump-diffusion): jump recovery on Merton data, shrinkage on a random
walk, the implicit branch under stiffness, the CMS sampler against scipy,
robustness and vmap determinism."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from predictor.config import PredictorConfig
from predictor.core.kernels import c_levy

N = 128
CFG = PredictorConfig()
UPDATE = jax.jit(c_levy.update, static_argnames="cfg")


def _standardise(w: np.ndarray) -> np.ndarray:
    return (w - w.mean()) / (w.std() + 1e-12)


def _merton(rng: np.random.Generator, n: int, lam: float, mu_j: float, sd_j: float) -> np.ndarray:
    """Merton path with unit diffusive step: d_k = N(0,1) + 1{Poisson jump} N(mu_j, sd_j^2)."""
    jumps = rng.random(n - 1) < lam
    d = rng.standard_normal(n - 1) + jumps * rng.normal(mu_j, sd_j, n - 1)
    return np.concatenate([[0.0], np.cumsum(d)])


@pytest.mark.parametrize("seed", [0, 1])
def test_merton_jump_recovery(seed: int) -> None:
    n, lam, mu_j = 2000, 0.05, 8.0
    cfg = PredictorConfig(wtmm_buffer_size=n)
    y = _merton(np.random.default_rng(seed), n, lam, mu_j, 2.0)
    z = _standardise(y)
    _, pred, aux = UPDATE(c_levy.init(cfg), jnp.asarray(z), cfg)
    scale = y.std() + 1e-12  # z units -> path units
    lam_hat, mu_hat, sig_hat = float(aux.lam), float(aux.mu_j) * scale, float(aux.sigma_bpv) * scale
    print(
        f"Merton seed {seed}: lambda {lam_hat:.4f} (true {lam}), mu_J {mu_hat:.3f} (true {mu_j}),"
        f" sigma_bpv {sig_hat:.3f} (true 1)"
    )
    assert abs(lam_hat / lam - 1.0) < 0.2
    assert abs(mu_hat / mu_j - 1.0) < 0.2
    assert abs(sig_hat - 1.0) < 0.1
    assert np.isfinite(float(pred))


def test_no_jumps_intensity_below_one_percent() -> None:
    rng = np.random.default_rng(5)
    cfg = PredictorConfig(wtmm_buffer_size=2000)
    lams = []
    for _ in range(3):
        y = np.cumsum(rng.standard_normal(2000))
        lams.append(float(UPDATE(c_levy.init(cfg), jnp.asarray(_standardise(y)), cfg)[2].lam))
    # Sliding 128-point windows of a stationary AR(1) (mean reversion, no jumps).
    e = rng.standard_normal(N + 400)
    x = np.zeros_like(e)
    for t in range(1, len(e)):
        x[t] = 0.7 * x[t - 1] + e[t]
    batch = np.stack([_standardise(x[i : i + N]) for i in range(0, 400, 4)])
    states = _batched_init(CFG, len(batch))
    vm = jax.jit(jax.vmap(c_levy.update, in_axes=(0, 0, None)), static_argnums=2)
    lam_windows = float(np.mean(np.asarray(vm(states, jnp.asarray(batch), CFG)[2].lam)))
    print(
        f"no jumps: lambda on 2000-point random walks {lams},"
        f" mean over AR(1) windows {lam_windows:.5f}"
    )
    assert max(lams) < 0.01
    assert lam_windows < 0.01


def _sliding_forecasts(
    y: np.ndarray, steps: int, cfg: PredictorConfig
) -> tuple[np.ndarray, np.ndarray]:
    state = c_levy.init(cfg)

    @jax.jit
    def run(yy: jax.Array) -> tuple[jax.Array, jax.Array]:
        def step(carry: None, i: jax.Array) -> tuple[None, tuple[jax.Array, jax.Array]]:
            w = jax.lax.dynamic_slice(yy, (i,), (N,))
            mu, sd = jnp.mean(w), jnp.std(w)
            _, p, aux = c_levy.update(state, (w - mu) / (sd + 1e-12), cfg)
            return carry, (mu + sd * p, aux.theta)

        return jax.lax.scan(step, None, jnp.arange(steps))[1]

    pred, theta = run(jnp.asarray(y))
    return np.asarray(pred), np.asarray(theta)


def test_random_walk_rmse_matches_naive() -> None:
    steps = 3000
    y = np.cumsum(np.random.default_rng(21).standard_normal(N + steps))
    pred, theta = _sliding_forecasts(y, steps, CFG)
    target = y[N : N + steps]
    naive = y[N - 1 : N + steps - 1]
    ratio = np.sqrt(np.mean((target - pred) ** 2) / np.mean((target - naive) ** 2))
    print(f"random walk: RMSE(C)/RMSE(naive) = {ratio:.5f}, theta = 0 in {np.mean(theta == 0):.1%}")
    assert abs(ratio - 1.0) < 0.01
    assert np.mean(theta == 0.0) > 0.6


def test_theta_zero_unless_significant() -> None:
    rng = np.random.default_rng(8)
    for _ in range(30):
        z = _standardise(np.cumsum(rng.standard_normal(N)))
        aux = UPDATE(c_levy.init(CFG), jnp.asarray(z), CFG)[2]
        if float(aux.t_stat) <= 2.0:
            assert float(aux.theta) == 0.0
        else:
            assert float(aux.theta) > 0.0


def test_ou_rate_and_forecast() -> None:
    """AR(1) phi 0.7 is an OU sampled once per tick: theta = -log 0.7, E = m + (z - m) e^-theta."""
    rng = np.random.default_rng(4)
    n = 2000
    e = rng.standard_normal(n + 100)
    x = np.zeros_like(e)
    for t in range(1, len(e)):
        x[t] = 0.7 * x[t - 1] + e[t]
    cfg = PredictorConfig(wtmm_buffer_size=n, levy_substeps=64)
    z = _standardise(x[-n:])
    _, pred, aux = UPDATE(c_levy.init(cfg), jnp.asarray(z), cfg)
    theta, m = float(aux.theta), float(aux.m)
    assert abs(theta / -math.log(0.7) - 1.0) < 0.1
    assert abs(m) < 0.1
    # 64 explicit sub-steps of size 1/64 approach the exact OU transition to O(h).
    exact = m + (z[-1] - m) * math.exp(-theta)
    assert abs(float(pred) - exact) < 0.01 * abs(z[-1] - m) + 1e-12
    assert float(aux.frac_explicit) == 1.0


def test_scheme_selection_and_blend() -> None:
    low, high = CFG.stiffness_low, CFG.stiffness_high
    s = jnp.asarray([0.0, low, 0.5 * (low + high), high, 10 * high])
    w = np.asarray(c_levy.implicit_weight(s, low, high))
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5, 1.0, 1.0])
    # stiffness_low == stiffness_high is allowed: a hard switch at that value.
    np.testing.assert_array_equal(np.asarray(c_levy.implicit_weight(s, 1.0, 1.0)), [0, 0, 1, 1, 1])
    # Linear drift: each sub-step multiplies x - m by (1-w)(1-S) + w/(1+S).
    theta, m, x0, n_sub = 6.0, 0.3, 2.0, 4
    sub = theta / n_sub
    for wi in (0.0, 0.4, 1.0):
        g = (1 - wi) * (1 - sub) + wi / (1 + sub)
        got = float(
            c_levy.euler_mean(
                jnp.asarray(x0), jnp.asarray(theta), jnp.asarray(m), n_sub, jnp.asarray(wi)
            )
        )
        np.testing.assert_allclose(got, m + (x0 - m) * g**n_sub, rtol=1e-13)


def test_stiff_drift_uses_stable_implicit_branch() -> None:
    """A reversion much faster than a tick (OU rate 30 per tick) makes the fitted theta stiff.

    With one sub-step, S = theta >= stiffness_high: explicit Euler multiplies
    x - m by 1 - S (|1 - S| > 1, so iterating it diverges); the kernel's
    implicit step multiplies by 1 / (1 + S) and lands near the true
    conditional mean m + (z_t - m) e^{-30} ~ m.
    """
    n = 1024
    cfg = PredictorConfig(wtmm_buffer_size=n, levy_substeps=1)
    rng = np.random.default_rng(2)
    x = np.empty(n + 64)
    x[0] = 0.0
    decay = math.exp(-30.0)
    noise_sd = math.sqrt((1 - decay**2) / (2 * 30.0))
    for t in range(len(x) - 1):
        x[t + 1] = 1.0 + (x[t] - 1.0) * decay + noise_sd * rng.standard_normal()
    z = _standardise(x[-n:])
    _, pred, aux = UPDATE(c_levy.init(cfg), jnp.asarray(z), cfg)
    stiffness, theta, m = float(aux.stiffness), float(aux.theta), float(aux.m)
    print(
        f"stiff OU: theta {theta:.2f}, S {stiffness:.2f}, pred {float(pred):.4f},"
        f" m {m:.4f}, z_t {z[-1]:.4f}"
    )
    assert stiffness > cfg.stiffness_high
    assert float(aux.frac_implicit) == 1.0 and float(aux.blend_weight) == 1.0
    # Stable: the forecast lies between m and z_t and is contracted by 1 / (1 + S).
    np.testing.assert_allclose(
        float(pred), m + (z[-1] - m) / (1 + stiffness), rtol=1e-12, atol=1e-15
    )
    assert abs(float(pred) - m) <= abs(z[-1] - m)
    # The same step of size h = 1 iterated over 50 ticks: explicit diverges, implicit contracts.
    step = jax.jit(lambda x, w: c_levy.euler_mean(x, jnp.asarray(theta), jnp.asarray(m), 1, w))
    x_exp = x_imp = jnp.asarray(z[-1])
    for _ in range(50):
        x_exp, x_imp = step(x_exp, jnp.asarray(0.0)), step(x_imp, jnp.asarray(1.0))
    explicit, implicit = float(x_exp) - m, float(x_imp) - m
    assert abs(1 - stiffness) > 1.0
    assert abs(explicit) > 1e3 * abs(z[-1] - m) or not math.isfinite(explicit)
    assert abs(implicit) <= abs(z[-1] - m)
    # Over sliding windows of the same process the kernel's forecasts stay bounded.
    batch = np.stack([_standardise(x[i : i + n]) for i in range(0, 64, 8)])
    vm = jax.jit(jax.vmap(c_levy.update, in_axes=(0, 0, None)), static_argnums=2)
    _, preds, auxs = vm(_batched_init(cfg, len(batch)), jnp.asarray(batch), cfg)
    assert np.all(np.asarray(auxs.frac_implicit) == 1.0)
    assert np.all(np.abs(np.asarray(preds)) <= np.max(np.abs(batch), axis=1))


@pytest.mark.parametrize(("alpha", "beta"), [(1.5, 0.5), (0.8, -0.3), (1.0, 0.5)])
def test_cms_sampler_matches_scipy_levy_stable(
    alpha: float, beta: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = np.asarray(c_levy.cms_sample(jax.random.PRNGKey(11), alpha, beta, (1000,)))
    assert samples.shape == (1000,) and np.all(np.isfinite(samples))
    # CMS draws the S1 (Samorodnitsky–Taqqu) parameterisation; scipy defaults to S0.
    monkeypatch.setattr(stats.levy_stable, "parameterization", "S1")
    dist = stats.levy_stable(alpha, beta)
    p_value = stats.kstest(samples, dist.cdf).pvalue
    print(f"CMS alpha {alpha} beta {beta}: KS p-value {p_value:.3f}")
    assert p_value > 0.01


def test_cms_sampler_gaussian_limit_and_traced_params() -> None:
    """alpha = 2 is N(0, 2) in S1; alpha and beta may be traced."""
    f = jax.jit(lambda k, a, b: c_levy.cms_sample(k, a, b, (4000,)))
    x = np.asarray(f(jax.random.PRNGKey(3), 2.0, 0.0))
    assert stats.kstest(x, stats.norm(scale=math.sqrt(2.0)).cdf).pvalue > 0.01


def _batched_init(cfg: PredictorConfig, b: int) -> c_levy.CState:
    return jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (b, *a.shape)), c_levy.init(cfg))


def _edge_windows() -> list[np.ndarray]:
    spike = np.zeros(N)
    spike[N // 2] = 1e6
    last_spike = np.random.default_rng(1).standard_normal(N)
    last_spike[-1] = 1e8
    alternating = np.tile([1.0, -1.0], N // 2)
    return [
        np.zeros(N),
        _standardise(np.full(N, 0.1)),
        np.full(N, 3.0),
        _standardise(spike),
        _standardise(last_spike),
        np.arange(N, dtype=float),
        alternating,
        np.exp(-0.3 * np.arange(N)),
    ]


def _assert_finite(out: object) -> None:
    for leaf in jax.tree_util.tree_leaves(out):
        assert np.all(np.isfinite(np.asarray(leaf)))


def test_edge_windows_are_finite() -> None:
    for z in _edge_windows():
        _assert_finite(UPDATE(c_levy.init(CFG), jnp.asarray(z), CFG))
    _, pred, aux = UPDATE(c_levy.init(CFG), jnp.zeros(N), CFG)
    assert float(pred) == 0.0 and float(aux.lam) == 0.0


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, N, elements=st.floats(-1e6, 1e6, allow_nan=False)), st.booleans())
def test_hypothesis_finite(y: np.ndarray, standardise: bool) -> None:
    z = _standardise(y) if standardise else y
    _assert_finite(UPDATE(c_levy.init(CFG), jnp.asarray(z), CFG))


@pytest.mark.parametrize("substeps", [4, 3])
def test_vmap_equals_per_item_bitwise(substeps: int) -> None:
    cfg = CFG.replace(levy_substeps=substeps)
    rng = np.random.default_rng(9)
    batch = np.stack(
        [_standardise(np.cumsum(rng.standard_normal(N))) for _ in range(3)]
        + [_standardise(_merton(rng, N, 0.05, 8.0, 2.0)), _standardise(rng.standard_normal(N))]
        + _edge_windows()
    )
    vm = jax.jit(jax.vmap(c_levy.update, in_axes=(0, 0, None)), static_argnums=2)
    out_b = vm(_batched_init(cfg, len(batch)), jnp.asarray(batch), cfg)
    for i in range(len(batch)):
        out_i = UPDATE(c_levy.init(cfg), jnp.asarray(batch[i]), cfg)
        for leaf_b, leaf_i in zip(
            jax.tree_util.tree_leaves(out_b), jax.tree_util.tree_leaves(out_i), strict=True
        ):
            np.testing.assert_array_equal(np.asarray(leaf_b)[i], np.asarray(leaf_i))
