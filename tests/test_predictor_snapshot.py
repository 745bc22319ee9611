"""UniversalPredictor.save_snapshot / load_snapshot / save_snapshot_nonblocking.

The exactness test runs the two halves of a stream in two fresh Python
processes (the second knows the first only through the snapshot file) and
compares every published result, bit for bit, with one uninterrupted run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import numpy as np
import pytest

from predictor.api import UniversalPredictor
from predictor.config import PredictorConfig
from predictor.core.types import ProcessState
from predictor.errors import IntegrityError
from predictor.snapshots import LayoutMismatchError, load_snapshot

N_FIRST = 1_000
N_SECOND = 1_000


def _series() -> np.ndarray:
    """Random walk with a catastrophic outlier right after the cut and one NaN."""
    rng = np.random.default_rng(20261128)
    y = 100.0 + np.cumsum(rng.standard_normal(N_FIRST + N_SECOND))
    y[N_FIRST] = y[N_FIRST - 1] + 1e6  # rejected: the restored process must answer from state
    y[N_FIRST + 500] = np.nan
    return y


# Runs in a fresh interpreter: step a slice of the series, optionally loading
# a snapshot first and/or saving one at the end; results go to a msgpack file.
_WORKER = textwrap.dedent(
    """
    import sys, msgpack, numpy as np
    import predictor.core
    from predictor.api import UniversalPredictor
    from predictor.core.types import ProcessState
    from predictor.errors import DomainError
    from tests.test_predictor_snapshot import _series, _step_all
    start, stop, load, save, out = sys.argv[1:6]
    p = UniversalPredictor(warmup=False)
    if load != "-":
        p.load_snapshot(load)
    results = _step_all(p, _series()[int(start):int(stop)], int(start))
    if save != "-":
        p.save_snapshot(save)
    with open(out, "wb") as f:
        f.write(msgpack.packb(results))
    """
)


def _step_all(p: UniversalPredictor, values: np.ndarray, offset: int) -> list[object]:
    """Every published result (or the error name), event clock, ticks 1 ms apart."""
    out: list[object] = []
    for i, v in enumerate(values):
        ts = (offset + i + 1) * 1_000_000
        try:
            out.append(p.step(ProcessState(float(v), 0.0, ts), now_ns=ts).to_dict())
        except Exception as exc:  # compared across runs, not handled
            out.append(type(exc).__name__)
    return out


def _run_worker(tmp_path: Path, *args: str) -> list[object]:
    out = tmp_path / f"out-{args[0]}.msgpack"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, *args, str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return msgpack.unpackb(out.read_bytes())  # type: ignore[no-any-return]


def test_restore_in_fresh_process_is_bit_exact(tmp_path: Path) -> None:
    total = N_FIRST + N_SECOND
    snap = tmp_path / "asset.snapshot"
    first = _run_worker(tmp_path, "0", str(N_FIRST), "-", str(snap))
    second = _run_worker(tmp_path, str(N_FIRST), str(total), str(snap), "-")

    reference = _step_all(UniversalPredictor(warmup=False), _series(), 0)
    # msgpack of the reference too, so both sides went through the same encoding.
    reference = msgpack.unpackb(msgpack.packb(reference))
    assert first == reference[:N_FIRST]
    assert len(second) == N_SECOND
    # The outlier right after the cut is answered with the restored last result.
    assert second[0]["rejected"] and second[0]["reject_reason"] == "outlier"
    assert {**second[0], "rejected": False, "reject_reason": "none"} == reference[N_FIRST - 1]
    for i, (got, want) in enumerate(zip(second, reference[N_FIRST:], strict=True)):
        assert got == want, f"tick {N_FIRST + i} differs after restore"


@pytest.fixture(scope="module")
def warmed() -> UniversalPredictor:
    p = UniversalPredictor(warmup=False)
    _step_all(p, _series()[:300], 0)
    return p


def test_nonblocking_save_writes_the_state_of_the_call(
    warmed: UniversalPredictor, tmp_path: Path
) -> None:
    path = tmp_path / "async.snapshot"
    sync_path = tmp_path / "sync.snapshot"
    warmed.save_snapshot(sync_path)
    future = warmed.save_snapshot_nonblocking(path)
    # Stepping on while the write runs must not leak into the file.
    _step_all(warmed, np.full(3, 100.0), 300)
    result = future.result(timeout=60)
    assert result.status == "success" and result.path == str(path)
    assert result.size == path.stat().st_size
    assert path.read_bytes()[-64:].decode() == result.checksum
    a = load_snapshot(path, PredictorConfig().schema_version)
    b = load_snapshot(sync_path, PredictorConfig().schema_version)
    a.pop("timestamp"), b.pop("timestamp")
    assert a == b
    assert warmed.wait_for_snapshots(timeout=10)


def test_load_refuses_damage_and_keeps_the_running_state(
    warmed: UniversalPredictor, tmp_path: Path
) -> None:
    path = tmp_path / "s.snapshot"
    warmed.save_snapshot(path)
    before = warmed.state
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = tmp_path / "flipped.snapshot"
    bad.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        warmed.load_snapshot(bad)
    assert warmed.state is before

    other = UniversalPredictor(PredictorConfig(wtmm_buffer_size=256), warmup=False)
    with pytest.raises(LayoutMismatchError, match="wtmm_buffer_size"):
        other.load_snapshot(path)


def test_save_failure_keeps_the_previous_file(
    warmed: UniversalPredictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.snapshot"
    warmed.save_snapshot(path)
    previous = path.read_bytes()

    def full_disk(*_: object) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("predictor.snapshots.atomic._write_all", full_disk)
    with pytest.raises(OSError, match="No space left"):
        warmed.save_snapshot(path)
    future = warmed.save_snapshot_nonblocking(path)
    result = future.result(timeout=60)
    assert result.status == "failed" and "No space left" in (result.error or "")
    assert path.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.snapshot"]
