"""Shared-memory latest-value table (predictor.ipc.shm)."""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from predictor.core.types import MODES as CORE_MODES
from predictor.core.types import PredictionResult
from predictor.ipc.shm import (
    HEADER_SIZE,
    MODES,
    PAYLOAD_OFF,
    RECORD_SIZE,
    SHM_DIR,
    LatestReader,
    LatestWriter,
    ShmReadError,
    segment_path,
)


@pytest.fixture
def name() -> Iterator[str]:
    seg = f"predictor-test-{uuid.uuid4().hex[:12]}"
    yield seg
    for p in SHM_DIR.glob(f"*{seg}*"):
        p.unlink(missing_ok=True)


def _values(k: int) -> dict[str, Any]:
    """Record fields that are all functions of one counter k (a torn copy mixes two k)."""
    return {
        "seq": k,
        "ts": 1000 + k,
        "latency_ns": 3 * k,
        "written_ns": 7 * k,
        "predicted_next": k * 0.5,
        "predicted_value": -float(k),
        "interval_lower": k - 1.0,
        "interval_upper": k + 1.0,
        "holder_exponent": k / 7,
        "cusum_drift": k / 3,
        "kurtosis": k * 1.25,
        "weights": (k + 0.125, k + 0.25, k + 0.5, k + 0.75),
        "mode": k % 3,
        "flags": k % 64,
    }


def test_modes_match_core() -> None:
    assert MODES == CORE_MODES


def test_round_trip_fields_flags_mode(name: str) -> None:
    res = PredictionResult(
        predicted_next=0.25,
        holder_exponent=0.55,
        cusum_drift=-1.5,
        distance_to_collapse=0.3,
        free_energy=-1.0,
        kurtosis=float("inf"),
        dgm_entropy=0.7,
        adaptive_threshold=8.0,
        weights=(0.1, 0.2, 0.3, 0.4),
        sinkhorn_converged=True,
        degraded_inference_mode=False,
        emergency_mode=True,
        regime_change_detected=True,
        mode_collapse_warning=False,
        mode="Emergency",
        predicted_value=101.5,
        interval_lower=100.0,
        interval_upper=103.0,
        warming_up=False,
    )
    with LatestWriter(name, 4) as w, LatestReader(name) as r:
        assert r.get("BTC-USD") is None
        w.write_result(2, "BTC-USD", seq=17, ts=123_456, latency_ns=789, result=res.to_dict())
        rec = r.get("BTC-USD")
        assert rec is not None
        d = res.to_dict()
        for key in (
            "predicted_next",
            "predicted_value",
            "interval_lower",
            "interval_upper",
            "holder_exponent",
            "cusum_drift",
            "kurtosis",
            "weights",
            "mode",
            "sinkhorn_converged",
            "degraded_inference_mode",
            "emergency_mode",
            "regime_change_detected",
            "mode_collapse_warning",
            "warming_up",
        ):
            assert rec[key] == d[key], key
        assert (rec["seq"], rec["ts"], rec["latency_ns"], rec["slot"]) == (17, 123_456, 789, 2)
        assert rec["flags"] == 0b1101
        # Slots 0 and 1 below the written one were never written.
        assert r.assets() == ["BTC-USD"]
        assert r.get("ETH") is None


def test_segment_mode_0640_whatever_the_umask(name: str) -> None:
    for umask in (0o077, 0o000):
        old = os.umask(umask)
        try:
            w = LatestWriter(name, 2)
        finally:
            os.umask(old)
        assert stat.S_IMODE(os.stat(segment_path(name)).st_mode) == 0o640
        w.close()


def test_close_unlinks_and_readers_see_nothing(name: str) -> None:
    w = LatestWriter(name, 2)
    w.write(0, "A", **_values(1))
    r = LatestReader(name)
    assert r.get("A") is not None
    w.close()
    assert not segment_path(name).exists()
    assert r.get("A") is None
    with pytest.raises(FileNotFoundError):
        LatestReader(name)
    w.close()  # idempotent


