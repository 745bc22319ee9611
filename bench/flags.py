"""Flags an operator can trust: warm-up, circuit breaker, weights, level shifts.

    .venv/bin/python -m bench.flags [--quick]

Every figure comes from the predictor's own walk over a series
(``bench.accuracy.walk_forward``: the shipped config, or the short-window
config for series under 4 windows, as in the accuracy benchmark).

1. **Ordinary series**: on each synthetic process of the accuracy suite
   (plus fBm H = 0.5 and white noise) and each real series, the first
   tick whose forecast is not the last value, the share of
   ticks after the window filled with ``emergency_mode`` and with
   ``mode_collapse_warning``, the regime alarms, and the ensemble's loss
   over the best single kernel's (RMSE; MAE for the alpha-stable walk) on
   the accuracy benchmark's evaluation range. Targets: emergency and
   collapse <= 1%, ensemble <= 1.02 x best kernel.
2. **Warm-up**: the first tick whose forecast is not the last value, and
   MASE from tick 20 to the end, with progressive warm-up (``min_history``
   = 16) and with warm-up until the window is full (``min_history`` = N,
   the behaviour before progressive warm-up), on the short real series.
3. **A rough segment**: a multifractional path on a grid of n = 1,000
   steps on [0, 1] (increments ``dt^H`` times fractional Gaussian noise)
   with H = 0.5, then H = 0.1 for ticks 600-699, then 0.5 again: in how
   many of 20 seeds the breaker opened within 20 ticks of the rough
   segment's start, and closed within 50 ticks of its end.
4. **Level shift and spike** (N(100, 0.01^2) for 500 ticks): a shift of 500
   window sigmas to N(105, 0.05^2): ticks rejected, ticks to the alarm,
   weights at the alarm; a single 25-sigma spike: rejected or not, the
   weights after it, and the largest difference of the next 100 forecasts
   from a twin that never saw it.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import time
from collections.abc import Sequence

import numpy as np

from bench import metrics as M
from bench import processes as P
from bench.accuracy import (
    DEFAULT_CONFIG,
    SHORT_CONFIG,
    Walk,
    config_for,
    log,
    real_series,
    synthetic_cases,
    walk_forward,
)

FloatArray = np.ndarray
KERNELS = ("A", "B", "C", "D")
#: Targets of the operator-facing flags.
MAX_EMERGENCY = 0.01
MAX_COLLAPSE = 0.01
MAX_VS_BEST_KERNEL = 1.02


def _loss(err: FloatArray, kind: str) -> float:
    return M.mae(err) if kind == "mae" else M.rmse(err)


def ordinary_row(name: str, ys: FloatArray, start: int, loss: str = "rmse") -> list[str]:
    """One row of section 1 (see module doc); ``start``: first forecast scored."""
    cfg = config_for(ys)
    walk = walk_forward(ys, cfg)
    stop = ys.size - 1
    after = slice(cfg.wtmm_buffer_size, None)
    emergency = float(walk.emergency[after].mean())
    collapse = float(walk.collapse[after].mean())
    ens = _loss(M.one_step_errors(ys, walk.point, start, stop), loss)
    kernels = [
        _loss(M.one_step_errors(ys, walk.kernels[:, k], start, stop), loss)
        for k in range(len(KERNELS))
    ]
    best = int(np.argmin(kernels))
    ratio = ens / kernels[best]
    return [
        name,
        f"{ys.size}",
        f"{_first_not_naive(ys, walk)}",
        f"{100 * emergency:.1f}%",
        f"{100 * collapse:.1f}%",
        f"{int(walk.alarm[after].sum())}",
        f"{KERNELS[best]} {M.fmt(ratio)}",
        M.verdict(emergency <= MAX_EMERGENCY and collapse <= MAX_COLLAPSE),
        M.verdict(ratio <= MAX_VS_BEST_KERNEL),
    ]


def ordinary_section(n: int, max_len: int | None) -> list[str]:
    rows = []
    warm = 2 * DEFAULT_CONFIG.wtmm_buffer_size
    extra = [
        ("fBm H=0.5", P.fbm(np.random.default_rng(11), n, 0.5), "rmse"),
        ("white noise", np.random.default_rng(12).standard_normal(n), "rmse"),
    ]
    cases = [(c.name, c.ys, c.loss) for c in synthetic_cases(n)] + extra
    for name, ys, loss in cases:
        log(f"flags: {name}")
        rows.append(ordinary_row(name, ys, warm, loss))
    for series in real_series():
        ys = series.ys if max_len is None else series.ys[:max_len]
        log(f"flags: {series.name}")
        rows.append(ordinary_row(series.name, ys, 2 * config_for(ys).wtmm_buffer_size))
    return [
        "### Ordinary series: emergency, mode collapse, weights",
        "",
        f"Synthetic processes of {n:,} values (seeded as in the accuracy benchmark); "
        "shares of the ticks after the window filled; the loss ratio on the accuracy "
        "benchmark's evaluation range (after 2N ticks). Targets: emergency and collapse "
        f"<= {100 * MAX_EMERGENCY:.0f}%, ensemble <= {MAX_VS_BEST_KERNEL} x best kernel.",
        "",
        M.markdown_table(
            [
                "series",
                "values",
                "first forecast not the last value (tick)",
                "emergency",
                "mode collapse",
                "regime alarms",
                "ensemble / best kernel",
                "flags target",
                "weights target",
            ],
            rows,
        ),
        "",
    ]


def _first_not_naive(ys: FloatArray, walk: Walk) -> int:
    """1-based tick of the first forecast that differs from the last value."""
    return int(np.argmax(walk.point[:-1] != ys[:-1])) + 1


def warmup_section() -> list[str]:
    rows = []
    for series in real_series():
        ys = series.ys
        cfg = config_for(ys)
        if cfg is not SHORT_CONFIG:
            continue
        full = cfg.replace(min_history=cfg.wtmm_buffer_size)
        walks = {"progressive": walk_forward(ys, cfg), "until full": walk_forward(ys, full)}
        naive_err = M.one_step_errors(ys, ys, 19, ys.size - 1)
        cells = []
        for walk in walks.values():
            err = M.one_step_errors(ys, walk.point, 19, ys.size - 1)
            cells += [f"{_first_not_naive(ys, walk)}", M.fmt(M.mase(err, naive_err))]
        rows.append([series.name, f"{ys.size} (N={cfg.wtmm_buffer_size})", *cells])
    return [
        "### Warm-up on short series",
        "",
        "First tick whose forecast is not the last value, and MASE of the forecasts of "
        "ticks 21 to the end, with progressive warm-up (min_history = 16) and with the "
        "forecast held at the last value until the window is full (min_history = N).",
        "",
        M.markdown_table(
            [
                "series",
                "values",
                "progressive: first forecast",
                "progressive: MASE",
                "until full: first forecast",
                "until full: MASE",
            ],
            rows,
        ),
        "",
    ]


def rough_section(seeds: int) -> list[str]:
    start, length, end_len = 600, 100, 300
    entered = left = 0
    delays: list[int] = []
    outside = []
    for seed in range(seeds):
        ys = P.multifractional(
            np.random.default_rng(100 + seed), [(start, 0.5), (length, 0.1), (end_len, 0.5)]
        )
        walk = walk_forward(ys, DEFAULT_CONFIG)
        em = walk.emergency
        on = np.flatnonzero(em[start : start + 20])
        entered += on.size > 0
        if on.size:
            delays.append(int(on[0]))
        stop = start + length
        left += bool(em[stop - 1]) and bool((~em[stop : stop + 50]).any())
        calm = np.concatenate([em[DEFAULT_CONFIG.wtmm_buffer_size : start], em[stop + 50 :]])
        outside.append(float(calm.mean()))
    return [
        "### A rough segment (H = 0.5 -> 0.1 for 100 ticks -> 0.5)",
        "",
        M.markdown_table(
            [
                "seeds",
                "opened within 20 ticks",
                "median ticks to open",
                "closed within 50 ticks of the end",
                "emergency elsewhere",
            ],
            [
                [
                    f"{seeds}",
                    f"{entered}",
                    f"{np.median(delays):.0f}" if delays else "-",
                    f"{left}",
                    f"{100 * np.mean(outside):.1f}%",
                ]
            ],
        ),
        "",
    ]


def shift_section() -> list[str]:
    rng = np.random.default_rng(5)
    calm = 100.0 + 0.01 * rng.standard_normal(500)
    after = 105.0 + 0.05 * rng.standard_normal(100)
    walk = walk_forward(np.concatenate([calm, after]), DEFAULT_CONFIG)
    rejected = int(walk.rejected[500:520].sum())
    alarms = np.flatnonzero(walk.alarm[500:])
    delay = f"{int(alarms[0]) + 1}" if alarms.size else "none"
    w_alarm = walk.weights[500 + int(alarms[0])] if alarms.size else np.full(4, np.nan)
    sigma = float(np.std(calm[-DEFAULT_CONFIG.wtmm_buffer_size :]))

    spike = calm.copy()
    spike[400] = calm[399] + 25.0 * sigma
    twin = np.delete(calm, 400)
    w_spike = walk_forward(spike, DEFAULT_CONFIG)
    w_twin = walk_forward(twin, DEFAULT_CONFIG)
    diff = np.max(np.abs(w_spike.point[401:] - w_twin.point[400:]))
    same_w = np.array_equal(w_spike.weights[400], w_spike.weights[399])
    return [
        "### Level shift and isolated spike",
        "",
        f"500 ticks of N(100, 0.01^2), then N(105, 0.05^2): a shift of "
        f"{5.0 / sigma:,.0f} window sigmas. A single spike of 25 window sigmas at tick 401 "
        "of the calm series, against a twin without it.",
        "",
        M.markdown_table(
            ["case", "ticks rejected", "alarm at tick (1 = the shift)", "weights at the alarm"],
            [["level shift", f"{rejected}", delay, ", ".join(f"{w:.2f}" for w in w_alarm)]],
        ),
        "",
        M.markdown_table(
            ["case", "rejected", "weights unchanged", "max |forecast - twin's| over the next 99"],
            [["25-sigma spike", f"{bool(w_spike.rejected[400])}", f"{same_w}", f"{diff:.3g}"]],
        ),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the flag tables (markdown) on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter series, fewer seeds")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    lines = ["## Flags an operator can trust", ""]
    lines += ordinary_section(800 if args.quick else 2_500, 600 if args.quick else None)
    lines += warmup_section()
    lines += rough_section(5 if args.quick else 20)
    lines += shift_section()
    lines.append(f"Flags benchmark wall time: {time.perf_counter() - t0:.0f} s.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
