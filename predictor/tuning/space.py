"""Search spaces of the two tuning tiers, and the parameters never tuned.

A ``SearchSpace`` names one ``PredictorConfig`` field, its sampling law and
its range. Every range lies inside the field's allowed range
(``predictor.config.FIELD_SPECS``), so a sampled value is always a valid
value of that field; relations between fields (``stiffness_high >=
stiffness_low``, ``log_sig_depth`` in ``shed_ladder``) are kept by the
ranges chosen below, and anything else is caught by ``PredictorConfig``
itself (the trial is then recorded as failed).

Tiers:

* **fast**: six sensitivities (hot-reloadable, ``DYNAMIC_FIELDS``) that
  shape how the ensemble follows a regime change: the JKO pair
  ``epsilon`` / ``learning_rate`` (how sharp and how fast the weights
  move), ``entropy_window`` (memory of the kernel losses the weights act
  on), ``cusum_h`` (when an alarm resets the weights), the refractory
  ``grace_period_steps`` (also the exit delay of emergency mode) and the EMA
  rate ``volatility_alpha`` (sigma_t, the scale of every standardised
  residual and loss, and the smoothing of the Hoelder exponent). A fast
  trial changes no array shape: every trial reuses one compiled scan.
  ``cusum_k`` is left out: varied alone over [0, 2] on three regime-switching
  series it moved the walk-forward MASE by under 1%, while
  ``entropy_window`` moved it by up to 22% (a 40-tick regime cadence
  against the default 50-tick loss memory). ``holder_threshold`` is left
  out on purpose: it is the circuit breaker, a safety setting.
* **deep**: structural fields (DGM width, depth, activation and learning
  rate, the stiffness thresholds of kernel C, the signature depth, the
  number of WTMM scales and the Sinkhorn iteration budget). Each trial
  compiles its own graph.

Locked fields (``LOCKED_FIELDS``) are never searched nor exported: the
snapshot schema, the clock, the gate's timing (meaningless on a replayed
series) and load shedding (latency control, not accuracy), plus the
specification's locked names of sections this project does not have.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from predictor.config import FIELD_SPECS, FieldSpec, PredictorConfig

ParamType = Literal["float", "log_uniform", "int", "log_int", "categorical"]
PARAM_TYPES: tuple[str, ...] = ("float", "log_uniform", "int", "log_int", "categorical")
Tier = Literal["fast", "deep"]
TIERS: tuple[str, ...] = ("fast", "deep")

#: Fields that no tuning campaign may change (search or export).
LOCKED_FIELDS: frozenset[str] = frozenset(
    {
        # predictor fields: identity, time source, gate timing, load shedding
        "schema_version",
        "clock",
        "staleness_ttl_ns",
        "besov_nyquist_interval_ns",
        "inference_recovery_hysteresis",
        "shed_ladder",
        "latency_budget_ns",
        "shed_recovery_windows",
        # the specification's locked names ([io], [security], [core], [meta_optimization])
        "snapshot_path",
        "telemetry_buffer_maxlen",
        "credentials_vault_path",
        "telemetry_hash_interval_steps",
        "snapshot_integrity_hash_algorithm",
        "float_precision",
        "jax_platform",
        "max_deep_tuning_iterations",
        "checkpoint_path",
    }
)


@dataclass(frozen=True)
class SearchSpace:
    """One tunable field: name, sampling law, range, lock.

    ``param_type``: ``float`` (uniform), ``log_uniform`` (uniform in log),
    ``int``, ``log_int`` (integer, uniform in log) or ``categorical``.
    ``range`` is ``(low, high)`` (inclusive) or the tuple of choices.
    ``constraint`` is a free-text note shown to operators; relations
    between fields are enforced by ``PredictorConfig``.
    """

    name: str
    param_type: ParamType
    range: tuple[Any, ...]
    locked: bool = False
    constraint: str | None = None

    def __post_init__(self) -> None:
        if self.param_type not in PARAM_TYPES:
            raise ValueError(f"{self.name}: param_type must be one of {PARAM_TYPES}")
        if self.param_type == "categorical":
            if len(self.range) < 1:
                raise ValueError(f"{self.name}: a categorical range needs at least one choice")
            return
        if len(self.range) != 2:
            raise ValueError(f"{self.name}: range must be (low, high)")
        lo, hi = self.range
        integer = self.param_type in ("int", "log_int")
        for bound in (lo, hi):
            if isinstance(bound, bool) or not isinstance(bound, int if integer else int | float):
                raise ValueError(f"{self.name}: bounds must be {'int' if integer else 'numbers'}")
            if not math.isfinite(bound):
                raise ValueError(f"{self.name}: bounds must be finite")
        if not lo < hi:
            raise ValueError(f"{self.name}: range needs low < high, got {self.range}")
        if self.param_type in ("log_uniform", "log_int") and lo <= 0:
            raise ValueError(f"{self.name}: a log range needs low > 0")

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution sampled for this parameter."""
        if self.param_type == "categorical":
            return CategoricalDistribution(self.range)
        lo, hi = self.range
        if self.param_type in ("int", "log_int"):
            return IntDistribution(int(lo), int(hi), log=self.param_type == "log_int")
        return FloatDistribution(float(lo), float(hi), log=self.param_type == "log_uniform")

    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this range (used for the baseline trial)."""
        if self.param_type == "categorical":
            return value in self.range
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.param_type in ("int", "log_int") and not isinstance(value, int):
            return False
        return bool(self.range[0] <= value <= self.range[1])

    def to_json(self) -> dict[str, Any]:
        """JSON-ready description (checkpoints, fingerprints)."""
        return {
            "name": self.name,
            "param_type": self.param_type,
            "range": list(self.range),
            "locked": self.locked,
            "constraint": self.constraint,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Inverse of ``to_json``."""
        return cls(
            name=str(data["name"]),
            param_type=data["param_type"],
            range=tuple(data["range"]),
            locked=bool(data["locked"]),
            constraint=data.get("constraint"),
        )


