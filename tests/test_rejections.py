"""Gate rejections as callers and operators see them.

* ``UniversalPredictor.step``: a NaN tick, a 1e9 outlier after a calm
  window, a timestamp going backwards, one equal to the last and one of 0
  each return the previous valid result with ``rejected=True`` and the
  gate's ``reject_reason``; the state does not move (window, tick count,
  models, fits; for ``out_of_order`` the gate's clock too), and the next
  valid tick leaves the predictor bit-for-bit where a twin that never saw
  the bad tick is. A rejected first
  observation raises ``DomainError`` naming the reason.
* ``compat.FunctionalPredictor``: ``step`` and ``step_batch`` mark the
  rejected results (per lane for a batch).
* The wire and ``predictorctl``: a prediction message carries no
  ``rejected`` key; a rejection row shows its reason.
* A real ``predictord`` (subprocess, ZeroMQ sockets, HTTP metrics): a tick
  going backwards in time and an outlier are published on PUB as
  ``{"asset", "ts", "seq", "rejected": reason}`` with contiguous ``seq``,
  counted in ``predictor_rejects_total{reason="gate_out_of_order"}`` and
  ``{reason="gate_outlier"}`` of a real scrape, and the next tick is
  predicted normally.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
import structlog
import zmq
from prometheus_client.parser import text_string_to_metric_families

from predictor.admin import render
from predictor.api import UniversalPredictor
from predictor.compat import FunctionalPredictor as SpecPredictor
from predictor.compat import ProcessState as SpecState
from predictor.config import PredictorConfig
from predictor.core.gate import REJECT_NAMES
from predictor.core.state import AssetState
from predictor.core.types import PredictionResult, ProcessState
from predictor.errors import DomainError
from predictor.ipc.shm import segment_path
from predictor.ipc.wire import decode_prediction, encode_prediction, encode_rejection
from tests.daemon_harness import (
    CHEAP_MODEL,
    Collector,
    Daemon,
    Feeder,
    base_daemon_table,
    same_bits,
    write_config,
)

#: The daemon tests' cheap model, event clock: every graph compiles in seconds.
CFG = PredictorConfig.from_dict({"clock": "event", **CHEAP_MODEL})
T0 = 1_767_225_600_000_000_000  # ns
TICK = 1_000_000  # 1 ms between ticks
N_CALM = 48  # more than the 32-point window: the outlier test is informative
#: The daemon's one bucket (the shared-memory test's, so the compilation cache serves both).
BUCKET = 64
TIMEOUT_S = 300.0


def calm_walk(n: int, seed: int) -> np.ndarray:
    """A random walk around 100 with unit steps."""
    return 100.0 + np.cumsum(np.random.default_rng(seed).normal(size=n))


def fed(values: np.ndarray) -> UniversalPredictor:
    p = UniversalPredictor(CFG, warmup=False)
    for k, y in enumerate(values):
        p.step(ProcessState.of(float(y), T0 + (k + 1) * TICK))
    return p


def assert_same_tree(a: Any, b: Any) -> None:
    """Bit-for-bit equal pytrees (NaN equal to NaN)."""
    jax.tree.map(np.testing.assert_array_equal, a, b)


def without_gate_and_output(view: AssetState) -> AssetState:
    """The view less what a rejection may write: the gate and the last output's flags."""
    return view._replace(fast=view.fast._replace(gate=None, last_output=None))


def same_result(a: PredictionResult, b: PredictionResult) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return da.keys() == db.keys() and all(same_bits(da[k], db[k]) for k in da)


# --- UniversalPredictor --------------------------------------------------------------


BAD_TICKS = [
    pytest.param(float("nan"), 1, "non_finite", id="nan"),
    pytest.param(1e9, 1, "outlier", id="outlier-1e9"),
    pytest.param(None, -5, "out_of_order", id="ts-backwards"),
    pytest.param(None, 0, "out_of_order", id="ts-equal"),
    pytest.param(None, "zero", "out_of_order", id="ts-zero"),
]


