"""predictord's start-up against a real subprocess: the admin socket answers while
the graphs compile, READY=1 comes once the first bucket is compiled (the larger
bucket compiles in the background while ticks are answered), and only the
depths the shedder can use are compiled (``log_sig_depth`` 3 of a configured
ladder [5, 3, 2]: depth 5 is neither compiled nor offered by ``shed``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import msgpack

from predictor.ipc.shm import segment_path
from tests.daemon_harness import (
    Collector,
    Daemon,
    Feeder,
    admin_request,
    base_daemon_table,
    write_config,
)

#: The small bucket is ready first; the large one keeps the background
#: compiler busy for seconds (warming it steps 4096 pad lanes per depth).
BUCKETS = [16, 4096]
LADDER = [3, 2]


class StatusPoller:
    """Asks ``status`` back to back from before the socket exists; keeps every reply."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = admin_request(self.path, {"cmd": "status"}, timeout=60)
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.01)
                continue
            except OSError:
                time.sleep(0.01)
                continue
            self.replies.append((time.time(), reply))
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)


def test_admin_answers_while_compiling_and_ready_comes_after_the_first_bucket(
    tmp_path: Path,
) -> None:
    import zmq

    shm = f"predictor-test-start-{os.getpid()}"
    table = {**base_daemon_table(tmp_path, shm), "batch_buckets": BUCKETS, "shed": "auto"}
    config = write_config(
        tmp_path / "config.toml",
        predictor={"dgm_solver": "fd", "shed_ladder": [5, *LADDER], "log_sig_depth": 3},
        daemon=table,
    )
    daemon = Daemon(tmp_path, config)
    poller = StatusPoller(daemon.admin_path)
    ctx = zmq.Context()
    try:
        daemon.start(wait=False)
        daemon.wait_ready()
        # Ticks of one asset and of 20 assets (16 + 4 lanes), stepped while the
        # large bucket may still be compiling.
        collector = Collector(ctx, daemon.predictions_endpoint)
        feeder = Feeder(ctx, daemon.ticks_endpoint)
        for k in range(1, 6):
            feeder.send(msgpack.packb({"asset": "solo", "y": 100.0 + k, "ts": k}))
        feeder.send_ticks([(f"m{i}", 50.0 + i, 1) for i in range(20)])
        collector.wait_for(25, 300)
        deadline = time.monotonic() + 600
        while not daemon.events("warmup_done"):
            assert time.monotonic() < deadline, "background compilation never finished"
            time.sleep(0.1)
        poller.stop()
        status = daemon.admin("status")
        refused = daemon.admin("shed", level=5)
        pinned = daemon.admin("shed", level=2)
        auto = daemon.admin("shed", level="auto")
        feeder.close()
        collector.close()
        assert daemon.stop() == 0
    finally:
        poller.stop()
        ctx.destroy(linger=0)
        daemon.kill()
        segment_path(shm).unlink(missing_ok=True)

    # Only the ladder's graphs: 2 buckets x depths [3, 2], never depth 5.
    progress = daemon.events("warmup_progress")
    assert [p["graphs"] for p in progress] == [1, 2, 3, 4]
    assert {p["total"] for p in progress} == {4}
    (done,) = daemon.events("warmup_done")
    assert done["depths"] == LADDER and done["buckets"] == BUCKETS
    assert status["shed"]["ladder"] == LADDER and status["state"] == "running"
    assert status["warmup"] == {"graphs": 4, "total": 4, "ready": True}
    assert refused["ok"] is False and "not on the ladder [3, 2]" in refused["error"]
    configured_k = status["shed"]["refit_ladder"][0]
    assert pinned == {
        "ok": True,
        "level": 1,
        "depth": 2,
        "pinned": True,
        "refit_interval": configured_k,  # a pin runs at the configured K
    }
    assert auto["ok"] is True and auto["pinned"] is False
    assert status["compiles"]["after_warmup"] == 0

    # READY after the first bucket's graphs, before the background ones.
    events = [e["event"] for e in daemon.events()]
    assert events.index("admin_listening") < events.index("warmup_progress")
    ready_event = daemon.events("ready")[0]
    assert ready_event["graphs"] == 2 and ready_event["total"] == 4
    assert events.index("ready") < events.index("warmup_done")

    # The admin socket answered during the warm-up, before and after READY.
    states = [r for _, r in poller.replies if r.get("ok")]
    assert all(r["pid"] == daemon.proc.pid for r in states)  # type: ignore[union-attr]
    before = [r for r in states if not r["warmup"]["ready"]]
    assert before, "no status answered before READY"
    # Before READY there is no engine yet: no shedder, nothing stepped.
    assert all(r["shed"] is None and r["assets"] == 0 for r in before)
    assert all(r["state"] == "starting" or r["state"].startswith("warming up: ") for r in before)
    background = [r for r in states if r["warmup"]["ready"] and r["state"] != "running"]
    assert background, "no status answered while the large bucket compiled"
    assert all(r["state"].startswith("warming up: ") for r in background)

    # Every tick answered, in order, while or after the background compilation.
    solo = [m for m in collector.messages if m["asset"] == "solo"]
    assert [m["seq"] for m in solo] == [1, 2, 3, 4, 5]
    assert sorted(m["asset"] for m in collector.messages if m["asset"] != "solo") == sorted(
        f"m{i}" for i in range(20)
    )
