"""The specification's names and argument types, on top of the project's API.

The specification writes one observation as arrays of shape ``(1,)``
(``Float[Array, "1"]``), has ``FunctionalPredictor.step`` return a
``PredictionResult`` and ``step_batch`` take no clock, and gives
``save_emergency_dump`` the predictor itself. The engine underneath
(``predictor.core``) works on device scalars and returns device arrays,
which is what the daemon needs; this module adapts one to the other and
adds nothing else:

* ``ProcessState``: accepts floats, 0-d arrays and arrays of shape ``(1,)``
  for one asset, arrays of shape ``(N,)`` or ``(N, 1)`` for a batch;
* ``FunctionalPredictor``: ``step`` returns ``(state, PredictionResult)``,
  ``step_batch`` returns ``(states, [PredictionResult] * N)`` and both take
  the time from the config's clock; a result of a tick the gate rejected
  has ``rejected=True`` and its ``reject_reason``; ``engine`` is the core
  predictor;
* ``save_emergency_dump(predictor, result, asset_id)``;
* ``monitor_vram_fragmentation(interval_seconds)``.

>>> import numpy as np
>>> obs = ProcessState(magnitude=np.array([1.5]), reference=np.array([1.5]), timestamp_ns=7)
>>> obs.magnitude, obs.timestamp_ns, obs.validate_domain()
(1.5, 7, True)
>>> batch = ProcessState(np.array([[1.0], [2.0]]), np.array([[1.0], [2.0]]), np.array([5, 6]))
>>> batch.magnitude.shape, batch.size
((2,), 2)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from predictor.core import types as _types

if TYPE_CHECKING:
    import jax
    from numpy.typing import NDArray

    from predictor.config import PredictorConfig
    from predictor.core.functional import FunctionalPredictor as _Engine
    from predictor.daemon.vram import VramMonitor
    from predictor.snapshots.emergency import EmergencyDumper


#: A state as the engine hands it out (one asset, or stacked for a batch): opaque
#: to callers, who only pass it back.
State = Any


def _values(x: Any, dtype: type[np.floating[Any]] | type[np.integer[Any]]) -> Any:
    """A Python scalar for one value (any shape of size 1), else a flat array."""
    if isinstance(x, bool):
        raise TypeError(f"expected a number, got {x!r}")
    arr = np.asarray(x, dtype=dtype)
    if arr.size == 1:
        return arr.reshape(()).item()
    if arr.ndim == 2 and arr.shape[1] != 1:
        raise ValueError(f"a batch is (N,) or (N, 1), got shape {arr.shape}")
    return arr.reshape(-1)


@dataclass(frozen=True)
class ProcessState(_types.ProcessState):
    """One observation ``(y_t, r_t, timestamp)``, or one per asset of a batch.

    The specification's argument types: ``magnitude`` and ``reference`` as
    floats, 0-d arrays or arrays of shape ``(1,)`` (stored as floats), and
    ``timestamp_ns`` as an int (Unix time, nanoseconds). For
    ``FunctionalPredictor.step_batch``, arrays of shape ``(N,)`` or
    ``(N, 1)`` (stored flat, float64 / int64). Units: ``magnitude`` and
    ``reference`` in the series' own units.
    """

    def __post_init__(self) -> None:
        object.__setattr__(self, "magnitude", _values(self.magnitude, np.float64))
        object.__setattr__(self, "reference", _values(self.reference, np.float64))
        object.__setattr__(self, "timestamp_ns", _values(self.timestamp_ns, np.int64))
        sizes = {np.size(self.magnitude), np.size(self.reference), np.size(self.timestamp_ns)}
        if len(sizes) != 1:
            raise ValueError(f"magnitude, reference and timestamp_ns differ in size: {sizes}")

    @property
    def size(self) -> int:
        """Number of observations held: 1, or N for a batch."""
        return int(np.size(self.magnitude))

    def validate_domain(
        self, sigma_bound: float = 20.0, sigma_val: float = 1.0, mean: float = 0.0
    ) -> bool:
        """Catastrophic-outlier test: every value finite and within ``sigma_bound * sigma_val``.

        ``mean`` and ``sigma_val`` are in the magnitude's units (defaults: a
        standardised input). The predictor applies the same test with the
        window's own mean and deviation.
        """
        y = np.asarray(self.magnitude, dtype=np.float64)
        r = np.asarray(self.reference, dtype=np.float64)
        if not (np.all(np.isfinite(y)) and np.all(np.isfinite(r))):
            return False
        return bool(np.all(np.abs(y - mean) <= sigma_bound * sigma_val))


def single_observation(obs: _types.ProcessState) -> _types.ProcessState:
    """``obs`` with scalar fields (arrays of size 1 unwrapped), for one asset."""
    if all(isinstance(v, float | int) for v in _fields(obs)):
        return obs  # already plain scalars: the common case, on every tick's path
    spec = obs if isinstance(obs, ProcessState) else ProcessState(*_fields(obs))
    if spec.size != 1:
        raise ValueError(f"one asset takes one observation, got {spec.size}")
    return spec


def _fields(obs: _types.ProcessState) -> tuple[Any, Any, Any]:
    return obs.magnitude, obs.reference, obs.timestamp_ns


def _now(config: PredictorConfig, ts: Any) -> int:
    """The gate's clock: wall time, or the newest timestamp with the event clock."""
    return time.time_ns() if config.clock == "wall" else int(np.max(ts))