@pytest.mark.parametrize(("bad_y", "ts_step", "reason"), BAD_TICKS)
def test_rejected_tick_returns_previous_result_marked_and_changes_no_state(
    bad_y: float | None, ts_step: int | str, reason: str
) -> None:
    ys = calm_walk(N_CALM + 1, seed=3)
    p, twin = fed(ys[:N_CALM]), fed(ys[:N_CALM])
    last_ts = T0 + N_CALM * TICK
    previous = p.step(ProcessState.of(float(ys[N_CALM - 1]) + 0.5, last_ts + TICK))
    twin.step(ProcessState.of(float(ys[N_CALM - 1]) + 0.5, last_ts + TICK))
    last_ts += TICK
    assert not previous.rejected and previous.reject_reason == "none"

    before = p.view
    buffer_before = p.signal_buffer
    y = float(ys[N_CALM - 1]) if bad_y is None else bad_y
    ts = 0 if ts_step == "zero" else last_ts + int(ts_step) * TICK
    with structlog.testing.capture_logs() as logs:
        got = p.step(ProcessState.of(y, ts))

    assert got.rejected is True and got.reject_reason == reason
    assert same_result(dataclasses.replace(got, rejected=False, reject_reason="none"), previous)
    assert [e["reason"] for e in logs if e["event"] == "tick_rejected"] == [reason]
    after = p.view
    np.testing.assert_array_equal(p.signal_buffer, buffer_before)
    assert int(after.fast.count) == int(before.fast.count)
    assert_same_tree(without_gate_and_output(after), without_gate_and_output(before))
    if reason == "out_of_order":  # not even the gate's clock moves
        assert_same_tree(after.fast.gate, before.fast.gate)

    # The next valid tick is accepted, exactly as if the bad one never came.
    nxt = ProcessState.of(float(ys[N_CALM]), max(ts, last_ts) + TICK)
    accepted = p.step(nxt)
    reference = twin.step(nxt)
    assert not accepted.rejected and accepted.reject_reason == "none"
    assert int(p.view.fast.count) == int(before.fast.count) + 1
    assert p.signal_buffer[-1] == float(ys[N_CALM])
    assert same_result(accepted, reference)
    assert_same_tree(p.view, twin.view)


def test_reason_names_follow_the_gate_codes() -> None:
    assert REJECT_NAMES[0] == "none"
    assert set(REJECT_NAMES[1:]) == {"non_finite", "outlier", "out_of_order"}


@pytest.mark.parametrize(
    ("y", "ts", "reason"),
    [(float("nan"), T0, "non_finite"), (1.0, 0, "out_of_order"), (1.0, -TICK, "out_of_order")],
)
def test_rejected_first_observation_raises_domain_error_naming_the_reason(
    y: float, ts: int, reason: str
) -> None:
    p = UniversalPredictor(CFG, warmup=False)
    with pytest.raises(DomainError, match=reason):
        p.step(ProcessState.of(y, ts))
    assert int(p.view.fast.count) == 0
    first = p.step(ProcessState.of(100.0, T0 + TICK))  # then a valid one starts the asset
    assert not first.rejected and int(p.view.fast.count) == 1


def test_fit_history_after_live_ticks_is_not_rejected_as_out_of_order() -> None:
    ys = calm_walk(N_CALM + CFG.wtmm_buffer_size, seed=4)
    p = fed(ys[:N_CALM])
    p.fit_history(ys[N_CALM:])
    view = p.view
    assert int(view.fast.count) == len(ys)
    np.testing.assert_array_equal(p.signal_buffer, ys[-CFG.wtmm_buffer_size :])
    assert int(view.fast.gate.last_ts) == T0 + N_CALM * TICK + CFG.wtmm_buffer_size


# --- compat.FunctionalPredictor --------------------------------------------------------


