"""Emergency forensic dumps: content, atomic write, per-asset rate limit, retention."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from predictor.core.types import PredictionResult
from predictor.snapshots import EmergencyDumper, is_temp_name, safe_asset_name, save_emergency_dump


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(**changes: Any) -> PredictionResult:
    fields: dict[str, Any] = {
        "predicted_next": 0.1,
        "holder_exponent": 0.31,
        "cusum_drift": 2.0,
        "distance_to_collapse": -0.09,
        "free_energy": 1.5,
        "kurtosis": 7.5,
        "dgm_entropy": 0.2,
        "adaptive_threshold": 4.4,
        "weights": (0.1, 0.2, 0.3, 0.4),
        "sinkhorn_converged": True,
        "degraded_inference_mode": False,
        "emergency_mode": True,
        "regime_change_detected": True,
        "mode_collapse_warning": False,
        "mode": "Emergency",
        "predicted_value": 101.5,
        "interval_lower": 99.0,
        "interval_upper": 104.0,
    }
    return PredictionResult(**(fields | changes))


def test_dump_content_follows_the_specification(tmp_path: Path) -> None:
    dumper = EmergencyDumper(tmp_path, clock=FakeClock())
    buf = np.linspace(-1.0, 1.0, 128)
    path = dumper.dump(
        "EURUSD",
        result(),
        signal_buffer=buf,
        regime_history=np.arange(6),
        extra={"seq": np.int64(9)},
    )
    assert path is not None and path.parent == tmp_path
    assert path.name.startswith("EURUSD_emergency_") and path.suffix == ".msgpack"
    data = msgpack.unpackb(path.read_bytes(), raw=False)
    assert data["asset_id"] == "EURUSD" and data["holder_exponent"] == 0.31
    assert data["weights"] == [0.1, 0.2, 0.3, 0.4]
    assert data["signal_buffer"] == buf.tolist() and data["regime_history"] == list(range(6))
    assert data["telemetry_snapshot"] == {
        "kurtosis": 7.5,
        "dgm_entropy": 0.2,
        "adaptive_threshold": 4.4,
        "distance_to_collapse": -0.09,
    }
    assert data["flags_at_emergency"] == {
        "degraded_inference": False,
        "regime_change": True,
        "mode_collapse": False,
    }
    assert data["result"] == result().to_dict() and data["extra"] == {"seq": 9}
    assert data["emergency_timestamp"].endswith("+00:00") and isinstance(data["timestamp_ns"], int)
    assert os.listdir(tmp_path) == [path.name]


def test_rate_limit_is_per_asset(tmp_path: Path) -> None:
    clock = FakeClock()
    dumper = EmergencyDumper(tmp_path, min_interval_s=30.0, clock=clock)
    kw: dict[str, Any] = {"signal_buffer": [0.0], "regime_history": [0]}
    assert dumper.dump("A", result(), **kw) is not None
    clock.now += 29.9
    assert dumper.dump("A", result(), **kw) is None
    assert dumper.dump("B", result().to_dict(), **kw) is not None
    clock.now += 0.1
    assert dumper.dump("A", result(), **kw) is not None
    assert len(os.listdir(tmp_path)) == 3


def test_failed_write_raises_and_does_not_consume_the_rate_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dumper = EmergencyDumper(tmp_path, min_interval_s=60.0, clock=FakeClock())
    real_write = os.write

    def no_space(fd: int, data: Any) -> int:
        if fd <= 2:
            return real_write(fd, data)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(OSError, match="No space left"):
        dumper.dump("A", result(), signal_buffer=[1.0], regime_history=[])
    monkeypatch.undo()
    assert not [n for n in os.listdir(tmp_path) if is_temp_name(n)]
    assert dumper.dump("A", result(), signal_buffer=[1.0], regime_history=[]) is not None


def test_unsafe_asset_ids_cannot_escape_the_directory(tmp_path: Path) -> None:
    assert safe_asset_name("../../etc/passwd") == "_.._.._etc_passwd"
    assert safe_asset_name(".hidden") == "_.hidden" and safe_asset_name("") == "_"
    dumper = EmergencyDumper(tmp_path / "dumps", clock=FakeClock())
    path = dumper.dump("../x y", {"holder_exponent": 0.2}, signal_buffer=[], regime_history=[])
    assert path is not None and path.parent == tmp_path / "dumps"
    data = msgpack.unpackb(path.read_bytes(), raw=False)
    assert data["asset_id"] == "../x y" and math.isnan(data["telemetry_snapshot"]["kurtosis"])


def test_retention_keeps_the_newest_dumps(tmp_path: Path) -> None:
    clock = FakeClock()
    dumper = EmergencyDumper(tmp_path, min_interval_s=0.0, max_files=3, clock=clock)
    paths = [dumper.dump(f"S{i}", result(), signal_buffer=[], regime_history=[]) for i in range(5)]
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths[2:] if p is not None)


def test_function_form_uses_the_given_dumper(tmp_path: Path) -> None:
    dumper = EmergencyDumper(tmp_path, clock=FakeClock())
    kw: dict[str, Any] = {"signal_buffer": np.zeros(4), "regime_history": np.zeros((2, 2))}
    first = save_emergency_dump(result(), "X", dumper=dumper, **kw)
    assert first is not None and first.exists()
    assert save_emergency_dump(result(), "X", dumper=dumper, **kw) is None
