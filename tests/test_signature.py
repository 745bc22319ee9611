"""Truncated tensor algebra of kernel D against iisignature and closed forms."""

from __future__ import annotations

import itertools

import iisignature
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from predictor.core.kernels import signature as sg

DEPTHS = (1, 2, 3, 4, 5)


def _np(t: sg.Tensor) -> np.ndarray:
    return np.asarray(sg.flatten(t))


@pytest.mark.parametrize("depth", DEPTHS)
def test_lyndon_basis_matches_iisignature(depth: int) -> None:
    s = iisignature.prepare(2, depth)
    assert sg.lyndon_brackets(depth) == tuple(iisignature.basis(s))
    assert sg.logsig_dim(depth) == (2, 3, 5, 8, 14)[depth - 1]
    assert sg.logsig_dim(depth) == iisignature.logsiglength(2, depth)


@pytest.mark.parametrize("depth", DEPTHS)
def test_logsig_matches_iisignature(depth: int) -> None:
    rng = np.random.default_rng(depth)
    s = iisignature.prepare(2, depth)
    paths = rng.standard_normal((6, 9, 2))
    paths[0, 2:] = paths[0, 1]  # a single segment (then constant)
    ours = np.asarray(sg.logsig(jnp.asarray(paths), depth))
    ref = np.stack([iisignature.logsig(p, s) for p in paths])
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("depth", (2, 3, 4))
def test_logsig_matches_iisignature_three_letters(depth: int) -> None:
    rng = np.random.default_rng(10 + depth)
    path = rng.standard_normal((9, 3))
    s = iisignature.prepare(3, depth)
    assert sg.lyndon_brackets(depth, 3) == tuple(iisignature.basis(s))
    ours = np.asarray(sg.logsig(jnp.asarray(path), depth))
    np.testing.assert_allclose(ours, iisignature.logsig(path, s), rtol=0, atol=1e-10)


@pytest.mark.parametrize("depth", DEPTHS)
def test_signature_matches_iisignature(depth: int) -> None:
    rng = np.random.default_rng(20 + depth)
    path = rng.standard_normal((12, 2))
    ours = _np(sg.signature(jnp.asarray(path), depth))
    np.testing.assert_allclose(ours, iisignature.sig(path, depth), rtol=0, atol=1e-10)


@pytest.mark.parametrize("depth", DEPTHS)
def test_chen_identity(depth: int) -> None:
    rng = np.random.default_rng(30 + depth)
    n1, n2 = 6, 5
    p1 = np.cumsum(0.5 * rng.standard_normal((4, n1, 2)), axis=1)
    steps = np.concatenate([np.zeros((4, 1, 2)), 0.5 * rng.standard_normal((4, n2 - 1, 2))], axis=1)
    p2 = p1[:, -1:] + np.cumsum(steps, axis=1)  # starts where p1 ends
    joined = np.concatenate([p1, p2[:, 1:]], axis=1)
    whole = _np(sg.signature(jnp.asarray(joined), depth))
    s1 = sg.signature(jnp.asarray(p1), depth)
    s2 = sg.signature(jnp.asarray(p2), depth)
    product = _np(sg.tensor_mul(s1, s2))
    assert np.max(np.abs(whole)) > 0.1
    np.testing.assert_allclose(whole, product, rtol=0, atol=1e-12)


def _reparametrise(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Same curve: points repeated and extra points on the segments."""
    out = [path[0]]
    for a, b in itertools.pairwise(path):
        for frac in np.sort(rng.uniform(0.0, 1.0, rng.integers(0, 3))):
            out.append(a + frac * (b - a))
        out.extend([b] * int(rng.integers(1, 4)))
    return np.asarray(out)


@pytest.mark.parametrize("depth", DEPTHS)
def test_reparametrisation_invariance(depth: int) -> None:
    rng = np.random.default_rng(40 + depth)
    path = np.cumsum(rng.standard_normal((10, 2)), axis=0)
    resampled = _reparametrise(path, rng)
    assert resampled.shape[0] > path.shape[0] + 5
    a = _np(sg.signature(jnp.asarray(path), depth))
    b = _np(sg.signature(jnp.asarray(resampled), depth))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("depth", DEPTHS)
def test_log_of_segment_exponential_is_the_increment(depth: int) -> None:
    v = jnp.asarray([0.7, -1.3])
    log = sg.tensor_log(sg.segment_exp(v, depth))
    np.testing.assert_allclose(np.asarray(log[0]), np.asarray(v), rtol=0, atol=1e-15)
    for level in log[1:]:
        np.testing.assert_allclose(np.asarray(level), 0.0, rtol=0, atol=1e-12)


def test_level_two_is_the_levy_area() -> None:
    # Closed form: for a closed polygon the [1,2] coordinate is its signed area.
    square = jnp.asarray([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    coords = np.asarray(sg.logsig(square, 2))
    np.testing.assert_allclose(coords, [0.0, 0.0, 1.0], rtol=0, atol=1e-15)


def test_vmapped_logsig_equals_per_item_bit_for_bit() -> None:
    # Items shaped like kernel D's input: two paths each (see d_signature.update).
    rng = np.random.default_rng(50)
    paths = jnp.asarray(rng.standard_normal((5, 2, 17, 2)))
    mapped = np.asarray(jax.vmap(lambda p: sg.logsig(p, 5))(paths))
    for i in range(paths.shape[0]):
        assert np.array_equal(mapped[i], np.asarray(sg.logsig(paths[i], 5)))


@settings(max_examples=25, deadline=None)
@given(
    arrays(
        np.float64,
        (8, 2),
        elements=st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False),
    )
)
def test_logsig_matches_iisignature_hypothesis(path: np.ndarray) -> None:
    s = iisignature.prepare(2, 5)
    ours = np.asarray(sg.logsig(jnp.asarray(path), 5))
    ref = iisignature.logsig(path, s)
    # Level-5 coordinates scale like |path|^5; compare relative to that size.
    scale = max(1.0, float(np.sum(np.abs(np.diff(path, axis=0))))) ** 5
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12 * scale)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        sg.lyndon_words(2, 0)
    with pytest.raises(ValueError):
        sg.signature(jnp.zeros((3, 2)), 0)
