"""VRAM statistics and the background monitor's thresholds (no GPU needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from predictor.daemon import vram


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.records.append(("info", event, kw))

    def warning(self, event: str, **kw: Any) -> None:
        self.records.append(("warning", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.records.append(("error", event, kw))


def fake_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str, rc: int = 0
) -> None:
    exe = tmp_path / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\nexit {rc}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_nvidia_smi_is_parsed_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "0, 1024, 40960\n1, 30000, 40960")
    assert vram.nvidia_smi() == [
        {"index": 0, "used_mib": 1024, "total_mib": 40960},
        {"index": 1, "used_mib": 30000, "total_mib": 40960},
    ]


def test_nvidia_smi_failures_read_not_available(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(tmp_path, monkeypatch, "garbage", rc=0)
    assert vram.nvidia_smi() == vram.NOT_AVAILABLE
    fake_nvidia_smi(tmp_path, monkeypatch, "0, 1, 2", rc=9)
    assert vram.nvidia_smi() == vram.NOT_AVAILABLE
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert vram.nvidia_smi() == vram.NOT_AVAILABLE


def test_sample_on_cpu_says_not_available_and_has_rss() -> None:
    data = vram.sample_memory(with_nvidia_smi=False)
    assert data["rss_bytes"] > 0
    assert all(
        d["memory_stats"] == vram.NOT_AVAILABLE for d in data["devices"] if d["platform"] == "cpu"
    )


def test_utilisation_prefers_jax_stats_and_adds_nvidia_smi() -> None:
    sample = {
        "devices": [
            {"id": 0, "platform": "gpu", "memory_stats": {"bytes_in_use": 85, "bytes_limit": 100}},
            {"id": 0, "platform": "cpu", "memory_stats": vram.NOT_AVAILABLE},
        ],
        "nvidia_smi": [{"index": 0, "used_mib": 10, "total_mib": 20}],
        "rss_bytes": 1,
    }
    assert vram.utilisation(sample) == {
        "gpu:0": (85, 100),
        "nvidia-smi:0": (10 << 20, 20 << 20),
    }


def test_monitor_logs_each_band_crossing_once(monkeypatch: pytest.MonkeyPatch) -> None:
    used = iter([50, 86, 90, 96, 97, 80, 99])

    def fake_sample(*, with_nvidia_smi: bool = True) -> dict[str, Any]:
        return {
            "devices": [
                {
                    "id": 0,
                    "platform": "gpu",
                    "memory_stats": {"bytes_in_use": next(used), "bytes_limit": 100},
                }
            ],
            "nvidia_smi": vram.NOT_AVAILABLE,
            "rss_bytes": 123,
        }

    monkeypatch.setattr(vram, "sample_memory", fake_sample)
    log = RecordingLog()
    registry = CollectorRegistry()
    monitor = vram.VramMonitor(registry, log)  # type: ignore[arg-type]
    for _ in range(7):
        monitor.sample()
    events = [(level, event, kw.get("threshold")) for level, event, kw in log.records]
    assert events == [
        ("warning", "vram_high", 0.85),  # 86
        ("error", "vram_high", 0.95),  # 96
        ("info", "vram_recovered", None),  # 80
        ("error", "vram_high", 0.95),  # 99
    ]
    assert (
        registry.get_sample_value("predictor_device_memory_utilisation_ratio", {"device": "gpu:0"})
        == 0.99
    )
    assert registry.get_sample_value("predictor_process_rss_bytes") == 123
    assert monitor.summary()["devices"]["gpu:0"]["used_bytes"] == 99
