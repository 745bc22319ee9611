"""Entropic JKO step and orchestrator overrides: limits, simplex, adaptation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.config import PredictorConfig
from predictor.core import orchestrator as orch
from predictor.core.params import params_from_config

jko = jax.jit(orch.jko_step, static_argnums=(5,))


def _problem(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(4))
    losses = rng.uniform(0.2, 3.0, 4)
    p = rng.normal(size=4)
    cost = (p[:, None] - p[None, :]) ** 2
    return jnp.asarray(w), jnp.asarray(losses), jnp.asarray(cost)


@pytest.mark.parametrize("seed", range(5))
def test_infinite_tau_gives_gibbs_weights(seed: int) -> None:
    w, losses, cost = _problem(seed)
    eps = jnp.asarray(0.3)
    res = jko(w, losses, cost, eps, jnp.asarray(1e12), 500)
    assert bool(res.converged)
    gibbs = jax.nn.softmax(-losses / (2 * eps))
    np.testing.assert_allclose(res.weights, gibbs, atol=2e-6)


@pytest.mark.parametrize("seed", range(5))
def test_zero_tau_keeps_weights(seed: int) -> None:
    w, losses, cost = _problem(seed)
    cost = cost + 1.0 - jnp.eye(4)  # distinct kernels: positive off-diagonal cost
    res = jko(w, losses, cost, jnp.asarray(0.3), jnp.asarray(1e-9), 500)
    np.testing.assert_allclose(res.weights, w, atol=2e-6)


def test_huge_eps_gives_uniform_weights() -> None:
    w, losses, cost = _problem(7)
    res = jko(w, losses, cost, jnp.asarray(1e7), jnp.asarray(1.0), 500)
    np.testing.assert_allclose(res.weights, 0.25, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    eps=st.floats(1e-3, 1e3),
    tau=st.floats(1e-3, 1e6),
)
def test_weights_stay_on_the_simplex(seed: int, eps: float, tau: float) -> None:
    w, losses, cost = _problem(seed)
    res = jko(w, losses, cost, jnp.asarray(eps), jnp.asarray(tau), 200)
    weights = np.asarray(res.weights)
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
    assert abs(weights.sum() - 1.0) <= 1e-10
    if bool(res.converged):
        assert float(res.marginal_error) <= orch.MARGINAL_TOL


def test_non_convergence_keeps_previous_weights() -> None:
    w, losses, cost = _problem(3)
    res = jko(w, losses, cost, jnp.asarray(0.3), jnp.asarray(1.0), 2)
    assert not bool(res.converged)
    np.testing.assert_array_equal(res.weights, w)


def test_free_energy_matches_definition() -> None:
    w, losses, cost = _problem(11)
    eps, tau = jnp.asarray(0.2), jnp.asarray(3.0)
    res = jko(w, losses, cost, eps, tau, 500)
    nw = np.asarray(res.weights)
    expected = (
        float(np.dot(losses, nw))
        + 0.2 * float(np.sum(nw * np.log(nw)))
        + float(np.sum(np.asarray(cost) * np.asarray(res.plan))) / 6.0
    )
    got = float(orch.free_energy(res.weights, losses, eps, cost, res.plan, tau))
    assert got == pytest.approx(expected, rel=1e-12)


def test_longer_steps_decrease_the_energy_further() -> None:
    """A proximal step's energy F(w_{k+1}) is non-increasing in the step size tau."""
    w, losses, cost = _problem(5)
    eps = jnp.asarray(0.5)

    def energy(v: jax.Array) -> float:
        return float(jnp.dot(losses, v) + eps * jnp.sum(v * jnp.log(v)))

    prev = energy(w)
    for tau in (0.01, 0.1, 1.0, 10.0, 1e6):
        cur = energy(jko(w, losses, cost, eps, jnp.asarray(tau), 1000).weights)
        assert cur <= prev + 1e-6
        prev = cur


