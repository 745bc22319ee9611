"""Change detection: the predictor's adaptive CUSUM against river and a fixed CUSUM.

    .venv/bin/python -m bench.changepoints [--quick]

Streams. Independent noise of unit standard deviation (Gaussian, or
Student-t with 3 degrees of freedom scaled to unit variance) around a
piecewise-constant level. After ``WARMUP`` ticks, ``K`` changes
``SPACING`` ticks apart (the last segment is as long as the others):

* mean shifts of 1, 2, 3 sigma, alternating up and down (0, +d, 0, +d, ...);
* variance x2 and x4: the variance is multiplied by the factor at every
  change (the standard deviation grows geometrically; the predictor works on
  window-standardised values, so the scale itself is harmless).

Trend streams (no change point): ``TREND_TICKS`` ticks of
``y_t = slope t + noise`` (unit-variance Gaussian or Student-t(3) noise) for
each slope of ``TREND_SLOPES``. A forecaster that lags the trend leaves a
persistent bias in its residuals; a detector that re-references after an
alarm raises it once. Reported: the tick of the first alarm and the alarms
after it per 500 ticks (acceptance: at most 1).

Detectors, all on the same stream. The predictor runs over the levels
(``bench.accuracy.walk_forward``, shipped config) and raises
``regime_change_detected``; its standardised residual stream
``u_t = e_t / RMS(e_{t-N}..e_{t-1})`` (exactly what its CUSUM sees, see
``predictor.core.sia.residuals``) is fed, from the tick the window is full,
to river's ``PageHinkley`` and ``ADWIN`` (default settings) and to a
fixed-threshold two-sided Page CUSUM (``k`` = 0.5, ``h`` = 8, the
predictor's base values, without its kurtosis-adaptive threshold, its
scale channels, its re-referencing and its grace period; reset after each
alarm).

Scoring (``bench.metrics.detection_stats``): an alarm within ``WINDOW``
ticks of a change detects it; other alarms after the warm-up are false
alarms, reported per 10,000 in-control ticks. "alarms / change" counts every
alarm inside the detection windows per change (1 is one alarm per change;
more means re-alarms, which the false-alarm count does not see). Verdict per
noise type against PageHinkley: no more false alarms, at least as many
changes detected, and a median delay no longer on the changes both detect.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench import metrics as M
from bench.accuracy import DEFAULT_CONFIG, log, walk_forward

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Ticks before the first change (window fill, residual statistics settle).
WARMUP = 384
#: Length of each trend stream and the slopes (noise standard deviation 1).
TREND_TICKS = 2000
TREND_SLOPES = (0.1, 1.0, 10.0)
#: Block length for the trend streams' re-alarm rate.
TREND_BLOCK = 500
FIXED_H = 8.0
FIXED_K = 0.5
DETECTORS = (
    "predictor (adaptive CUSUM)",
    "fixed CUSUM (h=8, k=0.5)",
    "river PageHinkley",
    "river ADWIN",
)
PAGE_HINKLEY = DETECTORS[2]


@dataclass(frozen=True)
class Scenario:
    """A change type on a noise type."""

    change: str  # "mean" or "variance"
    size: float  # shift in sigmas, or variance factor
    noise: str  # "gaussian" or "t3"

    @property
    def label(self) -> str:
        """Human-readable change."""
        return (
            f"mean +-{self.size:g} sigma" if self.change == "mean" else f"variance x{self.size:g}"
        )


SCENARIOS = tuple(
    Scenario(change, size, noise)
    for noise in ("gaussian", "t3")
    for change, size in (
        ("mean", 1.0),
        ("mean", 2.0),
        ("mean", 3.0),
        ("variance", 2.0),
        ("variance", 4.0),
    )
)


def unit_noise(rng: np.random.Generator, n: int, noise: str) -> FloatArray:
    """Unit-variance noise: standard normal, or Student-t(3) / sqrt(3)."""
    if noise == "gaussian":
        return rng.standard_normal(n)
    if noise == "t3":
        return rng.standard_t(3, size=n) / math.sqrt(3.0)
    raise ValueError(f"unknown noise {noise!r}")


def stream(
    rng: np.random.Generator, scenario: Scenario, changes: int, spacing: int
) -> tuple[FloatArray, NDArray[np.int64]]:
    """Levels of one stream and its change indices (see module doc)."""
    n = WARMUP + changes * spacing
    idx = WARMUP + spacing * np.arange(changes, dtype=np.int64)
    seg = np.searchsorted(idx, np.arange(n), side="right")
    eps = unit_noise(rng, n, scenario.noise)
    if scenario.change == "mean":
        level = np.where(seg % 2 == 1, scenario.size, 0.0)
        return level + eps, idx
    sd = np.sqrt(scenario.size) ** seg
    return sd * eps, idx


def page_cusum(u: FloatArray, h: float = FIXED_H, k: float = FIXED_K) -> BoolArray:
    """Two-sided Page test ``G+- = max(0, G+- +- u - k)``; alarm above ``h``, then reset."""
    g_pos = g_neg = 0.0
    alarms = np.zeros(u.size, dtype=bool)
    for t, x in enumerate(u):
        g_pos = max(0.0, g_pos + x - k)
        g_neg = max(0.0, g_neg - x - k)
        if g_pos > h or g_neg > h:
            alarms[t] = True
            g_pos = g_neg = 0.0
    return alarms


def river_alarms(make: Callable[[], Any], u: FloatArray) -> BoolArray:
    """``update(u_t)`` then ``drift_detected`` (river resets itself after a detection)."""
    det = make()
    alarms = np.zeros(u.size, dtype=bool)
    for t, x in enumerate(u):
        det.update(float(x))
        alarms[t] = bool(det.drift_detected)
    return alarms


def _page_hinkley() -> Any:
    from river import drift

    return drift.PageHinkley()


def _adwin() -> Any:
    from river import drift

    return drift.ADWIN()  # type: ignore[no-untyped-call]  # river leaves it unannotated


def all_alarms(levels: FloatArray, feed_from: int) -> tuple[dict[str, BoolArray], float]:
    """Alarms of every detector on one stream, and the predictor's wall time."""
    t0 = time.perf_counter()
    walk = walk_forward(levels, DEFAULT_CONFIG)
    seconds = time.perf_counter() - t0
    u = walk.u[feed_from:]
    pad = np.zeros(feed_from, dtype=bool)
    return {
        DETECTORS[0]: walk.alarm.copy(),
        DETECTORS[1]: np.concatenate([pad, page_cusum(u)]),
        DETECTORS[2]: np.concatenate([pad, river_alarms(_page_hinkley, u)]),
        DETECTORS[3]: np.concatenate([pad, river_alarms(_adwin, u)]),
    }, seconds


