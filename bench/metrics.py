"""Metrics of the benchmarks (plain numpy), and the markdown table formatter.

Forecast accuracy, with ``e`` the one-step errors ``y_{t+1} - yhat_{t+1|t}``
over an evaluation window (units of the series):

* ``rmse(e) = sqrt(mean(e^2))``, ``mae(e) = mean(|e|)``;
* ``ratio(a, b) = a / b``, e.g. RMSE of a model over RMSE of the oracle;
* ``mase(e, e_naive) = mean|e| / mean|e_naive|``: the MAE scaled by the MAE of
  the naive last-value forecast on the *same* evaluation points (Hyndman &
  Koehler 2006, non-seasonal, with the scale taken on the evaluation window
  rather than on a training sample, since walk-forward has no separate
  training sample). Below 1 beats naive.
* ``coverage(y, lo, hi)``: fraction of targets with ``lo <= y <= hi``;
  ``mean_width(lo, hi) = mean(hi - lo)`` (units of the series).

Change detection, on a boolean alarm sequence over steps ``0..n-1`` with
known change indices ``c`` (the first step of each new regime) and a
detection window of ``w`` steps:

* a change is detected when an alarm falls in ``[c, c + w)``; its delay is
  ``t_first_alarm - c`` steps (0: the alarm came with the first changed
  sample); later alarms in the same window are neither detections nor false
  alarms;
* detection rate = detected / changes; median and p90 delay over the
  detected changes (``numpy.percentile``, linear interpolation);
* false alarms = alarms at monitored steps outside every detection window,
  reported per 10,000 such (in-control) monitored steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]


def _arr(x: ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def rmse(err: ArrayLike) -> float:
    """Root mean squared error ``sqrt(mean(e^2))`` (units of the series)."""
    e = _arr(err)
    return float(np.sqrt(np.mean(e * e)))


def mae(err: ArrayLike) -> float:
    """Mean absolute error ``mean(|e|)`` (units of the series)."""
    return float(np.mean(np.abs(_arr(err))))


def ratio(value: float, reference: float) -> float:
    """``value / reference`` (e.g. RMSE ratio to the oracle); NaN for a zero reference."""
    return value / reference if reference != 0.0 else math.nan


def mase(err: ArrayLike, naive_err: ArrayLike) -> float:
    """MAE of ``err`` over the MAE of the naive forecast's errors on the same targets."""
    return ratio(mae(err), mae(naive_err))


def coverage(y: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Fraction of ``y`` inside the closed interval ``[lower, upper]``."""
    yy, lo, hi = _arr(y), _arr(lower), _arr(upper)
    return float(np.mean((yy >= lo) & (yy <= hi)))


def mean_width(lower: ArrayLike, upper: ArrayLike) -> float:
    """Mean interval width ``mean(upper - lower)`` (units of the series)."""
    return float(np.mean(_arr(upper) - _arr(lower)))


def one_step_errors(y: ArrayLike, forecasts: ArrayLike, start: int, stop: int) -> FloatArray:
    """``y[t + 1] - forecasts[t]`` for ``t`` in ``[start, stop)``; ``forecasts[t]`` is made at t."""
    yy, ff = _arr(y), _arr(forecasts)
    if not 0 <= start < stop <= yy.size - 1:
        raise ValueError(f"evaluation window [{start}, {stop}) needs targets up to {stop}")
    return yy[start + 1 : stop + 1] - ff[start:stop]


@dataclass(frozen=True)
class DetectionStats:
    """Detection metrics of one detector over one or more streams (see module doc)."""

    changes: int
    detected: int
    median_delay: float
    p90_delay: float
    false_alarms: int
    control_steps: int

    @property
    def rate(self) -> float:
        """Detected changes / changes (NaN without changes)."""
        return self.detected / self.changes if self.changes else math.nan

    @property
    def false_per_10k(self) -> float:
        """False alarms per 10,000 in-control monitored steps."""
        return 1e4 * self.false_alarms / self.control_steps if self.control_steps else math.nan


def detection_stats(
    alarms: ArrayLike, changes: Sequence[int] | ArrayLike, window: int, monitored: ArrayLike
) -> DetectionStats:
    """Detection rate, delays and false alarms of a boolean alarm sequence.

    ``alarms[t]``: the detector fired at step t. ``changes``: first steps of
    new regimes. ``window``: steps after a change in which an alarm counts
    as its detection. ``monitored[t]``: step t counts for false alarms
    (e.g. False during warm-up). Several streams are scored together by
    concatenating their arrays (offset change indices); a window must not
    run into the next stream.
    """
    a = np.asarray(alarms, dtype=bool)
    m = np.asarray(monitored, dtype=bool)
    c = np.asarray(changes, dtype=np.int64).ravel()
    if a.shape != m.shape or a.ndim != 1:
        raise ValueError("alarms and monitored must be 1-d arrays of equal length")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    in_window = np.zeros(a.size, dtype=bool)
    delays: list[int] = []
    for ci in c:
        lo, hi = int(ci), min(int(ci) + window, a.size)
        in_window[lo:hi] = True
        hits = np.flatnonzero(a[lo:hi])
        if hits.size:
            delays.append(int(hits[0]))
    control = m & ~in_window
    d = np.asarray(delays, dtype=np.float64)
    return DetectionStats(
        changes=int(c.size),
        detected=len(delays),
        median_delay=float(np.percentile(d, 50)) if d.size else math.nan,
        p90_delay=float(np.percentile(d, 90)) if d.size else math.nan,
        false_alarms=int(np.count_nonzero(a & control)),
        control_steps=int(np.count_nonzero(control)),
    )


def fmt(x: float, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, '—' for NaN, thousands separators above 1e4."""
    if math.isnan(x):
        return "—"
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def verdict(ok: bool | None) -> str:
    """'pass', 'miss', or '—' when no target applies."""
    if ok is None:
        return "—"
    return "pass" if ok else "miss"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (cells are already formatted strings)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)
