"""Speed: step latency, batch throughput, fit_history, compile time, memory, peers.

    .venv/bin/python -m bench.speed [--quick]

All figures are wall-clock (``time.perf_counter_ns``) on this process, with
the shipped config (``PredictorConfig()``), in this order:

1. the JAX dispatch floor: a jitted ``x + 1`` on a float64 scalar, called
   and waited for (``block_until_ready``); every latency is also given as a
   multiple of it;
2. warm-up: constructing ``UniversalPredictor`` compiles the single-asset
   graph of every depth of ``shed_ladder`` (with the JAX persistent
   compilation cache enabled, a cache hit loads instead of compiling: the
   header says whether it was);
3. ``fit_history`` on a seeded random walk: the first call includes the
   scan's compilation, the second (another predictor, same graph) does not;
4. single-asset latency after warm-up, continuing the fitted state:
   ``UniversalPredictor.step`` (result transferred to the host) at each
   refit interval K of ``REFIT_INTERVALS``, p50 / p99 / p99.9 over all
   ticks, over the ticks without a refit and over the refit ticks; then
   the p50 at each depth of the ladder;
5. ``FunctionalPredictor.step_batch`` throughput in asset-ticks per second
   for batches of the fitted state (phases staggered, so about 1/K of the
   assets refit per call; the first call, which compiles the batch size, is
   timed apart), at each K up to 1,024 assets and at the default K above;
6. river ``SNARIMAX(2,1,1)`` and ``HoltWinters`` per tick (``learn_one`` +
   ``forecast(horizon=1)``) as a peer reference;
7. where the time goes: the tick graph and the refit graph on one asset,
   and each refit stage (window z-score, WTMM, kernels A-C's fits, kernel B
   also with the finite-difference solver) and kernel D's per-tick update
   jitted alone on one window;
8. peak resident memory (``ru_maxrss``) after each stage.

Timestamps are synthetic, 1 ms apart, with ``now`` = the tick's timestamp,
so that a busy host cannot make ticks stale or sparse.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import functools
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import NDArray

import predictor.core  # noqa: F401  (float64)
from bench import metrics as M
from bench.accuracy import GENERIC_RIVER, log
from predictor.api import UniversalPredictor
from predictor.config import PredictorConfig
from predictor.core import sia
from predictor.core.functional import FunctionalPredictor, make_obs
from predictor.core.kernels import a_wiener, b_dgm, c_levy, d_signature
from predictor.core.state import PackedState
from predictor.core.types import ProcessState

FloatArray = NDArray[np.float64]

TICK_NS = 1_000_000
P50_TARGET_US = 150.0
SNARIMAX_RATIO_TARGET = 12.0
REFIT_TICK_TARGET_US = 1502.0  # the single-rate step's p50 before two rates
THROUGHPUT_TARGET = 50_000.0
THROUGHPUT_AT = 1024
FIT_TARGET_S = 1.5
REFIT_INTERVALS = (1, 8, 16, 32, 64)


@dataclass(frozen=True)
class Sizes:
    """Repetitions of each measurement."""

    history: int
    latency: int
    per_depth: int
    batch: tuple[tuple[int, int], ...]  # (assets, timed calls)
    river: int
    components: int


FULL = Sizes(10_000, 2000, 300, ((1, 200), (64, 16), (1024, 16), (8192, 16)), 3000, 200)
QUICK = Sizes(1_000, 300, 100, ((1, 50), (64, 8), (1024, 8)), 500, 30)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def quantiles_us(ns: Sequence[int]) -> tuple[float, float, float]:
    """p50, p99, p99.9 in microseconds."""
    us = np.asarray(ns, dtype=np.float64) / 1e3
    p50, p99, p999 = np.percentile(us, [50.0, 99.0, 99.9])
    return float(p50), float(p99), float(p999)


def dispatch_floor(reps: int) -> list[int]:
    """Per-call ns of a trivial jitted function (dispatch + wait), after compilation."""
    f = jax.jit(lambda x: x + 1.0)
    x = jnp.asarray(1.0, dtype=jnp.float64)
    f(x).block_until_ready()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        f(x).block_until_ready()
        out.append(time.perf_counter_ns() - t0)
    return out


def random_walk(n: int, seed: int = 5) -> FloatArray:
    """Seeded Gaussian random walk started at 100."""
    return 100.0 + np.cumsum(np.random.default_rng(seed).standard_normal(n))


def universal_latency(up: UniversalPredictor, ys: FloatArray, ts0: int) -> list[int]:
    """ns per ``UniversalPredictor.step`` over ``ys`` (timestamps from ``ts0``)."""
    out = []
    for i, y in enumerate(ys):
        ts = ts0 + i * TICK_NS
        obs = ProcessState.of(float(y), ts)
        t0 = time.perf_counter_ns()
        up.step(obs, now_ns=ts)
        out.append(time.perf_counter_ns() - t0)
    return out


def scheduled_refits(count0: int, n: int, k: int, phase: int = 0) -> NDArray[np.bool_]:
    """Which of ``n`` ticks after ``count0`` accepted ticks refit on schedule (phase 0)."""
    counts = count0 + 1 + np.arange(n)
    return (counts + phase) % k == 0


@dataclass(frozen=True)
class Latency:
    """UniversalPredictor.step at one refit interval: all ticks, tick-only, refit ticks."""

    k: int
    all: tuple[float, float, float]
    fast: tuple[float, float, float]
    refit: tuple[float, float, float]


def latency_at(up: UniversalPredictor, k: int, ys: FloatArray, ts0: int) -> Latency:
    """Step latency with ``refit_interval = k`` (switched in place: nothing compiles)."""
    up.functional.set_refit_interval(k)
    count0 = int(up.view.fast.count)
    ns = np.asarray(universal_latency(up, ys, ts0))
    refit = scheduled_refits(count0, ns.size, k)
    nan3 = (math.nan, math.nan, math.nan)
    return Latency(
        k,
        quantiles_us(ns.tolist()),
        quantiles_us(ns[~refit].tolist()) if (~refit).any() else nan3,
        quantiles_us(ns[refit].tolist()) if refit.any() else nan3,
    )


@dataclass(frozen=True)
class BatchResult:
    """Throughput of ``step_batch`` at one batch size and refit interval."""

    assets: int
    k: int
    first_call_s: float
    calls: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Asset-ticks per second over the timed calls."""
        return self.assets * self.calls / self.seconds