@dataclass
class Pool:
    """Concatenated streams of one group, per detector."""

    alarms: dict[str, list[BoolArray]]
    monitored: list[BoolArray]
    changes: list[NDArray[np.int64]]
    offset: int = 0

    @classmethod
    def empty(cls) -> Pool:
        """No streams yet."""
        return cls({d: [] for d in DETECTORS}, [], [])

    def add(self, alarms: dict[str, BoolArray], changes: NDArray[np.int64]) -> None:
        """Append one stream (alarms before ``WARMUP`` are not monitored)."""
        n = next(iter(alarms.values())).size
        for d in DETECTORS:
            self.alarms[d].append(alarms[d])
        self.monitored.append(np.arange(n) >= WARMUP)
        self.changes.append(changes + self.offset)
        self.offset += n

    def stats(self, detector: str, window: int) -> M.DetectionStats:
        """Detection metrics of ``detector`` over every stream of the pool."""
        return M.detection_stats(
            np.concatenate(self.alarms[detector]),
            np.concatenate(self.changes),
            window,
            np.concatenate(self.monitored),
        )

    def delays(self, detector: str, window: int) -> FloatArray:
        """Ticks from each change to its first alarm within ``window`` (NaN: missed)."""
        a = np.concatenate(self.alarms[detector])
        out = []
        for i in np.concatenate(self.changes):
            hits = np.flatnonzero(a[i : i + window])
            out.append(float(hits[0]) if hits.size else math.nan)
        return np.asarray(out, dtype=np.float64)

    def alarms_per_change(self, detector: str, window: int) -> float:
        """Alarms inside the detection windows (``window`` ticks after each change) per change."""
        a = np.concatenate(self.alarms[detector])
        c = np.concatenate(self.changes)
        hits = sum(int(np.count_nonzero(a[i : i + window])) for i in c)
        return hits / max(c.size, 1)


