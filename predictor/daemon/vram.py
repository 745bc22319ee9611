"""Device memory statistics and the background VRAM monitor.

``sample_memory()`` gathers, without printing anything:

* per JAX device, ``jax.Device.memory_stats()`` where the backend has it
  (GPU backends: ``bytes_in_use``, ``bytes_limit``, ``peak_bytes_in_use``
  ...), else the string ``"not available"`` (the CPU backend);
* ``nvidia-smi --query-gpu=index,memory.used,memory.total`` parsed into
  MiB per GPU when the tool exists and answers, else ``"not available"``;
* the process's resident set size in bytes (``psutil``), always.

``VramMonitor`` samples every ``interval_s`` seconds on a daemon thread,
exports gauges (``predictor_device_memory_used_bytes``,
``predictor_device_memory_limit_bytes``, ``predictor_device_memory_utilisation_ratio``
per device, ``predictor_process_rss_bytes``) and logs ``vram_high`` at
warning level when a device's use ``used / limit`` crosses 85 %, and at
error level when it crosses 95 % (once per crossing, again only after the
use fell back below the band).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from typing import Any

import jax
import psutil
from prometheus_client import CollectorRegistry, Gauge
from structlog.typing import FilteringBoundLogger

NOT_AVAILABLE = "not available"
WARN_FRACTION = 0.85
CRITICAL_FRACTION = 0.95
_MIB = 1 << 20


def device_memory() -> list[dict[str, Any]]:
    """One entry per local JAX device: id, platform, kind, memory_stats or "not available"."""
    out: list[dict[str, Any]] = []
    for dev in jax.local_devices():
        try:
            stats = dev.memory_stats()
        except Exception:  # backends without the API raise rather than return None
            stats = None
        out.append(
            {
                "id": int(dev.id),
                "platform": str(dev.platform),
                "kind": str(getattr(dev, "device_kind", "")),
                "memory_stats": {k: int(v) for k, v in stats.items()} if stats else NOT_AVAILABLE,
            }
        )
    return out


def nvidia_smi(timeout_s: float = 5.0) -> list[dict[str, int]] | str:
    """Used and total MiB per GPU from ``nvidia-smi``, or "not available"."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return NOT_AVAILABLE
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,memory.used,memory.total", "--format=csv,nounits,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return NOT_AVAILABLE
    if proc.returncode != 0:
        return NOT_AVAILABLE
    gpus: list[dict[str, int]] = []
    for line in proc.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            return NOT_AVAILABLE
        gpus.append({"index": int(parts[0]), "used_mib": int(parts[1]), "total_mib": int(parts[2])})
    return gpus if gpus else NOT_AVAILABLE


def rss_bytes() -> int:
    """Resident set size of this process in bytes."""
    return int(psutil.Process().memory_info().rss)


def sample_memory(*, with_nvidia_smi: bool = True) -> dict[str, Any]:
    """``{"devices": [...], "nvidia_smi": [...] | "not available", "rss_bytes": int}``."""
    return {
        "devices": device_memory(),
        "nvidia_smi": nvidia_smi() if with_nvidia_smi else NOT_AVAILABLE,
        "rss_bytes": rss_bytes(),
    }


def utilisation(sample: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """``{device label: (used bytes, limit bytes)}`` from a sample, where known."""
    out: dict[str, tuple[int, int]] = {}
    for dev in sample["devices"]:
        stats = dev["memory_stats"]
        if isinstance(stats, dict) and stats.get("bytes_limit"):
            out[f"{dev['platform']}:{dev['id']}"] = (
                int(stats.get("bytes_in_use", 0)),
                int(stats["bytes_limit"]),
            )
    smi = sample["nvidia_smi"]
    if isinstance(smi, list):
        for gpu in smi:
            if gpu["total_mib"] > 0:
                out.setdefault(
                    f"nvidia-smi:{gpu['index']}",
                    (gpu["used_mib"] * _MIB, gpu["total_mib"] * _MIB),
                )
    return out


class VramMonitor:
    """Background sampler exporting gauges and logging high memory use."""

    def __init__(
        self,
        registry: CollectorRegistry,
        log: FilteringBoundLogger,
        *,
        interval_s: float = 30.0,
        namespace: str = "predictor",
    ) -> None:
        self.log = log
        self.interval_s = interval_s
        self.used = Gauge(
            "device_memory_used_bytes",
            "Device memory in use.",
            ["device"],
            namespace=namespace,
            registry=registry,
        )
        self.limit = Gauge(
            "device_memory_limit_bytes",
            "Device memory available to the process.",
            ["device"],
            namespace=namespace,
            registry=registry,
        )
        self.util = Gauge(
            "device_memory_utilisation_ratio",
            "Device memory in use / available (0..1).",
            ["device"],
            namespace=namespace,
            registry=registry,
        )
        self.rss = Gauge(
            "process_rss_bytes", "Resident set size.", namespace=namespace, registry=registry
        )
        self._band: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last: dict[str, Any] | None = None

    def start(self) -> None:
        """Sample now, then every ``interval_s`` seconds on a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="vram_monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (returns within a second)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # monitoring must never take the daemon down
                self.log.error("vram_monitor_failed", error=repr(exc))
            self._stop.wait(self.interval_s)

    def sample(self) -> dict[str, Any]:
        """Take one sample, export it and log band crossings; returns the sample."""
        data = sample_memory()
        self.rss.set(data["rss_bytes"])
        for label, (used, limit) in utilisation(data).items():
            self.used.labels(device=label).set(used)
            self.limit.labels(device=label).set(limit)
            frac = used / limit
            self.util.labels(device=label).set(frac)
            self._check_band(label, frac, used, limit)
        with self._lock:
            self.last = data
        return data

    def _check_band(self, label: str, frac: float, used: int, limit: int) -> None:
        band = 2 if frac >= CRITICAL_FRACTION else 1 if frac >= WARN_FRACTION else 0
        previous = self._band.get(label, 0)
        self._band[label] = band
        if band > previous:
            log = self.log.error if band == 2 else self.log.warning
            log(
                "vram_high",
                device=label,
                utilisation=round(frac, 4),
                used_bytes=used,
                limit_bytes=limit,
                threshold=CRITICAL_FRACTION if band == 2 else WARN_FRACTION,
            )
        elif band < previous:
            self.log.info("vram_recovered", device=label, utilisation=round(frac, 4))

    def summary(self) -> dict[str, Any]:
        """Status fields from the last sample: per-device use and RSS (None before one)."""
        with self._lock:
            data = self.last
        if data is None:
            return {"rss_bytes": None, "devices": {}}
        return {
            "rss_bytes": data["rss_bytes"],
            "devices": {
                label: {"used_bytes": u, "limit_bytes": lim, "utilisation": u / lim}
                for label, (u, lim) in utilisation(data).items()
            },
        }
