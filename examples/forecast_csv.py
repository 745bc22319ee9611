"""Forecast one column of a CSV file tick by tick and draw the result.

    python examples/forecast_csv.py bench/data/nile.csv --out nile.png

Each row is one observation, stepped through ``UniversalPredictor`` in
order (event clock: the rows' own order is the time, nothing is stale).
The picture shows the series, the one-step-ahead forecast made on the row
before (``predicted_value``), its 95% band (``interval_lower`` ..
``interval_upper``), the regime alarms (``regime_change_detected``) and
the spans in emergency mode (``emergency_mode``). The first
``wtmm_buffer_size`` rows fill the window (forecast = last value) and are
drawn without a forecast. It prints the mean absolute error of the
forecast against the naive forecast (the last value) over the same rows.

Needs matplotlib (``make test`` installs it; ``pip install matplotlib``
otherwise). The value column defaults to the last one; a first column that
is not the value is used for the x axis.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from predictor import PredictionResult, PredictorConfig, ProcessState, UniversalPredictor


@dataclass(frozen=True)
class Series:
    """A column of values and the labels of its rows (the x axis)."""

    x: np.ndarray
    y: np.ndarray
    x_name: str
    y_name: str


def read_series(path: Path, column: str | None) -> Series:
    """The value column (default: the last) and the first column as x when it differs."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise SystemExit(f"{path}: no rows")
    names = list(rows[0])
    value = column or names[-1]
    if value not in names:
        raise SystemExit(f"{path}: no column {value!r}; columns: {', '.join(names)}")
    y = np.array([float(r[value]) for r in rows])
    label = names[0] if names[0] != value else None
    if label is not None:
        try:
            x = np.array([float(r[label]) for r in rows])
        except ValueError:
            label = None
    if label is None:
        x = np.arange(len(rows), dtype=np.float64)
    return Series(x, y, label or "row", value)


def window_for(n: int) -> int:
    """A window that leaves most of a short series for forecasting: n/3 in [32, 128]."""
    return int(min(128, max(32, n // 3)))


def config_for(n: int) -> PredictorConfig:
    """Event clock, one compiled depth, a window sized to the series."""
    w = window_for(n)
    return PredictorConfig(
        clock="event",
        wtmm_buffer_size=w,
        wiener_order=min(8, w // 4 - 1),
        signature_window=min(16, w),
        shed_ladder=(3,),
        log_sig_depth=3,
    )


def forecast(series: Series, config: PredictorConfig) -> list[PredictionResult]:
    """One result per row: the forecast of the next row made after seeing this one."""
    predictor = UniversalPredictor(config, warmup=False)
    results = []
    for t, y in enumerate(series.y, start=1):
        obs = ProcessState(magnitude=float(y), reference=float(y), timestamp_ns=t)
        results.append(predictor.step(obs))
    return results


def spans(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges where ``flags`` is true."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(int), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def plot(series: Series, results: list[PredictionResult], out: Path, title: str) -> None:
    """Write the PNG (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = series.x, series.y
    # results[t] forecasts row t + 1: shift by one row.
    pred = np.array([r.predicted_value for r in results[:-1]])
    lo = np.array([r.interval_lower for r in results[:-1]])
    hi = np.array([r.interval_upper for r in results[:-1]])
    ready = ~np.array([r.warming_up for r in results[:-1]])
    xf = x[1:]
    alarms = np.flatnonzero([r.regime_change_detected for r in results])
    emergency = np.array([r.emergency_mode for r in results])

    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    ax.plot(x, y, color="0.2", lw=1.2, label=series.y_name)
    ax.fill_between(xf[ready], lo[ready], hi[ready], color="tab:blue", alpha=0.18, label="95% band")
    ax.plot(xf[ready], pred[ready], color="tab:blue", lw=1.2, label="one-step forecast")
    for i, (a, b) in enumerate(spans(emergency)):
        ax.axvspan(
            x[a],
            x[min(b, len(x) - 1)],
            color="tab:red",
            alpha=0.12,
            label="emergency mode" if i == 0 else None,
        )
    for i, k in enumerate(alarms):
        ax.axvline(
            x[k], color="tab:orange", lw=1.5, ls="--", label="regime alarm" if i == 0 else None
        )
    if ready.any():
        start = xf[np.argmax(ready)]
        ax.axvline(start, color="0.6", lw=0.8, ls=":")
        ax.annotate(
            "window full",
            (start, 0.02),
            xycoords=("data", "axes fraction"),
            xytext=(3, 0),
            textcoords="offset points",
            fontsize=8,
            color="0.4",
        )
    ax.set_xlabel(series.x_name)
    ax.set_ylabel(series.y_name)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8, frameon=False)
    ax.grid(alpha=0.25)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def summary(series: Series, results: list[PredictionResult]) -> str:
    """MAE of the forecast and of the naive forecast over the rows after warm-up."""
    pred = np.array([r.predicted_value for r in results[:-1]])
    ready = ~np.array([r.warming_up for r in results[:-1]])
    actual, naive = series.y[1:][ready], series.y[:-1][ready]
    if actual.size == 0:
        return "no forecast after warm-up: the series is shorter than the window"
    mae = float(np.mean(np.abs(actual - pred[ready])))
    mae_naive = float(np.mean(np.abs(actual - naive)))
    alarms = sum(r.regime_change_detected for r in results)
    emergency = sum(r.emergency_mode for r in results)
    return (
        f"{actual.size} forecasts: MAE {mae:.4g} (naive {mae_naive:.4g}, ratio "
        f"{mae / mae_naive:.3f}); {alarms} regime alarms; {emergency} rows in emergency mode"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", type=Path, help="CSV file with a header row")
    parser.add_argument("--column", help="value column (default: the last)")
    parser.add_argument("--out", type=Path, default=Path("forecast.png"), help="PNG to write")
    parser.add_argument("--title", help="plot title (default: the file name)")
    args = parser.parse_args(argv)
    series = read_series(args.csv, args.column)
    config = config_for(series.y.size)
    results = forecast(series, config)
    title = args.title or f"{args.csv.name}: one-step forecast, window {config.wtmm_buffer_size}"
    plot(series, results, args.out, title)
    print(summary(series, results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