def test_huber_matches_square_near_zero_and_is_linear_beyond() -> None:
    x = jnp.array([0.0, 0.5, 1.0, 3.0, -4.0])
    np.testing.assert_allclose(orch.huber(x), [0.0, 0.25, 1.0, 5.0, 7.0])


def _run(errors_seq: np.ndarray, emergency_seq: np.ndarray, **flags: object) -> list[orch.OrchOut]:
    cfg = PredictorConfig()
    params = params_from_config(cfg)
    state = orch.init()
    outs = []
    upd = jax.jit(orch.update, static_argnames=("max_iter",))
    for e, h in zip(errors_seq, emergency_seq, strict=True):
        kwargs = {
            "alarm": jnp.asarray(False),
            "freeze": jnp.asarray(False),
            "collapse": jnp.asarray(False),
        }
        kwargs.update({k: jnp.asarray(v) for k, v in flags.items()})
        state, out = upd(
            state,
            errors=jnp.asarray(e),
            predictions=jnp.zeros(4),
            sigma=jnp.asarray(1.0),
            sigma_z=jnp.asarray(1.0),
            emergency=jnp.asarray(h),
            kurtosis=jnp.asarray(3.0),
            params=params,
            max_iter=cfg.sinkhorn_max_iter,
            **kwargs,
        )
        outs.append(out)
    return outs


def test_kernel_with_lowest_loss_gains_weight() -> None:
    rng = np.random.default_rng(0)
    scales = np.array([1.0, 1.5, 2.0, 1.2])
    errors = rng.normal(size=(300, 4)) * scales
    outs = _run(errors, np.zeros(300, bool))
    final = np.asarray(outs[-1].weights)
    assert int(np.argmax(final)) == 0
    assert final[0] > 0.25


def test_a_persistently_better_kernel_takes_most_of_the_weight() -> None:
    # Kernel D's errors are 15% smaller in scale than the others' (a normalised
    # loss gap of about 0.3, against loss noise of about 0.2 over the loss
    # window): at the default epsilon D holds most of the weight on average
    # (about 0.7; 0.42 at epsilon = 0.1, 0.25 for uniform weights).
    rng = np.random.default_rng(4)
    errors = rng.normal(size=(400, 4)) * np.array([1.0, 1.0, 1.0, 0.85])
    w = np.array([np.asarray(o.weights) for o in _run(errors, np.zeros(400, bool))])
    assert w[200:, 3].mean() > 0.6
    assert np.all(w[200:, 3].mean() > 2.0 * w[200:, :3].mean(axis=0))


def test_freeze_keeps_weights_and_alarm_resets_to_uniform() -> None:
    rng = np.random.default_rng(1)
    errors = rng.normal(size=(50, 4)) * np.array([1.0, 3.0, 3.0, 3.0])
    frozen = _run(errors, np.zeros(50, bool), freeze=True)
    np.testing.assert_allclose(frozen[-1].weights, 0.25, atol=0)
    alarmed = _run(errors, np.zeros(50, bool), alarm=True)
    np.testing.assert_allclose(alarmed[-1].weights, 0.25, atol=0)


def test_mode_collapse_publishes_zero_weight_for_b() -> None:
    errors = np.ones((5, 4))
    outs = _run(errors, np.zeros(5, bool), collapse=True)
    w = np.asarray(outs[-1].weights)
    assert w[orch.KERNEL_B] == 0.0 and abs(w.sum() - 1.0) < 1e-12


def test_open_breaker_publishes_kernel_d_in_emergency_mode() -> None:
    rng = np.random.default_rng(3)
    errors = rng.normal(size=(120, 4)) * np.array([1.0, 3.0, 3.0, 3.0])
    emergency = np.arange(120) >= 60
    outs = _run(errors, emergency)
    closed = _run(errors, np.zeros(120, bool))
    np.testing.assert_array_equal(outs[-1].weights, [0.0, 0.0, 0.0, 1.0])
    assert int(outs[-1].mode) == orch.MODE_EMERGENCY and int(outs[59].mode) != orch.MODE_EMERGENCY
    np.testing.assert_array_equal(outs[59].weights, closed[59].weights)
