"""Timestamp plausibility, answered schema rejects, ``drain`` waiting for the exit, metrics.

* ``Intake`` on real ZeroMQ sockets: with the wall clock a ``ts`` in seconds
  (dated 1970) or an hour ahead is refused as ``implausible_ts`` and
  counted; with the event clock the same small ``ts`` is a valid tick.
  Every refused tick whose asset is readable reaches ``on_reject`` and
  ``Publisher.publish_rejects`` answers it on the asset's PUB topic with
  the reason; a reject without a readable asset is only counted.
* A real daemon: ``/metrics`` carries ``predictor_build_info``, the
  ``process_*`` family and latency buckets up to 10 s; ``predictorctl
  drain`` returns only once the daemon process has exited.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import numpy as np
import pytest
import structlog
import zmq
from prometheus_client.parser import text_string_to_metric_families

from predictor import __version__
from predictor.admin import cli
from predictor.daemon.assets import AssetTable
from predictor.daemon.intake import Intake
from predictor.daemon.metrics import DaemonMetrics
from predictor.daemon.publish import Publisher
from predictor.ipc.endpoints import make_pull
from predictor.ipc.wire import (
    REJECT_REASONS,
    TS_EARLIEST_PLAUSIBLE,
    Reject,
    RejectReason,
    decode_prediction,
    decode_ticks,
    plausible_window,
)
from tests.daemon_harness import (
    CHEAP_MODEL,
    Collector,
    Daemon,
    Feeder,
    base_daemon_table,
    write_config,
)

NOW = time.time_ns()
HOUR_NS = 3600 * 10**9


def test_plausible_window_bounds() -> None:
    window = plausible_window(NOW, 300 * 10**9)
    cases = {
        TS_EARLIEST_PLAUSIBLE - 1: "implausible_ts",
        TS_EARLIEST_PLAUSIBLE: None,
        NOW // 10**9: "implausible_ts",  # seconds by mistake: 1970
        NOW: None,
        NOW + 300 * 10**9: None,
        NOW + 300 * 10**9 + 1: "implausible_ts",
        0: "bad_timestamp",  # the type-level check comes first
    }
    for ts, reason in cases.items():
        ticks, rejects = decode_ticks(
            msgpack.packb({"asset": "A", "y": 1.0, "ts": ts}), ts_window=window
        )
        got = rejects[0].reason.value if rejects else None
        assert got == reason, ts
        assert len(ticks) == (reason is None)
        if rejects:
            assert rejects[0].asset == "A" and rejects[0].ts == ts
    # Without a window (event clock) any positive int64 is a timestamp.
    ticks, rejects = decode_ticks(msgpack.packb({"asset": "A", "y": 1.0, "ts": 1}))
    assert rejects == [] and ticks[0].ts == 1


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes], Any, Any]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = make_pull(ctx, f"ipc://{tmp_path}/ticks.sock", max_msg_size=1 << 16)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"ipc://{tmp_path}/ticks.sock")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"ipc://{tmp_path}/pred.sock")
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, 30_000)
    sub.connect(f"ipc://{tmp_path}/pred.sock")
    try:
        yield pull, push, pub, sub
    finally:
        for s in (push, pull, pub, sub):
            s.close(linger=0)
        ctx.term()


def _drain(intake: Intake, n_messages: int) -> list[Any]:
    out: list[Any] = []
    deadline = time.monotonic() + 60.0
    while intake.messages < n_messages:
        assert time.monotonic() < deadline
        got = intake.receive(64)
        out += got
        if not got:
            time.sleep(0.01)
    return out


def _subscribed(pub: zmq.Socket[bytes], sub: zmq.Socket[bytes]) -> None:
    """Publish probes until the SUB socket hears one (its subscription has reached PUB)."""
    sub.setsockopt(zmq.RCVTIMEO, 50)
    for _ in range(600):
        pub.send_multipart([b"probe", msgpack.packb({"asset": "probe"})])
        try:
            sub.recv_multipart()
            break
        except zmq.Again:
            continue
    while True:  # discard queued probes
        try:
            sub.recv_multipart()
        except zmq.Again:
            break
    sub.setsockopt(zmq.RCVTIMEO, 30_000)


def test_wall_clock_intake_refuses_and_answers_implausible_and_malformed_ticks(
    sockets: tuple[zmq.Socket[bytes], zmq.Socket[bytes], Any, Any],
) -> None:
    pull, push, pub, sub = sockets
    metrics = DaemonMetrics(reasons=REJECT_REASONS)
    # The rejects' topic needs only the table's ids and sequence numbers: asset "K"
    # is held (slot 0, seq 4), the others are not.
    table = cast(AssetTable, SimpleNamespace(ids={"K": 0}, seq=np.array([4], np.int64)))
    publisher = Publisher(pub, None, metrics)
    named: list[Reject] = []

    def answer(rejects: list[Reject]) -> None:
        named.extend(rejects)
        publisher.publish_rejects(rejects, table)

    intake = Intake(
        pull,
        metrics,
        structlog.get_logger(),
        max_msg_bytes=1 << 16,
        max_rounds=10_000,
        clock="wall",
        max_future_skew_s=300.0,
        on_reject=answer,
    )
    _subscribed(pub, sub)
    now = time.time_ns()
    sent = [
        {"asset": "K", "y": 1.0, "ts": now // 10**9},  # seconds: implausible
        {"asset": "K", "y": 1.0, "ts": now + HOUR_NS},  # an hour ahead: implausible
        {"asset": "N", "y": "1.0", "ts": now},  # wrong_type, asset not held
        {"asset": "N", "y": 1.0},  # missing_field (ts 0 in the answer)
        {"asset": "N", "y": 1.0, "ts": now, "price": 2},  # unknown_key
        {"asset": "", "y": 1.0, "ts": now},  # no readable asset: counted only
        {"asset": "K", "y": 2.0, "ts": now},  # valid
    ]
    for m in sent:
        push.send(msgpack.packb(m))
    got = _drain(intake, len(sent))
    assert [(t.asset, t.y) for t, _ in got] == [("K", 2.0)]
    expected = [
        {"asset": "K", "ts": now // 10**9, "seq": 5, "rejected": "implausible_ts"},
        {"asset": "K", "ts": now + HOUR_NS, "seq": 6, "rejected": "implausible_ts"},
        {"asset": "N", "ts": now, "seq": 0, "rejected": "wrong_type"},
        {"asset": "N", "ts": 0, "seq": 0, "rejected": "missing_field"},
        {"asset": "N", "ts": now, "seq": 0, "rejected": "unknown_key"},
    ]
    answers = [decode_prediction(sub.recv_multipart()) for _ in expected]
    assert answers == expected
    assert [r.reason for r in named] == [RejectReason(e["rejected"]) for e in expected]
    assert int(table.seq[0]) == 6
    counts = {
        s.labels["reason"]: s.value
        for fam in text_string_to_metric_families(_exposition(metrics))
        for s in fam.samples
        if s.name == "predictor_rejects_total"
    }
    assert counts["implausible_ts"] == 2
    assert counts["wrong_type"] == counts["missing_field"] == counts["unknown_key"] == 1
    assert counts["asset_empty"] == 1


def test_event_clock_intake_accepts_small_timestamps(
    sockets: tuple[zmq.Socket[bytes], zmq.Socket[bytes], Any, Any],
) -> None:
    pull, push, _, _ = sockets
    intake = Intake(
        pull,
        DaemonMetrics(reasons=REJECT_REASONS),
        structlog.get_logger(),
        max_msg_bytes=1 << 16,
        max_rounds=10_000,
        clock="event",
    )
    for k in range(3):
        push.send(msgpack.packb({"asset": "E", "y": float(k), "ts": k + 1}))
    got = _drain(intake, 3)
    assert [t.ts for t, _ in got] == [1, 2, 3] and intake.malformed == 0


def _exposition(metrics: DaemonMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


def test_daemon_metrics_conventions_and_drain_waits_for_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = {**base_daemon_table(tmp_path, f"predictor-test-drainwait-{os.getpid()}")}
    # Wall clock: the plausibility of timestamps is checked (not on the event clock).
    config = write_config(
        tmp_path / "config.toml", predictor={**CHEAP_MODEL, "clock": "wall"}, daemon=table
    )
    daemon = Daemon(tmp_path, config)
    try:
        daemon.start()
        text = urllib.request.urlopen(daemon.status["endpoints"]["metrics"], timeout=30).read()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode())
            for s in fam.samples
        }
        assert samples[("predictor_build_info", (("version", __version__),))] == 1.0
        assert samples[("process_resident_memory_bytes", ())] > 0
        assert ("process_cpu_seconds_total", ()) in samples
        assert ("predictor_end_to_end_latency_seconds_bucket", (("le", "10.0"),)) in samples
        # A wall-clock daemon answers every tick whose asset it can read: a
        # prediction, or a rejection naming the reason.
        ctx = zmq.Context()
        feeder = Feeder(ctx, daemon.ticks_endpoint)
        collector = Collector(ctx, daemon.predictions_endpoint)
        try:
            now = time.time_ns()
            feeder.send_ticks([("fine", 1.0, now), ("seconds", 1.0, now // 10**9)])
            feeder.send(msgpack.packb({"asset": "typed", "y": "one", "ts": now}))
            got = {m["asset"]: m for m in collector.wait_for(3, 120)}
        finally:
            feeder.close()
            collector.close()
            ctx.term()
        assert "predicted_value" in got["fine"] and "rejected" not in got["fine"]
        assert got["seconds"]["rejected"] == "implausible_ts"
        assert got["typed"]["rejected"] == "wrong_type"
        assert daemon.proc is not None
        code = cli.main(["drain", "--socket", str(daemon.admin_path), "--wait-timeout", "120"])
        out = capsys.readouterr().out
        assert code == 0 and "exited" in out
        # Returned only once the daemon closed its admin socket, the last step of
        # its exit (before, drain returned while the drain had only started).
        assert not daemon.admin_path.exists()
        daemon.proc.wait(60)
        assert daemon.proc.returncode == 0
    finally:
        daemon.kill()
