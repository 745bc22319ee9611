"""Hölder-exponent benchmark: WTMM (predictor.core.sia) against MFDFA.

For N in {128, 1024} and H in {0.3, 0.5, 0.7}, 40 seeded fBm paths
(Davies–Harte, ``bench.processes``) are generated. WTMM is applied to the
standardised path (as the predictor does); MFDFA (the ``MFDFA`` package,
q = 2, linear detrending, 12 log-spaced lags from 6 to N/4) to its
increments, the fractional Gaussian noise, whose fluctuation function
scales as ``s^H``. Printed: median bias and RMSE per method, then the cost
per call of the jitted ``holder_exponent`` on one window and on a vmapped
batch of windows, next to MFDFA's on one window.

    .venv/bin/python -m bench.holder [--quick]

``--quick`` uses 10 seeds and fewer timing repetitions.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
from MFDFA import MFDFA

import predictor.core  # noqa: F401  (float64)
from bench.processes import fgn
from predictor.config import PredictorConfig
from predictor.core.sia import holder_exponent, standardize

HS = (0.3, 0.5, 0.7)
SIZES = (128, 1024)
MFDFA_MIN_LAG = 6
MFDFA_NUM_LAGS = 12


def _config(n: int, order: int = 2) -> PredictorConfig:
    return PredictorConfig().replace(
        wtmm_buffer_size=n, wiener_order=min(8, n // 4 - 1), wtmm_wavelet_order=order
    )


def _paths(n: int, h: float, seeds: int) -> np.ndarray:
    """Increments (fGn) of ``seeds`` paths, one row per seed."""
    return np.stack([fgn(np.random.default_rng(s), n, h) for s in range(seeds)])


def _wtmm_batch(cfg: PredictorConfig) -> Callable[[jax.Array], jax.Array]:
    return jax.jit(jax.vmap(lambda x: holder_exponent(standardize(jnp.cumsum(x)), cfg)))


def mfdfa_hurst(increments: np.ndarray) -> float:
    """Slope of log F_2(s) against log s (MFDFA, q = 2, order 1)."""
    n = increments.size
    lags = np.unique(
        np.logspace(np.log10(MFDFA_MIN_LAG), np.log10(n // 4), MFDFA_NUM_LAGS).astype(int)
    )
    lag, fluct = MFDFA(increments, lag=lags, q=2, order=1)
    return float(np.polyfit(np.log(lag), np.log(fluct[:, 0]), 1)[0])


def _summary(est: np.ndarray, h: float) -> tuple[float, float]:
    return float(np.median(est) - h), float(np.sqrt(np.mean((est - h) ** 2)))


def accuracy_table(seeds: int) -> list[str]:
    """Markdown rows: N, H, then bias / RMSE of WTMM (order 2, order 1) and MFDFA."""
    rows = [
        f"Hölder exponent on fBm ({seeds} seeds): median bias / RMSE",
        "",
        "| N | H | WTMM (order 2, shipped) | WTMM (order 1) | MFDFA (q = 2) |",
        "|---|---|---|---|---|",
    ]
    for n in SIZES:
        batched = {order: _wtmm_batch(_config(n, order)) for order in (2, 1)}
        for h in HS:
            inc = _paths(n, h, seeds)
            cells = []
            for order in (2, 1):
                est = np.asarray(batched[order](jnp.asarray(inc)))
                cells.append("{:+.3f} / {:.3f}".format(*_summary(est, h)))
            mf = np.array([mfdfa_hurst(row) for row in inc])
            cells.append("{:+.3f} / {:.3f}".format(*_summary(mf, h)))
            rows.append(f"| {n} | {h} | " + " | ".join(cells) + " |")
    return rows


def _time(fn: Callable[..., object], *args: object, reps: int) -> str:
    """Wall time of ``fn(*args)`` in microseconds: "median (min)".

    The minimum is the least-disturbed run, the better figure on a shared
    machine; the median is what a loaded host sees.
    """
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    us = 1e6 * np.asarray(times)
    return f"{np.median(us):.0f} ({us.min():.0f})"


def _block(f: Callable[..., jax.Array], *args: object, **kw: object) -> None:
    f(*args, **kw).block_until_ready()


def _cost_row(n: int, reps: int, batch: int) -> str:
    cfg = _config(n)
    single = jax.jit(holder_exponent, static_argnames="cfg")
    inc = _paths(n, 0.5, batch)
    z = jax.vmap(standardize)(jnp.cumsum(jnp.asarray(inc), axis=1))
    t0 = time.perf_counter()
    _block(single, z[0], cfg=cfg)
    compile_s = time.perf_counter() - t0
    one = _time(lambda w: _block(single, w, cfg=cfg), z[1], reps=reps)
    batched = jax.jit(jax.vmap(lambda w: holder_exponent(w, cfg)))
    _block(batched, z)
    whole = _time(_block, batched, z, reps=max(3, reps // 10))
    mf = _time(mfdfa_hurst, inc[0], reps=max(3, reps // 10))
    return f"| {n} | {compile_s:.1f} | {one} | {whole} | {mf} |"


def cost_table(reps: int, batch: int = 64) -> list[str]:
    """Markdown rows: compile time and per-call costs of WTMM and MFDFA."""
    rows = [
        f"Cost per call on {jax.devices()[0].platform} ({os.cpu_count()} cores), "
        "microseconds, median (min)",
        "",
        "| N | compile (s) | WTMM one window | WTMM batch of "
        f"{batch} windows (vmap) | MFDFA one window |",
        "|---|---|---|---|---|",
    ]
    rows.extend(_cost_row(n, reps, batch) for n in SIZES)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Print both tables (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 seeds, fewer repetitions")
    args = parser.parse_args(argv)
    seeds, reps = (10, 30) if args.quick else (40, 200)
    print("\n".join(accuracy_table(seeds)))
    print()
    print("\n".join(cost_table(reps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