def test_growth_keeps_records_and_readers_follow(name: str) -> None:
    w = LatestWriter(name, 2)
    r = LatestReader(name)
    w.write(0, "A", **_values(5))
    w.write(1, "B", **_values(6))
    assert (r.capacity, r.generation) == (2, 1)
    w.write(2, "C", **_values(7))  # beyond capacity: the segment is replaced
    assert (w.capacity, w.generation) == (4, 2)
    assert w.ensure_capacity(3) is False
    assert w.ensure_capacity(9) is True
    assert (w.capacity, w.generation) == (9, 3)
    got = {a: r.get(a) for a in "ABC"}
    assert r.generation == 3 and r.capacity == 9
    assert {a: rec["seq"] for a, rec in got.items() if rec} == {"A": 5, "B": 6, "C": 7}
    assert stat.S_IMODE(os.stat(segment_path(name)).st_mode) == 0o640
    assert sorted(p.name for p in SHM_DIR.glob(f"*{name}*")) == [name]  # no temporaries left
    w.close()


def test_restart_replaces_segment_and_old_writer_does_not_unlink_it(name: str) -> None:
    first = LatestWriter(name, 2)
    first.write(0, "OLD", **_values(1))
    r = LatestReader(name)
    assert r.get("OLD") is not None
    second = LatestWriter(name, 2)  # a restart over a segment left behind
    assert second.generation == 2
    assert r.get("OLD") is None
    second.write(1, "NEW", **_values(2))
    rec = r.get("NEW")
    assert rec is not None and rec["generation"] == 2
    first.close(unlink=True)  # not its segment any more
    assert segment_path(name).exists()
    assert r.get("NEW") is not None
    second.close()
    assert not segment_path(name).exists()