def validate_field_range(space: SearchSpace) -> None:
    """Refuse a space whose name is no config field or whose range leaves the field's range."""
    spec: FieldSpec | None = FIELD_SPECS.get(space.name)
    if spec is None:
        raise ValueError(f"{space.name!r} is not a PredictorConfig field")
    if space.param_type == "categorical":
        for choice in space.range:
            _check_inside(space.name, spec, choice)
        return
    if spec.kind not in ("int", "float"):
        raise ValueError(f"{space.name}: a {spec.kind} field needs a categorical space")
    if spec.kind == "int" and space.param_type not in ("int", "log_int"):
        raise ValueError(f"{space.name}: an integer field needs an int or log_int space")
    for bound in space.range:
        _check_inside(space.name, spec, float(bound) if spec.kind == "float" else bound)


def _check_inside(name: str, spec: FieldSpec, value: Any) -> None:
    """Type and bounds of one candidate value against the field's spec."""
    ok: bool
    if spec.kind == "choice":
        ok = value in spec.choices
    elif spec.kind in ("int", "float"):
        typed = (
            isinstance(value, int) if spec.kind == "int" else isinstance(value, int | float)
        ) and not isinstance(value, bool)
        lo_ok = spec.lo is None or (value > spec.lo if spec.lo_open else value >= spec.lo)
        hi_ok = spec.hi is None or (value < spec.hi if spec.hi_open else value <= spec.hi)
        ok = typed and lo_ok and hi_ok
    else:
        ok = False
    if not ok:
        raise ValueError(f"search range of {name} leaves {spec.describe()}: {value!r}")


