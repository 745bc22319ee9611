"""Compiled graphs of the two-rate step, on packed rows.

Every graph takes and returns flat rows (``predictor.core.packing``): the
fast part and the fit part of the state, the observations as ``obs_f``
(``[y, ref]``, float64) and ``obs_i`` (``ts``, int64), ``now`` (int64 ns)
and the sensitivities as two rows. A call then has a handful of arguments
and outputs whatever the size of the state, which is what makes a tick
cheap to dispatch.

Graphs, per layout (``layout_config``) and signature depth:

* ``tick``: one asset's fast rate; outputs the new fast rows and the
  output rows. ``tick_batch``: the same under ``vmap`` over assets.
* ``refit``: one asset's refit; outputs the new fit rows.
  ``refit_batch``: a loop over the lanes listed in ``idx[:n]`` (the due
  lanes, read by the host from the tick's outputs) running the unbatched
  refit, so each is bit-identical to a single refit, and writing its fit
  row in place. The trip count ``n`` is traced: one graph per batch size
  serves any number of refits, and lanes that are not due cost nothing
  (mapping every lane with a ``cond`` cost about 20 us per idle lane).
* ``before`` / ``before_batch`` (``refit_timing = "before"``): gate and
  advance, the due refits, then the forecasts, in one call.
* ``scan``: ``lax.scan`` of ``step.step`` over a series (``fit_history``).

Nothing is donated unless asked (``refit_batch!``): a caller's old state
stays valid (the functions are pure), and rows of a few kilobytes cost
little to reallocate. The daemon's table donates its own rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from predictor.config import PredictorConfig
from predictor.core import rates
from predictor.core import step as core
from predictor.core.gate import REJECT_NONE
from predictor.core.packing import Packer, Rows
from predictor.core.params import Params, params_from_config
from predictor.core.state import AssetState, FastState, FitState, Obs, StepOutput


class Packers(NamedTuple):
    """The packers of one layout: fast state, fit state, output, sensitivities."""

    fast: Packer[FastState]
    fit: Packer[FitState]
    out: Packer[StepOutput]
    params: Packer[Params]


@functools.cache
def packers(layout: PredictorConfig) -> Packers:
    """Packers of ``layout``'s state (templates built on the host, nothing compiled)."""
    with jax.default_device(jax.devices("cpu")[0]):
        state = core.init_state(layout)
        return Packers(
            Packer(state.fast),
            Packer(state.fit),
            Packer(state.fast.last_output),
            Packer(params_from_config(layout)),
        )


def _where(pred: jax.Array, a: Rows, b: Rows) -> Rows:
    return Rows(jnp.where(pred, a.f, b.f), jnp.where(pred, a.i, b.i))


def _obs(obs_f: jax.Array, obs_i: jax.Array) -> Obs:
    return Obs(obs_f[..., 0], obs_f[..., 1], obs_i)


def _state(p: Packers, fast: Rows, fit: Rows) -> AssetState:
    return AssetState(p.fast.unpack(fast), p.fit.unpack(fit))


Graph = Callable[..., Any]