def test_spec_functional_step_marks_rejections() -> None:
    fp = SpecPredictor(CFG, warmup=False)
    state = fp.init_state()
    ys = calm_walk(N_CALM, seed=5)
    for k, y in enumerate(ys):
        state, res = fp.step(state, SpecState(np.array([y]), np.array([y]), T0 + (k + 1) * TICK))
    assert not res.rejected
    last_ts = T0 + N_CALM * TICK
    state, back = fp.step(state, SpecState(np.array([ys[-1]]), np.array([ys[-1]]), last_ts - 1))
    assert back.rejected and back.reject_reason == "out_of_order"
    assert same_result(dataclasses.replace(back, rejected=False, reject_reason="none"), res)
    state, far = fp.step(state, SpecState(1e9, 1e9, last_ts + TICK))
    assert far.rejected and far.reject_reason == "outlier"
    state, ok = fp.step(state, SpecState(ys[-1] + 0.1, ys[-1] + 0.1, last_ts + 2 * TICK))
    assert not ok.rejected and ok.reject_reason == "none"


def test_spec_functional_step_batch_marks_each_lane() -> None:
    fp = SpecPredictor(CFG, warmup=False)
    n = 3
    states = fp.init_batch(n)
    walks = np.stack([calm_walk(N_CALM, seed=10 + i) for i in range(n)])
    for k in range(N_CALM):
        ts = np.full(n, T0 + (k + 1) * TICK)
        states, results = fp.step_batch(states, SpecState(walks[:, k], walks[:, k], ts))
    last_ts = T0 + N_CALM * TICK
    y = np.array([walks[0, -1] + 0.1, 1e9, walks[2, -1] + 0.1])
    ts = np.array([last_ts + TICK, last_ts + TICK, last_ts - TICK])
    states, marked = fp.step_batch(states, SpecState(y, y, ts), now_ns=last_ts + TICK)
    assert [r.rejected for r in marked] == [False, True, True]
    assert [r.reject_reason for r in marked] == ["none", "outlier", "out_of_order"]
    for lane in (1, 2):
        unmarked = dataclasses.replace(marked[lane], rejected=False, reject_reason="none")
        assert same_result(unmarked, results[lane])


# --- wire and rendering ----------------------------------------------------------------


def _result(**over: Any) -> PredictionResult:
    fields: dict[str, Any] = {
        name: 0.5
        for name in (
            "predicted_next",
            "holder_exponent",
            "cusum_drift",
            "distance_to_collapse",
            "free_energy",
            "kurtosis",
            "dgm_entropy",
            "adaptive_threshold",
            "predicted_value",
            "interval_lower",
            "interval_upper",
        )
    }
    fields.update(
        weights=(0.25, 0.25, 0.25, 0.25),
        sinkhorn_converged=True,
        degraded_inference_mode=False,
        emergency_mode=False,
        regime_change_detected=False,
        mode_collapse_warning=False,
        mode="Standard",
    )
    fields.update(over)
    return PredictionResult(**fields)


def test_prediction_message_has_no_rejected_key_and_a_rejected_result_is_refused() -> None:
    body = decode_prediction(encode_prediction("A", 3, 7, 10, _result().to_dict()))
    assert "rejected" not in body and "reject_reason" not in body
    assert PredictionResult.from_dict(body) == _result()
    bad = _result(rejected=True, reject_reason="out_of_order").to_dict()
    with pytest.raises(ValueError, match="encode_rejection"):
        encode_prediction("A", 3, 7, 10, bad)
    frames = encode_rejection("A", 4, 6, "out_of_order")
    expected = {"asset": "A", "seq": 4, "ts": 6, "rejected": "out_of_order"}
    assert decode_prediction(frames) == expected


def test_watch_row_shows_the_reason() -> None:
    wire = {"asset": "A", "seq": 4, "ts": T0, "rejected": "out_of_order"}
    assert render.prediction_row(wire).split()[1:] == ["A", "4", "rejected:", "out_of_order"]
    result = dict(_result(rejected=True, reject_reason="outlier").to_dict(), asset="A", seq=5)
    assert render.prediction_row(result).split()[-2:] == ["rejected:", "outlier"]
    accepted = dict(_result().to_dict(), asset="A", seq=6, ts=T0, latency_ns=2500)
    row = render.prediction_row(accepted)
    assert "rejected" not in row and "Standard" in row


# --- a real daemon ---------------------------------------------------------------------

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Scrape:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def rejects(sample: Scrape, label: str) -> float:
    return sample[("predictor_rejects_total", (("reason", label),))]


