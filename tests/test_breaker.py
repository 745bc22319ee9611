"""The circuit breaker: the newest point rougher than the series' own regularity."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from predictor.core import breaker as brk

N = 128
THRESHOLD = 0.3
GRACE = 20


def _run(path: np.ndarray, armed_from: int = N) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Breaker over every window of ``path``: (open flags, drops, baselines)."""
    windows = np.lib.stride_tricks.sliding_window_view(path, N)

    def body(state: brk.BreakerState, x: tuple[jax.Array, jax.Array, jax.Array]) -> tuple:
        window, count, armed = x
        state, out = brk.update(
            state,
            window,
            jnp.asarray(0.5),
            count,
            armed,
            threshold=jnp.asarray(THRESHOLD),
            alpha=jnp.asarray(0.1),
            grace_steps=jnp.asarray(GRACE),
        )
        return state, (out.emergency, out.drop, state.baseline, out.holder)

    count = np.arange(len(windows)) + N
    armed = count >= armed_from
    _, (em, drop, base, holder) = jax.jit(lambda *x: jax.lax.scan(body, brk.init(), x))(
        jnp.asarray(windows), jnp.asarray(count), jnp.asarray(armed)
    )
    np.testing.assert_allclose(np.asarray(holder), 0.5 - np.asarray(drop), atol=1e-12)
    return np.asarray(em), np.asarray(drop), list(np.asarray(base))


def test_fine_oscillation_is_the_median_of_the_last_increments() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        w = rng.standard_normal(N).cumsum()
        expected = np.median(np.abs(np.diff(w[-(brk.FINE_TICKS + 1) :])))
        assert float(brk.fine_oscillation(jnp.asarray(w))) == pytest.approx(expected, abs=0)


@pytest.mark.parametrize("seed", range(5))
def test_rougher_increments_open_the_breaker_and_calm_ones_close_it(seed: int) -> None:
    rng = np.random.default_rng(seed)
    calm, rough, after = 400, 100, 200
    inc = rng.standard_normal(calm + rough + after)
    inc[calm : calm + rough] *= 16.0  # the tick increments of H = 0.1 against 0.5 at n = 1,000
    em, drop, base = _run(inc.cumsum())
    start = calm - N + 1  # index of the window whose newest point is the first rough one
    assert not em[:start].any()
    opened = start + int(np.argmax(em[start:]))
    assert em[start:].any() and opened - start <= 10
    # Once the median has turned, the drop is about ln(16) / ln(N), far above the threshold.
    assert np.median(drop[start + 5 : start + 15]) == pytest.approx(
        math.log(16.0) / math.log(N), abs=0.15
    )
    # The baseline learns slowly from the rough stretch it is compared with:
    # at the closed rate it would grow about 9-fold over it, here under 5-fold.
    assert 1.0 < base[start + rough - 1] / base[opened] < 5.0
    end = start + rough
    closed = end + int(np.argmin(em[end:]))
    assert em[end - 1] and not em[end:].all() and closed - end <= GRACE + 15
    assert not em[closed:].any()


def test_isolated_jumps_do_not_open_the_breaker() -> None:
    rng = np.random.default_rng(7)
    inc = rng.standard_normal(3000)
    inc[N::25] += 12.0 * rng.choice([-1.0, 1.0], size=inc[N::25].size)
    em, _, _ = _run(inc.cumsum())
    assert not em.any()


def test_unarmed_breaker_never_opens() -> None:
    inc = np.random.default_rng(1).standard_normal(600)
    inc[300:] *= 50.0
    em, drop, _ = _run(inc.cumsum(), armed_from=10**9)
    assert drop.max() > THRESHOLD and not em.any()


# --- through the whole predictor --------------------------------------------------


def test_predictor_opens_on_a_rough_segment_and_stays_closed_on_ordinary_paths() -> None:
    from predictor.config import PredictorConfig
    from predictor.core.functional import FunctionalPredictor
    from predictor.synthetic import ar1, fbm, multifractional

    pred = FunctionalPredictor(PredictorConfig(clock="event"), warmup=False)
    rng = np.random.default_rng(21)
    for ys in (
        np.cumsum(rng.standard_normal(900)),
        ar1(rng, 900, 0.7),
        fbm(rng, 900, 0.3),
        fbm(rng, 900, 0.7),
    ):
        _, outs = pred.scan(pred.init_state(), ys)
        assert not np.asarray(outs.emergency_mode).any()
    ys = multifractional(rng, [(500, 0.5), (100, 0.1), (200, 0.5)])
    _, outs = pred.scan(pred.init_state(), ys)
    em = np.asarray(outs.emergency_mode)
    assert not em[:500].any() and em[500:520].any()
    assert em[599] and not em[650:].any()
    np.testing.assert_array_equal(
        np.asarray(outs.weights)[em], np.tile([0, 0, 0, 1.0], (em.sum(), 1))
    )
