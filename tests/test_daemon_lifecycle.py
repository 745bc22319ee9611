"""predictord's lifecycle against a real subprocess: sd_notify and the watchdog
(pings stop while the process is stopped with SIGSTOP), load shedding driven
by a reloaded sensitivity, the runtime-directory lock, and SIGTERM under load
followed by a bit-identical restart from the final snapshot.

One daemon serves the first four steps, a restarted one the last; the steps
are ``check_*`` functions run in order by the one test (a parallel run must
not split them across workers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from predictor.ipc.shm import segment_path
from tests.daemon_harness import (
    PYTHON,
    REPO,
    TEST_CFG,
    Collector,
    Daemon,
    Feeder,
    base_daemon_table,
    enable_cache_in_process,
    jax_cache_env,
    offline_messages,
    random_walks,
    result_fields,
    same_bits,
    write_config,
)

DEPTH = 3
WATCHDOG_USEC = 1_000_000  # pings due every 0.5 s
BUDGET_NS = 300_000_000  # above a normal step even on a loaded CPU
SHED_WINDOW = 8
#: Pause between two messages of the SIGTERM-under-load feeder (the stream lasts
#: N_TICKS * PUSH_PAUSE_S, well beyond the stop request and the drain).
PUSH_PAUSE_S = 0.025
#: Jitter of a loaded machine must not trip the jitter criterion here ...
CALM_NYQUIST_NS = 10_000_000_000
#: ... and with this Nyquist interval every step's jitter does (a reload).
TIGHT_NYQUIST_NS = 1
CFG = TEST_CFG.replace(
    dgm_solver="fd",
    latency_budget_ns=BUDGET_NS,
    shed_recovery_windows=1,
    besov_nyquist_interval_ns=CALM_NYQUIST_NS,
)
PREDICTOR = {
    "dgm_solver": "fd",
    "latency_budget_ns": BUDGET_NS,
    "shed_recovery_windows": 1,
    "besov_nyquist_interval_ns": CALM_NYQUIST_NS,
}


class NotifyListener:
    """A real Unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.time(), data.decode()))

    def times(self, key: str) -> list[float]:
        return [t for t, m in self.messages if key in m.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Life:
    tmp: Path
    config: Path
    daemon: Daemon
    notify: NotifyListener
    table: dict[str, Any]
    ctx: Any
    notes: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Life]:
    import zmq

    tmp = tmp_path_factory.mktemp("life")
    shm = f"predictor-test-life-{os.getpid()}"
    table = {
        **base_daemon_table(tmp, shm),
        "shed": DEPTH,
        "drain_budget_s": 20.0,
        "shed_window": SHED_WINDOW,
    }
    config = write_config(tmp / "config.toml", predictor=PREDICTOR, daemon=table)
    notify = NotifyListener(tmp / "notify.sock")
    daemon = Daemon(
        tmp,
        config,
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    # Daemon.start drops NOTIFY_SOCKET from the parent's environment only.
    daemon.start()
    ctx = zmq.Context()
    life = Life(tmp, config, daemon, notify, table, ctx)
    try:
        yield life
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal(signal.SIGCONT)  # never leave a stopped process behind
        daemon.kill()
        if "restarted" in life.notes:
            life.notes["restarted"].kill()
        notify.close()
        ctx.destroy(linger=0)
        segment_path(shm).unlink(missing_ok=True)  # left behind if the daemon was killed


def log_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def check_ready_only_after_warmup_then_watchdog_cadence(life: Life) -> None:
    time.sleep(3.0)
    (ready,) = life.notify.times("READY=1")
    # The first (here: the only) bucket's graphs, at every depth of the ladder.
    progress = life.daemon.events("warmup_progress")
    assert [p["graphs"] for p in progress] == [1, 2] and progress[-1]["total"] == 2
    assert ready >= log_time(progress[-1])
    events = [e["event"] for e in life.daemon.events()]
    assert events.index("admin_listening") < events.index("warmup_progress")
    assert events.index("ready") < events.index("warmup_done")
    assert not [t for t in life.notify.times("WATCHDOG=1") if t < ready]
    pings = [t for t in life.notify.times("WATCHDOG=1") if t > ready + 0.2]
    gaps = np.diff(pings)
    assert len(gaps) >= 4
    # Half of WATCHDOG_USEC, give or take one idle poll and a busy machine.
    assert 0.4 < float(np.median(gaps)) < 0.8 and gaps.max() < 1.0 + 0.5
    ready_msg = next(m for _, m in life.notify.messages if "READY=1" in m)
    assert "STATUS=assets=0" in ready_msg


def check_watchdog_pings_stop_while_the_loop_is_blocked(life: Life) -> None:
    life.daemon.signal(signal.SIGSTOP)
    try:
        time.sleep(0.3)  # a datagram already in the socket may still arrive
        since = time.time()
        time.sleep(2.5)
        assert [t for t in life.notify.times("WATCHDOG=1") if t > since] == []
    finally:
        life.daemon.signal(signal.SIGCONT)
    time.sleep(1.5)
    assert [t for t in life.notify.times("WATCHDOG=1") if t > since]
    assert life.daemon.admin("status")["ok"] is True


def set_nyquist(life: Life, interval_ns: int) -> None:
    """Rewrite the config with another Nyquist interval (a sensitivity) and reload it."""
    write_config(
        life.config,
        predictor={**PREDICTOR, "besov_nyquist_interval_ns": interval_ns},
        daemon=life.table,
    )
    reply = life.daemon.admin("reload")
    assert reply["ok"] is True and reply["applied"] == ["besov_nyquist_interval_ns"], reply


def check_load_shedding_steps_down_and_recovers_without_recompiling(life: Life) -> None:
    d = life.daemon
    assert d.admin("shed", level="auto")["pinned"] is False
    collector = Collector(life.ctx, d.predictions_endpoint)
    feeder = Feeder(life.ctx, d.ticks_endpoint)
    rng = np.random.default_rng(4)
    sent = 0

    def feed(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            sent += 1
            feeder.send(msgpack.packb({"asset": "S", "y": 10 + float(rng.normal()), "ts": sent}))
            while len(collector.messages) < sent - 2:  # paced by the daemon, backlog <= 2
                time.sleep(0.002)

    try:
        feed(10)
        start = d.admin("status")["shed"]
        assert (start["level"], start["refit_level"]) == (0, 0)
        k0, k1, k2 = start["refit_ladder"]
        # Every step's jitter now exceeds the (reloaded) Nyquist criterion. The
        # shedder raises K twice before it cuts the depth: three switches, each
        # after a settling window (and the window in progress at the reload).
        set_nyquist(life, TIGHT_NYQUIST_NS)
        feed(6 * SHED_WINDOW + 2)
        tight = d.admin("status")["shed"]
        set_nyquist(life, CALM_NYQUIST_NS)
        feed(8 * SHED_WINDOW)  # three steps back up, each a settling and a calm window
        collector.wait_for(sent, 120)
        final = d.admin("status")
    finally:
        feeder.close()
        collector.close()
    assert tight["level"] == 1 and tight["depth"] == 2 and tight["ladder"] == [3, 2]
    assert tight["refit_interval"] == k2
    assert (final["shed"]["level"], final["shed"]["refit_interval"]) == (0, k0)
    changes = [c for c in d.events("shed_level_changed") if c["reason"] != "pin"]
    assert [(c["new_depth"], c["new_refit_interval"]) for c in changes] == [
        (3, k1),
        (3, k2),
        (2, k2),
        (3, k2),
        (3, k1),
        (3, k0),
    ]
    assert [c["reason"] for c in changes] == ["jitter"] * 3 + ["recovery"] * 3
    # Depth and refit-interval switches reuse the precompiled graphs.
    assert final["compiles"]["after_warmup"] == 0
    assert [m["seq"] for m in collector.messages] == list(range(1, sent + 1))
    assert d.admin("shed", level=DEPTH)["pinned"] is True


def check_a_second_daemon_does_not_steal_the_runtime_directory(life: Life) -> None:
    env = {
        **os.environ,
        **jax_cache_env(),
        "RUNTIME_DIRECTORY": str(life.daemon.rundir),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [PYTHON, "-m", "predictor.daemon.main", "--config", str(life.config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1
    assert '"already_running"' in proc.stdout
    assert life.daemon.admin("status")["ok"] is True


N_ASSETS, N_TICKS = 4, 600


def check_sigterm_under_load_then_bit_identical_restart(life: Life) -> None:
    enable_cache_in_process()
    d = life.daemon
    series = random_walks(N_ASSETS, N_TICKS, seed=21)
    ts = np.tile(np.arange(1, N_TICKS + 1, dtype=np.int64) * 1000, (N_ASSETS, 1))
    names = [f"R{i}" for i in range(N_ASSETS)]
    collector = Collector(life.ctx, d.predictions_endpoint)
    feeder = Feeder(life.ctx, d.ticks_endpoint)
    done = threading.Event()

    def full_speed() -> None:
        # Paced so that the stream outlasts the stop whatever the daemon's speed: a
        # daemon faster than the feed empties the socket and closes its intake, a
        # slower one is cut by the drain budget; either way ticks are left unsent.
        for k in range(N_TICKS):
            if done.is_set():
                return
            feeder.send_ticks(
                [(names[a], float(series[a, k]), int(ts[a, k])) for a in range(N_ASSETS)]
            )
            time.sleep(PUSH_PAUSE_S)

    pusher = threading.Thread(target=full_speed, daemon=True)
    pusher.start()
    while sum(m["asset"] in names for m in collector.messages) < 200:
        time.sleep(0.01)
    stopping_at = time.time()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0  # type: ignore[union-attr]
    done.set()  # the feed stops once the daemon is gone
    elapsed = time.time() - stopping_at
    time.sleep(1.0)  # the publisher lingers to flush; let the collector drain
    collector.close()
    first = [m for m in collector.messages if m["asset"] in names]
    assert elapsed < 20.0  # drain_budget_s
    assert life.notify.times("STOPPING=1")
    (closed,) = d.events("intake_closed")
    (shutdown,) = d.events("shutdown_complete")
    (final,) = d.events("final_snapshot")
    # Every tick received before the intake closed was answered (and published).
    assert shutdown["ticks_received"] == closed["ticks_received"] == shutdown["predictions"]
    received = {name: [m for m in first if m["asset"] == name] for name in names}
    for name, msgs in received.items():
        assert [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1)), name
    n_first = {name: len(msgs) for name, msgs in received.items()}
    life.notes["n_first"] = n_first
    life.notes["drain"] = {"elapsed_s": elapsed, **closed}
    assert sum(n_first.values()) < N_ASSETS * N_TICKS  # the stop interrupted the stream
    pusher.join(60)
    # Ticks sent after the intake closed wait in the feeder's queue: drop them, or
    # they would reach the restarted daemon when it binds the same endpoint.
    feeder.sock.close(linger=0)

    # Restart on the same state directory: restored from the final snapshot.
    again = Daemon(life.tmp, life.config).start()
    life.notes["restarted"] = again
    (restored,) = again.events("restored")
    assert restored["path"] == final["path"]
    rows = {r["asset"]: r for r in again.admin("assets")["assets"]}
    for name in names:
        assert rows[name]["seq"] == n_first[name]
    collector = Collector(life.ctx, again.predictions_endpoint)
    feeder = Feeder(life.ctx, again.ticks_endpoint)
    start = min(n_first.values())
    for k in range(start, N_TICKS):
        feeder.send_ticks(
            [
                (names[a], float(series[a, k]), int(ts[a, k]))
                for a in range(N_ASSETS)
                if k >= n_first[names[a]]
            ]
        )
    deadline = time.monotonic() + 600
    while sum(m["asset"] in names for m in collector.messages) < sum(
        N_TICKS - n for n in n_first.values()
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = [m for m in collector.messages if m["asset"] in names]
    feeder.close()
    collector.close()

    # Each asset refits on the ticks of its slot's phase, kept across the restart.
    slots = [rows[name]["slot"] for name in names]
    expected = offline_messages(CFG, series, ts, depth=DEPTH, slots=slots)
    for a, name in enumerate(names):
        msgs = received[name] + [m for m in second if m["asset"] == name]
        assert [m["seq"] for m in msgs] == list(range(1, N_TICKS + 1)), name
        for k, (got, want) in enumerate(zip(msgs, expected[a], strict=True)):
            fields = result_fields(got)
            assert fields.keys() == want.keys() and all(
                same_bits(fields[f], want[f]) for f in want
            ), (name, k)
    assert again.stop() == 0


def test_lifecycle_scenario(life: Life) -> None:
    check_ready_only_after_warmup_then_watchdog_cadence(life)
    check_watchdog_pings_stop_while_the_loop_is_blocked(life)
    check_load_shedding_steps_down_and_recovers_without_recompiling(life)
    check_a_second_daemon_does_not_steal_the_runtime_directory(life)
    check_sigterm_under_load_then_bit_identical_restart(life)