def wait_for(collector: Collector, asset: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT_S
    msgs: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        msgs = [m for m in collector.messages if m["asset"] == asset]
        if len(msgs) >= n:
            return msgs
        time.sleep(0.05)
    raise TimeoutError(f"{asset}: {len(msgs)} of {n} messages after {TIMEOUT_S} s")


def test_daemon_publishes_and_counts_out_of_order_and_outlier_rejections(tmp_path: Path) -> None:
    shm_name = f"predictor-test-reject-{os.getpid()}"
    table = {
        **base_daemon_table(tmp_path, shm_name),
        "batch_buckets": [BUCKET],
        "initial_capacity": BUCKET,
    }
    config = write_config(tmp_path / "config.toml", predictor=CHEAP_MODEL, daemon=table)
    daemon = Daemon(tmp_path, config)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        daemon.start()
        url = daemon.status["endpoints"]["metrics"]
        before = scrape(url)
        # Every gate reason is exported from the start, at 0.
        for name in REJECT_NAMES[1:]:
            assert rejects(before, f"gate_{name}") == 0.0
        collector = Collector(ctx, daemon.predictions_endpoint)
        feeder = Feeder(ctx, daemon.ticks_endpoint)

        ys = calm_walk(N_CALM + 2, seed=7)
        ts = [T0 + (k + 1) * TICK for k in range(N_CALM)]
        for y, t in zip(ys[:N_CALM], ts, strict=True):
            feeder.send_ticks([("R", float(y), t)])
        last = ts[-1]
        bad = [
            ("R", float(ys[N_CALM]), last - 10 * TICK),  # backwards
            ("R", float(ys[N_CALM]), last),  # equal to the last accepted
            ("R", 1e9, last + TICK),  # a catastrophic outlier, in order
        ]
        feeder.send_ticks(bad)
        feeder.send_ticks([("R", float(ys[N_CALM + 1]), last + 2 * TICK)])
        msgs = wait_for(collector, "R", N_CALM + 4)
        after = scrape(url)
        status = daemon.admin("status")

        assert len(msgs) == N_CALM + 4
        assert [m["seq"] for m in msgs] == list(range(1, N_CALM + 5))
        sent_ts = [*ts, last - 10 * TICK, last, last + TICK, last + 2 * TICK]
        assert [m["ts"] for m in msgs] == sent_ts
        predictions = msgs[:N_CALM] + msgs[-1:]
        assert all("rejected" not in m and "reject_reason" not in m for m in predictions)
        assert all(math.isfinite(m["predicted_value"]) for m in predictions)
        assert msgs[N_CALM : N_CALM + 3] == [
            {"asset": "R", "ts": last - 10 * TICK, "seq": N_CALM + 1, "rejected": "out_of_order"},
            {"asset": "R", "ts": last, "seq": N_CALM + 2, "rejected": "out_of_order"},
            {"asset": "R", "ts": last + TICK, "seq": N_CALM + 3, "rejected": "outlier"},
        ]
        row = render.prediction_row(msgs[N_CALM])
        assert row.split()[-2:] == ["rejected:", "out_of_order"]

        assert rejects(after, "gate_out_of_order") - rejects(before, "gate_out_of_order") == 2
        assert rejects(after, "gate_outlier") - rejects(before, "gate_outlier") == 1
        assert rejects(after, "gate_non_finite") == rejects(before, "gate_non_finite")
        ticks = ("predictor_ticks_total", ())
        assert after[ticks] - before[ticks] == N_CALM + 4  # valid on the wire: all of them
        predicted = ("predictor_predictions_total", ())
        assert after[predicted] - before[predicted] == N_CALM + 1
        assert status["assets"] == 1

        feeder.close()
        collector.close()
        assert daemon.stop() == 0
        assert daemon.events("shutdown_complete")[-1]["rejected_by_gate"] == 3
    finally:
        with contextlib.suppress(Exception):
            ctx.destroy(linger=0)
        daemon.kill()
        segment_path(shm_name).unlink(missing_ok=True)
