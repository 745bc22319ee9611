"""PredictorConfig: the hyperparameter vector Lambda, its ranges and loaders.

One frozen (hashable) dataclass holds every parameter; JAX code receives it
as a static argument. Each field carries its allowed range in its metadata,
so validation, the documentation table and the tests are driven by one
source of truth (``FIELD_SPECS``).

Fields are of two kinds (``FieldSpec.dynamic``):

* *sensitivities* (dynamic): thresholds and rates that change no array
  shape and no graph structure. They travel into the jitted step as traced
  scalars (``predictor.core.params``), so a reload applies them in place,
  without recompiling and without touching the state.
* *layout* fields: buffer sizes, model sizes, solver choices, depths. A
  change alters the state layout or the compiled graph and requires a
  re-initialisation.

Configuration sources, later wins: dataclass defaults, the ``[predictor]``
table of a TOML file, ``PREDICTOR_<FIELD>`` environment variables.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from predictor.errors import ConfigError

#: Top-level tables a config.toml may hold. Each is validated by its owner;
#: an unknown table is an error rather than silently ignored.
KNOWN_SECTIONS: frozenset[str] = frozenset({"predictor", "daemon", "tuning"})

ENV_PREFIX = "PREDICTOR_"
#: ``PREDICTOR_*`` variables that are not ``[predictor]`` fields, read by
#: the daemon and ``predictorctl``; ``env_overrides`` accepts them.
#: ``register_env_names`` adds more (a module that reads its own variables).
OTHER_ENV_NAMES: set[str] = {"PREDICTOR_CONFIG", "PREDICTOR_ADMIN_SOCKET"}
#: Prefixes of ``PREDICTOR_*`` families validated by their own readers
#: (``PREDICTOR_DAEMON_<FIELD>`` by the daemon's settings, test hooks).
OTHER_ENV_PREFIXES: set[str] = {"PREDICTOR_DAEMON_", "PREDICTOR_TEST_"}


@dataclass(frozen=True)
class FieldSpec:
    """Allowed values of one config field.

    ``kind`` is one of ``float``, ``int``, ``str``, ``choice``, ``depths``.
    Numeric bounds are inclusive unless ``lo_open`` / ``hi_open``.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    dynamic: bool = False
    doc: str = ""

    def describe(self) -> str:
        """Human-readable allowed range, used in error messages."""
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind == "str":
            return "a string"
        if self.kind == "depths":
            return "a strictly decreasing list of ints in [1, 5]"
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else repr(self.lo)
        hi = "inf" if self.hi is None else repr(self.hi)
        return f"{self.kind} in {left}{lo}, {hi}{right}"


def _p(default: Any, spec: FieldSpec) -> Any:
    return field(default=default, metadata={"spec": spec})


def _num(
    kind: str,
    lo: float | None,
    hi: float | None,
    doc: str,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    dynamic: bool = False,
) -> FieldSpec:
    return FieldSpec(kind, lo, hi, lo_open, hi_open, (), dynamic, doc)


def _choice(doc: str, *choices: str) -> FieldSpec:
    return FieldSpec("choice", choices=choices, doc=doc)


