"""Forensic dumps written when an asset enters emergency mode.

A dump is one msgpack map (no checksum trailer: forensic tools read it
with a plain ``msgpack.unpackb``), written atomically into a dump
directory, at most one per asset every ``min_interval_s`` seconds::

    {"emergency_timestamp": ISO-8601 UTC, "timestamp_ns": int, "asset_id": str,
     "holder_exponent": float, "weights": [float] * 4,
     "signal_buffer": [...], "regime_history": [...],
     "telemetry_snapshot": {"kurtosis", "dgm_entropy", "adaptive_threshold",
                            "distance_to_collapse"},
     "flags_at_emergency": {"degraded_inference", "regime_change", "mode_collapse"},
     "result": {every result field}, "extra": {...}}

It takes plain data (the result's fields and host buffers), so it depends
on no predictor object.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import structlog
from numpy.typing import ArrayLike

from predictor.snapshots.atomic import atomic_write

log = structlog.get_logger(__name__)

DEFAULT_DUMP_DIR = "~/predictor_emergency_dumps"
DEFAULT_MIN_INTERVAL_S = 60.0
DEFAULT_MAX_FILES = 1000
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DUMP_GLOB = "*_emergency_*.msgpack"


def safe_asset_name(asset_id: str) -> str:
    """File-name-safe form of an asset id (ids come from the wire)."""
    name = _UNSAFE.sub("_", asset_id)[:100] or "_"
    return "_" + name if name.startswith(".") else name


def _plain(value: Any) -> Any:
    """Msgpack-native form of result values (numpy scalars and arrays included)."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    tolist = getattr(value, "tolist", None)  # jax arrays
    if callable(tolist):
        return tolist()
    return repr(value)


def _result_dict(result: Mapping[str, Any] | Any) -> dict[str, Any]:
    if isinstance(result, Mapping):
        return {str(k): _plain(v) for k, v in result.items()}
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return {str(k): _plain(v) for k, v in out.items()}
    raise TypeError(f"result must be a mapping or have to_dict(), got {type(result).__name__}")


def _float(r: Mapping[str, Any], name: str) -> float:
    value = r.get(name)
    return float(value) if isinstance(value, int | float) else math.nan


def build_dump(
    asset_id: str,
    result: Mapping[str, Any] | Any,
    *,
    signal_buffer: ArrayLike,
    regime_history: ArrayLike,
    extra: Mapping[str, Any] | None = None,
    timestamp_ns: int | None = None,
) -> dict[str, Any]:
    """The dump map (see the module docstring); missing telemetry reads NaN."""
    ts = time.time_ns() if timestamp_ns is None else int(timestamp_ns)
    r = _result_dict(result)
    weights = r.get("weights")
    return {
        "emergency_timestamp": datetime.fromtimestamp(ts / 1e9, tz=UTC).isoformat(),
        "timestamp_ns": ts,
        "asset_id": asset_id,
        "holder_exponent": _float(r, "holder_exponent"),
        "weights": [float(w) for w in weights] if isinstance(weights, list) else [],
        "signal_buffer": np.asarray(signal_buffer, dtype=np.float64).tolist(),
        "regime_history": np.asarray(regime_history).tolist(),
        "telemetry_snapshot": {
            name: _float(r, name)
            for name in ("kurtosis", "dgm_entropy", "adaptive_threshold", "distance_to_collapse")
        },
        "flags_at_emergency": {
            "degraded_inference": bool(r.get("degraded_inference_mode", False)),
            "regime_change": bool(r.get("regime_change_detected", False)),
            "mode_collapse": bool(r.get("mode_collapse_warning", False)),
        },
        "result": r,
        "extra": _plain(dict(extra or {})),
    }


class EmergencyDumper:
    """Rate-limited, atomic writer of emergency dumps into one directory.

    ``clock`` (seconds, monotonic) drives the per-asset rate limit; at most
    ``max_files`` dumps are kept (the oldest are deleted).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
        max_files: int = DEFAULT_MAX_FILES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_interval_s < 0 or max_files < 1:
            raise ValueError("min_interval_s must be >= 0 and max_files >= 1")
        self.directory = Path(os.path.expanduser(directory or DEFAULT_DUMP_DIR))
        self.min_interval_s = min_interval_s
        self.max_files = max_files
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def _reserve(self, asset_id: str) -> float | None:
        now = self._clock()
        with self._lock:
            last = self._last.get(asset_id)
            if last is not None and now - last < self.min_interval_s:
                return None
            self._last[asset_id] = now
            return last if last is not None else -math.inf

    def dump(
        self,
        asset_id: str,
        result: Mapping[str, Any] | Any,
        *,
        signal_buffer: ArrayLike,
        regime_history: ArrayLike,
        extra: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Write a dump; None when this asset dumped less than ``min_interval_s`` ago.

        A failed write raises its ``OSError`` and does not count against
        the rate limit.
        """
        previous = self._reserve(asset_id)
        if previous is None:
            log.info("emergency_dump_rate_limited", asset=asset_id)
            return None
        try:
            data = build_dump(
                asset_id,
                result,
                signal_buffer=signal_buffer,
                regime_history=regime_history,
                extra=extra,
            )
            stamp = datetime.fromtimestamp(data["timestamp_ns"] // 1_000_000_000, tz=UTC)
            name = (
                f"{safe_asset_name(asset_id)}_emergency_{stamp:%Y%m%dT%H%M%S}."
                f"{data['timestamp_ns'] % 1_000_000_000:09d}Z.msgpack"
            )
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / name
            body = msgpack.packb(data, use_bin_type=True)
            assert isinstance(body, bytes)
            atomic_write(path, (body,))
        except BaseException:
            with self._lock:
                if previous == -math.inf:
                    self._last.pop(asset_id, None)
                else:
                    self._last[asset_id] = previous
            raise
        self._enforce_max_files()
        log.critical("emergency_dump_saved", asset=asset_id, path=str(path))
        return path

    def _enforce_max_files(self) -> None:
        try:
            dated = [(p.stat().st_mtime_ns, p.name, p) for p in self.directory.glob(_DUMP_GLOB)]
            dated.sort()
            for _, _, old in dated[: max(0, len(dated) - self.max_files)]:
                old.unlink(missing_ok=True)
        except OSError as exc:  # retention is best effort; the dump itself is written
            log.warning("emergency_dump_retention_failed", error=repr(exc))


_default_lock = threading.Lock()
_default_dumper: EmergencyDumper | None = None


def save_emergency_dump(
    result: Mapping[str, Any] | Any,
    asset_id: str,
    *,
    signal_buffer: ArrayLike,
    regime_history: ArrayLike,
    extra: Mapping[str, Any] | None = None,
    dumper: EmergencyDumper | None = None,
) -> Path | None:
    """The specification's ``save_emergency_dump`` on plain data.

    Uses ``dumper`` or a process-wide one on ``~/predictor_emergency_dumps``.
    Returns the dump's path, or None when rate-limited.
    """
    global _default_dumper  # noqa: PLW0603  (one process-wide rate limiter)
    if dumper is None:
        with _default_lock:
            if _default_dumper is None:
                _default_dumper = EmergencyDumper()
            dumper = _default_dumper
    return dumper.dump(
        asset_id, result, signal_buffer=signal_buffer, regime_history=regime_history, extra=extra
    )
