"""A tuning export reaches a running daemon through ``reload``.

A real ``predictord`` runs on a config.toml; ``OptimizationResult.export_to_toml``
writes tuned sensitivities into that very file, and the real ``predictorctl
reload`` (a subprocess) makes the daemon apply them in place: the reply,
``status``, the audit record and the predictions that follow (bit for bit
those of an offline ``FunctionalPredictor`` whose sensitivities switch at the
same tick) all show the new values. A structural parameter exported the same
way is reported as needing ``--reinit`` and is not applied.

The daemon uses the predictor table and settings of ``test_daemon_e2e`` so
that both share their compiled graphs through the persistent XLA cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import msgpack
import numpy as np
import pytest
import zmq

from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor, make_obs
from predictor.core.types import MODES
from predictor.ipc.shm import segment_path
from predictor.tuning.result import OptimizationResult
from tests.daemon_harness import (
    NOT_PUBLISHED,
    REPO,
    TEST_CFG,
    Collector,
    Daemon,
    Feeder,
    base_daemon_table,
    enable_cache_in_process,
    result_fields,
    same_bits,
    write_config,
)

DEPTH = 3  # pinned (daemon table ``shed``), so the offline reference runs the same graph
LANES = 16  # the daemon's bucket
CFG = TEST_CFG.replace(dgm_solver="fd")
ASSET = "TUNED"
#: Ticks before the export: past the cold start (wtmm_buffer_size = 128), so
#: the weights already move and depend on epsilon and learning_rate.
N_BEFORE, N_AFTER, N_LAYOUT = 140, 30, 10
#: What a fast-tier study found: a tighter CUSUM, sharper and faster weights.
TUNED = {"cusum_h": 4.0, "learning_rate": 2.5, "epsilon": 0.3}


def ctl_command() -> list[str]:
    """The installed ``predictorctl`` console script (its module when not installed)."""
    script = Path(sys.executable).with_name("predictorctl")
    return [str(script)] if script.exists() else [sys.executable, "-m", "predictor.admin.cli"]


def ctl(daemon: Daemon, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ctl_command(), "--socket", str(daemon.admin_path), *argv],
        cwd=REPO,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ctl_json(daemon: Daemon, *argv: str) -> dict[str, Any]:
    done = ctl(daemon, *argv, "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert isinstance(reply, dict)
    return reply


def result(tier: str, **params: Any) -> OptimizationResult:
    return OptimizationResult(
        study_name=f"reload-{tier}",
        tier=tier,
        best_params=params,
        best_objective=0.5,
        total_iterations=40,
        early_stopped=False,
        convergence_delta=0.0,
        timestamp_utc="2026-01-01T00:00:00Z",
    )


class Offline:
    """One asset on lane 0 of a ``LANES``-wide ``step_batch``, as the daemon runs it."""

    def __init__(self, cfg: PredictorConfig) -> None:
        self.fp = FunctionalPredictor(cfg, warmup=False)
        cold = jax.device_get(self.fp.init_state())
        self.states = jax.device_put(
            jax.tree.map(lambda x: np.repeat(np.asarray(x)[None], LANES, axis=0), cold)
        )

    def run(self, ys: np.ndarray, ts: np.ndarray) -> list[dict[str, Any]]:
        """The published fields of each tick (none of these ticks is rejected)."""
        rows = []
        for y0, t0 in zip(ys, ts, strict=True):
            y = np.zeros(LANES)
            y[0] = y0
            t = np.ones(LANES, np.int64)
            t[0] = t0
            self.states, o = self.fp.step_batch(self.states, make_obs(y, y, t), 0, DEPTH)
            h = jax.device_get(o)
            assert not bool(h.rejected[0])
            row = {
                name: np.asarray(getattr(h, name))[0].item()
                for name in h._fields
                if name not in NOT_PUBLISHED and name not in ("weights", "mode")
            }
            row["weights"] = np.asarray(h.weights)[0].tolist()
            row["mode"] = MODES[int(h.mode[0])]
            rows.append(row)
        return rows


class Env:
    def __init__(self, daemon: Daemon, config: Path, collector: Collector, feeder: Feeder):
        self.daemon, self.config, self.collector, self.feeder = daemon, config, collector, feeder

    def feed(self, ys: np.ndarray, ts: np.ndarray, timeout: float = 120.0) -> list[dict[str, Any]]:
        """Send ticks one message each; the published results of exactly those ticks."""
        seen = len(self.published())
        for y, t in zip(ys, ts, strict=True):
            self.feeder.send(msgpack.packb({"asset": ASSET, "y": float(y), "ts": int(t)}))
        deadline = time.monotonic() + timeout
        while len(self.published()) < seen + len(ys):
            assert time.monotonic() < deadline, f"{len(self.published()) - seen} of {len(ys)}"
            assert self.daemon.proc is not None and self.daemon.proc.poll() is None
            time.sleep(0.02)
        msgs = self.published()[seen:]
        assert [m["ts"] for m in msgs] == [int(t) for t in ts]
        return msgs

    def published(self) -> list[dict[str, Any]]:
        return [m for m in self.collector.messages if m["asset"] == ASSET]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    enable_cache_in_process()
    shm_name = f"predictor-test-reload-{os.getpid()}"
    table = {**base_daemon_table(tmp_path, shm_name), "shed": DEPTH}
    config = write_config(tmp_path / "config.toml", predictor={"dgm_solver": "fd"}, daemon=table)
    daemon = Daemon(tmp_path, config).start()
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    collector = Collector(ctx, daemon.predictions_endpoint)
    feeder = Feeder(ctx, daemon.ticks_endpoint)
    try:
        yield Env(daemon, config, collector, feeder)
    finally:
        feeder.close()
        collector.close()
        ctx.destroy(linger=0)
        daemon.kill()
        segment_path(shm_name).unlink(missing_ok=True)


def assert_same_results(published: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(published) == len(expected)
    for k, (message, want) in enumerate(zip(published, expected, strict=True)):
        got = result_fields(message)
        assert got.keys() == want.keys()
        bad = [n for n in want if not same_bits(got[n], want[n])]
        assert not bad, f"tick {k}: {[(n, got[n], want[n]) for n in bad]}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exported_sensitivities_reach_the_running_daemon_through_reload(env: Env) -> None:
    rng = np.random.default_rng(11)
    n = N_BEFORE + N_AFTER + N_LAYOUT
    ys = 100.0 + np.cumsum(rng.normal(size=n))
    ys[N_BEFORE : N_BEFORE + 8] += 6.0  # a jump after the export: the CUSUM threshold matters
    ts = np.arange(1, n + 1, dtype=np.int64)
    before, after, later = np.split(np.arange(n), [N_BEFORE, N_BEFORE + N_AFTER])

    tuned_cfg = CFG.replace(**TUNED)
    reference = Offline(CFG)  # sensitivities switched at the same tick as the daemon's
    untuned = Offline(CFG)  # never switched: what the daemon would publish without the reload
    assert_same_results(env.feed(ys[before], ts[before]), reference.run(ys[before], ts[before]))
    untuned.run(ys[before], ts[before])

    # --- export the fast-tier result into the daemon's own config file ----------
    status0 = ctl_json(env.daemon, "status")
    assert status0["config"]["path"] == str(env.config)
    assert status0["config"]["sha256"] == sha256(env.config)
    old = {k: status0["config"]["sensitivities"][k] for k in TUNED}
    assert old == {k: getattr(CFG, k) for k in TUNED} and old != TUNED
    mutation = result("fast", **TUNED).export_to_toml(env.config)
    assert mutation.changed

    # --- predictorctl reload: applied in place -------------------------------------
    done = ctl(env.daemon, "reload", "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is True and reply["reinitialised"] is False
    assert sorted(reply["applied"]) == sorted(TUNED)
    assert reply["requires_reinit"] == [] and reply["requires_restart"] == []

    status = ctl_json(env.daemon, "status")
    sens = status["config"]["sensitivities"]
    assert {k: sens[k] for k in TUNED} == TUNED
    untouched = {k: v for k, v in sens.items() if k not in TUNED}
    assert untouched == {
        k: v for k, v in status0["config"]["sensitivities"].items() if k in untouched
    }
    assert status["config"]["sha256"] == sha256(env.config)  # it runs the exported file
    assert status["compiles"]["after_warmup"] == 0  # sensitivities are traced: no recompile

    # --- the audit record ------------------------------------------------------------
    log = env.config.parent / "mutations.log"
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert record["study"] == "reload-fast" and record["tier"] == "fast"
    assert record["delta"] == {k: {"old": old[k], "new": TUNED[k]} for k in TUNED}
    assert record["sha256_after"] == status["config"]["sha256"]
    assert record["sha256_before"] == status0["config"]["sha256"]

    # --- the predictions that follow use the new sensitivities -----------------------
    reference.fp.set_sensitivities(tuned_cfg)
    published = env.feed(ys[after], ts[after])
    assert_same_results(published, reference.run(ys[after], ts[after]))
    for m in published:
        # h_t = h (1 + ln(max(kappa, 3) / 3)): halved with h = 8 -> 4.
        factor = 1.0 + math.log(max(m["kurtosis"], 3.0) / 3.0)
        assert m["adaptive_threshold"] == pytest.approx(TUNED["cusum_h"] * factor, rel=1e-12)
        assert m["adaptive_threshold"] < CFG.cusum_h * factor
    stale = untuned.run(ys[after], ts[after])
    assert any(
        not same_bits(m["weights"], s["weights"]) for m, s in zip(published, stale, strict=True)
    ), "epsilon / learning_rate changed nothing: the check could not fail"

    # --- a structural parameter: reported, not applied -----------------------------------
    deep = result("deep", wtmm_num_scales=12).export_to_toml(env.config)
    assert deep.delta == {"wtmm_num_scales": {"old": 16, "new": 12}}
    done = ctl(env.daemon, "reload", "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply == {
        "ok": True,
        "applied": [],
        "requires_reinit": ["wtmm_num_scales"],
        "reinitialised": False,
        "requires_restart": [],
    }
    text = ctl(env.daemon, "reload")
    assert text.returncode == 0, text.stderr
    assert "requires re-initialisation (not applied): wtmm_num_scales" in text.stdout
    assert "predictorctl reload --reinit" in text.stdout
    status = ctl_json(env.daemon, "status")
    assert {k: status["config"]["sensitivities"][k] for k in TUNED} == TUNED
    assert status["compiles"]["after_warmup"] == 0  # no new layout was compiled
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2 and records[1]["delta"] == deep.delta
    # The old layout keeps running from the same states, with the tuned sensitivities.
    assert_same_results(env.feed(ys[later], ts[later]), reference.run(ys[later], ts[later]))