@dataclass(frozen=True)
class PredictorConfig:
    """Hyperparameter vector Lambda (see docs/model.md for every formula).

    Defaults follow the specification, except:

    * ``cusum_h`` = 8 (specification: 5). On Gaussian residuals the two-sided
      Page test with k = 0.5 has an average run length to a false alarm of
      about 470 steps at h = 5 (Siegmund's approximation), i.e. a spurious
      weight reset every few hundred ticks; h = 8 gives about 10,000 steps
      while a 1.5 sigma shift is still caught in about 10 steps.
    * ``epsilon`` = 0.02 and ``learning_rate`` = 10 (specification: 1e-3 and
      0.01). Losses and the ground cost are normalised by sigma_t^2, so both
      are dimensionless; the specification's values make the JKO weights
      nearly winner-take-all and slow to move (docs/model.md, "The orchestrator").
      At 0.1 the weights stayed near uniform where one kernel was persistently
      better (sunspots, fBm, the regime process: 1.5-3% above the best kernel
      alone); 0.02 brings them within 2% of it (bench/flags.py).
      The specification's values remain valid settings.
    * ``holder_threshold`` = 0.3 (specification: 0.4) is a *drop*: the
      circuit breaker opens when the newest point's Hölder exponent falls
      more than this below the series' own baseline (docs/model.md, "Circuit
      breaker"), not when the window's exponent is below it, which held
      ordinary series (AR(1), sunspots) in emergency mode most of the time.
      0 turns the breaker off.

    Ints are accepted for float fields and lists for ``shed_ladder``;
    anything else of the wrong type, or out of range, is a ``ConfigError``
    naming the field and its allowed range:

    >>> cfg = PredictorConfig(cusum_h=5, shed_ladder=[3, 2], log_sig_depth=2)
    >>> cfg.cusum_h, cfg.shed_ladder
    (5.0, (3, 2))
    >>> cfg == PredictorConfig(cusum_h=5.0, shed_ladder=(3, 2), log_sig_depth=2)
    True
    >>> PredictorConfig(cusum_h=-1)
    Traceback (most recent call last):
    ...
    predictor.errors.ConfigError: config field 'cusum_h': got -1.0; allowed: float in (0.0, 10000.0]
    """

    schema_version: str = _p("1.0", FieldSpec("str", doc="snapshot schema version"))

    # --- orchestrator (entropic JKO / Sinkhorn) -------------------------
    epsilon: float = _p(
        0.02, _num("float", 0.0, 1e6, "entropic regularisation", lo_open=True, dynamic=True)
    )
    learning_rate: float = _p(
        10.0, _num("float", 0.0, 1e9, "JKO step tau", lo_open=True, dynamic=True)
    )
    epsilon_min: float = _p(
        1e-4, _num("float", 0.0, 1e6, "floor of eps_t", lo_open=True, dynamic=True)
    )
    sinkhorn_alpha: float = _p(
        0.5, _num("float", 0.0, 1e3, "volatility coupling of eps_t", dynamic=True)
    )
    sinkhorn_max_iter: int = _p(200, _num("int", 1, 100_000, "scaling iterations budget"))
    entropy_window: int = _p(
        50, _num("int", 1, 1_000_000, "EMA window of kernel losses (ticks)", dynamic=True)
    )
    robust_kurtosis: float = _p(
        6.0, _num("float", 1.0, 100.0, "kurtosis above which Huber loss is used", dynamic=True)
    )

    # --- two rates ---------------------------------------------------------
    refit_interval: int = _p(
        16,
        _num("int", 1, 4096, "ticks between refits of the cached fits (K)", dynamic=True),
    )

    refit_timing: str = _p(
        "after",
        _choice(
            "when a due refit runs: after the tick's result, or before its forecast",
            "after",
            "before",
        ),
    )

    min_history: int = _p(
        16, _num("int", 2, 8192, "ticks before the kernels forecast (progressive warm-up)")
    )

    # --- identification (SIA) -------------------------------------------
    wtmm_buffer_size: int = _p(128, _num("int", 32, 8192, "ring buffer length N"))
    wtmm_num_scales: int = _p(16, _num("int", 4, 64, "number of CWT scales"))
    wtmm_wavelet_order: int = _p(2, _num("int", 1, 2, "derivative order of the Gaussian wavelet"))
    besov_cone_c: float = _p(
        1.5, _num("float", 0.0, 10.0, "maxima-line cone |b - b'| <= c a", lo_open=True)
    )
    holder_threshold: float = _p(
        0.3, _num("float", 0.0, 1.0, "breaker: drop of pointwise H below baseline", dynamic=True)
    )
    cusum_h: float = _p(8.0, _num("float", 0.0, 1e4, "CUSUM threshold", lo_open=True, dynamic=True))
    cusum_k: float = _p(0.5, _num("float", 0.0, 100.0, "CUSUM slack", dynamic=True))
    grace_period_steps: int = _p(
        20, _num("int", 0, 1_000_000, "refractory ticks after an alarm", dynamic=True)
    )
    volatility_alpha: float = _p(
        0.1, _num("float", 0.0, 1.0, "EMA rate of e_t^2 and of H", lo_open=True, dynamic=True)
    )

    # --- gate -------------------------------------------------------------
    staleness_ttl_ns: int = _p(500_000_000, _num("int", 1, 10**13, "tick TTL in ns", dynamic=True))
    besov_nyquist_interval_ns: int = _p(
        100_000_000, _num("int", 1, 10**13, "sparse-arrival limit in ns", dynamic=True)
    )
    inference_recovery_hysteresis: float = _p(
        0.8,
        _num("float", 0.0, 1.0, "recovery factor of TTL and budget", lo_open=True, dynamic=True),
    )
    clock: str = _p("wall", _choice("time source of staleness checks", "wall", "event"))

    # --- kernel A: Wiener-Kolmogorov ----------------------------------------
    wiener_order: int = _p(8, _num("int", 1, 64, "maximum AR order (AIC picks 1..p)"))
    wiener_method: str = _p("burg", _choice("reflection estimator", "burg", "yule_walker"))

    # --- kernel B: Kolmogorov backward equation -------------------------
    dgm_solver: str = _p("dgm", _choice("backward-equation solver", "dgm", "fd"))
    dgm_width_size: int = _p(32, _num("int", 2, 1024, "MLP width"))
    dgm_depth: int = _p(2, _num("int", 1, 8, "MLP hidden layers"))
    dgm_activation: str = _p("tanh", _choice("MLP activation", "tanh", "softplus", "sin"))
    dgm_train_steps: int = _p(2, _num("int", 0, 1000, "Adam steps per refit"))
    dgm_learning_rate: float = _p(1e-3, _num("float", 0.0, 1.0, "Adam learning rate", lo_open=True))
    dgm_collocation_points: int = _p(64, _num("int", 4, 4096, "collocation points per step"))
    fd_grid_size: int = _p(65, _num("int", 9, 4097, "finite-difference grid points"))

    # --- kernel C: jump-diffusion -------------------------------------------
    jump_threshold_sigma: float = _p(4.0, _num("float", 1.0, 50.0, "jump cut in bipower sigmas"))
    levy_substeps: int = _p(4, _num("int", 1, 1000, "Euler sub-steps per tick"))
    stiffness_low: float = _p(0.5, _num("float", 0.0, 1e6, "theta*h below which Euler is explicit"))
    stiffness_high: float = _p(
        2.0, _num("float", 0.0, 1e6, "theta*h above which Euler is implicit")
    )

    # --- kernel D: log-signature ---------------------------------------------
    log_sig_depth: int = _p(3, _num("int", 1, 5, "signature truncation depth M"))
    signature_window: int = _p(16, _num("int", 2, 8192, "path length L"))
    signature_forgetting: float = _p(0.998, _num("float", 0.9, 1.0, "RLS forgetting factor"))

    # --- load shedding ------------------------------------------------------
    shed_ladder: tuple[int, ...] = _p((5, 3, 2), FieldSpec("depths", doc="compiled depths"))
    latency_budget_ns: int = _p(2_000_000, _num("int", 1, 10**12, "EWMA step-latency budget in ns"))
    shed_recovery_windows: int = _p(
        10, _num("int", 1, 1_000_000, "calm windows before stepping back up")
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            spec: FieldSpec = f.metadata["spec"]
            value = _widen(getattr(self, f.name), spec)
            # Frozen: the widened value (5 -> 5.0, [3, 2] -> (3, 2)) keeps
            # equal configs equal and hashable.
            object.__setattr__(self, f.name, value)
            _check_value(f.name, value, spec)
        self._check_relations()

    def _check_relations(self) -> None:
        n = self.wtmm_buffer_size
        if self.signature_window > n:
            raise ConfigError(
                "signature_window", self.signature_window, f"<= wtmm_buffer_size ({n})"
            )
        if self.wiener_order >= n // 4:
            raise ConfigError(
                "wiener_order", self.wiener_order, f"< wtmm_buffer_size / 4 ({n // 4})"
            )
        if self.min_history > n:
            raise ConfigError("min_history", self.min_history, f"<= wtmm_buffer_size ({n})")
        if self.stiffness_high < self.stiffness_low:
            raise ConfigError(
                "stiffness_high", self.stiffness_high, f">= stiffness_low ({self.stiffness_low})"
            )
        if self.log_sig_depth not in self.shed_ladder:
            raise ConfigError(
                "log_sig_depth", self.log_sig_depth, f"one of shed_ladder {self.shed_ladder}"
            )

    # ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PredictorConfig:
        """Build from a mapping of field names; unknown keys are an error."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                unknown[0],
                data[unknown[0]],
                _unknown("field", unknown[0], names, "docs/configuration.md lists them"),
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            spec: FieldSpec = names[key].metadata["spec"]
            kwargs[key] = _coerce(key, value, spec)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], *, env: bool = True) -> PredictorConfig:
        """Load the ``[predictor]`` table of a TOML file (stdlib ``tomllib``).

        Environment overrides ``PREDICTOR_<FIELD>`` apply on top unless
        ``env`` is false.
        """
        with Path(path).open("rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError("<file>", str(path), f"valid TOML ({exc})") from exc
        unknown = sorted(set(doc) - KNOWN_SECTIONS)
        if unknown:
            raise ConfigError(
                unknown[0], "<table>", "a table among " + ", ".join(sorted(KNOWN_SECTIONS))
            )
        table = doc.get("predictor", {})
        if not isinstance(table, dict):
            raise ConfigError("predictor", table, "a TOML table")
        merged = dict(table)
        if env:
            merged.update(env_overrides())
        return cls.from_dict(merged)

    def replace(self, **changes: Any) -> PredictorConfig:
        """A validated copy with ``changes`` applied."""
        return self.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain TOML/msgpack-friendly mapping (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["shed_ladder"] = list(self.shed_ladder)
        return out

    def layout_changes(self, other: PredictorConfig) -> list[str]:
        """Names of changed fields that require a state re-initialisation."""
        return [n for n in changed_fields(self, other) if not FIELD_SPECS[n].dynamic]


def changed_fields(a: PredictorConfig, b: PredictorConfig) -> list[str]:
    """Field names whose values differ between two configs."""
    return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


FIELD_SPECS: dict[str, FieldSpec] = {
    f.name: f.metadata["spec"] for f in dataclasses.fields(PredictorConfig)
}
DYNAMIC_FIELDS: tuple[str, ...] = tuple(n for n, s in FIELD_SPECS.items() if s.dynamic)


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse ``PREDICTOR_<FIELD>`` variables into typed values.

    Only names of config fields are read; the other known ``PREDICTOR_*``
    variables (``OTHER_ENV_NAMES``, ``OTHER_ENV_PREFIXES``) belong to the
    daemon. Any other ``PREDICTOR_*`` variable is a misspelling and raises
    ``ConfigError`` naming it and the nearest valid name; so does a value
    that does not parse. ``shed_ladder`` takes commas and/or spaces
    (``"5,3,2"``, ``"5 3 2"``).

    >>> env_overrides({"PREDICTOR_CUSUM_H": "9", "PREDICTOR_SHED_LADDER": "3 2", "HOME": "/"})
    {'cusum_h': 9.0, 'shed_ladder': [3, 2]}
    >>> try:
    ...     env_overrides({"PREDICTOR_CUSUM_HH": "9"})
    ... except ConfigError as exc:
    ...     print(exc.allowed)
    a known variable; did you mean 'PREDICTOR_CUSUM_H'?
    """
    environ = os.environ if environ is None else environ
    check_env_names(environ)
    out: dict[str, Any] = {}
    for name, spec in FIELD_SPECS.items():
        var = ENV_PREFIX + name.upper()
        if var not in environ:
            continue
        raw = environ[var].strip()
        try:
            if spec.kind == "int":
                out[name] = int(raw)
            elif spec.kind == "float":
                out[name] = float(raw)
            elif spec.kind == "depths":
                out[name] = [int(x) for x in raw.replace(",", " ").split()]
            else:
                out[name] = raw
        except ValueError as exc:
            raise ConfigError(var, raw, spec.describe()) from exc
    return out


def register_env_names(*names: str) -> None:
    """Declare ``PREDICTOR_*`` variables read outside ``[predictor]`` as valid."""
    OTHER_ENV_NAMES.update(names)


def known_env_names() -> list[str]:
    """Every exact ``PREDICTOR_*`` name ``env_overrides`` accepts (prefixes aside)."""
    fields = [ENV_PREFIX + name.upper() for name in FIELD_SPECS]
    return sorted({*fields, *OTHER_ENV_NAMES})


def check_env_names(environ: Mapping[str, str]) -> None:
    """Refuse an unknown ``PREDICTOR_*`` variable, naming the nearest valid one.

    A misspelt override (``PREDICTOR_CUSUM_HH``) would otherwise be ignored
    without a word and the default would silently stay in force.
    """
    known = set(known_env_names())
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in known:
            continue
        if any(var.startswith(p) for p in OTHER_ENV_PREFIXES):
            continue
        raise ConfigError(
            var,
            environ[var],
            _unknown("variable", var, known, "PREDICTOR_<FIELD> for a [predictor] field"),
        )


def _widen(value: Any, spec: FieldSpec) -> Any:
    """The lossless conversions the constructor accepts: an int for a float
    field (``PredictorConfig(cusum_h=5)``), a list for ``shed_ladder``."""
    if spec.kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.kind == "depths" and isinstance(value, list):
        return tuple(value)
    return value


def nearest_name(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to a misspelt ``name`` (``difflib``), or None.

    >>> nearest_name("cusum_hh", ["cusum_h", "cusum_k", "epsilon"])
    'cusum_h'
    >>> nearest_name("colour", ["cusum_h", "epsilon"]) is None
    True
    """
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown(kind: str, name: str, candidates: Iterable[str], where: str) -> str:
    """The ``allowed`` text of an unknown-name error: the nearest valid name."""
    near = nearest_name(name, candidates)
    if near is not None:
        return f"a known {kind}; did you mean {near!r}?"
    return f"a known {kind} ({where})"


def _coerce(name: str, value: Any, spec: FieldSpec) -> Any:
    """Type check (no silent conversions except int -> float and list -> tuple)."""
    if spec.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(name, value, spec.describe())
        return float(value)
    if spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, value, spec.describe())
        return value
    if spec.kind in ("str", "choice"):
        if not isinstance(value, str):
            raise ConfigError(name, value, spec.describe())
        return value
    if spec.kind == "depths":
        if not isinstance(value, list | tuple):
            raise ConfigError(name, value, spec.describe())
        return tuple(value)
    raise AssertionError(f"unknown field kind {spec.kind}")


def _in_bounds(value: float, spec: FieldSpec) -> bool:
    if spec.lo is not None and (value <= spec.lo if spec.lo_open else value < spec.lo):
        return False
    return not (spec.hi is not None and (value >= spec.hi if spec.hi_open else value > spec.hi))


def _check_value(name: str, value: Any, spec: FieldSpec) -> None:
    bad = False
    if spec.kind in ("float", "int"):
        expected = float if spec.kind == "float" else int
        if isinstance(value, bool) or not isinstance(value, expected):
            raise ConfigError(name, value, spec.describe())
        bad = not math.isfinite(value) or not _in_bounds(value, spec)
    elif spec.kind == "str":
        bad = not isinstance(value, str) or not value
    elif spec.kind == "choice":
        bad = value not in spec.choices
    elif spec.kind == "depths":
        bad = (
            not isinstance(value, tuple)
            or not value
            or any(isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= 5 for d in value)
            or any(a <= b for a, b in itertools.pairwise(value))
        )
    if bad:
        raise ConfigError(name, value, spec.describe())


def default_config_toml() -> str:
    """The ``[predictor]`` table of the defaults, with each field's range."""
    lines = ["[predictor]"]
    cfg = PredictorConfig()
    for name, spec in FIELD_SPECS.items():
        value = getattr(cfg, name)
        lines.append(
            f"# {spec.doc}; {spec.describe()}" + ("; hot-reloadable" if spec.dynamic else "")
        )
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, int):
        return f"{value:_}" if abs(value) >= 10_000 else str(value)
    return repr(value)
