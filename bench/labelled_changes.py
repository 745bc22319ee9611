"""Change detection on real series with annotated change points, scored as TCPDBench does.

    .venv/bin/python -m bench.labelled_changes [--quick]

Series. Six univariate series of the Turing Change Point Dataset (van den
Burg & Williams 2020, "An Evaluation of Change Point Detection Algorithms"),
each with the change points marked by five annotators, shipped in
``bench/data`` (``tcpd_annotations.json`` lists them; sources and licences in
``bench/data/README.md``): nile (100 values), ozone (54), gdp_japan (58),
businv (330), lga_passengers (468), well_log (675, TCPD's every-6th-value
subsample). ``--quick`` keeps the series of at most ``QUICK_MAX_LEN`` values.

Detectors. A change point is the index of the first value of a new segment;
an online detector's prediction is the index ``t`` of the value after which
it raised an alarm, so its detection delay counts against it.

* ``predictor``: the ticks with ``regime_change_detected`` set in
  ``bench.accuracy.walk_forward`` over the raw values, shipped config
  (``DEFAULT_CONFIG``, a ``wtmm_buffer_size``-value window). Several series
  are shorter than that window: the predictor's window is still filling over
  all of them (``warming_up``); its detector works from ``min_history`` ticks
  on, and the tables report the ticks with ``warming_up`` set;
* ``zero``: no change point (only the start, which every prediction gets);
* river ``PageHinkley`` and ``ADWIN`` (default settings; they reset after a
  detection), fed the raw series standardised by the mean and standard
  deviation of its first ``STANDARDISE_TICKS`` values (an online detector
  cannot use later values; the predictor's residuals are not used since they
  do not exist before its window fills);
* ``PELT`` (ruptures, offline, sees the whole series): TCPDBench's default
  PELT experiment (R ``changepoint::cpt.mean``, Normal cost, MBIC penalty, on
  the series scaled to zero mean and unit variance) rebuilt with ruptures:
  ``l2`` cost (the Gaussian mean-shift cost at unit variance) on the scaled
  series, minimum segment length 1, penalty ``3 log n`` (changepoint's MBIC
  without its segment-length term). Its change points are ruptures'
  breakpoints, the first index of each new segment.

Scores (``bench.cp_scores``): F1 with a margin of 5 indices and the cover,
both against the five annotators, the start counting as a change point.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench import cp_scores as S
from bench import metrics as M
from bench.accuracy import DEFAULT_CONFIG, log, walk_forward

FloatArray = NDArray[np.float64]

DATA_DIR = Path(__file__).resolve().parent / "data"
ANNOTATIONS = DATA_DIR / "tcpd_annotations.json"
#: Values of the series' start used to standardise the river detectors' input.
STANDARDISE_TICKS = 20
#: Longest series scored with ``--quick``.
QUICK_MAX_LEN = 350
#: Penalty of the PELT reference per change point, in units of log n.
PELT_PENALTY_LOGN = 3.0
DETECTORS = ("predictor", "zero", "river PageHinkley", "river ADWIN", "PELT (offline)")


@dataclass(frozen=True)
class LabelledSeries:
    """A series and its annotators' change points (indices into ``values``)."""

    name: str
    values: FloatArray
    annotations: dict[str, list[int]]


