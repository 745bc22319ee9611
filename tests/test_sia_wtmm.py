"""WTMM Hölder exponent: accuracy on fBm, limits, cone property, robustness."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bench.processes import fbm
from predictor.config import PredictorConfig
from predictor.core.sia import wtmm
from predictor.core.sia.window import standardize

HS = (0.3, 0.5, 0.7)
SEEDS = 40


def _cfg(n: int, **kw: object) -> PredictorConfig:
    return PredictorConfig().replace(wtmm_buffer_size=n, wiener_order=min(8, n // 4 - 1), **kw)


BATCH = len(HS) * SEEDS
_analysis = jax.jit(wtmm.wtmm_analysis, static_argnames="cfg")


def _holder(z: jax.Array, cfg: PredictorConfig) -> jax.Array:
    return _analysis(z, cfg=cfg).holder


@functools.lru_cache(maxsize=8)
def _batched(cfg: PredictorConfig) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(jax.vmap(lambda z: wtmm.holder_exponent(standardize(z), cfg)))


def _holder_batch(windows: np.ndarray, cfg: PredictorConfig) -> np.ndarray:
    """H of standardised windows; always one batch of BATCH (one compile per config)."""
    padded = np.zeros((BATCH, windows.shape[1]))
    padded[: len(windows)] = windows
    return np.asarray(_batched(cfg)(jnp.asarray(padded)))[: len(windows)]


def _estimates(n: int) -> dict[float, np.ndarray]:
    """H estimates of 40 standardised fBm paths per H, one vmapped call."""
    windows = np.stack([fbm(np.random.default_rng(s), n, h) for h in HS for s in range(SEEDS)])
    est = _holder_batch(windows, _cfg(n))
    return {h: est[i * SEEDS : (i + 1) * SEEDS] for i, h in enumerate(HS)}


@pytest.mark.parametrize(("n", "max_bias", "max_rmse"), [(1024, 0.04, 0.07), (128, 0.08, 0.15)])
def test_fbm_accuracy(n: int, max_bias: float, max_rmse: float) -> None:
    for h, est in _estimates(n).items():
        bias = float(np.median(est) - h)
        rmse = float(np.sqrt(np.mean((est - h) ** 2)))
        assert abs(bias) <= max_bias, (n, h, bias)
        assert rmse <= max_rmse, (n, h, rmse)


@pytest.mark.parametrize("n", [128, 1024])
def test_step_is_rough_and_sine_is_smooth(n: int) -> None:
    t = np.arange(n)
    steps = [(t >= frac * n).astype(float) for frac in (0.5, 0.3)]
    sines = [np.sin(2 * np.pi * periods * t / n) for periods in (1.0, 2.0, 0.6)]
    h = _holder_batch(np.stack(steps + sines), _cfg(n))
    assert np.all(h[:2] < 0.3), h
    assert np.all(h[2:] > 0.8), h


def test_singularity_free_window_is_regular() -> None:
    cfg = _cfg(128)
    assert float(_holder(jnp.zeros(128), cfg=cfg)) == wtmm.H_REGULAR
    ramp = standardize(jnp.arange(128.0))
    assert float(_holder(ramp, cfg=cfg)) == wtmm.H_REGULAR


def test_invariant_to_affine_rescaling() -> None:
    cfg = _cfg(128)
    x = jnp.asarray(fbm(np.random.default_rng(1), 128, 0.6))
    h0 = float(_holder(x, cfg=cfg))
    for scale, shift in ((3.0, 5.0), (1e-200, 0.0), (-1e250, 1e250)):
        assert float(_holder(scale * x + shift, cfg=cfg)) == pytest.approx(h0, abs=1e-6)


def test_cwt_matches_direct_correlation() -> None:
    """FFT transform against the defining sum on the mirrored (period 2N) signal."""
    n = 64
    x = np.random.default_rng(0).standard_normal(n)
    ext = np.concatenate([x, x[::-1]])
    t = np.arange(2 * n)
    scales = np.array([2.0, 3.5, 8.0])
    for order, psi in (
        (1, lambda s: -s * np.exp(-0.5 * s * s)),
        (2, lambda s: (s * s - 1.0) * np.exp(-0.5 * s * s)),
    ):
        got = np.asarray(wtmm.cwt(jnp.asarray(x), scales, order))
        tol = 1e-6 * np.max(np.abs(got))  # aliasing of the sampled wavelet at a = 2
        for j, a in enumerate(scales):
            for b in (0, 17, 40, 63):
                lag = (t - b + n) % (2 * n) - n  # periodic distance in (-n, n]
                direct = np.sum(ext * psi(lag / a) / a) / np.sqrt(2 * np.pi)
                # psi_hat = (i w)^n exp(-w^2/2) is the transform of g^(n) / sqrt(2 pi).
                assert abs(abs(got[j, b]) - abs(direct)) < tol, (order, a, b)


def test_modulus_maxima_on_known_profile() -> None:
    row = jnp.asarray([[0.0, 1.0, 0.5, 0.5, 2.0, 2.0, 1.0, 1e-5, 3.0, 0.0]])
    got = np.asarray(wtmm.modulus_maxima(row))[0]
    # Plateau [2, 2] yields one maximum (its right end); 1e-5 < 1e-3 * 3 is not one.
    np.testing.assert_array_equal(np.flatnonzero(got), [1, 5, 8])


def test_window_max_matches_brute_force() -> None:
    x = np.abs(np.random.default_rng(2).standard_normal(50))
    f = jax.jit(wtmm.window_max, static_argnums=1)
    for w in (0, 1, 5, 13, 60):
        got = np.asarray(f(jnp.asarray(x), w))
        ref = [x[max(0, i - w) : i + w + 1].max() for i in range(50)]
        np.testing.assert_allclose(got, ref, rtol=0, atol=0)


def test_maxima_line_cone_property() -> None:
    """A strong maximum is carried up only to maxima inside |b - b'| <= c a."""
    n = 60
    abs_w = np.full((3, n), 0.1)
    maxima = np.zeros((3, n), dtype=bool)
    maxima[0, 20] = True
    abs_w[0, 20] = 5.0  # strong fine-scale maximum at b' = 20
    halfwidths = (0, 4, 6)  # floor(c a_j)
    maxima[1, [24, 25, 40]] = True  # |24 - 20| = 4 inside, 5 and 20 outside
    abs_w[1, [24, 25, 40]] = [1.0, 1.1, 1.2]
    maxima[2, [30, 31, 46]] = True  # 30 is within 6 of 24; 31 is within 6 of 25 only
    abs_w[2, [30, 31, 46]] = [0.9, 0.95, 2.0]
    sup = np.asarray(wtmm.link_maxima(jnp.asarray(abs_w), jnp.asarray(maxima), halfwidths))
    assert sup[1, 24] == 5.0  # linked through the cone
    assert sup[1, 25] == 1.1  # just outside: keeps its own modulus
    assert sup[1, 40] == 1.2
    assert sup[2, 30] == 5.0  # carried along the line 20 -> 24 -> 30
    assert sup[2, 31] == 1.1  # its cone [25, 37] holds 25 (1.1) but not 24 (5.0)
    assert sup[2, 46] == 2.0  # |46 - 40| = 6: inherits 1.2 < own 2.0
    assert np.all(sup[~maxima] == 0.0)


