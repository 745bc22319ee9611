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
   ``UniversalPredictor.step`` (result transferred to the host), and the
   device step ``FunctionalPredictor.step`` waited for; p50 / p99 / p99.9;
   then the p50 at each depth of the ladder;
5. ``FunctionalPredictor.step_batch`` throughput in asset-ticks per second
   for batches of the fitted state (the first call, which compiles the
   batch size, is timed apart);
6. river ``SNARIMAX(2,1,1)`` and ``HoltWinters`` per tick (``learn_one`` +
   ``forecast(horizon=1)``) as a peer reference;
7. where a step's time goes: each stage (window z-score, WTMM, each
   kernel, kernel B also with the finite-difference solver) jitted alone on
   one window, next to the whole step with and without the single-asset
   wrapper of ``FunctionalPredictor.step``;
8. peak resident memory (``ru_maxrss``) after each stage.

Timestamps are synthetic, 1 ms apart, with ``now`` = the tick's timestamp,
so that a busy host cannot make ticks stale or sparse.
"""

from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import functools
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
from predictor.config import PredictorConfig
from predictor.core import sia
from predictor.core.functional import FunctionalPredictor, make_obs
from predictor.core.kernels import a_wiener, b_dgm, c_levy, d_signature
from predictor.core.predictor import UniversalPredictor
from predictor.core.step import AssetState
from predictor.core.types import ProcessState

FloatArray = NDArray[np.float64]

TICK_NS = 1_000_000
P50_TARGET_US = 500.0
P99_TARGET_US = 2000.0
THROUGHPUT_TARGET = 10_000.0
THROUGHPUT_AT = 1024


@dataclass(frozen=True)
class Sizes:
    """Repetitions of each measurement."""

    history: int
    latency: int
    per_depth: int
    batch: tuple[tuple[int, int], ...]  # (assets, timed calls)
    river: int
    components: int


FULL = Sizes(10_000, 2000, 300, ((1, 200), (64, 10), (1024, 3), (8192, 1)), 3000, 200)
QUICK = Sizes(1_000, 300, 100, ((1, 50), (64, 2), (1024, 1)), 500, 30)


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


def functional_latency(
    fp: FunctionalPredictor, state: AssetState, ys: FloatArray, ts0: int, depth: int
) -> tuple[list[int], AssetState]:
    """ns per device step (``FunctionalPredictor.step`` + ``block_until_ready``)."""
    out = []
    for i, y in enumerate(ys):
        ts = ts0 + i * TICK_NS
        obs = make_obs(float(y), float(y), ts)
        t0 = time.perf_counter_ns()
        state, res = fp.step(state, obs, ts, depth)
        jax.block_until_ready(res)
        out.append(time.perf_counter_ns() - t0)
    return out, state


@dataclass(frozen=True)
class BatchResult:
    """Throughput of ``step_batch`` at one batch size."""

    assets: int
    first_call_s: float
    calls: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Asset-ticks per second over the timed calls."""
        return self.assets * self.calls / self.seconds


def batch_throughput(
    fp: FunctionalPredictor, warm: AssetState, assets: int, calls: int, ts0: int
) -> BatchResult:
    """One untimed-for-throughput first call (compiles), then ``calls`` timed calls."""
    states = jax.tree.map(lambda x: jnp.broadcast_to(x, (assets, *x.shape)).copy(), warm)
    last = float(warm.buffer[-1])
    rng = np.random.default_rng(assets)
    times = []
    for k in range(calls + 1):
        ys = last + rng.standard_normal(assets)
        ts = ts0 + k * TICK_NS
        obs = make_obs(ys, ys, np.full(assets, ts, dtype=np.int64))
        t0 = time.perf_counter()
        states, out = fp.step_batch(states, obs, ts)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t0)
    return BatchResult(assets, times[0], calls, float(sum(times[1:])))


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