def load_series(path: Path = ANNOTATIONS) -> list[LabelledSeries]:
    """The annotated series listed in ``path``, values read from the CSV file each names."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for name, entry in doc["series"].items():
        with (path.parent / entry["file"]).open(newline="", encoding="utf-8") as f:
            values = np.array([float(r[entry["column"]]) for r in csv.DictReader(f)])
        if values.size != entry["n_obs"]:
            raise ValueError(f"{name}: {values.size} values, expected {entry['n_obs']}")
        ann = {str(k): [int(c) for c in v] for k, v in entry["annotations"].items()}
        out.append(LabelledSeries(name, values, ann))
    return out


# ----------------------------------------------------------------------------
# Detectors
# ----------------------------------------------------------------------------
def predictor_cps(ys: FloatArray) -> tuple[list[int], int]:
    """Alarm ticks of the predictor (shipped config), and its number of warm-up ticks."""
    walk = walk_forward(ys, DEFAULT_CONFIG)
    return np.flatnonzero(walk.alarm).tolist(), int(walk.warming.sum())


def standardised(ys: FloatArray, k: int = STANDARDISE_TICKS) -> FloatArray:
    """``(y - m) / s``, ``m`` and ``s`` the mean and standard deviation of the first ``k`` values.

    A constant start (``s = 0``) leaves the scale at 1.
    """
    head = ys[: min(k, ys.size)]
    sd = float(head.std())
    return np.asarray((ys - head.mean()) / (sd if sd > 0.0 else 1.0), dtype=np.float64)


def river_cps(make: Callable[[], Any], xs: FloatArray) -> list[int]:
    """``update(x_t)``, then ``drift_detected``: the ticks of the detections."""
    det = make()
    out = []
    for t, x in enumerate(xs):
        det.update(float(x))
        if det.drift_detected:
            out.append(t)
    return out


def _page_hinkley() -> Any:
    from river import drift

    return drift.PageHinkley()


def _adwin() -> Any:
    from river import drift

    return drift.ADWIN()  # type: ignore[no-untyped-call]


def pelt_cps(ys: FloatArray, penalty_logn: float = PELT_PENALTY_LOGN) -> list[int]:
    """ruptures PELT, ``l2`` cost on the scaled series, penalty ``penalty_logn * log n``."""
    import ruptures as rpt

    sd = float(ys.std(ddof=1))
    x = (ys - ys.mean()) / (sd if sd > 0.0 else 1.0)
    algo = rpt.Pelt(model="l2", min_size=1, jump=1).fit(x)
    bkps = algo.predict(pen=penalty_logn * math.log(ys.size))
    return [int(b) for b in bkps[:-1]]  # the last breakpoint is the series' end


@dataclass(frozen=True)
class SeriesResult:
    """Change points and scores of every detector on one series."""

    series: LabelledSeries
    cps: dict[str, list[int]]
    f1: dict[str, float]
    cover: dict[str, float]
    warmup: int
    seconds: dict[str, float]


def score_series(series: LabelledSeries) -> SeriesResult:
    """Run every detector on ``series`` and score its change points."""
    ys = series.values
    cps: dict[str, list[int]] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    cps["predictor"], warmup = predictor_cps(ys)
    seconds["predictor"] = time.perf_counter() - t0
    cps["zero"] = []
    z = standardised(ys)
    cps["river PageHinkley"] = river_cps(_page_hinkley, z)
    cps["river ADWIN"] = river_cps(_adwin, z)
    t0 = time.perf_counter()
    cps["PELT (offline)"] = pelt_cps(ys)
    seconds["PELT (offline)"] = time.perf_counter() - t0
    f1 = {d: S.f_measure(series.annotations, cps[d]).f1 for d in DETECTORS}
    cover = {d: S.covering(series.annotations, cps[d], ys.size) for d in DETECTORS}
    return SeriesResult(series, cps, f1, cover, warmup, seconds)


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def _cp_list(cps: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(c) for c in cps[:limit])
    return f"{shown}, ... ({len(cps)})" if len(cps) > limit else shown or "none"


def run(quick: bool) -> list[str]:
    """Markdown section: the detectors' mean scores, then a table per series."""
    series = [s for s in load_series() if not quick or s.values.size <= QUICK_MAX_LEN]
    results = []
    for s in series:
        log(f"labelled_changes: {s.name} ({s.values.size} values)")
        results.append(score_series(s))
    mean_rows = [
        [
            d,
            M.fmt(float(np.mean([r.f1[d] for r in results]))),
            M.fmt(float(np.mean([r.cover[d] for r in results]))),
            str(sum(len(r.cps[d]) for r in results)),
        ]
        for d in DETECTORS
    ]
    lines = [
        "## Labelled change points",
        "",
        "Real series of the Turing Change Point Dataset, five annotators each; scores as "
        "TCPDBench: F1 with a margin of 5 indices (the start counts as a change point for "
        "annotations and predictions) and cover, both against all annotators. Online "
        "detectors predict the index at which they alarm (their delay counts); the river "
        f"detectors see the series standardised by its first {STANDARDISE_TICKS} values; "
        "PELT (l2 cost, penalty 3 log n on the scaled series) sees the whole series. "
        f"The predictor runs its shipped config ({DEFAULT_CONFIG.wtmm_buffer_size}-value "
        f"window; alarms possible from tick {DEFAULT_CONFIG.min_history}, the window "
        "filling over the whole of the shorter series)."
        + (f" Quick version: series of at most {QUICK_MAX_LEN} values." if quick else ""),
        "",
        f"### Mean over the {len(results)} series",
        "",
        M.markdown_table(["detector", "F1", "cover", "change points (all series)"], mean_rows),
        "",
    ]
    for r in results:
        n = r.series.values.size
        annotated = "; ".join(_cp_list(v) for v in r.series.annotations.values())
        rows = [[d, M.fmt(r.f1[d]), M.fmt(r.cover[d]), _cp_list(r.cps[d])] for d in DETECTORS]
        lines += [
            f"### {r.series.name} ({n} values)",
            "",
            f"Annotated: {annotated}. Predictor window filling: {r.warmup} ticks.",
            "",
            M.markdown_table(["detector", "F1", "cover", "change points"], rows),
            "",
        ]
    walk_s = sum(r.seconds["predictor"] for r in results)
    pelt_s = sum(r.seconds["PELT (offline)"] for r in results)
    lines += [
        f"Predictor walk: {walk_s:.1f} s over {sum(s.values.size for s in series):,} values "
        f"(wall, including compilation); PELT {pelt_s:.1f} s.",
        "",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the labelled change-point tables (markdown) on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"only the series of at most {QUICK_MAX_LEN} values"
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    lines = run(args.quick)
    lines.append(f"Labelled change-point benchmark wall time: {time.perf_counter() - t0:.0f} s.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
