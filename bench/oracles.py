"""Bayes-optimal one-step predictors of the synthetic processes (``bench.processes``).

Each oracle knows the generating law and its parameters, sees the path up to
and including t, and returns ``f`` with ``f[t]`` = the forecast of
``x[t + 1]`` made at t (``f[-1]`` forecasts past the sample). For squared
loss the optimum is the conditional mean ``E[x_{t+1} | x_0..x_t]``; for the
alpha-stable walk (infinite variance) it is the conditional median, optimal
for absolute loss, so that benchmark reports MAE.

* random walk: ``E[x_{t+1} | past] = x_t``;
* AR(1) ``x_t = mu + phi (x_{t-1} - mu) + sigma eps``: ``mu + phi (x_t - mu)``;
* fBm (cumulated fGn ``g``): ``x_t + sum_j c_j g_{t-j}`` over the last
  ``n = min(t + 1, n_past)`` increments, with ``c`` solving the Toeplitz
  normal equations ``Gamma_n c = (gamma(1), ..., gamma(n))``, ``gamma`` the
  fGn autocovariance: the exact finite-past linear predictor, which for a
  Gaussian process is the conditional mean given those ``n`` increments;
* Merton jump-diffusion log-price: ``x_t + E[dlog S]`` with
  ``E[dlog S] = (mu - sigma^2/2 - lam kbar) dt + lam dt jump_mean`` (the
  diffusive drift plus the expected jump, ``lambda mu_J``);
* regime switching (independent noise around a regime mean): the mean of
  the regime of step t + 1, which the oracle is told;
* symmetric alpha-stable walk: ``x_t + loc dt`` (the median of the increment).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import solve_toeplitz

from bench.processes import fgn_autocovariance

FloatArray = NDArray[np.float64]

#: Default number of past increments of the fBm predictor.
FBM_PAST = 256


def _arr(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def random_walk(x: ArrayLike) -> FloatArray:
    """Last value: ``f[t] = x[t]``."""
    return _arr(x).copy()


def ar1(x: ArrayLike, phi: float, mu: float = 0.0) -> FloatArray:
    """``f[t] = mu + phi (x[t] - mu)``."""
    return mu + phi * (_arr(x) - mu)


def fgn_coefficients(h: float, n: int) -> FloatArray:
    """``c`` with ``E[g_{t+1} | g_t..g_{t-n+1}] = sum_j c_j g_{t-j}`` (``c[0]`` weights g_t)."""
    gamma = fgn_autocovariance(h, np.arange(n + 1))
    return np.asarray(solve_toeplitz(gamma[:n], gamma[1 : n + 1]), dtype=np.float64)


def fgn_prediction_variance(h: float, n: int, sigma: float = 1.0) -> float:
    """One-step prediction error variance ``sigma^2 (gamma(0) - c . gamma(1..n))``."""
    gamma = fgn_autocovariance(h, np.arange(n + 1))
    c = fgn_coefficients(h, n)
    return float(sigma * sigma * (gamma[0] - c @ gamma[1 : n + 1]))


def fbm(x: ArrayLike, h: float, n_past: int = FBM_PAST) -> FloatArray:
    """Finite-past linear predictor of fBm sampled at 1..n (``x[0]`` is the first increment)."""
    xx = _arr(x)
    g = np.diff(xx, prepend=0.0)
    f = np.empty_like(xx)
    head = min(n_past - 1, xx.size)
    for t in range(head):
        c = fgn_coefficients(h, t + 1)
        f[t] = xx[t] + c @ g[t::-1]
    if xx.size >= n_past:
        c = fgn_coefficients(h, n_past)
        windows = np.lib.stride_tricks.sliding_window_view(g, n_past)  # g[k..k+n-1]
        f[n_past - 1 :] = xx[n_past - 1 :] + windows @ c[::-1]
    return f


def merton_drift(
    *, mu: float, sigma: float, lam: float, jump_mean: float, jump_sd: float, dt: float = 1.0
) -> float:
    """``E[dlog S] = (mu - sigma^2/2 - lam kbar) dt + lam dt jump_mean``, ``kbar = E[J - 1]``."""
    kbar = float(np.exp(jump_mean + 0.5 * jump_sd**2) - 1.0)
    return (mu - 0.5 * sigma**2 - lam * kbar) * dt + lam * dt * jump_mean


def merton(
    x: ArrayLike,
    *,
    mu: float,
    sigma: float,
    lam: float,
    jump_mean: float,
    jump_sd: float,
    dt: float = 1.0,
) -> FloatArray:
    """``f[t] = x[t] + E[dlog S]`` (see ``merton_drift``)."""
    drift = merton_drift(mu=mu, sigma=sigma, lam=lam, jump_mean=jump_mean, jump_sd=jump_sd, dt=dt)
    return _arr(x) + drift


def regime_mean(step_means: ArrayLike) -> FloatArray:
    """``f[t]`` = mean of the regime in force at step t + 1 (``step_means[t]``: that of step t)."""
    m = _arr(step_means)
    return np.concatenate([m[1:], m[-1:]])


def stable_median(x: ArrayLike, loc: float = 0.0, dt: float = 1.0) -> FloatArray:
    """Symmetric (beta = 0) alpha-stable walk: ``f[t] = x[t] + loc dt``, the conditional median."""
    return _arr(x) + loc * dt
