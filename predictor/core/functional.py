"""FunctionalPredictor: the stateless, jitted face of the two-rate step.

State lives with the caller (one ``PackedState`` per asset, or stacked rows
whose leading axis is the asset slot); this class only holds the config,
the traced sensitivities and the compiled graphs (``predictor.core.graphs``)
per signature depth of ``cfg.shed_ladder``. Switching depth therefore never
recompiles, and every depth shares one state layout. Nothing is donated: a
caller's previous state stays valid.

The graphs are memoised per layout (``layout_config``) at module level and
shared by every instance; ``evict_compiled`` releases a layout's graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from predictor.config import DYNAMIC_FIELDS, PredictorConfig
from predictor.core import graphs
from predictor.core.gate import REJECT_NAMES
from predictor.core.packing import Rows
from predictor.core.params import Params, params_from_config
from predictor.core.state import AssetState, Obs, PackedState, StepOutput
from predictor.core.step import init_state
from predictor.core.types import MODES, PredictionResult, ProcessState

_DEFAULTS = {name: getattr(PredictorConfig(), name) for name in DYNAMIC_FIELDS}

_Graph = TypeVar("_Graph")


def make_obs(y: Any, ref: Any, ts: Any) -> Obs:
    """Observation(s) with the dtypes the compiled graphs expect.

    Host (numpy) arrays: a compiled call copies them in as it starts, which
    costs far less than building device arrays one eager operation at a time.
    """
    return Obs(
        np.asarray(y, dtype=np.float64),
        np.asarray(ref, dtype=np.float64),
        np.asarray(ts, dtype=np.int64),
    )


def stack_states(states: Sequence[PackedState]) -> PackedState:
    """Stack per-asset states along a new leading axis (asset slot)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)  # type: ignore[no-any-return]


def output_to_result(out: StepOutput) -> PredictionResult:
    """Host-side ``PredictionResult`` of one (unbatched) step output."""
    on_device = any(isinstance(leaf, jax.Array) for leaf in out)
    return _result_from_host(jax.device_get(out) if on_device else out)


def _result_from_host(h: StepOutput) -> PredictionResult:
    w = np.asarray(h.weights, dtype=np.float64)
    return PredictionResult(
        predicted_next=float(h.predicted_next),
        holder_exponent=float(h.holder_exponent),
        cusum_drift=float(h.cusum_drift),
        distance_to_collapse=float(h.distance_to_collapse),
        free_energy=float(h.free_energy),
        kurtosis=float(h.kurtosis),
        dgm_entropy=float(h.dgm_entropy),
        adaptive_threshold=float(h.adaptive_threshold),
        weights=(float(w[0]), float(w[1]), float(w[2]), float(w[3])),
        sinkhorn_converged=bool(h.sinkhorn_converged),
        degraded_inference_mode=bool(h.degraded_inference_mode),
        emergency_mode=bool(h.emergency_mode),
        regime_change_detected=bool(h.regime_change_detected),
        mode_collapse_warning=bool(h.mode_collapse_warning),
        mode=MODES[int(h.mode)],
        predicted_value=float(h.predicted_value),
        interval_lower=float(h.interval_lower),
        interval_upper=float(h.interval_upper),
        warming_up=bool(h.warming_up),
        rejected=bool(h.rejected),
        reject_reason=REJECT_NAMES[int(h.reject_reason)],
    )


def batch_to_results(out: StepOutput) -> list[PredictionResult]:
    """Per-item results of a batched output (one host transfer for the batch)."""
    host = jax.device_get(out)
    n = int(np.shape(host.predicted_next)[0])
    return [_result_from_host(jax.tree.map(lambda x, i=i: x[i], host)) for i in range(n)]


def layout_config(cfg: PredictorConfig) -> PredictorConfig:
    """The static part of a config: sensitivities reset to their defaults.

    Compiled graphs are keyed by it, so configs that differ only in
    hot-reloadable fields (which reach the graph as traced ``Params``) share
    one set of graphs: a reload or a tuning trial recompiles nothing.
    """
    return dataclasses.replace(cfg, **{name: _DEFAULTS[name] for name in DYNAMIC_FIELDS})


