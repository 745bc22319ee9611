"""predictor: tick-by-tick ensemble forecasting of many time series.

Every public name of the API specification is importable from here::

    from predictor import PredictorConfig, ProcessState, UniversalPredictor

    p = UniversalPredictor(PredictorConfig())
    p.fit_history(history)                      # at least wtmm_buffer_size values
    result = p.step(ProcessState(magnitude=y, reference=y, timestamp_ns=ts))
    result.predicted_value, result.interval_lower, result.interval_upper

The names are loaded on first use: ``import predictor`` itself imports
neither JAX nor anything heavy, so that the daemon can set the environment
JAX reads (devices, memory) before JAX is imported.

>>> import predictor
>>> sorted(predictor.__all__)[:3]
['AsyncMetaOptimizer', 'BayesianMetaOptimizer', 'ConfigError']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it.
_EXPORTS: dict[str, str] = {
    # configuration
    "PredictorConfig": "predictor.config",
    # observations and results
    "ProcessState": "predictor.compat",
    "PredictionResult": "predictor.core.types",
    # predictors
    "UniversalPredictor": "predictor.api",
    "ConfigReloadablePredictor": "predictor.api",
    "FunctionalPredictor": "predictor.compat",
    "UniversalPredictor_AsyncIO": "predictor.graceful",
    "UniversalPredictor_GracefulShutdown": "predictor.graceful",
    "ShutdownReport": "predictor.graceful",
    # persistence and monitoring
    "SnapshotResult": "predictor.snapshots.files",
    "save_emergency_dump": "predictor.compat",
    "monitor_vram_fragmentation": "predictor.compat",
    # meta-optimisation
    "BayesianMetaOptimizer": "predictor.tuning.optimizer",
    "AsyncMetaOptimizer": "predictor.tuning.async_io",
    "OptimizationResult": "predictor.tuning.result",
    "SearchSpace": "predictor.tuning.space",
    # errors and warnings
    "PredictorError": "predictor.errors",
    "ConfigError": "predictor.errors",
    "ConfigMutationError": "predictor.errors",
    "DomainError": "predictor.errors",
    "IntegrityError": "predictor.errors",
    "StalenessWarning": "predictor.errors",
    "FrequencyWarning": "predictor.errors",
    "SchemaVersionError": "predictor.snapshots.errors",
}

__all__ = [
    "AsyncMetaOptimizer",
    "BayesianMetaOptimizer",
    "ConfigError",
    "ConfigMutationError",
    "ConfigReloadablePredictor",
    "DomainError",
    "FrequencyWarning",
    "FunctionalPredictor",
    "IntegrityError",
    "OptimizationResult",
    "PredictionResult",
    "PredictorConfig",
    "PredictorError",
    "ProcessState",
    "SchemaVersionError",
    "SearchSpace",
    "ShutdownReport",
    "SnapshotResult",
    "StalenessWarning",
    "UniversalPredictor",
    "UniversalPredictor_AsyncIO",
    "UniversalPredictor_GracefulShutdown",
    "monitor_vram_fragmentation",
    "save_emergency_dump",
]
#: ``__all__`` lists exactly the keys of ``_EXPORTS`` (tests/test_public_api.py checks it).

if TYPE_CHECKING:
    from predictor.api import ConfigReloadablePredictor, UniversalPredictor
    from predictor.compat import (
        FunctionalPredictor,
        ProcessState,
        monitor_vram_fragmentation,
        save_emergency_dump,
    )
    from predictor.config import PredictorConfig
    from predictor.core.types import PredictionResult
    from predictor.errors import (
        ConfigError,
        ConfigMutationError,
        DomainError,
        FrequencyWarning,
        IntegrityError,
        PredictorError,
        StalenessWarning,
    )
    from predictor.graceful import (
        ShutdownReport,
        UniversalPredictor_AsyncIO,
        UniversalPredictor_GracefulShutdown,
    )
    from predictor.snapshots.errors import SchemaVersionError
    from predictor.snapshots.files import SnapshotResult
    from predictor.tuning.async_io import AsyncMetaOptimizer
    from predictor.tuning.optimizer import BayesianMetaOptimizer
    from predictor.tuning.result import OptimizationResult
    from predictor.tuning.space import SearchSpace


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'predictor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