def test_layout_cone_and_edges() -> None:
    layout = wtmm.wtmm_layout(128, 16, 1.5)
    reg = layout.scales[layout.n_seed :]
    np.testing.assert_allclose(reg[[0, -1]], [2.0, 32.0])
    assert layout.scales[0] == pytest.approx(1.0, rel=0.15)
    np.testing.assert_allclose(np.diff(np.log(layout.scales)), np.log(reg[1] / reg[0]))
    assert layout.halfwidths == tuple(int(np.floor(1.5 * a)) for a in layout.scales)
    # Edge cone of influence: b closer than a to either end is out.
    assert not layout.interior[-1, 31] and layout.interior[-1, 32]
    assert layout.interior[-1, 95] and not layout.interior[-1, 96]


def test_partition_function_against_numpy() -> None:
    rng = np.random.default_rng(3)
    sup = rng.uniform(0.01, 5.0, (4, 30))
    keep = rng.uniform(size=(4, 30)) < 0.3
    keep[2] = False  # a scale without lines
    q = np.array([-2.0, 0.0, 1.5, 3.0])
    log_z, h_qa, counts = wtmm.partition_function(
        jnp.asarray(sup), jnp.asarray(keep), jnp.asarray(q)
    )
    for j in range(4):
        vals = sup[j][keep[j]]
        assert counts[j] == vals.size
        for i, qq in enumerate(q):
            if vals.size == 0:
                assert log_z[i, j] == 0.0 and h_qa[i, j] == 0.0
                continue
            z = np.sum(vals**qq)
            np.testing.assert_allclose(log_z[i, j], np.log(z), rtol=1e-12)
            np.testing.assert_allclose(h_qa[i, j], np.sum(vals**qq * np.log(vals)) / z, rtol=1e-10)