def build(layout: PredictorConfig, depth: int, kind: str) -> Graph:
    """The jitted graph ``kind`` of ``layout`` at signature ``depth`` (see module doc).

    A kind ending in ``!`` donates the rows it rewrites (``refit_batch!``).
    """
    donate = kind.endswith("!")
    kind = kind.rstrip("!")
    p = packers(layout)
    cfg = layout

    def params_of(pf: jax.Array, pi: jax.Array) -> Params:
        return p.params.unpack(Rows(pf, pi))

    def tick_rows(
        fast: Rows, fit: Rows, obs_f: jax.Array, obs_i: jax.Array, now: jax.Array, params: Params
    ) -> tuple[Rows, Rows]:
        state = _state(p, fast, fit)
        obs = _obs(obs_f, obs_i)
        reason, new, _ = core.accept(state, obs, now, params, cfg, depth)
        # A rejection changes a few scalars of the old rows: patch them rather than repack.
        old = p.fast.with_leaves(fast, core.rejection_leaves(state.fast, obs, reason))
        rows = _where(reason != REJECT_NONE, old, p.fast.pack(new))
        # The output is the last field of the fast state: its rows end the fast rows.
        return rows, p.fast.tail(rows, p.out)

    def refit_rows(fast: Rows, fit: Rows) -> Rows:
        return p.fit.pack(rates.refit(_state(p, fast, fit), cfg, depth))

    def before_rows(
        fast: Rows, fit: Rows, obs_f: jax.Array, obs_i: jax.Array, now: jax.Array, params: Params
    ) -> tuple[Rows, Rows, Rows]:
        state = _state(p, fast, fit)
        new, out = rates.step(state, _obs(obs_f, obs_i), now, params, cfg, depth)
        return p.fast.pack(new.fast), p.fit.pack(new.fit), p.out.pack(out)

    if kind == "tick":

        def tick(fast: Rows, fit: Rows, obs_f: Any, obs_i: Any, now: Any, pf: Any, pi: Any) -> Any:
            return tick_rows(fast, fit, obs_f, obs_i, now, params_of(pf, pi))

        return jax.jit(tick)
    if kind == "tick_batch":

        def tick_batch(
            fast: Rows, fit: Rows, obs_f: Any, obs_i: Any, now: Any, pf: Any, pi: Any
        ) -> Any:
            params = params_of(pf, pi)
            run = jax.vmap(tick_rows, in_axes=(0, 0, 0, 0, None, None))
            return run(fast, fit, obs_f, obs_i, now, params)

        return jax.jit(tick_batch)
    if kind == "refit":
        return jax.jit(refit_rows)
    if kind == "refit_batch":

        def refit_batch(fast: Rows, fit: Rows, idx: jax.Array, n: jax.Array) -> Rows:
            # A loop over the first ``n`` entries of ``idx`` (the due lanes, chosen
            # on the host): its trip count is dynamic, so one graph per batch
            # size serves any number of refits and idle lanes cost nothing.
            def one(j: jax.Array, g: Rows) -> Rows:
                i = idx[j]
                new = refit_rows(Rows(fast.f[i], fast.i[i]), Rows(g.f[i], g.i[i]))
                return Rows(g.f.at[i].set(new.f), g.i.at[i].set(new.i))

            return jax.lax.fori_loop(0, n, one, fit)  # type: ignore[no-any-return]

        # Donating the fit rows lets the loop write them in place; without it
        # XLA first copies them (about 5 ms for 1,024 lanes).
        return jax.jit(refit_batch, donate_argnums=(1,) if donate else ())
    if kind == "before":

        def before(
            fast: Rows, fit: Rows, obs_f: Any, obs_i: Any, now: Any, pf: Any, pi: Any
        ) -> Any:
            return before_rows(fast, fit, obs_f, obs_i, now, params_of(pf, pi))

        return jax.jit(before)
    if kind == "before_batch":
        return jax.jit(_before_batch(p, cfg, depth, params_of))
    if kind == "scan":
        return jax.jit(_scan(p, cfg, depth, params_of))
    raise ValueError(f"unknown graph kind {kind!r}")


def _before_batch(
    p: Packers, cfg: PredictorConfig, depth: int, params_of: Callable[..., Params]
) -> Graph:
    """``"before"`` timing for a batch: vmapped halves around a mapped refit."""

    def run(fast: Rows, fit: Rows, obs_f: Any, obs_i: Any, now: Any, pf: Any, pi: Any) -> Any:
        params = params_of(pf, pi)
        state = jax.vmap(lambda f, g: _state(p, f, g))(fast, fit)
        obs = _obs(obs_f, obs_i)
        begun = jax.vmap(lambda s, o: rates.begin(s, o, now, params, cfg))(state, obs)

        def one(x: tuple[Any, ...]) -> FitState:
            due, advanced, old_fit = x
            return rates.refit_if(due, AssetState(advanced, old_fit), cfg, depth)

        fits = jax.lax.map(one, (begun.due, begun.advanced, state.fit))
        new, out = jax.vmap(lambda f, b, g: rates.end(f, b, g, params, cfg, depth))(
            state.fast, begun, fits
        )
        return p.fast.pack(new), p.fit.pack(fits), p.out.pack(out)

    return run


def _scan(p: Packers, cfg: PredictorConfig, depth: int, params_of: Callable[..., Params]) -> Graph:
    """``lax.scan`` of both rates over a series, ``now`` = each tick's timestamp."""

    def run(fast: Rows, fit: Rows, ys: Any, refs: Any, ts: Any, pf: Any, pi: Any) -> Any:
        params = params_of(pf, pi)

        def body(s: AssetState, x: tuple[jax.Array, ...]) -> tuple[AssetState, Rows]:
            y, r, t = x
            new, out = rates.step(s, Obs(y, r, t), t, params, cfg, depth)
            return new, p.out.pack(out)

        final, outs = jax.lax.scan(body, _state(p, fast, fit), (ys, refs, ts))
        return p.fast.pack(final.fast), p.fit.pack(final.fit), outs

    return run


def obs_rows(y: Any, ref: Any, ts: Any) -> tuple[Any, Any]:
    """``(obs_f, obs_i)`` host rows of observations (scalars or equal-length vectors)."""
    obs_f = np.stack([np.asarray(y, np.float64), np.asarray(ref, np.float64)], axis=-1)
    return obs_f, np.asarray(ts, np.int64)
