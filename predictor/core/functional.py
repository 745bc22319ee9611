"""FunctionalPredictor: the stateless, jitted face of ``core_step``.

State lives with the caller (one ``AssetState`` per asset, or a stacked
pytree whose leading axis is the asset slot); this class only holds the
config, the traced sensitivities and the compiled graphs: one single-asset
graph and one ``vmap`` graph per signature depth of ``cfg.shed_ladder``.
Switching depth therefore never recompiles, and every depth shares one state
layout. ``step_batch`` donates the input states so that XLA can update the
stacked buffers in place.

The graphs are memoised per layout (``layout_config``) at module level and
shared by every instance; ``evict_compiled`` releases a layout's graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from predictor.config import DYNAMIC_FIELDS, PredictorConfig
from predictor.core.params import Params, params_from_config
from predictor.core.step import AssetState, Obs, StepOutput, core_step, init_state
from predictor.core.types import MODES, PredictionResult, ProcessState

_DEFAULTS = {name: getattr(PredictorConfig(), name) for name in DYNAMIC_FIELDS}

StepFn = Callable[[AssetState, Obs, jax.Array, Params], tuple[AssetState, StepOutput]]
_Graph = TypeVar("_Graph")


def make_obs(y: Any, ref: Any, ts: Any) -> Obs:
    """Device observation(s) with the dtypes the compiled graphs expect."""
    return Obs(
        jnp.asarray(y, dtype=jnp.float64),
        jnp.asarray(ref, dtype=jnp.float64),
        jnp.asarray(ts, dtype=jnp.int64),
    )


def stack_states(states: Sequence[AssetState]) -> AssetState:
    """Stack per-asset states along a new leading axis (asset slot)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *states)  # type: ignore[no-any-return]


def output_to_result(out: StepOutput) -> PredictionResult:
    """Host-side ``PredictionResult`` of one (unbatched) step output."""
    host = jax.device_get(out)
    return _result_from_host(host)


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


def _build_single(cfg: PredictorConfig, depth: int) -> StepFn:
    """One jitted single-asset graph per (config, depth), shared by every instance.

    It is the batch graph on a batch of one, so a single step runs exactly the
    code that ``step_batch`` runs for each asset (bit-identical results).
    """
    batch = _compiled_batch(cfg, depth)

    def run(
        state: AssetState, obs: Obs, now: jax.Array, params: Params
    ) -> tuple[AssetState, StepOutput]:
        one_state, one_obs = jax.tree.map(lambda x: x[None], (state, obs))
        new_state, out = batch(one_state, one_obs, now, params)
        result: tuple[AssetState, StepOutput] = jax.tree.map(lambda x: x[0], (new_state, out))
        return result

    # Jitted as a whole so the reshapes of the ~70 state leaves are not Python dispatches.
    return jax.jit(run)


def _build_batch(cfg: PredictorConfig, depth: int) -> StepFn:
    """One jitted batch graph per (config, depth); the stacked states are donated.

    The batch is a ``lax.map`` of the single-asset step, not a ``vmap``: XLA
    on CPU vectorises and contracts (FMA) a vmapped graph differently for
    each batch size, so an asset's bits would depend on which other assets
    share its batch. Mapping the unbatched step keeps every asset's
    arithmetic identical to ``step``, whatever the batch.
    """

    def run(
        states: AssetState, obs: Obs, now: jax.Array, params: Params
    ) -> tuple[AssetState, StepOutput]:
        def one(x: tuple[AssetState, Obs]) -> tuple[AssetState, StepOutput]:
            return core_step(x[0], x[1], now, params, cfg, depth)

        result: tuple[AssetState, StepOutput] = jax.lax.map(one, (states, obs))
        return result

    return jax.jit(run, donate_argnums=(0,))


def _build_scan(cfg: PredictorConfig) -> Callable[..., tuple[AssetState, StepOutput]]:
    """``lax.scan`` of ``core_step`` over a series, with ``now`` = each tick's timestamp."""

    def run(
        state: AssetState, ys: jax.Array, refs: jax.Array, ts: jax.Array, params: Params, depth: int
    ) -> tuple[AssetState, StepOutput]:
        def body(s: AssetState, x: tuple[jax.Array, ...]) -> tuple[AssetState, StepOutput]:
            y, r, t = x
            return core_step(s, Obs(y, r, t), t, params, cfg, depth)

        return jax.lax.scan(body, state, (ys, refs, ts))

    return jax.jit(run, static_argnames=("depth",))