def batch_throughput(
    fp: FunctionalPredictor, warm: PackedState, assets: int, k: int, calls: int, ts0: int
) -> BatchResult:
    """``calls`` timed ``step_batch`` calls (a multiple of K: every asset refits as often).

    The batch holds copies of the fitted state with phases 0 .. assets - 1,
    so each call carries about ``assets / K`` refits. One untimed call first
    (compiles the batch size).
    """
    fp.set_refit_interval(k)
    states = fp.replicate(warm, assets)
    last = float(fp.view(jax.device_get(warm)).buffer[-1])
    rng = np.random.default_rng(assets)
    times = []
    for c in range(calls + 1):
        ys = last + rng.standard_normal(assets)
        ts = ts0 + c * TICK_NS
        obs = make_obs(ys, ys, np.full(assets, ts, dtype=np.int64))
        t0 = time.perf_counter()
        states, _ = fp.step_batch(states, obs, ts, donate=True)
        jax.block_until_ready(states)
        times.append(time.perf_counter() - t0)
    return BatchResult(assets, k, times[0], calls, float(sum(times[1:])))


def river_per_tick(make: Callable[[], Any], ys: FloatArray, warm: int = 100) -> float:
    """Mean microseconds per ``learn_one`` + ``forecast(horizon=1)`` after ``warm`` ticks."""
    model = make()
    for y in ys[:warm]:
        model.learn_one(float(y))
    t0 = time.perf_counter_ns()
    for y in ys[warm:]:
        model.learn_one(float(y))
        model.forecast(horizon=1)
    return (time.perf_counter_ns() - t0) / 1e3 / (ys.size - warm)


def _median_us(f: Callable[[], Any], reps: int) -> float:
    """Median microseconds of ``f()`` waited for, after one untimed call (compilation)."""
    jax.block_until_ready(f())
    ns = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        jax.block_until_ready(f())
        ns.append(time.perf_counter_ns() - t0)
    return float(np.median(ns)) / 1e3