def _row(label: list[str], s: M.DetectionStats, per_change: float) -> list[str]:
    return [
        *label,
        f"{s.detected}/{s.changes} ({M.fmt(s.rate, 2)})",
        M.fmt(s.median_delay, 1),
        M.fmt(s.p90_delay, 1),
        M.fmt(per_change, 2),
        f"{M.fmt(s.false_per_10k, 1)} ({s.false_alarms} in {s.control_steps:,})",
    ]


@dataclass(frozen=True)
class TrendCount:
    """Alarms of one detector on the trend streams of one slope and noise."""

    first: list[int]  # tick of the first alarm per stream (-1: none)
    after: int  # alarms after the first, all streams
    ticks_after: int  # ticks after the first alarm, all streams

    @property
    def per_block(self) -> float:
        """Alarms after the first per ``TREND_BLOCK`` ticks (0 if no stream alarmed)."""
        return TREND_BLOCK * self.after / self.ticks_after if self.ticks_after else 0.0


def trend_counts(alarms: Sequence[BoolArray]) -> TrendCount:
    """First alarm and the alarms after it, over several streams."""
    first: list[int] = []
    after = ticks = 0
    for a in alarms:
        hits = np.flatnonzero(a)
        first.append(int(hits[0]) if hits.size else -1)
        if hits.size:
            after += int(hits.size - 1)
            ticks += int(a.size - hits[0] - 1)
    return TrendCount(first, after, ticks)


def trend_section(seeds: int, seed: int) -> list[str]:
    """Markdown: alarms along steady linear trends (see module doc)."""
    feed_from = DEFAULT_CONFIG.wtmm_buffer_size
    rows: list[list[str]] = []
    for noise in ("gaussian", "t3"):
        for j, slope in enumerate(TREND_SLOPES):
            per_det: dict[str, list[BoolArray]] = {d: [] for d in DETECTORS}
            for s in range(seeds):
                rng = np.random.default_rng(
                    seed + 1000 * (j + 1) + s + (500 if noise == "t3" else 0)
                )
                levels = slope * np.arange(TREND_TICKS) + unit_noise(rng, TREND_TICKS, noise)
                log(f"changepoints: linear trend, slope {slope:g}, {noise}, seed {s}")
                alarms, _ = all_alarms(levels, feed_from)
                for d in DETECTORS:
                    per_det[d].append(alarms[d])
            for d in DETECTORS:
                tc = trend_counts(per_det[d])
                firsts = ", ".join(str(f) if f >= 0 else "none" for f in tc.first)
                rows.append(
                    [
                        f"linear trend, slope {slope:g}",
                        noise,
                        d,
                        firsts,
                        str(tc.after),
                        M.fmt(tc.per_block, 2),
                    ]
                )
    head = [
        "stream",
        "noise",
        "detector",
        "first alarm (tick, per seed)",
        "alarms after the first",
        f"per {TREND_BLOCK} ticks",
    ]
    return [
        "### Linear trends",
        "",
        f"{seeds} stream(s) of {TREND_TICKS:,} ticks per row, unit noise; target for the "
        f"predictor: at most 1 alarm per {TREND_BLOCK} ticks after the first.",
        "",
        M.markdown_table(head, rows),
        "",
    ]