def check_space(
    space: Mapping[str, SearchSpace], locked: Iterable[str] = ()
) -> dict[str, SearchSpace]:
    """Validated copy of a space: keys match names, ranges legal, nothing locked.

    Raises ``ValueError`` naming every locked parameter (``locked=True``,
    ``LOCKED_FIELDS`` or the extra ``locked`` names).
    """
    extra = frozenset(locked)
    bad = sorted(
        name
        for name, s in space.items()
        if s.locked or name in LOCKED_FIELDS or name in extra or s.name in LOCKED_FIELDS
    )
    if bad:
        raise ValueError(
            f"Cannot optimize locked parameters: {bad}. Remove them from the search space."
        )
    if not space:
        raise ValueError("empty search space")
    for key, s in space.items():
        if key != s.name:
            raise ValueError(f"search space key {key!r} names {s.name!r}")
        validate_field_range(s)
    return dict(space)


def space_to_json(space: Mapping[str, SearchSpace]) -> dict[str, Any]:
    """Canonical JSON form, keyed by name."""
    return {name: space[name].to_json() for name in sorted(space)}


def space_digest(space: Mapping[str, SearchSpace]) -> str:
    """SHA-256 of the canonical JSON form: equal digests mean the same space."""
    blob = json.dumps(space_to_json(space), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def fast_space() -> dict[str, SearchSpace]:
    """Fast tier: the six sensitivities (every default lies inside its range)."""
    return {
        s.name: s
        for s in (
            SearchSpace("epsilon", "log_uniform", (1e-3, 10.0)),
            SearchSpace("learning_rate", "log_uniform", (1e-2, 1e3)),
            SearchSpace("entropy_window", "log_int", (1, 512)),
            SearchSpace("cusum_h", "log_uniform", (1.0, 50.0)),
            SearchSpace("grace_period_steps", "log_int", (1, 256)),
            SearchSpace("volatility_alpha", "log_uniform", (5e-3, 0.5)),
        )
    }


def deep_space(base: PredictorConfig | None = None) -> dict[str, SearchSpace]:
    """Deep tier: structural fields; ``log_sig_depth`` ranges over ``base.shed_ladder``.

    The stiffness ranges are disjoint ([0.05, 1] and [1, 10]), so every
    sample keeps ``stiffness_high >= stiffness_low``.
    """
    cfg = base if base is not None else PredictorConfig()
    depths = tuple(sorted(cfg.shed_ladder))
    return {
        s.name: s
        for s in (
            SearchSpace("dgm_width_size", "log_int", (8, 256)),
            SearchSpace("dgm_depth", "int", (1, 4)),
            SearchSpace("dgm_activation", "categorical", ("tanh", "softplus", "sin")),
            SearchSpace("dgm_learning_rate", "log_uniform", (1e-4, 1e-1)),
            SearchSpace("stiffness_low", "float", (0.05, 1.0), constraint="<= stiffness_high"),
            SearchSpace("stiffness_high", "float", (1.0, 10.0), constraint=">= stiffness_low"),
            SearchSpace("log_sig_depth", "categorical", depths, constraint="in shed_ladder"),
            SearchSpace("wtmm_num_scales", "int", (4, 32)),
            SearchSpace("sinkhorn_max_iter", "log_int", (20, 2000)),
        )
    }


def space_for_tier(tier: str, base: PredictorConfig | None = None) -> dict[str, SearchSpace]:
    """The built-in space of a tier."""
    if tier == "fast":
        return fast_space()
    if tier == "deep":
        return deep_space(base)
    raise ValueError(f"Invalid tier: {tier!r}. Must be 'fast' or 'deep'")


def current_values(space: Mapping[str, SearchSpace], cfg: PredictorConfig) -> dict[str, Any]:
    """The values the config holds for each searched field."""
    return {name: getattr(cfg, name) for name in space}


__all__ = [
    "LOCKED_FIELDS",
    "TIERS",
    "SearchSpace",
    "check_space",
    "current_values",
    "deep_space",
    "fast_space",
    "space_digest",
    "space_for_tier",
    "space_to_json",
    "validate_field_range",
]
