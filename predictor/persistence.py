"""One asset's ``AssetState`` as the sections of a snapshot payload, and back.

The snapshot format (``predictor.snapshots.codec``) has the sections
``global``, ``telemetry``, ``flags`` and ``kernels: {A, B, C, D}``. One
asset maps onto them as:

* ``kernels``: kernel A, B and C's cached fits (``fit.kernel_a`` ..
  ``fit.kernel_c``) and kernel D's recursive least squares
  (``fast.kernel_d``);
* ``global``: everything else of the state (window, gate, SIA,
  orchestrator, the refit schedule and the fit frame), ``last_output`` (the
  last published ``StepOutput``, whose values are the last valid result even
  after a rejected tick) and ``depth``, the signature depth in use;
* ``telemetry``: the specification's keys as plain floats, from the last
  output: ``kurtosis``, ``dgm_entropy``, ``adaptive_threshold``;
* ``flags``: the specification's keys as plain bools, from the last output:
  ``degraded_inference``, ``emergency``, ``regime_change``,
  ``mode_collapse``, and ``warmed`` (at least one tick accepted).

``telemetry`` and ``flags`` are for readers of the file; a restore reads
``global`` and ``kernels`` only.

``restore_asset`` decodes into a fresh state of the current config, so a
layout change (window size, network width, ...) is refused with the path and
the config fields that changed, and a restore is bit-exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from predictor.config import PredictorConfig
from predictor.core.state import AssetState, FastState, FitState
from predictor.snapshots.codec import build_payload, restore_sections

_FIT_KERNELS = {"A": "kernel_a", "B": "kernel_b", "C": "kernel_c"}
_FAST_OWN = frozenset({"kernel_d", "last_output"})
_FIT_OWN = frozenset(_FIT_KERNELS.values())
#: ``telemetry`` section: the specification's key -> ``StepOutput`` field.
TELEMETRY_KEYS = {
    "kurtosis": "kurtosis",
    "dgm_entropy": "dgm_entropy",
    "adaptive_threshold": "adaptive_threshold",
}
#: ``flags`` section: the specification's key -> ``StepOutput`` field.
FLAG_KEYS = {
    "degraded_inference": "degraded_inference_mode",
    "emergency": "emergency_mode",
    "regime_change": "regime_change_detected",
    "mode_collapse": "mode_collapse_warning",
}


def _global_section(state: AssetState, depth: int) -> dict[str, Any]:
    section: dict[str, Any] = {
        "fast": {f: getattr(state.fast, f) for f in FastState._fields if f not in _FAST_OWN},
        "fit": {f: getattr(state.fit, f) for f in FitState._fields if f not in _FIT_OWN},
    }
    section["last_output"] = state.fast.last_output
    section["depth"] = int(depth)
    return section


def _kernels(state: AssetState) -> dict[str, Any]:
    out = {k: getattr(state.fit, f) for k, f in _FIT_KERNELS.items()}
    out["D"] = state.fast.kernel_d
    return out


def _telemetry(state: AssetState) -> dict[str, float]:
    last = state.fast.last_output
    return {key: float(np.asarray(getattr(last, f))) for key, f in TELEMETRY_KEYS.items()}


def _flags(state: AssetState) -> dict[str, bool]:
    last = state.fast.last_output
    flags = {key: bool(np.asarray(getattr(last, f))) for key, f in FLAG_KEYS.items()}
    flags["warmed"] = bool(np.asarray(state.fast.count) > 0)
    return flags


def asset_payload(config: PredictorConfig, state: AssetState, depth: int) -> dict[str, Any]:
    """Snapshot payload of one asset; the device -> host copy happens here."""
    host: AssetState = jax.device_get(state)
    return build_payload(
        config=config,
        global_state=_global_section(host, depth),
        telemetry=_telemetry(host),
        flags=_flags(host),
        kernels=_kernels(host),
    )


def restore_asset(
    payload: Mapping[str, Any], template: AssetState, config: PredictorConfig
) -> tuple[AssetState, int]:
    """``(state, depth)`` from a verified payload, shaped like ``template``.

    Raises ``LayoutMismatchError`` when the stored state does not fit the
    template (its message names the layout fields that changed).
    """
    templates = {
        "global": _global_section(template, config.log_sig_depth),
        "kernels": _kernels(template),
    }
    sections = restore_sections(payload, templates, config=config)
    glob = dict(sections["global"])
    depth = int(glob.pop("depth"))
    kernels = sections["kernels"]
    fast = FastState(**dict(glob["fast"]), kernel_d=kernels["D"], last_output=glob["last_output"])
    fit = FitState(**dict(glob["fit"]), **{f: kernels[k] for k, f in _FIT_KERNELS.items()})
    return AssetState(fast, fit), depth