def run(changes: int, spacing: int, window: int, seed: int = 7, trend_seeds: int = 1) -> list[str]:
    """Markdown section: totals per noise against PageHinkley, per scenario, linear trends."""
    feed_from = DEFAULT_CONFIG.wtmm_buffer_size
    pools = {noise: Pool.empty() for noise in ("gaussian", "t3")}
    rows: list[list[str]] = []
    cost = 0.0
    ticks = 0
    for i, sc in enumerate(SCENARIOS):
        levels, idx = stream(np.random.default_rng(seed + i), sc, changes, spacing)
        log(f"changepoints: {sc.label}, {sc.noise} ({levels.size} ticks)")
        alarms, seconds = all_alarms(levels, feed_from)
        cost += seconds
        ticks += levels.size
        pools[sc.noise].add(alarms, idx)
        single = Pool.empty()
        single.add(alarms, idx)
        rows += [
            _row(
                [sc.label, sc.noise, d],
                single.stats(d, window),
                single.alarms_per_change(d, window),
            )
            for d in DETECTORS
        ]
    totals: list[list[str]] = []
    verdicts: list[str] = []
    for noise, pool in pools.items():
        st = {d: pool.stats(d, window) for d in DETECTORS}
        totals += [_row([noise, d], st[d], pool.alarms_per_change(d, window)) for d in DETECTORS]
        ours, ph = st[DETECTORS[0]], st[PAGE_HINKLEY]
        # Delays compared on the changes both detect: a detector that only
        # catches the easy changes would otherwise win on its median.
        d_ours, d_ph = pool.delays(DETECTORS[0], window), pool.delays(PAGE_HINKLEY, window)
        both = np.isfinite(d_ours) & np.isfinite(d_ph)
        med_ours = float(np.median(d_ours[both])) if both.any() else math.nan
        med_ph = float(np.median(d_ph[both])) if both.any() else math.nan
        ok = (
            ours.false_per_10k <= ph.false_per_10k
            and ours.detected >= ph.detected
            and (not both.any() or med_ours <= med_ph)
        )
        verdicts.append(
            f"* {noise}: predictor {ours.detected}/{ours.changes} detected, "
            f"{M.fmt(ours.false_per_10k, 1)} false alarms / 10k; PageHinkley "
            f"{ph.detected}/{ph.changes}, {M.fmt(ph.false_per_10k, 1)}; median delay on the "
            f"{int(both.sum())} changes both detect: {M.fmt(med_ours, 1)} against "
            f"{M.fmt(med_ph, 1)}: **{M.verdict(ok)}** (target: no more false alarms than "
            "PageHinkley, at least as many detections, and no longer a delay on the common ones)"
        )
    head = [
        "change",
        "noise",
        "detector",
        "detected",
        "median delay",
        "p90 delay",
        "alarms / change",
        "false alarms / 10k",
    ]
    return [
        "## Change detection",
        "",
        f"Each stream: {WARMUP} warm-up ticks, then {changes} changes {spacing} ticks apart; "
        f"an alarm within {window} ticks of a change detects it (delays in ticks); "
        f"false alarms counted on the other ticks after the warm-up. "
        f"Detectors other than the predictor get its standardised residuals from tick {feed_from}.",
        "",
        "### All scenarios, per noise type",
        "",
        M.markdown_table(head[1:], totals),
        "",
        *verdicts,
        "",
        "### Per scenario",
        "",
        M.markdown_table(head, rows),
        "",
        *trend_section(trend_seeds, seed),
        f"Predictor walk cost: {M.fmt(1e3 * cost / ticks, 2)} ms per tick over {ticks:,} ticks "
        "(wall, including compilation).",
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the change-detection tables (markdown) on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 changes per stream")
    args = parser.parse_args(argv)
    changes, spacing, trend_seeds = (2, 256, 1) if args.quick else (4, 512, 3)
    t0 = time.perf_counter()
    lines = run(changes, spacing, window=spacing // 2, trend_seeds=trend_seeds)
    lines.append(f"Change-detection benchmark wall time: {time.perf_counter() - t0:.0f} s.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
