"""Walk-forward validation of a ``PredictorConfig`` on one series.

The predictor forecasts one step ahead: after seeing ``y[0..t]`` it
publishes ``predicted_value[t]``, the forecast of ``y[t+1]``. A fold is a
block of ``horizon`` consecutive targets ``y[a], ..., y[b-1]`` (``b - a =
horizon``); the folds tile the end of the series, the last one ending at its
last point, fold ``i`` of ``K`` ending at ``b_i = n - (K - 1 - i) * horizon``.

* ``rolling`` (default): each fold starts from a cold state and scans the
  ``train_window`` points before ``a`` and the targets but the last,
  ``y[a - W .. b - 2]`` (``W + horizon - 1`` ticks, the same length for
  every fold, so one compiled scan serves all folds and all fast-tier
  trials). Folds are independent.
* ``anchored``: one scan over ``y[0 .. n - 2]``; fold ``i`` scores the
  forecasts of its targets, made with everything before them (an expanding
  training window). The first fold needs ``train_window`` points before it.

Either way a forecast of ``y[t+1]`` depends on ``y[0..t]`` only (strictly
causal), and ``n >= train_window + K * horizon`` is required.

Metrics per fold, with ``e = forecast - y`` over the fold's targets:
``MAPE = 100 mean |e / y|`` (percent; refused when the targets are not all
of one sign: near zero it explodes and across zero it is meaningless),
``RMSE = sqrt(mean e^2)``, ``MAE = mean |e|``, and
``MASE = MAE / mean |y_k - y_{k-1}|`` over the fold's training window (the
in-sample naive one-step error; dimensionless). The score is the mean of
the per-fold values; RMSE and MAE are in series units.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np
from numpy.typing import NDArray

from predictor.config import PredictorConfig
from predictor.core import functional
from predictor.core.functional import FunctionalPredictor

Metric = Literal["mape", "rmse", "mae", "mase"]
METRICS: tuple[str, ...] = ("mape", "rmse", "mae", "mase")
Mode = Literal["rolling", "anchored"]
MODES: tuple[str, ...] = ("rolling", "anchored")

FloatArray = NDArray[np.float64]


class TrialInterrupted(Exception):
    """An evaluation was abandoned between folds because a stop was requested."""


@dataclass(frozen=True)
class WalkForwardSpec:
    """Fold layout and metric of a walk-forward evaluation."""

    folds: int = 5
    train_window: int = 512
    horizon: int = 256
    metric: Metric = "mape"
    mode: Mode = "rolling"

    def __post_init__(self) -> None:
        if self.folds < 1:
            raise ValueError(f"folds must be >= 1, got {self.folds}")
        if self.train_window < 2:
            raise ValueError(f"train_window must be >= 2, got {self.train_window}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    def min_length(self) -> int:
        """Shortest series this layout fits."""
        return self.train_window + self.folds * self.horizon


@dataclass(frozen=True)
class Fold:
    """Targets ``y[target_start:target_end]``; training points ``y[train_start:target_start]``."""

    train_start: int
    target_start: int
    target_end: int


@dataclass(frozen=True)
class WalkForwardReport:
    """Every metric per fold and their fold means; ``value`` is the chosen metric's mean."""

    metric: str
    value: float
    per_fold: dict[str, tuple[float, ...]]
    means: dict[str, float]
    n_forecasts: int


def fold_layout(n: int, spec: WalkForwardSpec) -> list[Fold]:
    """The folds of a series of ``n`` points (see the module docstring)."""
    if n < spec.min_length():
        raise ValueError(
            f"series of {n} points is too short for {spec.folds} folds of {spec.horizon} "
            f"after a training window of {spec.train_window} (needs {spec.min_length()})"
        )
    folds = []
    for i in range(spec.folds):
        end = n - (spec.folds - 1 - i) * spec.horizon
        start = end - spec.horizon
        train_start = start - spec.train_window if spec.mode == "rolling" else 0
        folds.append(Fold(train_start, start, end))
    return folds


def fold_metrics(forecast: FloatArray, actual: FloatArray, naive_scale: float) -> dict[str, float]:
    """MAPE (percent), RMSE, MAE and MASE of one fold (MAPE is NaN on a sign change)."""
    err = forecast - actual
    mae = float(np.mean(np.abs(err)))
    one_sign = bool(np.all(actual > 0) or np.all(actual < 0))
    return {
        "mape": float(100.0 * np.mean(np.abs(err / actual))) if one_sign else float("nan"),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": mae,
        "mase": mae / naive_scale if naive_scale > 0 else float("nan"),
    }


def naive_scale(train: FloatArray) -> float:
    """In-sample MAE of the naive one-step forecast ``y_k = y_{k-1}``."""
    return float(np.mean(np.abs(np.diff(train))))