def _poke(name: str, offset: int, data: bytes) -> None:
    fd = os.open(segment_path(name), os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mm:
            mm[offset : offset + len(data)] = data
    finally:
        os.close(fd)


def test_corrupted_record_is_never_returned(name: str) -> None:
    with LatestWriter(name, 2) as w:
        w.write(0, "A", **_values(3))
        r = LatestReader(name, max_retries=50)
        off = HEADER_SIZE + PAYLOAD_OFF + 32  # inside predicted_next
        _poke(name, off, b"\xff")
        with pytest.raises(ShmReadError, match="checksum"):
            r.read_slot(0)
        assert r.checksum_failures == 50


def test_writer_dead_mid_write_is_detected(name: str) -> None:
    with LatestWriter(name, 2) as w:
        w.write(0, "A", **_values(3))
        r = LatestReader(name, max_retries=200)
        _poke(name, HEADER_SIZE, struct.pack("Q", 5))  # odd lock word: write in progress
        with pytest.raises(ShmReadError, match="consistent"):
            r.read_raw(0)
        assert r.lock_retries == 200


def test_argument_checks(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid shared-memory name"):
        LatestWriter("a/b", 2)
    with pytest.raises(ValueError, match="capacity"):
        LatestWriter(name, 0)
    with LatestWriter(name, 2) as w:
        with pytest.raises(ValueError, match="asset id"):
            w.write(0, "x" * 65, **_values(1))
        with pytest.raises(IndexError):
            w.write(-1, "x", **_values(1))
    (tmp_path / "junk").write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="not a"):
        LatestReader("junk", directory=tmp_path)
    assert segment_path("/" + name) == SHM_DIR / name


READER = r"""
import json, sys
from predictor.ipc.shm import LatestReader, payload_checksum, stored_checksum, unpack_record

name, n_assets, final_k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
assets = [f"asset-{i}" for i in range(n_assets)]

def consistent(rec, asset):
    k = rec["seq"]
    return (
        rec["asset"] == asset and rec["ts"] == 1000 + k and rec["latency_ns"] == 3 * k
        and rec["written_ns"] == 7 * k and rec["predicted_next"] == k * 0.5
        and rec["predicted_value"] == -float(k) and rec["interval_lower"] == k - 1.0
        and rec["interval_upper"] == k + 1.0 and rec["holder_exponent"] == k / 7
        and rec["cusum_drift"] == k / 3 and rec["kurtosis"] == k * 1.25
        and rec["weights"] == [k + 0.125, k + 0.25, k + 0.5, k + 0.75]
        and rec["mode"] == ("Standard", "Robust", "Emergency")[k % 3] and rec["flags"] == k % 64
    )

r = LatestReader(name)
print("ready", flush=True)
stats = dict(reads=0, bad_checksum=0, inconsistent=0, backwards=0, intermediate=0)
last = {a: -1 for a in assets}
done = False
while not done:
    done = r.get("done") is not None
    for a in assets:
        slot = r.slot_of(a)
        if slot is None:
            continue
        raw = r.read_raw(slot)  # sequence lock only; the checksum is verified here
        stats["reads"] += 1
        if payload_checksum(raw) != stored_checksum(raw):
            stats["bad_checksum"] += 1
            continue
        rec = unpack_record(raw)
        if not consistent(rec, a):
            stats["inconsistent"] += 1
        if rec["seq"] < last[a]:
            stats["backwards"] += 1
        if 0 < rec["seq"] < final_k:
            stats["intermediate"] += 1
        last[a] = rec["seq"]
final = {a: r.get(a) for a in assets}
stats["final_ok"] = all(
    f is not None and f["seq"] == final_k and consistent(f, a) for a, f in final.items()
)
stats["checksum_failures"] = r.checksum_failures
stats["lock_retries"] = r.lock_retries
print(json.dumps(stats), flush=True)
"""


def test_other_process_never_sees_a_torn_record(name: str) -> None:
    n_assets, updates = 8, 100_000
    final_k = updates // n_assets
    assets = [f"asset-{i}" for i in range(n_assets)]
    w = LatestWriter(name, n_assets + 1)
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, name, str(n_assets), str(final_k)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for j in range(updates):
            i = j % n_assets
            w.write(i, assets[i], **_values(j // n_assets + 1))
        w.write(n_assets, "done", **_values(0))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    print(stats)
    assert stats["bad_checksum"] == 0
    assert stats["inconsistent"] == 0
    assert stats["backwards"] == 0
    assert stats["checksum_failures"] == 0
    assert stats["final_ok"] is True
    assert stats["intermediate"] > 0  # the reader did poll while the writer wrote
    # The reader's exit did not unlink the writer's segment.
    assert segment_path(name).exists()
    w.close()
    assert not segment_path(name).exists()


def test_record_size_holds_payload() -> None:
    assert RECORD_SIZE % 64 == 0 and HEADER_SIZE % 8 == 0


WRITER = """
import sys, time
from predictor.ipc.shm import LatestWriter
w = LatestWriter(sys.argv[1], 4)
w.write(0, "A", seq=1, ts=2, predicted_next=0.0, predicted_value=0.0, interval_lower=0.0,
        interval_upper=0.0, holder_exponent=0.5, cusum_drift=0.0, kurtosis=3.0,
        weights=(0.25, 0.25, 0.25, 0.25), mode=0)
print("ready", flush=True)
while True:
    w.heartbeat()
    time.sleep(0.05)
"""


def test_reader_reports_a_sigkilled_writer_dead_and_its_data_stale(name: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, name], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with LatestReader(name) as reader:
            live = reader.writer_status(max_age_s=60.0)
            assert live.pid == proc.pid and live.pid_alive is True
            assert live.alive and not live.stale and live.state == "live"
            assert live.heartbeat_age_s is not None and live.heartbeat_age_s < 60.0
            proc.kill()
            proc.wait(timeout=30)
            # The crashed writer left the segment marked live with its records...
            assert reader.get("A") is not None
            # ...but the reader sees that nobody writes it any more.
            dead = reader.writer_status(max_age_s=60.0)
            assert dead.pid_alive is False and not dead.alive and dead.stale
            # Without the pid check (another pid namespace), the heartbeat tells.
            age_then = reader.writer_status(check_pid=False).heartbeat_age_s
            assert age_then is not None
            time.sleep(0.3)
            blind = reader.writer_status(max_age_s=age_then + 0.2, check_pid=False)
            assert blind.pid_alive is None and blind.stale
            assert blind.heartbeat_age_s is not None and blind.heartbeat_age_s > age_then + 0.2
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_reused_pid_or_zombie_is_not_the_writer() -> None:
    from predictor.ipc.liveness import process_alive, process_start_ticks

    me = os.getpid()
    start = process_start_ticks(me)
    assert start is not None and process_alive(me, start) is True
    assert process_alive(me, start + 1) is False  # same pid, another process
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not reaped: a zombie
        with open(f"/proc/{child.pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                break
        time.sleep(0.01)
    assert process_alive(child.pid) is False
    child.wait()
    assert process_alive(child.pid) is False
