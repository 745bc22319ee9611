"""The two rates composed: refits, their schedule, and the full recomputation.

* ``refit``: every cached fit recomputed from the window (the slow rate).
* ``step``: one asset's tick and, when due, its refit, in the order
  ``cfg.refit_timing`` says: ``"after"`` (the default) runs the refit after
  the tick's forecast, for the following ticks; ``"before"`` runs it on the
  tick's window before the forecast (``begin`` / ``end`` are the halves
  around it, which the batch graph runs vmapped around a mapped refit).
* ``full_step``: the single-rate model, everything recomputed on every tick.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from predictor.config import PredictorConfig
from predictor.core import sia
from predictor.core.gate import REJECT_NONE
from predictor.core.kernels import a_wiener, b_dgm, c_levy
from predictor.core.params import Params
from predictor.core.sia.window import history, standardize_frame
from predictor.core.state import AssetState, FastState, FitState, Obs, StepOutput
from predictor.core.step import (
    Advanced,
    combine,
    dgm_steps_for_depth,
    finish,
    forecast,
    gated_advance,
    refit_scheduled,
    tick,
    tree_where,
)


def refit(state: AssetState, cfg: PredictorConfig, depth: int) -> FitState:
    """The slow rate: every cached fit recomputed from the current window."""
    z, mean, scale = standardize_frame(history(state.fast.buffer, state.fast.count))
    ka, _ = a_wiener.refit(z, cfg)
    kb, _ = b_dgm.refit(state.fit.kernel_b, z, cfg, dgm_steps_for_depth(cfg, depth))
    return FitState(
        holder=sia.holder_exponent(z, cfg),
        mean=mean,
        scale=scale,
        kernel_a=ka,
        kernel_b=kb,
        kernel_c=c_levy.refit(z, cfg),
        refits=state.fit.refits + 1,
    )


class Begun(NamedTuple):
    """The first half of a ``"before"`` tick: the advanced state and whether to refit."""

    advanced: FastState
    ctx: Advanced
    obs: Obs
    reason: jax.Array
    due: jax.Array


def begin(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
) -> Begun:
    """Gate and ``advance``; due = schedule, this tick's alarm, or a pending emergency refit.

    ``refit_timing = "before"`` only.
    """
    fast = state.fast
    reason, advanced, ctx = gated_advance(fast, obs, now_ns, params, cfg)
    scheduled = refit_scheduled(advanced.count, fast.phase, params, cfg)
    due = (reason == REJECT_NONE) & (scheduled | ctx.alarm | fast.refit_pending)
    return Begun(advanced, ctx, obs, reason, due)


def end(
    fast: FastState,
    begun: Begun,
    fit: FitState,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[FastState, StepOutput]:
    """The second half of a ``"before"`` tick: forecast with ``fit`` (refitted when due)."""
    new, out = forecast(begun.advanced, fit, begun.ctx, params, cfg, depth)
    new = new._replace(refit_pending=out.emergency_entered)
    return finish(fast, begun.obs, begun.reason, new, out._replace(refit_due=begun.due))


def refit_if(due: jax.Array, state: AssetState, cfg: PredictorConfig, depth: int) -> FitState:
    """``refit(state)`` when ``due``, else the cached fits (a real branch for one asset)."""
    return jax.lax.cond(due, lambda s: refit(s, cfg, depth), lambda s: s.fit, state)  # type: ignore[no-any-return]


def _advance_and_refit(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[AssetState, StepOutput]:
    begun = begin(state, obs, now_ns, params, cfg)
    fit = refit_if(begun.due, AssetState(begun.advanced, state.fit), cfg, depth)
    fast, out = end(state.fast, begun, fit, params, cfg, depth)
    return AssetState(fast, fit), out


def step(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[AssetState, StepOutput]:
    """Both rates for one asset, in the order ``cfg.refit_timing`` says.

    ``"after"``: ``tick``, then ``refit`` when the tick says it is due (the
    fit serves the following ticks). ``"before"``: the due refit runs on
    the tick's window before its forecast. A ``lax.cond`` on one asset is a
    real branch, so ticks that are not due pay nothing for the refit. This
    is the body of ``fit_history``'s scan; ``FunctionalPredictor`` runs the
    halves of the ``"after"`` order as separate calls, so that a result is
    out before its refit runs.
    """
    if cfg.refit_timing == "before":
        return _advance_and_refit(state, obs, now_ns, params, cfg, depth)
    fast, out = tick(state, obs, now_ns, params, cfg, depth)
    return AssetState(fast, refit_if(out.refit_due, AssetState(fast, state.fit), cfg, depth)), out


def full_step(
    state: AssetState,
    obs: Obs,
    now_ns: jax.Array,
    params: Params,
    cfg: PredictorConfig,
    depth: int,
) -> tuple[AssetState, StepOutput]:
    """Everything recomputed from the window on every tick: the single-rate model.

    Each kernel's ``update`` (fit and forecast at once, in the window's own
    units) and the Hölder exponent run on the tick's window, as they did
    before the two rates existed; the fits are stored as a refit would
    store them. ``step`` with ``refit_timing = "before"`` and
    ``refit_interval = 1`` reproduces this to rounding through the cached
    path; it is the reference of the two-rate schedule's tests and accuracy.
    """
    fast = state.fast
    reason, advanced, ctx = gated_advance(fast, obs, now_ns, params, cfg)
    accepted = reason == REJECT_NONE
    z, mean, scale = standardize_frame(history(advanced.buffer, advanced.count))
    ka, pa, _ = a_wiener.update(state.fit.kernel_a, z, cfg)
    kb, pb, _ = b_dgm.update(state.fit.kernel_b, z, cfg, dgm_steps_for_depth(cfg, depth))
    kc, pc, _ = c_levy.update(state.fit.kernel_c, z, cfg)
    fit = FitState(
        holder=sia.holder_exponent(z, cfg),
        mean=mean,
        scale=scale,
        kernel_a=ka,
        kernel_b=kb,
        kernel_c=kc,
        refits=state.fit.refits + 1,
    )
    new, out = combine(advanced, fit, ctx, z, jnp.stack([pa, pb, pc]), params, cfg, depth)
    new = new._replace(refit_pending=out.emergency_entered)
    out = out._replace(refit_due=accepted)
    final_fast, final_out = finish(fast, obs, reason, new, out)
    final_fit = tree_where(~accepted, state.fit, fit)
    return AssetState(final_fast, final_fit), final_out  # type: ignore[arg-type]