class WalkForward:
    """Walk-forward objective over one series; candidates are dicts of config fields.

    ``evaluate(cfg)`` scores a full config; calling the instance with a dict
    of field values scores ``base.replace(**params)`` and returns the chosen
    metric (the ``objective_fn`` of ``BayesianMetaOptimizer``). Invalid
    candidates raise ``ConfigError``. ``should_stop``, when set, is polled
    between folds: if it returns True the evaluation raises
    ``TrialInterrupted`` (a stop signal does not wait for a whole trial).
    """

    def __init__(
        self,
        series: Any,
        spec: WalkForwardSpec | None = None,
        base: PredictorConfig | None = None,
        *,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        ys = np.asarray(series, dtype=np.float64)
        if ys.ndim != 1:
            raise ValueError(f"series must be one-dimensional, got shape {ys.shape}")
        if not np.all(np.isfinite(ys)):
            raise ValueError("series contains non-finite values")
        self.series: FloatArray = ys
        self.spec = spec if spec is not None else WalkForwardSpec()
        self.base = base if base is not None else PredictorConfig()
        self.should_stop = should_stop
        if self.spec.train_window < self.base.wtmm_buffer_size:
            raise ValueError(
                f"train_window ({self.spec.train_window}) must cover the warm-up of "
                f"wtmm_buffer_size ({self.base.wtmm_buffer_size}) points"
            )
        self.folds = fold_layout(ys.shape[0], self.spec)
        self._scales = [naive_scale(ys[f.train_start : f.target_start]) for f in self.folds]
        self._check_metric_defined()

    def _check_metric_defined(self) -> None:
        if self.spec.metric == "mape":
            for f in self.folds:
                y = self.series[f.target_start : f.target_end]
                if not (np.all(y > 0) or np.all(y < 0)):
                    raise ValueError(
                        f"MAPE is undefined on this series: targets {f.target_start}.."
                        f"{f.target_end - 1} reach or cross zero; use rmse, mae or mase"
                    )
        if self.spec.metric == "mase" and min(self._scales) <= 0:
            raise ValueError("MASE is undefined: a training window is constant")

    # ------------------------------------------------------------------
    def fingerprint(self) -> str:
        """SHA-256 of the series, the fold layout and the base config (checkpoint identity)."""
        h = hashlib.sha256()
        h.update(self.series.tobytes())
        h.update(json.dumps(dataclasses.asdict(self.spec), sort_keys=True).encode())
        h.update(json.dumps(self.base.to_dict(), sort_keys=True).encode())
        return h.hexdigest()

    def forecasts(self, cfg: PredictorConfig) -> list[FloatArray]:
        """Per fold, the forecasts of its targets (one ``lax.scan`` per fold, rolling)."""
        fp = FunctionalPredictor(cfg, warmup=False)
        cold = fp.init_state()
        ys = self.series
        out: list[FloatArray] = []
        if self.spec.mode == "anchored":
            self._poll()
            _, outputs = fp.scan(cold, ys[:-1])
            pred = np.asarray(jax.device_get(outputs.predicted_value), dtype=np.float64)
            # predicted_value[t] forecasts y[t + 1]
            return [pred[f.target_start - 1 : f.target_end - 1] for f in self.folds]
        for f in self.folds:
            self._poll()
            _, outputs = fp.scan(cold, ys[f.train_start : f.target_end - 1])
            pred = np.asarray(jax.device_get(outputs.predicted_value), dtype=np.float64)
            out.append(pred[f.target_start - f.train_start - 1 :])
        return out

    def _poll(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise TrialInterrupted("stop requested between folds")

    def evaluate(self, cfg: PredictorConfig) -> WalkForwardReport:
        """Score ``cfg``; a non-finite forecast makes every metric ``inf``.

        A config whose layout differs from ``base`` (a deep-tier trial)
        compiles its own graphs; ``functional`` memoises graphs per layout
        without bound, so after such an evaluation that layout's graphs are
        released (``functional.evict_compiled``): a campaign of hundreds of
        layouts would otherwise keep every executable alive. The base
        layout's scan, which sensitivity trials share, stays compiled.
        """
        try:
            forecasts = self.forecasts(cfg)
        finally:
            if functional.layout_config(cfg) != functional.layout_config(self.base):
                functional.evict_compiled(cfg)
        per_fold: dict[str, list[float]] = {m: [] for m in METRICS}
        n = 0
        for f, pred, scale in zip(self.folds, forecasts, self._scales, strict=True):
            actual = self.series[f.target_start : f.target_end]
            n += actual.size
            if not np.all(np.isfinite(pred)):
                for m in METRICS:
                    per_fold[m].append(float("inf"))
                continue
            for m, v in fold_metrics(pred, actual, scale).items():
                per_fold[m].append(v)
        means = {m: float(np.mean(v)) for m, v in per_fold.items()}
        return WalkForwardReport(
            metric=self.spec.metric,
            value=means[self.spec.metric],
            per_fold={m: tuple(v) for m, v in per_fold.items()},
            means=means,
            n_forecasts=n,
        )

    def config_for(self, params: Mapping[str, Any]) -> PredictorConfig:
        """``base`` with ``params`` applied (``ConfigError`` if invalid)."""
        return self.base.replace(**dict(params))

    def __call__(self, params: Mapping[str, Any]) -> float:
        return self.evaluate(self.config_for(params)).value


__all__ = [
    "METRICS",
    "MODES",
    "Fold",
    "TrialInterrupted",
    "WalkForward",
    "WalkForwardReport",
    "WalkForwardSpec",
    "fold_layout",
    "fold_metrics",
    "naive_scale",
]
