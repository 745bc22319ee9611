"""Window statistics and z-score: accuracy, constant windows, extreme scales."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from predictor.core.sia.window import standardize, window_stats

_stats = jax.jit(window_stats)
_z = jax.jit(standardize)


def test_matches_numpy() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, 128)
    mean, std = _stats(jnp.asarray(x))
    assert float(mean) == pytest.approx(x.mean(), rel=1e-13)
    assert float(std) == pytest.approx(x.std(), rel=1e-12)
    np.testing.assert_allclose(np.asarray(_z(jnp.asarray(x))), (x - x.mean()) / x.std(), rtol=1e-11)


@pytest.mark.parametrize("value", [0.0, 0.1, -7.3, 1e6 + 0.1, 1e300, -1.7e308, 5e-324])
def test_constant_window(value: float) -> None:
    x = jnp.full(64, value)
    mean, std = _stats(x)
    assert float(mean) == pytest.approx(value)
    assert float(std) == 0.0
    np.testing.assert_array_equal(np.asarray(_z(x)), np.zeros(64))


def test_huge_values_do_not_overflow() -> None:
    x = np.random.default_rng(1).standard_normal(128)
    big = 1e306 * x
    mean, std = _stats(jnp.asarray(big))
    assert float(mean) == pytest.approx(1e306 * x.mean(), rel=1e-10)
    assert float(std) == pytest.approx(1e306 * x.std(), rel=1e-12)
    np.testing.assert_allclose(
        np.asarray(_z(jnp.asarray(big))), (x - x.mean()) / x.std(), rtol=1e-10
    )
    extreme = jnp.asarray(np.r_[np.full(64, 1.7e308), np.full(64, -1.7e308)])
    assert np.all(np.isfinite(np.asarray(_z(extreme))))
    assert float(_stats(extreme)[1]) == pytest.approx(1.7e308)


def test_vmap_equals_per_item() -> None:
    x = np.random.default_rng(2).standard_normal((5, 32)) * np.array(
        [[1], [1e200], [0], [3], [1e-200]]
    )
    batched = np.asarray(jax.vmap(standardize)(jnp.asarray(x)))
    single = np.stack([np.asarray(_z(jnp.asarray(row))) for row in x])
    np.testing.assert_allclose(batched, single, rtol=1e-12, atol=1e-14)


@settings(max_examples=80, deadline=None)
@given(
    hnp.arrays(np.float64, 32, elements=st.floats(allow_nan=False, allow_infinity=False, width=64))
)
def test_finite_and_standardised(x: np.ndarray) -> None:
    mean, std = _stats(jnp.asarray(x))
    z = np.asarray(_z(jnp.asarray(x)))
    assert np.isfinite(float(mean)) and np.isfinite(float(std)) and float(std) >= 0.0
    assert np.all(np.isfinite(z))
    top = np.max(np.abs(x))
    # A genuinely varying window; XLA on CPU flushes subnormals to zero, so a
    # spread below the normal range is a constant window there.
    spread = np.ptp(x / top) if top > 0 else 0.0
    if spread > 1e-6 and spread > 1e-300 / top:
        assert abs(z.mean()) < 1e-9
        assert z.std() == pytest.approx(1.0, rel=1e-9)
