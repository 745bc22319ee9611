"""One asset's ``AssetState`` as the sections of a snapshot payload, and back.

The snapshot format (``predictor.snapshots.codec``) has the sections
``global``, ``telemetry``, ``flags`` and ``kernels: {A, B, C, D}``. One
asset maps onto them as:

* ``kernels``: ``kernel_a`` .. ``kernel_d`` (A, B, C, D);
* ``telemetry``: ``last_output``, the last published ``StepOutput`` (its
  values are the last valid result even after a rejected tick);
* ``global``: everything else of the state (window, gate, SIA, orchestrator)
  plus ``depth``, the signature depth in use;
* ``flags``: ``{"warmed": count > 0}``, for readers of the file.

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
from predictor.core.step import AssetState
from predictor.snapshots.codec import build_payload, restore_sections

_KERNEL_FIELDS = {"A": "kernel_a", "B": "kernel_b", "C": "kernel_c", "D": "kernel_d"}
_OWN_SECTIONS = frozenset({*_KERNEL_FIELDS.values(), "last_output"})


def _global_section(state: AssetState, depth: int) -> dict[str, Any]:
    section: dict[str, Any] = {
        f: getattr(state, f) for f in AssetState._fields if f not in _OWN_SECTIONS
    }
    section["depth"] = int(depth)
    return section


def asset_payload(config: PredictorConfig, state: AssetState, depth: int) -> dict[str, Any]:
    """Snapshot payload of one asset; the device -> host copy happens here."""
    return build_payload(
        config=config,
        global_state=_global_section(state, depth),
        telemetry=state.last_output,
        flags={"warmed": bool(np.asarray(jax.device_get(state.count)) > 0)},
        kernels={k: getattr(state, f) for k, f in _KERNEL_FIELDS.items()},
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
        "telemetry": template.last_output,
        "flags": {"warmed": False},
        "kernels": {k: getattr(template, f) for k, f in _KERNEL_FIELDS.items()},
    }
    sections = restore_sections(payload, templates, config=config)
    glob = dict(sections["global"])
    depth = int(glob.pop("depth"))
    fields = dict(glob, last_output=sections["telemetry"])
    fields.update({f: sections["kernels"][k] for k, f in _KERNEL_FIELDS.items()})
    return AssetState(**fields), depth