class FunctionalPredictor:
    """The specification's stateless predictor: state in, ``PredictionResult`` out.

    Holds the compiled graphs (shared with every predictor of the same
    layout); the caller holds the state, one per asset or a
    stacked one for a batch. ``engine`` is the core
    ``predictor.core.functional.FunctionalPredictor``, whose ``step`` and
    ``step_batch`` return device arrays without a host transfer (what the
    daemon uses). The gate's ``now`` follows ``config.clock`` unless
    ``now_ns`` is given: ``time.time_ns()`` (wall) or the newest timestamp
    (event). A tick rejected by the gate leaves the state unchanged but for
    the gate's bookkeeping and returns the previous result with
    ``rejected=True`` and ``reject_reason`` naming why: ``non_finite`` (NaN
    or inf), ``outlier`` (beyond 20 window standard deviations) or
    ``out_of_order`` (a timestamp not positive or not later than the
    previous tick's, other out-of-order ticks aside). Before any tick was
    accepted the previous result is the cold state's placeholder (zero
    forecast, ``warming_up``), still marked ``rejected``.
    """

    def __init__(self, config: PredictorConfig | None = None, *, warmup: bool = True) -> None:
        from predictor.core.functional import FunctionalPredictor as Engine

        self.engine: _Engine = Engine(config, warmup=warmup)

    @property
    def config(self) -> PredictorConfig:
        """The configuration the graphs were built for."""
        return self.engine.config

    @property
    def depths(self) -> tuple[int, ...]:
        """Compiled signature depths (``shed_ladder``)."""
        return self.engine.depths

    def init_state(self, key: jax.Array | None = None) -> State:
        """Cold state of one asset."""
        return self.engine.init_state(key)

    def init_batch(self, n: int) -> State:
        """Cold stacked state of ``n`` assets (leading axis: the asset)."""
        return self.engine.init_batch(n)

    def step(
        self,
        state: State,
        obs: _types.ProcessState,
        now_ns: int | None = None,
        depth: int | None = None,
    ) -> tuple[State, _types.PredictionResult]:
        """Pure transition ``(S_t, obs_t) -> (S_{t+1}, result_t)`` of one asset."""
        from predictor.core.functional import output_to_result

        one = single_observation(obs)
        now = _now(self.config, one.timestamp_ns) if now_ns is None else now_ns
        new_state, out = self.engine.step(state, one, now, depth)  # out: on the host
        return new_state, _marked(output_to_result(out), out.rejected, out.reject_reason)

    def step_batch(
        self,
        states: State,
        obs_batch: _types.ProcessState,
        now_ns: int | None = None,
        depth: int | None = None,
    ) -> tuple[State, list[_types.PredictionResult]]:
        """One tick for each of N assets; ``states`` is donated (do not reuse it).

        ``obs_batch`` holds arrays of shape ``(N,)`` or ``(N, 1)``; the
        results come back in the same order, with one host transfer.
        """
        from predictor.core.functional import batch_to_results, make_obs

        m, r, ts = (np.reshape(np.asarray(v), -1) for v in _fields(obs_batch))
        now = _now(self.config, ts) if now_ns is None else now_ns
        new_states, out = self.engine.step_batch(states, make_obs(m, r, ts), now, depth)
        rejected = np.asarray(out.rejected).tolist()  # out: on the host
        reasons = np.asarray(out.reject_reason).tolist()
        results = batch_to_results(out)
        return new_states, [
            _marked(res, rej, code)
            for res, rej, code in zip(results, rejected, reasons, strict=True)
        ]


def _marked(result: _types.PredictionResult, rejected: Any, code: Any) -> _types.PredictionResult:
    """``result`` marked as a gate rejection (reason named by its code) when ``rejected``."""
    if not bool(rejected):
        return result
    from predictor.core.gate import REJECT_NAMES

    return dataclasses.replace(result, rejected=True, reject_reason=REJECT_NAMES[int(code)])


class _DumpSource(Protocol):
    """What ``save_emergency_dump`` reads from a predictor."""

    @property
    def signal_buffer(self) -> NDArray[np.float64]: ...

    @property
    def cusum_statistics(self) -> NDArray[np.float64]: ...


def save_emergency_dump(
    predictor: _DumpSource,
    result: _types.PredictionResult,
    asset_id: str,
    *,
    dumper: EmergencyDumper | None = None,
) -> Path | None:
    """The specification's forensic dump of one asset entering emergency mode.

    Writes ``<dir>/<asset>_emergency_<time>.msgpack`` (a plain msgpack map:
    the result's telemetry and flags, the window of magnitudes as
    ``signal_buffer`` and the CUSUM statistics as ``regime_history``) into
    ``~/predictor_emergency_dumps`` or ``dumper``'s directory, atomically,
    and logs it. At most one dump per asset per ``min_interval_s`` (60 s by
    default): returns the file's path, or None when rate-limited.
    """
    from predictor.snapshots.emergency import save_emergency_dump as save

    return save(
        result,
        asset_id,
        signal_buffer=predictor.signal_buffer,
        regime_history=predictor.cusum_statistics,
        dumper=dumper,
    )


def monitor_vram_fragmentation(interval_seconds: float = 60) -> VramMonitor:
    """Start the specification's background device-memory monitor; returns it.

    Samples every ``interval_seconds`` on a daemon thread (JAX's
    ``memory_stats``, ``nvidia-smi`` when present, the process RSS) and
    logs ``vram_high`` at warning level above 85 % of a device's memory and
    at error level above 95 %. ``stop()`` ends it. The daemon runs the same
    monitor and exports it as metrics.
    """
    import structlog
    from prometheus_client import CollectorRegistry

    from predictor.daemon.vram import VramMonitor

    monitor = VramMonitor(
        CollectorRegistry(), structlog.get_logger("predictor.vram"), interval_s=interval_seconds
    )
    monitor.start()
    return monitor


__all__ = [
    "FunctionalPredictor",
    "ProcessState",
    "monitor_vram_fragmentation",
    "save_emergency_dump",
    "single_observation",
]
