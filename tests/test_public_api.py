"""Every public name of the package imports from ``predictor`` itself."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import predictor

#: The classes and functions the API specification names, and the project's
#: own additions that a user needs next to them.
SPEC_NAMES = (
    "PredictorConfig",
    "ProcessState",
    "PredictionResult",
    "FunctionalPredictor",
    "UniversalPredictor",
    "UniversalPredictor_AsyncIO",
    "UniversalPredictor_GracefulShutdown",
    "ConfigReloadablePredictor",
    "monitor_vram_fragmentation",
    "save_emergency_dump",
    "DomainError",
    "StalenessWarning",
    "FrequencyWarning",
    "IntegrityError",
    "ConfigMutationError",
    "SearchSpace",
    "BayesianMetaOptimizer",
    "OptimizationResult",
    "AsyncMetaOptimizer",
)


def test_all_lists_exactly_the_lazy_exports() -> None:
    assert sorted(predictor.__all__) == sorted(predictor._EXPORTS)
    assert len(set(predictor.__all__)) == len(predictor.__all__)
    assert set(SPEC_NAMES) <= set(predictor.__all__)


@pytest.mark.parametrize("name", sorted(predictor._EXPORTS))
def test_every_public_name_imports_from_the_package(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from predictor import {name}", namespace)
    value = namespace[name]
    home = importlib.import_module(predictor._EXPORTS[name])
    assert value is getattr(home, name)
    assert value is getattr(predictor, name)
    assert name in dir(predictor)
    # Public means documented: the API reference is generated from these.
    assert inspect.getdoc(value), f"{name} has no docstring"


def test_star_import_gives_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from predictor import *", namespace)
    assert set(predictor.__all__) <= set(namespace)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="UniversalPredicter"):
        _ = predictor.UniversalPredicter  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from predictor import UniversalPredicter", {})


def test_specification_error_hierarchy() -> None:
    from predictor import ConfigError, DomainError, IntegrityError, PredictorError

    for error in (ConfigError, DomainError, IntegrityError):
        assert issubclass(error, PredictorError) and issubclass(error, ValueError)


def test_importing_the_package_imports_no_jax() -> None:
    # The daemon sets the environment JAX reads before importing it.
    code = "import sys, predictor; print('jax' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.split() == ["False", "False"]