def component_profile(
    cfg: PredictorConfig, fp: FunctionalPredictor, state: PackedState, reps: int
) -> list[tuple[str, float]]:
    """p50 microseconds of the tick and refit graphs, and of each refit stage alone."""
    z = sia.standardize(jnp.asarray(random_walk(cfg.wtmm_buffer_size, seed=11)))
    depth = cfg.log_sig_depth
    fd = cfg.replace(dgm_solver="fd")
    obs = make_obs(100.0, 100.0, 10**12)
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("tick graph (fast rate, device)", lambda: fp.tick(state, obs, obs.ts, depth)),
        ("refit graph (slow rate, device)", lambda: fp.refit(state, depth)),
        ("refit: window z-score", functools.partial(jax.jit(sia.standardize), z)),
        (
            "refit: Hölder exponent (WTMM)",
            functools.partial(jax.jit(sia.holder_exponent, static_argnames="cfg"), z, cfg=cfg),
        ),
        (
            f"refit: kernel A ({cfg.wiener_method}, order <= {cfg.wiener_order})",
            functools.partial(jax.jit(functools.partial(a_wiener.refit, cfg=cfg)), z),
        ),
        (
            f"refit: kernel B (DGM, {cfg.dgm_train_steps} Adam steps)",
            functools.partial(jax.jit(functools.partial(b_dgm.refit, cfg=cfg)), b_dgm.init(cfg), z),
        ),
        (
            "refit: kernel B (finite differences, for comparison)",
            functools.partial(jax.jit(functools.partial(b_dgm.refit, cfg=fd)), b_dgm.init(fd), z),
        ),
        (
            "refit: kernel C (Lévy fit)",
            functools.partial(jax.jit(functools.partial(c_levy.refit, cfg=cfg)), z),
        ),
        (
            f"tick: kernel D (log-signature depth {depth} + RLS)",
            functools.partial(
                jax.jit(functools.partial(d_signature.update, cfg=cfg, depth=depth)),
                d_signature.init(cfg),
                z,
            ),
        ),
    ]
    out = []
    for name, f in stages:
        log(f"speed: component {name}")
        out.append((name, _median_us(f, reps)))
    return out


def _fmt3(q: tuple[float, float, float]) -> str:
    return " / ".join("—" if math.isnan(x) else f"{x:,.0f}" for x in q)


