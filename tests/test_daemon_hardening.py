"""predictord against hostile input and crashes, and its second shedding lever (a real daemon).

One daemon subprocess, its real sockets and shared memory, checked in order:

* **oversized ticks**: one feeder connection sends valid ticks interleaved
  with messages above ``max_msg_bytes`` (below libzmq's hard bound): every
  valid tick is answered in order, each oversized message is counted under
  ``predictor_rejects_total{reason="too_large"}`` (libzmq's own limit would
  have dropped the connection and the ticks queued behind it);
* **refit interval under load**: with a latency budget of 1 ns every window
  is over budget, so the shedder raises K from the configured 16 to 32 and
  64 (the model has one signature depth, so K is the only lever): ``status``,
  ``predictorctl status`` and the ``predictor_refit_interval_ticks`` gauge show
  it, and switching K compiled nothing;
* **snapshot paths**: ``snapshot`` with ``../../../../tmp/x`` is refused and
  writes nothing outside the snapshot directory; a relative name inside it
  is written there;
* **writer liveness**: a shared-memory reader sees the writer alive with a
  fresh heartbeat after the daemon has been idle for longer than the age
  limit, and dead after SIGKILL.

The model is ``CHEAP_MODEL`` with the buckets of the shared-memory test, so
the persistent compilation cache serves both.
"""

from __future__ import annotations

import contextlib
import os
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from predictor.admin import cli
from predictor.ipc.shm import LatestReader, segment_path
from tests.daemon_harness import (
    CHEAP_MODEL,
    Collector,
    Daemon,
    Feeder,
    base_daemon_table,
    write_config,
)

BUCKET = 64
#: Tick limit of this daemon (bytes); oversized messages are 4x it, far below 16x.
MAX_MSG = 4096
N_VALID = 120
#: An oversized message after every ``OVERSIZE_EVERY``-th valid tick.
OVERSIZE_EVERY = 3
#: Heartbeat age limit of the liveness check, and how long the daemon idles first.
MAX_AGE_S = 4.0
IDLE_S = 6.0
#: Seconds to wait for predictions (a loaded 2-core box is slow, never this slow).
TIMEOUT_S = 300.0

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Scrape:
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def tick(asset: str, y: float, ts: int) -> bytes:
    return msgpack.packb({"asset": asset, "y": y, "ts": ts})


def oversized(i: int) -> bytes:
    """Valid ticks, but more of them than ``MAX_MSG`` bytes hold: the whole message is dropped."""
    batch = [{"asset": "junk", "y": 1.0, "ts": i + 1, "ref": 2.0}] * 400
    frame = msgpack.packb(batch)
    assert MAX_MSG < len(frame) < 16 * MAX_MSG
    return frame