def test_legendre_of_monofractal_peaks_at_h() -> None:
    q = jnp.asarray(wtmm.Q_GRID)
    tau = 0.6 * q - 1.0
    grid = jnp.linspace(0.0, 1.0, 101)
    d = np.asarray(wtmm.legendre_spectrum(q, tau, grid))
    assert np.argmax(d) == 60
    assert d[60] == pytest.approx(1.0)


def test_analysis_is_consistent_on_fbm() -> None:
    cfg = _cfg(128)
    z = standardize(jnp.asarray(fbm(np.random.default_rng(4), 128, 0.5)))
    res = _analysis(z, cfg=cfg)
    q = np.asarray(res.q)
    tau, h, d = (np.asarray(v) for v in (res.tau, res.h, res.d))
    # h(q) is the exact derivative of the least-squares tau(q).
    # Trapezoid rule: tau(q1) - tau(q0) = integral of h ~ (q1 - q0)(h0 + h1) / 2.
    fd = np.diff(tau) / np.diff(q)
    assert np.max(np.abs(fd - 0.5 * (h[1:] + h[:-1]))) < 0.02
    assert bool(res.valid)
    # H is the h at the peak of the Legendre spectrum D(q) = q h(q) - tau(q).
    np.testing.assert_allclose(d, q * h - tau, rtol=1e-12)
    assert float(res.holder) == pytest.approx(np.clip(h[np.argmax(d)], 0, 1))
    # tau(0) = -(dimension of the lines' support): about -1 on a path.
    assert -1.5 < tau[list(q).index(0.0)] < -0.5


def test_vmap_equals_per_item() -> None:
    cfg = _cfg(128)
    zs = np.stack([fbm(np.random.default_rng(s), 128, 0.4) for s in range(6)])
    zs[3] = 0.0
    zs[4] = np.arange(128.0)
    batched = _holder_batch(zs, cfg)
    single = [float(_holder(standardize(jnp.asarray(z)), cfg=cfg)) for z in zs]
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-12)


def test_first_derivative_wavelet_runs() -> None:
    cfg = _cfg(128, wtmm_wavelet_order=1)
    windows = np.stack([fbm(np.random.default_rng(s), 128, h) for h in HS for s in range(SEEDS)])
    est = _holder_batch(windows, cfg).reshape(len(HS), SEEDS)
    for h, row in zip(HS, est, strict=True):
        assert abs(np.median(row) - h) < 0.1


_N_HYP = 32
_CFG_HYP = _cfg(_N_HYP)
_jit_hyp = jax.jit(wtmm.holder_exponent, static_argnames="cfg")
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
_windows = st.one_of(
    hnp.arrays(np.float64, _N_HYP, elements=_finite),
    hnp.arrays(np.float64, _N_HYP, elements=st.floats(-1e300, 1e300)),
    _finite.map(lambda v: np.full(_N_HYP, v)),
    st.tuples(_finite, _finite).map(lambda ab: np.r_[np.full(16, ab[0]), np.full(16, ab[1])]),
)


@settings(max_examples=60, deadline=None)
@given(_windows)
def test_finite_for_any_finite_window(window: np.ndarray) -> None:
    h = float(_jit_hyp(jnp.asarray(window), cfg=_CFG_HYP))
    assert 0.0 <= h <= 1.0
    hz = float(_jit_hyp(standardize(jnp.asarray(window)), cfg=_CFG_HYP))
    assert 0.0 <= hz <= 1.0
