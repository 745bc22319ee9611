"""Circuit breaker: the newest point is rougher than the series' own regularity.

Per accepted tick, on the window ``y`` (input units) of length N:

* fine-scale oscillation at the newest point:
  ``m_t = median(|y_t - y_{t-1}|, ..., |y_{t-M+1} - y_{t-M}|)`` over the last
  ``M = FINE_TICKS`` increments (input units). The median ignores up to
  ``(M - 1) / 2`` isolated jumps, so single shocks (Merton, alpha-stable)
  do not read as a change of regularity;
* baseline ``b_t``: the running mean of ``m_t`` from the first tick with
  ``M`` observed increments, then its EMA at rate ``1 / N`` (time constant
  one window); while the breaker is open it learns four times slower, so
  that a rough stretch does not at once become its own reference, yet a
  lasting change of regularity is eventually taken as the new normal;
* pointwise Hölder exponent of the newest point,

      h_t = Hbar_t - ln(m_t / b_t) / ln N,

  where ``Hbar_t`` is the EMA (rate ``volatility_alpha``) of the window's
  WTMM exponent from the refits. It is the slope of log-oscillation against
  log-scale between the finest scale (1 tick, the newest oscillation
  ``m_t``) and the window's scale N, whose amplitude the baseline describes
  as ``b N^Hbar``: when the finest increments grow by a factor r while the
  coarse picture does not, the exponent over [1, N] falls by ``ln r / ln N``.
  A path that switches from H = 0.5 to H = 0.1 on a common time grid
  (dt = 1/n) multiplies its tick increments by ``n^0.4`` (16 at n = 1,000),
  i.e. h drops by about 0.57 at N = 128.

The breaker opens when ``drop_t = Hbar_t - h_t > holder_threshold`` (once the
window has been filled) and closes after ``grace_period_steps`` consecutive
ticks with ``drop_t < holder_threshold - EXIT_MARGIN``. ``holder_threshold``
is therefore a drop of Hölder exponent (dimensionless); 0 turns the breaker
off.

Measured through the whole predictor (``bench/flags.py``): no tick in
emergency mode after the window filled on the random walk, AR(1) 0.7 and
0.97, fBm H = 0.3 / 0.5 / 0.7, Merton, alpha-stable (1.7) and white noise,
nor on the real series (nile, sunspots, co2, AirlinePassengers,
TrumpApproval), while the switch to H = 0.1 above opened it in every seed,
a few ticks after the rough segment began, and it closed within 50 ticks
of the segment's end.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.core.numerics import f64

#: Increments in the fine-scale median (odd: a true median).
FINE_TICKS = 9
#: Hysteresis: the breaker closes below ``holder_threshold - EXIT_MARGIN``.
EXIT_MARGIN = 0.05
#: Baseline learning rate while open, relative to 1 / N.
OPEN_RATE_FACTOR = 0.25
#: Floor of oscillations relative to the window's magnitude (flat windows).
_REL_FLOOR = 1e-12


class BreakerState(NamedTuple):
    """Baseline oscillation (input units), EMA of H, breaker flag, calm ticks."""

    baseline: jax.Array  # float64, 0 until seeded
    holder_ema: jax.Array  # float64, EMA of the refits' window exponent
    open: jax.Array  # bool
    calm_steps: jax.Array  # int64


class BreakerOut(NamedTuple):
    """The pointwise exponent, its drop below the baseline, and the breaker."""

    holder: jax.Array  # h_t, the newest point's exponent
    drop: jax.Array  # Hbar_t - h_t
    emergency: jax.Array  # bool
    entered: jax.Array  # bool, opened on this tick


def init() -> BreakerState:
    """Unseeded baseline, EMA of H at 0.5 (Brownian prior), breaker closed."""
    return BreakerState(
        baseline=f64(0.0),
        holder_ema=f64(0.5),
        open=jnp.asarray(False),
        calm_steps=jnp.asarray(0, jnp.int64),
    )


def fine_oscillation(window: jax.Array) -> jax.Array:
    """``m_t``: median of the last ``FINE_TICKS`` absolute increments of ``window``."""
    tail = window[-(FINE_TICKS + 1) :]
    inc = jnp.abs(tail[1:] - tail[:-1])
    return jnp.sort(inc)[FINE_TICKS // 2]


def update(
    state: BreakerState,
    window: jax.Array,
    holder_fit: jax.Array,
    count: jax.Array,
    armed: jax.Array,
    *,
    threshold: jax.Array,
    alpha: jax.Array,
    grace_steps: jax.Array,
) -> tuple[BreakerState, BreakerOut]:
    """One tick (module doc).

    ``count``: ticks in the window so far (the increments are observed once
    it exceeds ``FINE_TICKS``); ``armed``: the window is full.
    """
    n = window.shape[0]
    floor = _REL_FLOOR * jnp.maximum(jnp.abs(window[-1]), 1.0) + 1e-300
    m = jnp.maximum(fine_oscillation(window), floor)
    observed = count > FINE_TICKS
    base = jnp.where(state.baseline > 0.0, state.baseline, m)
    holder_ema = (1.0 - alpha) * state.holder_ema + alpha * holder_fit
    drop = jnp.log(m / base) * (1.0 / math.log(n))

    above = drop > threshold
    calm = jnp.where(drop < threshold - EXIT_MARGIN, state.calm_steps + 1, 0)
    enter = armed & observed & ~state.open & above & (threshold > 0.0)
    leave = state.open & (calm >= jnp.maximum(grace_steps, 1))
    is_open = (state.open | enter) & ~leave
    seen = jnp.maximum(count - FINE_TICKS, 1).astype(jnp.float64)
    rate = jnp.maximum(1.0 / seen, 1.0 / n) * jnp.where(is_open, OPEN_RATE_FACTOR, 1.0)
    new_base = jnp.where(observed, base + (m - base) * rate, 0.0)
    new = BreakerState(new_base, holder_ema, is_open, jnp.where(is_open, calm, 0))
    return new, BreakerOut(holder_ema - drop, drop, is_open, enter)