def wait_for(collector: Collector, asset: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        msgs = [m for m in collector.messages if m["asset"] == asset]
        if len(msgs) >= n:
            return msgs
        time.sleep(0.05)
    raise TimeoutError(f"{asset}: {len(msgs)} of {n} predictions after {TIMEOUT_S} s")


def check_oversized_messages_cost_no_valid_tick(daemon: Daemon, ctx: Any) -> int:
    collector = Collector(ctx, daemon.predictions_endpoint)
    feeder = Feeder(ctx, daemon.ticks_endpoint)  # one connection for everything
    url = daemon.status["endpoints"]["metrics"]
    before = scrape(url)
    n_big = 0
    for i in range(N_VALID):
        feeder.send(tick("V", 100.0 + 0.01 * i, i + 1))
        if i % OVERSIZE_EVERY == 0:
            feeder.send(oversized(i))
            n_big += 1
    msgs = wait_for(collector, "V", N_VALID)
    after = scrape(url)
    assert [m["seq"] for m in msgs] == list(range(1, N_VALID + 1))
    assert [m["ts"] for m in msgs] == list(range(1, N_VALID + 1))
    too_large = ("predictor_rejects_total", (("reason", "too_large"),))
    assert after[too_large] - before.get(too_large, 0.0) == n_big
    malformed = ("predictor_malformed_messages_total", ())
    assert after[malformed] - before[malformed] == n_big
    ticks = ("predictor_ticks_total", ())
    assert after[ticks] - before[ticks] == N_VALID
    assert not [m for m in collector.messages if m["asset"] == "junk"]
    assert daemon.admin("status")["assets"] == 1  # the dropped messages touched nothing
    feeder.close()
    collector.close()
    return n_big


def check_refit_interval_rises_under_load(
    daemon: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    status = daemon.admin("status")
    shed = status["shed"]
    # Windows of 4 steps, one settling window after each switch: 120 steps are plenty.
    assert shed["refit_ladder"] == [16, 32, 64]
    assert (shed["refit_interval"], shed["refit_level"]) == (64, 2)
    assert (shed["level"], shed["depth"], shed["pinned"]) == (0, 2, False)
    assert status["config"]["sensitivities"]["refit_interval"] == 16  # as configured
    assert status["compiles"]["after_warmup"] == 0  # K is a parameter, not a graph
    changes = daemon.events("shed_level_changed")
    assert [(c["old_refit_interval"], c["new_refit_interval"]) for c in changes] == [
        (16, 32),
        (32, 64),
    ]
    assert all(c["reason"] == "latency" and c["new_depth"] == 2 for c in changes)
    metrics = scrape(status["endpoints"]["metrics"])
    deadline = time.monotonic() + 60  # gauges are exported once a second
    while metrics[("predictor_refit_interval_ticks", ())] != 64:
        assert time.monotonic() < deadline, "predictor_refit_interval_ticks gauge never showed 64"
        time.sleep(0.5)
        metrics = scrape(status["endpoints"]["metrics"])
    assert metrics[("predictor_shed_switches_total", (("direction", "down"),))] == 2
    capsys.readouterr()
    assert cli.main(["--socket", str(daemon.admin_path), "status"]) == 0
    assert "every 64 ticks (ladder 16 -> 32 -> 64)" in capsys.readouterr().out


def check_snapshot_path_stays_in_the_snapshot_directory(daemon: Daemon) -> None:
    state = Path(daemon.tmp / "state")
    name = f"x-{uuid.uuid4().hex}"
    climbing = f"../../../../tmp/{name}"
    escaped = Path(os.path.normpath(state / climbing))
    reply = daemon.admin("snapshot", path=climbing)
    assert reply["ok"] is False and "leaves the snapshot directory" in reply["error"], reply
    assert not escaped.exists() and not (Path("/tmp") / name).exists()
    assert not list(state.parent.glob(f"**/{name}*"))
    inside = daemon.admin("snapshot", path="manual.snap")
    assert inside["ok"] is True, inside
    assert Path(inside["path"]) == state.resolve() / "manual.snap"
    assert Path(inside["path"]).stat().st_size == inside["size"]


def check_writer_alive_while_idle_and_dead_after_sigkill(daemon: Daemon, shm_name: str) -> None:
    reader = LatestReader(shm_name)
    try:
        assert reader.get("V") is not None
        # No tick, no record write for longer than the age limit: only the loop's
        # heartbeat can keep the writer fresh.
        time.sleep(IDLE_S)
        alive = reader.writer_status(MAX_AGE_S)
        assert alive.alive and alive.pid_alive is True and not alive.stale, alive
        assert alive.pid == daemon.proc.pid  # type: ignore[union-attr]
        assert alive.heartbeat_age_s is not None and alive.heartbeat_age_s < MAX_AGE_S
        daemon.kill()  # SIGKILL: the segment stays behind, marked live
        dead = reader.writer_status(MAX_AGE_S)
        assert dead.pid_alive is False and not dead.alive and dead.stale, dead
        assert dead.state == "live"
        assert reader.get("V") is not None  # the old records are still readable
        time.sleep(MAX_AGE_S + 0.5)
        by_age = reader.writer_status(MAX_AGE_S, check_pid=False)  # heartbeat alone
        assert by_age.heartbeat_age_s is not None and by_age.heartbeat_age_s > MAX_AGE_S
        assert not by_age.alive
    finally:
        reader.close()


def test_hostile_input_shedding_and_liveness(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shm_name = f"predictor-test-hard-{os.getpid()}"
    table = {
        **base_daemon_table(tmp_path, shm_name),
        "batch_buckets": [BUCKET],
        "initial_capacity": BUCKET,
        "max_msg_bytes": MAX_MSG,
        "shed_window": 4,
    }
    predictor = {**CHEAP_MODEL, "latency_budget_ns": 1}
    config = write_config(tmp_path / "config.toml", predictor=predictor, daemon=table)
    daemon = Daemon(tmp_path, config)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        daemon.start()
        assert daemon.status["shed"]["refit_interval"] == 16  # before any step
        check_oversized_messages_cost_no_valid_tick(daemon, ctx)
        check_refit_interval_rises_under_load(daemon, capsys)
        check_snapshot_path_stays_in_the_snapshot_directory(daemon)
        check_writer_alive_while_idle_and_dead_after_sigkill(daemon, shm_name)
    finally:
        with contextlib.suppress(Exception):
            ctx.destroy(linger=0)
        daemon.kill()
        segment_path(shm_name).unlink(missing_ok=True)  # left behind by the SIGKILL