_compiled_single: _GraphCache[StepFn] = _GraphCache(_build_single)
_compiled_batch: _GraphCache[StepFn] = _GraphCache(_build_batch)
_compiled_scan: _GraphCache[Callable[..., tuple[AssetState, StepOutput]]] = _GraphCache(_build_scan)
_CACHES = (_compiled_single, _compiled_batch, _compiled_scan)


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

    Instances created before keep working: a ``FunctionalPredictor`` holds
    its own step graphs, and its ``scan`` rebuilds the scan graph on the
    next call (a trace, plus a compile or a persistent-cache load).
    Returns the number of graphs released (single, batch and scan together).
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
    """Pure state transitions ``(S_t, obs_t) -> (S_{t+1}, result_t)`` for one or many assets."""

    def __init__(self, config: PredictorConfig | None = None, *, warmup: bool = True) -> None:
        self.config = config if config is not None else PredictorConfig()
        self.params: Params = params_from_config(self.config)
        self.depths: tuple[int, ...] = self.config.shed_ladder
        layout = layout_config(self.config)
        self._single = {d: _compiled_single(layout, d) for d in self.depths}
        self._batch = {d: _compiled_batch(layout, d) for d in self.depths}
        if warmup:
            self.warmup()

    # ------------------------------------------------------------------
    def init_state(self, key: jax.Array | None = None) -> AssetState:
        """Cold state of one asset."""
        return init_state(self.config, key)

    def init_batch(self, n: int) -> AssetState:
        """Cold stacked state of ``n`` assets (identical cold states)."""
        one = self.init_state()
        return jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)).copy(), one)  # type: ignore[no-any-return]

    def set_sensitivities(self, config: PredictorConfig) -> None:
        """Apply a config that differs only in hot-reloadable fields (no recompilation)."""
        changed = config.layout_changes(self.config)
        if changed:
            raise ValueError(f"layout fields changed, re-initialisation required: {changed}")
        self.config = config
        self.params = params_from_config(config)

    def warmup(self, batch_sizes: Sequence[int] = ()) -> None:
        """Compile every depth's single graph (and batch graphs for ``batch_sizes``)."""
        state = self.init_state()
        obs = make_obs(0.0, 0.0, 1)
        now = jnp.asarray(1, jnp.int64)
        for depth in self.depths:
            jax.block_until_ready(self._single[depth](state, obs, now, self.params))  # type: ignore[no-untyped-call]
            for n in batch_sizes:
                states = self.init_batch(n)
                batch_obs = make_obs(np.zeros(n), np.zeros(n), np.ones(n, dtype=np.int64))
                out = self._batch[depth](states, batch_obs, now, self.params)
                jax.block_until_ready(out)  # type: ignore[no-untyped-call]

    def _depth(self, depth: int | None) -> int:
        d = self.config.log_sig_depth if depth is None else depth
        if d not in self._single:
            raise ValueError(f"depth {d} is not compiled; available: {self.depths}")
        return d

    # ------------------------------------------------------------------
    def step(
        self,
        state: AssetState,
        obs: ProcessState | Obs,
        now_ns: int | None = None,
        depth: int | None = None,
    ) -> tuple[AssetState, StepOutput]:
        """One tick of one asset. ``now_ns`` defaults to the tick's own timestamp."""
        if isinstance(obs, ProcessState):
            obs = make_obs(obs.magnitude, obs.reference, obs.timestamp_ns)
        now = obs.ts if now_ns is None else jnp.asarray(now_ns, jnp.int64)
        return self._single[self._depth(depth)](state, obs, now, self.params)

    def step_batch(
        self,
        states: AssetState,
        obs_batch: Obs,
        now_ns: int,
        depth: int | None = None,
    ) -> tuple[AssetState, StepOutput]:
        """One tick for each of B assets (leading axis B). ``states`` is donated."""
        now = jnp.asarray(now_ns, jnp.int64)
        return self._batch[self._depth(depth)](states, obs_batch, now, self.params)

    # ------------------------------------------------------------------
    def scan(
        self,
        state: AssetState,
        ys: Any,
        refs: Any | None = None,
        ts: Any | None = None,
        depth: int | None = None,
    ) -> tuple[AssetState, StepOutput]:
        """Step a whole series in one ``lax.scan`` (event clock: now = each tick's ts).

        Timestamps default to 1, 2, 3, ... ns, so no tick is sparse or stale.
        Returns the final state and the stacked outputs.
        """
        ys = jnp.asarray(ys, jnp.float64)
        refs = ys if refs is None else jnp.asarray(refs, jnp.float64)
        ts = (
            jnp.arange(1, ys.shape[0] + 1, dtype=jnp.int64)
            if ts is None
            else jnp.asarray(ts, jnp.int64)
        )
        scan = _compiled_scan(layout_config(self.config))
        return scan(state, ys, refs, ts, self.params, self._depth(depth))


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