class _GraphCache(Generic[_Graph]):
    """Memo of one graph builder keyed by ``(layout config, *args)``.

    ``functools.cache`` would do, but it can only be emptied as a whole;
    this one also drops the entries of one layout (``evict``), so that
    releasing a tuning trial's graphs leaves the graphs in use compiled.
    """

    def __init__(self, build: Callable[..., _Graph]) -> None:
        self._build = build
        self._graphs: dict[tuple[PredictorConfig, tuple[Hashable, ...]], _Graph] = {}
        self._lock = threading.Lock()
        functools.update_wrapper(self, build)

    def __call__(self, cfg: PredictorConfig, *args: Hashable) -> _Graph:
        key = (cfg, args)
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                return graph
        # Built outside the lock: a builder may call another cache's builder.
        # ``jax.jit`` compiles lazily, so a racing duplicate costs nothing.
        built = self._build(cfg, *args)
        with self._lock:
            return self._graphs.setdefault(key, built)

    def evict(self, layout: PredictorConfig | None = None) -> int:
        """Forget the graphs of ``layout`` (every graph when None); returns how many."""
        with self._lock:
            keys = [k for k in self._graphs if layout is None or k[0] == layout]
            for k in keys:
                del self._graphs[k]
        return len(keys)

    def layouts(self) -> frozenset[PredictorConfig]:
        """The layouts that have a graph here."""
        with self._lock:
            return frozenset(k[0] for k in self._graphs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._graphs)


_compiled: _GraphCache[graphs.Graph] = _GraphCache(graphs.build)
_CACHES = (_compiled,)


def evict_compiled(cfg: PredictorConfig | None = None) -> int:
    """Release the memoised graphs of ``cfg``'s layout, or of every layout when None.

    Why: each memoised ``jax.jit`` wrapper keeps its XLA executables (one
    per input shape: a scan compiles once per series length) and their
    device constants alive for the life of the process, as this module
    holds it forever. That is right for the few layouts a daemon or a
    fast-tier study uses, and a leak for a deep-tier study, whose every
    trial may be a new layout. Only ``cfg``'s layout (``layout_config``,
    so any config of that layout names it) is dropped; graphs of other
    layouts stay compiled.

    Instances created before keep working: a ``FunctionalPredictor`` looks
    its graphs up on every call, so an evicted graph is rebuilt on its next
    use (a trace, plus a compile or a persistent-cache load).
    Returns the number of graphs released (every kind and depth together).
    """
    layout = None if cfg is None else layout_config(cfg)
    return sum(cache.evict(layout) for cache in _CACHES)


def compiled_layouts() -> frozenset[PredictorConfig]:
    """The layouts (``layout_config`` values) that currently have memoised graphs."""
    out: frozenset[PredictorConfig] = frozenset()
    for cache in _CACHES:
        out |= cache.layouts()
    return out