def component_profile(cfg: PredictorConfig, reps: int) -> list[tuple[str, float]]:
    """p50 microseconds of each stage of a step, each jitted alone on one window."""
    z = sia.standardize(jnp.asarray(random_walk(cfg.wtmm_buffer_size, seed=11)))
    depth = cfg.log_sig_depth
    fd = cfg.replace(dgm_solver="fd")
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("window z-score", functools.partial(jax.jit(sia.standardize), z)),
        (
            "Hölder exponent (WTMM)",
            functools.partial(jax.jit(sia.holder_exponent, static_argnames="cfg"), z, cfg=cfg),
        ),
        (
            f"kernel A ({cfg.wiener_method}, order <= {cfg.wiener_order})",
            functools.partial(
                jax.jit(functools.partial(a_wiener.update, cfg=cfg)), a_wiener.init(cfg), z
            ),
        ),
        (
            f"kernel B (DGM, {cfg.dgm_train_steps} Adam steps)",
            functools.partial(
                jax.jit(functools.partial(b_dgm.update, cfg=cfg)), b_dgm.init(cfg), z
            ),
        ),
        (
            "kernel B (finite differences, for comparison)",
            functools.partial(jax.jit(functools.partial(b_dgm.update, cfg=fd)), b_dgm.init(fd), z),
        ),
        (
            f"kernel C (Lévy, {cfg.levy_substeps} sub-steps)",
            functools.partial(
                jax.jit(functools.partial(c_levy.update, cfg=cfg)), c_levy.init(cfg), z
            ),
        ),
        (
            f"kernel D (log-signature, depth {depth})",
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
    series = random_walk(sizes.history + 100 + 2 * sizes.latency + 3 * sizes.per_depth)
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

    log(f"speed: single-asset latency ({sizes.latency:,} ticks)")
    pos = sizes.history  # next unused value of the series; timestamps continue the fit's

    def take(n: int) -> tuple[FloatArray, int]:
        nonlocal pos
        chunk, ts = series[pos : pos + n], sizes.history + (pos - sizes.history + 1) * TICK_NS
        pos += n
        return chunk, ts

    universal_latency(up, *take(100))  # first ticks after the fit: not timed
    uni = quantiles_us(universal_latency(up, *take(sizes.latency)))
    fp = up.functional
    dev_ns, state = functional_latency(fp, up.state, *take(sizes.latency), cfg.log_sig_depth)
    dev = quantiles_us(dev_ns)
    depth_p50: dict[int, float] = {}
    for depth in fp.depths:
        ns, state = functional_latency(fp, state, *take(sizes.per_depth), depth)
        depth_p50[depth] = quantiles_us(ns)[0]
    ts0 = take(0)[1]
    rss.append(("after single-asset latency", peak_rss_mib()))

    batches: list[BatchResult] = []
    for assets, calls in sizes.batch:
        log(f"speed: step_batch at {assets:,} assets ({calls} timed calls)")
        batches.append(batch_throughput(fp, state, assets, calls, ts0))
        ts0 += (calls + 1) * TICK_NS
        rss.append((f"after step_batch at {assets:,} assets", peak_rss_mib()))

    log("speed: river peers")
    peer_ys = random_walk(sizes.river + 100, seed=9)
    snarimax_us = river_per_tick(GENERIC_RIVER["river SNARIMAX(2,1,1)"], peer_ys)
    holt_us = river_per_tick(GENERIC_RIVER["river HoltWinters(0.5, 0.1)"], peer_ys)
    profile = component_profile(cfg, sizes.components)
    batch_one = next((b for b in batches if b.assets == 1), None)

    def x_floor(us: float) -> str:
        return f"{us / floor_p50:,.0f}x"

    lat_rows = [
        ["dispatch floor (jitted x + 1), p50 / p99", f"{floor[0]:.1f} / {floor[1]:.1f} us", "1x"],
        *[
            [
                f"{name} p50 / p99 / p99.9",
                f"{q[0]:,.0f} / {q[1]:,.0f} / {q[2]:,.0f} us",
                x_floor(q[0]),
            ]
            for name, q in (
                (f"UniversalPredictor.step ({sizes.latency:,} ticks)", uni),
                (f"FunctionalPredictor.step, device only ({sizes.latency:,} ticks)", dev),
            )
        ],
        *[
            [f"FunctionalPredictor.step p50 at depth {d}", f"{p:,.0f} us", x_floor(p)]
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
        [f"warm-up: compile {len(fp.depths)} depth graphs {fp.depths}", f"{warmup_s:.1f} s", ""],
        [f"fit_history({sizes.history:,}), first call (compile + run)", f"{fit_first_s:.1f} s", ""],
        [
            f"fit_history({sizes.history:,}), second call",
            f"{fit_second_s:.1f} s ({1e6 * fit_second_s / sizes.history:,.0f} us/sample)",
            "",
        ],
    ]
    at = next((b for b in batches if b.assets == THROUGHPUT_AT), None)
    target_rows = [
        [
            "UniversalPredictor.step p50",
            f"{uni[0]:,.0f} us",
            f"<= {P50_TARGET_US:,.0f} us",
            M.verdict(uni[0] <= P50_TARGET_US),
        ],
        [
            "UniversalPredictor.step p99",
            f"{uni[1]:,.0f} us",
            f"<= {P99_TARGET_US:,.0f} us",
            M.verdict(uni[1] <= P99_TARGET_US),
        ],
        [
            f"step_batch throughput at {THROUGHPUT_AT:,} assets",
            "—" if at is None else f"{at.per_second:,.0f} asset-ticks/s",
            f">= {THROUGHPUT_TARGET:,.0f} asset-ticks/s",
            M.verdict(None if at is None else at.per_second >= THROUGHPUT_TARGET),
        ],
    ]
    batch_rows = [
        [
            f"{b.assets:,}",
            f"{b.first_call_s:.1f}",
            str(b.calls),
            f"{b.seconds / b.calls:.3f}",
            f"{b.per_second:,.0f}",
            f"{1e6 / b.per_second:,.0f}",
        ]
        for b in batches
    ]
    devices = ", ".join(str(d) for d in jax.devices())
    return [
        "## Speed",
        "",
        f"JAX {jax.__version__} on {devices}, {os.cpu_count()} cores; shipped config "
        f"(window {cfg.wtmm_buffer_size}, DGM solver '{cfg.dgm_solver}', "
        f"{cfg.dgm_train_steps} Adam steps per tick, depth ladder {cfg.shed_ladder}). "
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
        "### Latency and costs",
        "",
        M.markdown_table(["figure", "measured", "x dispatch floor (p50)"], lat_rows),
        "",
        "### step_batch throughput (lax.map of the single step: per-asset results bit-identical)",
        "",
        M.markdown_table(
            [
                "assets",
                "first call, s (compile + run)",
                "timed calls",
                "s per call",
                "asset-ticks/s",
                "us per asset-tick",
            ],
            batch_rows,
        ),
        "",
        "### Where a step's time goes",
        "",
        "Each stage jitted alone on one window of the shipped config, p50 over "
        f"{sizes.components} calls (the fused step shares work and dispatch; the sum is a guide).",
        "",
        M.markdown_table(
            ["stage", "p50 (us)", "x dispatch floor"],
            [
                *[[name, f"{us:,.0f}", x_floor(us)] for name, us in profile],
                *(
                    []
                    if batch_one is None
                    else [
                        [
                            "whole step: step_batch on 1 asset (no per-leaf wrapper)",
                            f"{1e6 * batch_one.seconds / batch_one.calls:,.0f} (mean)",
                            x_floor(1e6 * batch_one.seconds / batch_one.calls),
                        ]
                    ]
                ),
                ["whole step: FunctionalPredictor.step", f"{dev[0]:,.0f}", x_floor(dev[0])],
            ],
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
