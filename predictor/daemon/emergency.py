"""Forensic dumps of assets that enter Emergency mode.

The loop copies what a dump needs (the asset's signal buffer and CUSUM
history, one device transfer per step that has entries) and hands the
writing to the I/O pool; each asset dumps at most once per the dumper's
``min_interval_s``.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from typing import Any

import numpy as np
from structlog.typing import FilteringBoundLogger

from predictor.daemon.assets import AssetTable
from predictor.daemon.publish import Emergency
from predictor.snapshots import EmergencyDumper


class EmergencyDumps:
    """Rate-limited dumps of Emergency entries, written on ``pool``."""

    def __init__(self, dumper: EmergencyDumper, pool: Executor, log: FilteringBoundLogger) -> None:
        self.dumper = dumper
        self.pool = pool
        self.log = log
        self._last: dict[str, float] = {}

    def record(self, table: AssetTable, entered: list[Emergency]) -> None:
        """Dump the assets of ``entered`` that have not dumped recently."""
        now = time.monotonic()
        due = []
        for e in entered:
            last = self._last.get(e.asset)
            if last is None or now - last >= self.dumper.min_interval_s:
                self._last[e.asset] = now
                due.append(e)
        if not due:
            return
        fast = table.view().fast
        buffers, cusum = fast.buffer, fast.cusum
        for e in due:
            history = np.asarray([np.asarray(leaf)[e.slot] for leaf in cusum], dtype=np.float64)
            buffer = np.array(np.asarray(buffers)[e.slot], copy=True)
            extra = {"slot": e.slot, "seq": int(table.seq[e.slot]), "ts": e.ts}
            self.log.warning("emergency_entered", asset=e.asset, seq=extra["seq"])
            self.pool.submit(self._dump, e.asset, e.result, buffer, history, extra)

    def _dump(
        self,
        asset: str,
        result: dict[str, Any],
        buffer: np.ndarray[Any, Any],
        history: np.ndarray[Any, Any],
        extra: dict[str, Any],
    ) -> None:
        try:
            self.dumper.dump(
                asset, result, signal_buffer=buffer, regime_history=history, extra=extra
            )
        except OSError as exc:
            self.log.error("emergency_dump_failed", asset=asset, error=str(exc))
