"""Sensitivities: the hot-reloadable part of the config as traced scalars.

The jitted step takes a ``Params`` pytree next to the state, so a reload that
changes only these values (``predictor.config.DYNAMIC_FIELDS``) recompiles
nothing and keeps every asset's state. Layout fields stay in the static
``PredictorConfig``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.config import DYNAMIC_FIELDS, FIELD_SPECS, PredictorConfig


class Params(NamedTuple):
    """Traced sensitivities; float64 scalars, int64 for counts and ns."""

    epsilon: jax.Array
    learning_rate: jax.Array
    epsilon_min: jax.Array
    sinkhorn_alpha: jax.Array
    entropy_window: jax.Array
    robust_kurtosis: jax.Array
    refit_interval: jax.Array
    holder_threshold: jax.Array
    cusum_h: jax.Array
    cusum_k: jax.Array
    grace_period_steps: jax.Array
    volatility_alpha: jax.Array
    staleness_ttl_ns: jax.Array
    besov_nyquist_interval_ns: jax.Array
    inference_recovery_hysteresis: jax.Array


if Params._fields != DYNAMIC_FIELDS:  # one source of truth: the config metadata
    raise ImportError("Params must mirror predictor.config.DYNAMIC_FIELDS")


def params_from_config(cfg: PredictorConfig) -> Params:
    """Device scalars of the config's sensitivities."""
    values = {}
    for name in Params._fields:
        dtype = jnp.int64 if FIELD_SPECS[name].kind == "int" else jnp.float64
        values[name] = jnp.asarray(getattr(cfg, name), dtype=dtype)
    return Params(**values)