def run(sizes: Sizes) -> list[str]:
    """Markdown section with every speed figure."""
    cfg = PredictorConfig()
    rss: list[tuple[str, float]] = [("start (JAX imported)", peak_rss_mib())]
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")

    log("speed: dispatch floor")
    floor = quantiles_us(dispatch_floor(2000))
    floor_p50 = floor[0]

    log("speed: warm-up (compiling every depth graph)")
    t0 = time.perf_counter()
    up = UniversalPredictor(cfg)
    warmup_s = time.perf_counter() - t0
    rss.append(("after warm-up", peak_rss_mib()))

    log(f"speed: fit_history on {sizes.history:,} samples (twice)")
    n_lat = sizes.latency * len(REFIT_INTERVALS)
    series = random_walk(sizes.history + 100 + n_lat + 3 * sizes.per_depth)
    hist = series[: sizes.history]
    t0 = time.perf_counter()
    verdict = up.fit_history(hist)
    fit_first_s = time.perf_counter() - t0
    other = UniversalPredictor(cfg, warmup=False)
    t0 = time.perf_counter()
    other.fit_history(hist)
    fit_second_s = time.perf_counter() - t0
    del other
    rss.append(("after fit_history", peak_rss_mib()))

    pos = sizes.history  # next unused value of the series; timestamps continue the fit's

    def take(n: int) -> tuple[FloatArray, int]:
        nonlocal pos
        chunk, ts = series[pos : pos + n], sizes.history + (pos - sizes.history + 1) * TICK_NS
        pos += n
        return chunk, ts

    universal_latency(up, *take(100))  # first ticks after the fit: not timed
    latencies = []
    for k in REFIT_INTERVALS:
        log(f"speed: single-asset latency at K = {k} ({sizes.latency:,} ticks)")
        latencies.append(latency_at(up, k, *take(sizes.latency)))
    up.functional.set_refit_interval(cfg.refit_interval)
    fp = up.functional
    depth_p50: dict[int, float] = {}
    for depth in fp.depths:
        up.set_depth(depth)
        depth_p50[depth] = quantiles_us(universal_latency(up, *take(sizes.per_depth)))[0]
    up.set_depth(cfg.log_sig_depth)
    state = up.state
    ts0 = take(0)[1]
    rss.append(("after single-asset latency", peak_rss_mib()))

    batches: list[BatchResult] = []
    for assets, calls in sizes.batch:
        ks = REFIT_INTERVALS if assets <= THROUGHPUT_AT else (cfg.refit_interval,)
        for k in ks:
            n_calls = max(calls, k)
            log(f"speed: step_batch at {assets:,} assets, K = {k} ({n_calls} timed calls)")
            batches.append(batch_throughput(fp, state, assets, k, n_calls, ts0))
            ts0 += (n_calls + 1) * TICK_NS
        rss.append((f"after step_batch at {assets:,} assets", peak_rss_mib()))
    fp.set_refit_interval(cfg.refit_interval)

    log("speed: river peers")
    peer_ys = random_walk(sizes.river + 100, seed=9)
    snarimax_us = river_per_tick(GENERIC_RIVER["river SNARIMAX(2,1,1)"], peer_ys)
    holt_us = river_per_tick(GENERIC_RIVER["river HoltWinters(0.5, 0.1)"], peer_ys)
    profile = component_profile(cfg, fp, state, sizes.components)

    def x_floor(us: float) -> str:
        return f"{us / floor_p50:,.0f}x"

    default = next(lat for lat in latencies if lat.k == cfg.refit_interval)
    lat_rows = [
        [
            f"UniversalPredictor.step, K = {lat.k}"
            + (" (default)" if lat.k == cfg.refit_interval else ""),
            _fmt3(lat.all),
            _fmt3(lat.fast),
            _fmt3(lat.refit),
            f"{lat.all[0] / snarimax_us:,.1f}x",
        ]
        for lat in latencies
    ]
    cost_rows = [
        ["dispatch floor (jitted x + 1), p50 / p99", f"{floor[0]:.1f} / {floor[1]:.1f} us", "1x"],
        *[
            [
                f"UniversalPredictor.step p50 at depth {d} (K = {cfg.refit_interval})",
                f"{p:,.0f} us",
                x_floor(p),
            ]
            for d, p in depth_p50.items()
        ],
        [
            f"river SNARIMAX(2,1,1) per tick ({sizes.river:,} ticks)",
            f"{snarimax_us:,.1f} us",
            x_floor(snarimax_us),
        ],
        [
            f"river HoltWinters(0.5, 0.1) per tick ({sizes.river:,} ticks)",
            f"{holt_us:,.1f} us",
            x_floor(holt_us),
        ],
        [
            f"warm-up: compile the graphs of {len(fp.depths)} depths {fp.depths}",
            f"{warmup_s:.1f} s",
            "",
        ],
        [f"fit_history({sizes.history:,}), first call (compile + run)", f"{fit_first_s:.1f} s", ""],
        [
            f"fit_history({sizes.history:,}), second call",
            f"{fit_second_s:.2f} s ({1e6 * fit_second_s / sizes.history:,.0f} us/sample)",
            "",
        ],
    ]
    at = next((b for b in batches if b.assets == THROUGHPUT_AT and b.k == cfg.refit_interval), None)
    p50 = default.all[0]
    target_rows = [
        [
            f"UniversalPredictor.step p50 (K = {cfg.refit_interval})",
            f"{p50:,.0f} us",
            f"<= {P50_TARGET_US:,.0f} us",
            M.verdict(p50 <= P50_TARGET_US),
        ],
        [
            "... relative to river SNARIMAX per tick (same run)",
            f"{p50 / snarimax_us:,.1f}x",
            f"<= {SNARIMAX_RATIO_TARGET:g}x",
            M.verdict(p50 / snarimax_us <= SNARIMAX_RATIO_TARGET),
        ],
        [
            "refit ticks p50",
            f"{default.refit[0]:,.0f} us",
            f"<= {REFIT_TICK_TARGET_US:,.0f} us",
            M.verdict(default.refit[0] <= REFIT_TICK_TARGET_US),
        ],
        [
            f"step_batch throughput at {THROUGHPUT_AT:,} assets",
            "—" if at is None else f"{at.per_second:,.0f} asset-ticks/s",
            f">= {THROUGHPUT_TARGET:,.0f} asset-ticks/s",
            M.verdict(None if at is None else at.per_second >= THROUGHPUT_TARGET),
        ],
        [
            f"fit_history({sizes.history:,}) after compilation",
            f"{fit_second_s:.2f} s",
            f"<= {FIT_TARGET_S:g} s" if sizes.history == 10_000 else "(10,000 samples only)",
            M.verdict(fit_second_s <= FIT_TARGET_S if sizes.history == 10_000 else None),
        ],
    ]
    batch_rows = [
        [
            f"{b.assets:,}",
            str(b.k),
            f"{b.first_call_s:.1f}",
            str(b.calls),
            f"{1e3 * b.seconds / b.calls:,.2f}",
            f"{b.per_second:,.0f}",
            f"{1e6 / b.per_second:,.1f}",
        ]
        for b in batches
    ]
    devices = ", ".join(str(d) for d in jax.devices())
    return [
        "## Speed",
        "",
        f"JAX {jax.__version__} on {devices}, {os.cpu_count()} cores; shipped config "
        f"(window {cfg.wtmm_buffer_size}, DGM solver '{cfg.dgm_solver}', "
        f"{cfg.dgm_train_steps} Adam steps per refit, refit_interval K = {cfg.refit_interval}, "
        f"refit_timing '{cfg.refit_timing}', depth ladder {cfg.shed_ladder}). "
        + (
            f"JAX persistent compilation cache: on ({cache}): a hit loads instead of compiling."
            if cache
            else "JAX persistent compilation cache: off (compile times are cold)."
        )
        + f" fit_history verdict: {verdict}.",
        "",
        "### Targets",
        "",
        M.markdown_table(["figure", "measured", "target", "pass"], target_rows),
        "",
        "### Single asset: two rates at each refit interval K",
        "",
        f"{sizes.latency:,} ticks per K, continuing one fitted state (K switched in place, nothing "
        "recompiles). 'tick only' are the ticks without a scheduled refit, 'refit ticks' the "
        "others (the refit runs after the result is out; the figure is the call's wall time).",
        "",
        M.markdown_table(
            [
                "call",
                "all ticks p50 / p99 / p99.9 (us)",
                "tick only p50 / p99 / p99.9",
                "refit ticks p50 / p99 / p99.9",
                "p50 / SNARIMAX",
            ],
            lat_rows,
        ),
        "",
        "### Costs",
        "",
        M.markdown_table(["figure", "measured", "x dispatch floor (p50)"], cost_rows),
        "",
        "### step_batch throughput (tick under vmap, due refits mapped one by one)",
        "",
        M.markdown_table(
            [
                "assets",
                "K",
                "first call, s (compile + run)",
                "timed calls",
                "ms per call",
                "asset-ticks/s",
                "us per asset-tick",
            ],
            batch_rows,
        ),
        "",
        "### Where the time goes",
        "",
        "The tick and refit graphs on one asset, and each refit stage jitted alone on one "
        f"window of the shipped config, p50 over {sizes.components} calls.",
        "",
        M.markdown_table(
            ["stage", "p50 (us)", "x dispatch floor"],
            [[name, f"{us:,.0f}", x_floor(us)] for name, us in profile],
        ),
        "",
        "### Peak resident memory (ru_maxrss, cumulative)",
        "",
        M.markdown_table(["stage", "peak RSS (MiB)"], [[s, f"{m:,.0f}"] for s, m in rss]),
        "",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the speed tables (markdown) on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer ticks, no 8,192-asset batch")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    lines = run(QUICK if args.quick else FULL)
    lines.append(f"Speed benchmark wall time: {time.perf_counter() - t0:.0f} s.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
