"""Input and output records of the predictor.

``ProcessState`` is one observation; ``PredictionResult`` is the host-side
record of one prediction step with all its telemetry. Both are frozen.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from jaxtyping import Array, Bool, Float

#: Result fields in wire order (``to_dict`` keys).
MODES = ("Standard", "Robust", "Emergency")


@dataclass(frozen=True)
class ProcessState:
    """One observation ``(y_t, r_t, timestamp)``.

    ``magnitude`` is the observed value y_t in the series' own units;
    ``reference`` the realised value the previous forecast is scored
    against (equal to ``magnitude`` for one-step-ahead prediction of the
    same series); ``timestamp_ns`` Unix time in nanoseconds.
    """

    magnitude: float | Float[Array, ""]
    reference: float | Float[Array, ""]
    timestamp_ns: int

    @classmethod
    def of(cls, y: float, ts_ns: int, ref: float | None = None) -> ProcessState:
        """Observation with ``reference`` defaulting to ``magnitude``."""
        return cls(float(y), float(y if ref is None else ref), int(ts_ns))

    def validate_domain(
        self, sigma_bound: float = 20.0, sigma_val: float = 1.0, mean: float = 0.0
    ) -> bool:
        """Catastrophic-outlier test: finite and ``|y - mean| <= sigma_bound * sigma_val``.

        ``mean`` and ``sigma_val`` are the window's mean and standard
        deviation in the magnitude's units (defaults: a standardised input).
        NaN or inf in magnitude or reference is always out of domain.
        """
        y = float(self.magnitude)
        r = float(self.reference)
        if not (math.isfinite(y) and math.isfinite(r)):
            return False
        return abs(y - mean) <= sigma_bound * sigma_val


@dataclass(frozen=True)
class PredictionResult:
    """Host-side record of one prediction step.

    ``predicted_next`` is the forecast of the next window-standardised value
    z_{t+1} ("Z-score"); ``predicted_value`` the same forecast in the input's
    units, with a 95% interval ``[interval_lower, interval_upper]`` from the
    ensemble's mixture variance. ``weights`` are the kernel weights (A, B, C,
    D) on the simplex.

    ``rejected`` is True when the gate refused the tick: the state did not
    advance and the other fields are those of the last accepted tick;
    ``reject_reason`` then names why (``predictor.core.gate.REJECT_NAMES``:
    ``non_finite``, ``outlier``, ``out_of_order``), else it is ``"none"``.
    """

    predicted_next: float
    holder_exponent: float
    cusum_drift: float
    distance_to_collapse: float
    free_energy: float
    kurtosis: float
    dgm_entropy: float
    adaptive_threshold: float
    weights: tuple[float, float, float, float]
    sinkhorn_converged: bool
    degraded_inference_mode: bool
    emergency_mode: bool
    regime_change_detected: bool
    mode_collapse_warning: bool
    mode: str
    predicted_value: float
    interval_lower: float
    interval_upper: float
    warming_up: bool = False
    rejected: bool = False
    reject_reason: str = "none"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if len(self.weights) != 4:
            raise ValueError(f"weights must have 4 entries, got {len(self.weights)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain Python floats, bools, str and a list of 4 floats (msgpack-ready)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "weights":
                out[f.name] = [float(w) for w in v]
            elif isinstance(v, bool | str):
                out[f.name] = v
            else:
                out[f.name] = float(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictionResult:
        """Inverse of ``to_dict``; extra keys (wire metadata) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["weights"] = tuple(float(w) for w in kwargs["weights"])
        return cls(**kwargs)


# jaxtyping aliases used by the core for documentation and runtime checks.
Scalar = Float[Array, ""]
Flag = Bool[Array, ""]
Weights = Float[Array, "4"]