class FunctionalPredictor:
    """Pure state transitions ``(S_t, obs_t) -> (S_{t+1}, result_t)`` for one or many assets.

    States are ``PackedState`` rows (``init_state``, ``init_batch``);
    ``view`` turns them into the readable ``AssetState``. ``step`` and
    ``step_batch`` run both rates and return host outputs; ``tick`` /
    ``refit`` and ``tick_batch`` / ``refit_batch`` are the two halves for
    callers that publish a result before its refit runs (with
    ``refit_timing = "after"``, the default, the refit's output serves the
    following ticks, so the order of publishing changes nothing).
    """

    def __init__(self, config: PredictorConfig | None = None, *, warmup: bool = True) -> None:
        self.config = config if config is not None else PredictorConfig()
        self.params: Params = params_from_config(self.config)
        self.depths: tuple[int, ...] = self.config.shed_ladder
        self._layout = layout_config(self.config)
        self._packers = graphs.packers(self._layout)
        self._before = self.config.refit_timing == "before"
        self._cold: PackedState | None = None
        self._phase_col = self._packers.fast.column(".phase")  # in the int row
        self._set_param_rows()
        if warmup:
            self.warmup()

    def _set_param_rows(self) -> None:
        rows = self._packers.params.pack(self.params)
        self._pf, self._pi = jnp.asarray(rows.f), jnp.asarray(rows.i)

    def _graph(self, depth: int | None, kind: str) -> graphs.Graph:
        return _compiled(self._layout, self._depth(depth), kind)

    # ------------------------------------------------------------------ state --
    def init_state(self, key: jax.Array | None = None, phase: int = 0) -> PackedState:
        """Cold state of one asset; ``phase`` staggers its refits (``step.init_state``)."""
        return self.pack(init_state(self.config, key, phase))

    def init_batch(self, n: int) -> PackedState:
        """Cold stacked state of ``n`` assets with phases 0, 1, ..., n - 1 (staggered refits)."""
        return jax.device_put(self.cold_rows(n))  # type: ignore[no-any-return]

    def cold_rows(self, n: int, first_phase: int = 0) -> PackedState:
        """``n`` cold states as host rows, phases ``first_phase``, ``first_phase + 1``, ..."""
        if self._cold is None:
            self._cold = jax.device_get(self.init_state())
        rows: PackedState = jax.tree.map(
            lambda x: np.repeat(np.asarray(x)[None], n, axis=0), self._cold
        )
        rows.fast.i[:, self._phase_col] = first_phase + np.arange(n, dtype=np.int64)
        return rows

    def replicate(self, state: PackedState, n: int) -> PackedState:
        """``n`` copies of one asset's state with phases 0 .. n - 1 (staggered refits)."""
        rows: PackedState = jax.tree.map(
            lambda x: np.repeat(np.asarray(x)[None], n, axis=0), jax.device_get(state)
        )
        rows.fast.i[:, self._phase_col] = np.arange(n, dtype=np.int64)
        return jax.device_put(rows)  # type: ignore[no-any-return]

    def pack(self, state: AssetState) -> PackedState:
        """Rows of a readable state (inverse of ``view``)."""
        return PackedState(self._packers.fast.pack(state.fast), self._packers.fit.pack(state.fit))

    def view(self, state: PackedState) -> AssetState:
        """Readable ``AssetState`` of packed rows (numpy rows give numpy leaves)."""
        return AssetState(
            self._packers.fast.unpack(state.fast), self._packers.fit.unpack(state.fit)
        )

    def output(self, rows: Rows) -> StepOutput:
        """Host ``StepOutput`` (numpy leaves, batch axes kept) of output rows."""
        host = Rows(np.asarray(rows.f), np.asarray(rows.i))
        return self._packers.out.unpack(host)

    def set_sensitivities(self, config: PredictorConfig) -> None:
        """Apply a config that differs only in hot-reloadable fields (no recompilation)."""
        changed = config.layout_changes(self.config)
        if changed:
            raise ValueError(f"layout fields changed, re-initialisation required: {changed}")
        self.config = config
        self.params = params_from_config(config)
        self._set_param_rows()

    def set_refit_interval(self, interval: int) -> None:
        """Use ``refit_interval = interval`` from now on (nothing recompiles)."""
        self.set_sensitivities(self.config.replace(refit_interval=int(interval)))

    def warmup(self, batch_sizes: Sequence[int] = ()) -> None:
        """Compile every depth's single-asset graphs (and batch graphs for ``batch_sizes``)."""
        for depth in self.depths:
            state = self.init_state()
            state, _ = self.step(state, ProcessState(0.0, 0.0, 1), 1, depth=depth, refit=True)
            for n in batch_sizes:
                states = self.init_batch(n)
                obs = make_obs(np.zeros(n), np.zeros(n), np.ones(n, dtype=np.int64))
                jax.block_until_ready(self.step_batch(states, obs, 1, depth))  # type: ignore[no-untyped-call]

    def _depth(self, depth: int | None) -> int:
        d = self.config.log_sig_depth if depth is None else depth
        if d not in self.depths:
            raise ValueError(f"depth {d} is not compiled; available: {self.depths}")
        return d

    # ------------------------------------------------------------ one asset --
    def tick(
        self, state: PackedState, obs: Obs, now_ns: Any, depth: int | None = None
    ) -> tuple[PackedState, Rows]:
        """The fast rate of one asset (device output rows).

        With ``refit_timing = "before"`` this runs both rates in one call.
        """
        return self._tick(state, obs, now_ns, depth, "")

    def _tick(
        self, states: PackedState, obs: Obs, now_ns: Any, depth: int | None, suffix: str
    ) -> tuple[PackedState, Rows]:
        """The tick graph of one asset (``suffix=""``) or of a batch (``"_batch"``)."""
        obs_f, obs_i = graphs.obs_rows(obs.y, obs.ref, obs.ts)
        args = (states.fast, states.fit, obs_f, obs_i, np.asarray(now_ns, np.int64))
        if self._before:
            fast, fit, out = self._graph(depth, "before" + suffix)(*args, self._pf, self._pi)
            return PackedState(fast, fit), out
        fast, out = self._graph(depth, "tick" + suffix)(*args, self._pf, self._pi)
        return PackedState(fast, states.fit), out

    def refit(self, state: PackedState, depth: int | None = None) -> PackedState:
        """Recompute one asset's cached fits from its window."""
        fit = self._graph(depth, "refit")(state.fast, state.fit)
        return PackedState(state.fast, fit)

    def step(
        self,
        state: PackedState,
        obs: ProcessState | Obs,
        now_ns: int | None = None,
        depth: int | None = None,
        *,
        refit: bool | None = None,
    ) -> tuple[PackedState, StepOutput]:
        """One tick of one asset and, when due, its refit; the output on the host.

        ``now_ns`` defaults to the tick's own timestamp. ``refit`` forces
        (True) or skips (False) the refit instead of following the
        schedule (``"after"`` timing only).
        """
        if isinstance(obs, ProcessState):
            obs = make_obs(_scalar(obs.magnitude), _scalar(obs.reference), int(obs.timestamp_ns))
        now = obs.ts if now_ns is None else np.asarray(now_ns, np.int64)
        state, rows = self.tick(state, obs, now, depth)
        out = self.output(jax.device_get(rows))
        due = bool(out.refit_due) if refit is None else refit
        if due and not self._before:
            state = self.refit(state, depth)
        return state, out

    # ---------------------------------------------------------- many assets --
    def tick_batch(
        self, states: PackedState, obs_batch: Obs, now_ns: Any, depth: int | None = None
    ) -> tuple[PackedState, Rows]:
        """The fast rate of B assets under ``vmap`` (device output rows).

        With ``refit_timing = "before"`` this runs both rates in one call.
        """
        return self._tick(states, obs_batch, now_ns, depth, "_batch")

    def refit_batch(
        self, states: PackedState, due: Any, depth: int | None = None, *, donate: bool = False
    ) -> PackedState:
        """Refit the lanes flagged in ``due`` (host booleans, one per lane), one after another.

        ``due`` is the ``refit_due`` column of the tick's output; lanes that
        are not due cost nothing. ``donate`` lets the refits overwrite
        ``states.fit`` in place (the caller must not use it afterwards).
        """
        if self._before:
            return states
        flags = np.asarray(due, dtype=bool)
        lanes = np.flatnonzero(flags)
        if lanes.size == 0:
            return states
        idx = np.zeros(flags.shape[0], np.int32)
        idx[: lanes.size] = lanes
        n = np.asarray(lanes.size, np.int32)
        kind = "refit_batch!" if donate else "refit_batch"
        fit = self._graph(depth, kind)(states.fast, states.fit, idx, n)
        return PackedState(states.fast, fit)

    def step_batch(
        self,
        states: PackedState,
        obs_batch: Obs | ProcessState,
        now_ns: int | None = None,
        depth: int | None = None,
        *,
        donate: bool = False,
    ) -> tuple[PackedState, StepOutput]:
        """One tick of each of B assets (leading axis B) and their due refits.

        ``obs_batch`` is an ``Obs`` or a ``ProcessState`` of equal-length
        arrays. ``now_ns`` defaults to the largest timestamp of the batch
        with the event clock and to ``time.time_ns()`` with the wall clock.
        The output is on the host; it is copied before the refits are
        dispatched, so they run while the caller reads it. ``donate``: the
        caller will not use ``states`` again, so the refits may write its
        rows in place (faster for large batches).
        """
        if isinstance(obs_batch, ProcessState):
            obs_batch = make_obs(obs_batch.magnitude, obs_batch.reference, obs_batch.timestamp_ns)
        if now_ns is None:
            now_ns = (
                int(np.max(np.asarray(obs_batch.ts)))
                if self.config.clock == "event"
                else time.time_ns()
            )
        states, rows = self.tick_batch(states, obs_batch, now_ns, depth)
        out = self.output(jax.device_get(rows))
        return self.refit_batch(states, out.refit_due, depth, donate=donate), out

    # ------------------------------------------------------------------
    def scan(
        self,
        state: PackedState,
        ys: Any,
        refs: Any | None = None,
        ts: Any | None = None,
        depth: int | None = None,
    ) -> tuple[PackedState, StepOutput]:
        """Step a whole series in one ``lax.scan`` (event clock: now = each tick's ts).

        Timestamps default to 1, 2, 3, ... ns, so no tick is sparse or stale.
        Returns the final state and the stacked outputs (on the host).
        """
        ys = jnp.asarray(ys, jnp.float64)
        refs = ys if refs is None else jnp.asarray(refs, jnp.float64)
        ts = (
            jnp.arange(1, ys.shape[0] + 1, dtype=jnp.int64)
            if ts is None
            else jnp.asarray(ts, jnp.int64)
        )
        fast, fit, outs = self._graph(depth, "scan")(
            state.fast, state.fit, ys, refs, ts, self._pf, self._pi
        )
        return PackedState(fast, fit), self.output(jax.device_get(outs))


def _scalar(x: Any) -> float:
    """A float from a Python number or a one-element array (the specification's shape (1,))."""
    return float(np.asarray(x, dtype=np.float64).reshape(-1)[0]) if np.size(x) == 1 else float(x)


def fit_verdict(final: StepOutput, cusum_h: float) -> bool:
    """Specification's convergence verdict: Sinkhorn converged and CUSUM drift below h."""
    return bool(final.sinkhorn_converged) and float(final.cusum_drift) < cusum_h


__all__ = [
    "FunctionalPredictor",
    "batch_to_results",
    "compiled_layouts",
    "evict_compiled",
    "fit_verdict",
    "make_obs",
    "output_to_result",
    "stack_states",
]
