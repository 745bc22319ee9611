"""Seeded synthetic processes (plain numpy): tests, benchmarks and ``predictorctl feed``.

Every generator takes an ``np.random.Generator`` (``np.random.default_rng(seed)``)
so a seed fixes the sample; nothing touches numpy's global state. Time is in
steps of ``dt`` (default 1); returned arrays are float64.

* ``fgn`` / ``fbm``: fractional Gaussian noise and its cumulative sum, exact
  by circulant embedding (Davies & Harte 1987; Dietrich & Newsam 1997).
* ``brownian``: standard Brownian motion sampled on a grid.
* ``ar1``: Gaussian AR(1) started in its stationary law; ``ou``: exact
  discretisation of the Ornstein–Uhlenbeck SDE.
* ``merton``: Merton (1976) jump-diffusion log-price, returning the true
  jump times and sizes.
* ``stable_increments``: alpha-stable variates by Chambers, Mallows & Stuck
  (1976), in the S1 parametrisation of Samorodnitsky & Taqqu (scipy's
  ``levy_stable`` default).
* ``piecewise``: Gaussian noise with mean and standard-deviation shifts at
  known indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


def fgn_autocovariance(h: float, lags: NDArray[np.int64] | NDArray[np.float64]) -> FloatArray:
    """Autocovariance of unit-variance fGn: ``g(k) = (|k+1|^2H - 2|k|^2H + |k-1|^2H) / 2``."""
    k = np.abs(np.asarray(lags, dtype=np.float64))
    two_h = 2.0 * h
    return 0.5 * (np.abs(k + 1.0) ** two_h - 2.0 * k**two_h + np.abs(k - 1.0) ** two_h)


def fgn(rng: np.random.Generator, n: int, h: float, sigma: float = 1.0) -> FloatArray:
    """``n`` samples of fractional Gaussian noise with Hurst index ``h`` in (0, 1).

    Davies–Harte: embed the Toeplitz covariance ``g(0..n)`` in the circulant
    ``c = [g0, g1, ..., g_n, g_{n-1}, ..., g1]`` of size ``m = 2n``, whose
    eigenvalues ``lam = FFT(c)`` are non-negative for fGn. With ``xi`` complex
    standard normal, ``Re FFT(sqrt(lam / m) xi)`` has covariance exactly
    ``c``, so its first ``n`` entries are exact fGn. ``sigma`` is the
    standard deviation of one increment.
    """
    if not 0.0 < h < 1.0:
        raise ValueError(f"Hurst index must be in (0, 1), got {h}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    g = fgn_autocovariance(h, np.arange(n + 1))
    c = np.concatenate([g, g[-2:0:-1]])
    m = c.size
    lam = np.fft.fft(c).real
    # Exact arithmetic gives lam >= 0; round-off can leave -1e-16.
    if lam.min() < -1e-10 * lam.max():
        raise ValueError("circulant embedding is not non-negative definite")
    lam = np.maximum(lam, 0.0)
    xi = rng.standard_normal(m) + 1j * rng.standard_normal(m)
    x = np.fft.fft(np.sqrt(lam / m) * xi).real
    return sigma * x[:n]


def fbm(rng: np.random.Generator, n: int, h: float, sigma: float = 1.0) -> FloatArray:
    """Fractional Brownian motion at times 1..n: the cumulative sum of ``fgn``.

    ``B_H(t)`` has ``Var B_H(t) = sigma^2 t^(2H)`` (``B_H(0) = 0`` is omitted).
    """
    return np.cumsum(fgn(rng, n, h, sigma))


def multifractional(rng: np.random.Generator, segments: Sequence[tuple[int, float]]) -> FloatArray:
    """Path on [0, 1] with a piecewise Hölder exponent, one tick per grid step.

    ``segments`` are ``(ticks, H)`` pairs; with ``n`` ticks in all and
    ``dt = 1 / n``, each segment's increments are ``dt^H`` times fractional
    Gaussian noise of its H: on a common time grid a rougher segment moves
    more per tick, as a multifractional Brownian motion does.
    """
    dt = 1.0 / sum(length for length, _ in segments)
    return np.cumsum(np.concatenate([fgn(rng, length, h) * dt**h for length, h in segments]))


def brownian(rng: np.random.Generator, n: int, sigma: float = 1.0, dt: float = 1.0) -> FloatArray:
    """Brownian motion at times dt..n dt: ``W_t = sum sigma sqrt(dt) eps_i``."""
    return np.cumsum(sigma * np.sqrt(dt) * rng.standard_normal(n))


def ar1(
    rng: np.random.Generator, n: int, phi: float, sigma: float = 1.0, mu: float = 0.0
) -> FloatArray:
    """Gaussian AR(1) ``x_t = mu + phi (x_{t-1} - mu) + sigma eps_t``, ``|phi| < 1``.

    ``x_0`` is drawn from the stationary law ``N(mu, sigma^2 / (1 - phi^2))``.
    """
    if not -1.0 < phi < 1.0:
        raise ValueError(f"|phi| must be < 1, got {phi}")
    eps = sigma * rng.standard_normal(n)
    x = np.empty(n)
    prev = mu + sigma / np.sqrt(1.0 - phi * phi) * rng.standard_normal()
    for t in range(n):
        prev = mu + phi * (prev - mu) + eps[t]
        x[t] = prev
    return x


def ou(
    rng: np.random.Generator,
    n: int,
    theta: float,
    *,
    mu: float = 0.0,
    sigma: float = 1.0,
    dt: float = 1.0,
    x0: float | None = None,
) -> FloatArray:
    """Ornstein–Uhlenbeck ``dX = theta (mu - X) dt + sigma dW`` sampled exactly.

    ``X_{t+dt} = mu + (X_t - mu) phi + sigma sqrt((1 - phi^2) / (2 theta)) eps``,
    i.e. an AR(1) with ``phi = e^{-theta dt}``. ``x0`` defaults to a draw
    from the stationary law ``N(mu, sigma^2 / (2 theta))``.
    """
    if theta <= 0.0:
        raise ValueError(f"theta must be positive, got {theta}")
    phi = float(np.exp(-theta * dt))
    step_sd = sigma * float(np.sqrt((1.0 - phi * phi) / (2.0 * theta)))
    start = mu + sigma / np.sqrt(2.0 * theta) * rng.standard_normal() if x0 is None else x0
    eps = step_sd * rng.standard_normal(n)
    x = np.empty(n)
    prev = float(start)
    for t in range(n):
        prev = mu + phi * (prev - mu) + eps[t]
        x[t] = prev
    return x


@dataclass(frozen=True)
class JumpPath:
    """A jump-diffusion sample: the log-price and its true jumps.

    ``log_price[t]`` is the log-price after step t (``log_price[-1]`` would be
    ``log(s0)``); ``jump_counts[t]`` the number of jumps in step t and
    ``jump_sizes[t]`` their summed log-size (0 where there is none).
    """

    log_price: FloatArray
    increments: FloatArray
    jump_counts: IntArray
    jump_sizes: FloatArray

    @property
    def jump_indices(self) -> IntArray:
        """Steps that contain at least one jump."""
        return np.flatnonzero(self.jump_counts).astype(np.int64)

    @property
    def diffusive_increments(self) -> FloatArray:
        """Increments with the jump part removed (drift + Brownian part)."""
        return self.increments - self.jump_sizes


def merton(
    rng: np.random.Generator,
    n: int,
    *,
    mu: float = 0.0,
    sigma: float = 0.01,
    lam: float = 0.01,
    jump_mean: float = 0.0,
    jump_sd: float = 0.05,
    dt: float = 1.0,
    s0: float = 1.0,
) -> JumpPath:
    """Merton jump-diffusion ``dS/S = (mu - lam kbar) dt + sigma dW + (J - 1) dN``.

    ``N`` is Poisson with intensity ``lam`` per unit time and ``log J ~
    N(jump_mean, jump_sd^2)``, ``kbar = E[J - 1] = exp(jump_mean + jump_sd^2 / 2) - 1``.
    The log-price increment over one step is exact:

        dlog S = (mu - sigma^2 / 2 - lam kbar) dt + sigma sqrt(dt) eps + sum_{i <= N_dt} log J_i,

    with ``N_dt ~ Poisson(lam dt)`` and the sum of ``N_dt`` normal log-jumps
    drawn as ``N(N_dt jump_mean, N_dt jump_sd^2)``.
    """
    kbar = float(np.exp(jump_mean + 0.5 * jump_sd**2) - 1.0)
    drift = (mu - 0.5 * sigma**2 - lam * kbar) * dt
    diffusion = sigma * np.sqrt(dt) * rng.standard_normal(n)
    counts = rng.poisson(lam * dt, size=n).astype(np.int64)
    sizes = counts * jump_mean + np.sqrt(counts) * jump_sd * rng.standard_normal(n)
    sizes = np.where(counts > 0, sizes, 0.0)
    inc = drift + diffusion + sizes
    return JumpPath(np.log(s0) + np.cumsum(inc), inc, counts, sizes)


def stable_increments(
    rng: np.random.Generator,
    n: int,
    alpha: float,
    *,
    beta: float = 0.0,
    scale: float = 1.0,
    loc: float = 0.0,
    dt: float = 1.0,
) -> FloatArray:
    """Alpha-stable ``S_alpha(scale dt^(1/alpha), beta, loc dt)`` by Chambers–Mallows–Stuck.

    With ``V ~ U(-pi/2, pi/2)`` and ``W ~ Exp(1)`` independent, for
    ``alpha != 1``, ``B = arctan(beta tan(pi alpha / 2)) / alpha`` and
    ``S = (1 + beta^2 tan^2(pi alpha / 2))^(1 / (2 alpha))``:

        X = S sin(alpha (V + B)) / cos(V)^(1/alpha)
              * (cos(V - alpha (V + B)) / W)^((1 - alpha) / alpha);

    for ``alpha = 1``:

        X = (2 / pi) ((pi/2 + beta V) tan V - beta ln((pi/2) W cos V / (pi/2 + beta V))).

    ``X`` is standard in the S1 parametrisation; the increment over ``dt``
    is ``scale dt^(1/alpha) X + loc dt`` (plus ``(2/pi) beta scale dt ln(scale dt)``
    when ``alpha = 1``, the S1 scaling rule).
    """
    if not 0.0 < alpha <= 2.0:
        raise ValueError(f"alpha must be in (0, 2], got {alpha}")
    if not -1.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [-1, 1], got {beta}")
    v = rng.uniform(-0.5 * np.pi, 0.5 * np.pi, size=n)
    w = rng.exponential(1.0, size=n)
    if alpha == 1.0:
        half_pi_bv = 0.5 * np.pi + beta * v
        log_term = np.log(0.5 * np.pi * w * np.cos(v) / half_pi_bv)
        x = (2.0 / np.pi) * (half_pi_bv * np.tan(v) - beta * log_term)
        s = scale * dt
        out: FloatArray = s * x + (2.0 / np.pi) * beta * s * np.log(s) + loc * dt
        return out
    t = np.tan(0.5 * np.pi * alpha)
    b = np.arctan(beta * t) / alpha
    s_ab = (1.0 + (beta * t) ** 2) ** (1.0 / (2.0 * alpha))
    x = (
        s_ab
        * np.sin(alpha * (v + b))
        / np.cos(v) ** (1.0 / alpha)
        * (np.cos(v - alpha * (v + b)) / w) ** ((1.0 - alpha) / alpha)
    )
    scaled: FloatArray = scale * dt ** (1.0 / alpha) * x + loc * dt
    return scaled


@dataclass(frozen=True)
class Piecewise:
    """A series with known change points.

    Segment i spans ``[bounds[i], bounds[i + 1])`` with mean ``means[i]`` and
    standard deviation ``sds[i]``; ``change_indices`` are the first indices
    of segments 1, 2, ...
    """

    series: FloatArray
    change_indices: IntArray
    means: FloatArray
    sds: FloatArray


def piecewise(
    rng: np.random.Generator,
    n: int,
    change_indices: list[int] | tuple[int, ...],
    means: list[float] | tuple[float, ...],
    sds: list[float] | tuple[float, ...],
) -> Piecewise:
    """Independent Gaussian noise ``x_t = means[i] + sds[i] eps_t`` on segment i.

    ``change_indices`` must be strictly increasing in (0, n); ``means`` and
    ``sds`` have one entry more than ``change_indices``.
    """
    idx = np.asarray(change_indices, dtype=np.int64)
    mu = np.asarray(means, dtype=np.float64)
    sd = np.asarray(sds, dtype=np.float64)
    if mu.size != idx.size + 1 or sd.size != idx.size + 1:
        raise ValueError("means and sds need one entry per segment (len(change_indices) + 1)")
    if idx.size and (idx[0] <= 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0)):
        raise ValueError("change_indices must be strictly increasing inside (0, n)")
    seg = np.searchsorted(idx, np.arange(n), side="right")
    x = mu[seg] + sd[seg] * rng.standard_normal(n)
    return Piecewise(x, idx, mu, sd)
