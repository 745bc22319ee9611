"""The specification's single-process service classes, on ``UniversalPredictor``.

* ``UniversalPredictor_AsyncIO``: a ``UniversalPredictor`` whose snapshot
  writes run on its own pool (``io_executor``), with the last request in
  ``pending_snapshot_future`` and ``predict_next`` as the step;
* ``UniversalPredictor_GracefulShutdown``: takes observations until SIGTERM
  or SIGINT, then ``graceful_shutdown`` processes what was accepted, waits
  for the pending snapshot, writes a final one and exits 0.

They are for programs that embed one predictor. The daemon (``predictord``)
does the same for many assets, with systemd supervision and metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from predictor.api import UniversalPredictor
from predictor.config import PredictorConfig
from predictor.core.types import PredictionResult, ProcessState
from predictor.snapshots import AsyncSnapshotWriter, SnapshotResult

#: Seconds kept back from ``timeout_seconds`` for the final snapshot.
FINAL_SNAPSHOT_RESERVE_S = 10.0


class SnapshotExecutor:
    """The pool behind ``UniversalPredictor_AsyncIO.io_executor``.

    Writes are queued per target path: at most one runs and one waits, a
    newer request replacing the waiting one (its future resolves
    ``superseded``). ``shutdown`` drains the queue and stops the threads.
    """

    def __init__(self, n_worker_threads: int) -> None:
        self.writer = AsyncSnapshotWriter(n_worker_threads, thread_name_prefix="snapshot_io_")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new writes; with ``wait``, return after the queued ones finished.

        ``cancel_futures`` is accepted for ``concurrent.futures`` parity;
        queued snapshot writes always complete (a state must not be lost).
        """
        self.writer.close(None if wait else 0.0)


class UniversalPredictor_AsyncIO(UniversalPredictor):
    """``UniversalPredictor`` with the specification's asynchronous snapshot names.

    ``save_snapshot_nonblocking(path)`` copies the state to the host at
    once and returns a future of a ``SnapshotResult`` (``status``,
    ``filepath``, ``filesize_bytes``, ``checksum``); the future never
    raises: a failed write resolves with ``status == "failed"``.
    ``pending_snapshot_future`` is the last such future.

    The first argument may be the config (``UniversalPredictor_AsyncIO(config)``)
    or be left out (``UniversalPredictor_AsyncIO(n_worker_threads=2)``: the
    default config).
    """

    def __init__(
        self,
        config: PredictorConfig | None = None,
        n_worker_threads: int = 2,
        *,
        warmup: bool = True,
    ) -> None:
        super().__init__(config, warmup=warmup)
        self.io_executor = SnapshotExecutor(n_worker_threads)
        self._writer = self.io_executor.writer
        self.pending_snapshot_future: Future[SnapshotResult] | None = None
        self.snapshot_lock = threading.Lock()

    def predict_next(self, obs: ProcessState) -> PredictionResult:
        """One prediction cycle: the same as ``step(obs)``.

        A tick the gate rejects returns the previous valid result with
        ``rejected=True`` and its ``reject_reason``.
        """
        return self.step(obs)

    def save_snapshot_nonblocking(self, filepath: str | os.PathLike[str]) -> Future[SnapshotResult]:
        """Queue a snapshot write; remember it as ``pending_snapshot_future``."""
        future = super().save_snapshot_nonblocking(filepath)
        with self.snapshot_lock:
            self.pending_snapshot_future = future
        return future


@dataclass(frozen=True)
class ShutdownReport:
    """What ``graceful_shutdown`` did (returned when it does not exit the process).

    ``residual_processed`` observations were still buffered and processed;
    ``residual_abandoned`` were left when the deadline came near;
    ``final_snapshot`` is the path written (None if that failed);
    ``duration_s`` the seconds the shutdown took.
    """

    residual_processed: int
    residual_abandoned: int
    final_snapshot: str | None
    duration_s: float


class UniversalPredictor_GracefulShutdown:
    """One predictor that finishes its work on SIGTERM/SIGINT.

    The handlers (installed when constructed in the main thread) only set
    ``shutdown_requested``; from then on ``accept_observation`` refuses new
    observations (returns None). ``graceful_shutdown(timeout_seconds)``
    processes the observations accepted but not yet processed (those a
    concurrent caller had handed over), waits for a pending snapshot,
    writes ``<snapshot_dir>/shutdown_<unix seconds>.msgpack``, stops the
    pool, restores the previous signal handlers and calls ``sys.exit(0)``;
    with ``exit_process=False`` it returns a ``ShutdownReport`` instead.
    """

    def __init__(
        self,
        config: PredictorConfig | None = None,
        *,
        snapshot_dir: str | Path = "snapshots",
        warmup: bool = True,
    ) -> None:
        self.config = config if config is not None else PredictorConfig()
        self.predictor = UniversalPredictor_AsyncIO(self.config, warmup=warmup)
        self.snapshot_dir = Path(snapshot_dir)
        self.shutdown_requested = threading.Event()
        self.is_accepting_data = True
        self.input_buffer_lock = threading.Lock()
        self.residual_buffer: list[ProcessState] = []
        self.logger = logging.getLogger("predictor.shutdown")
        self._previous_handlers: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous_handlers[signum] = signal.signal(signum, self._handle_signal)
            self.logger.info("graceful shutdown handler registered")

    def _handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.logger.warning("received %s: graceful shutdown", signal.Signals(signum).name)
        self.shutdown_requested.set()

    def restore_signal_handlers(self) -> None:
        """Put back the handlers that were in place before this object."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def accept_observation(self, obs: ProcessState) -> PredictionResult | None:
        """Predict from ``obs``, or None once a shutdown was requested.

        None means the service refused the observation (shutting down); a
        tick the predictor's gate rejects still returns a result, marked
        ``rejected`` with its ``reject_reason``.
        """
        if self.shutdown_requested.is_set() or not self.is_accepting_data:
            self.logger.warning(
                "observation rejected (shutdown in progress): ts=%s", obs.timestamp_ns
            )
            return None
        with self.input_buffer_lock:
            self.residual_buffer.append(obs)
        return self._process_observation(obs)

    def _process_observation(self, obs: ProcessState) -> PredictionResult:
        result = self.predictor.predict_next(obs)
        with self.input_buffer_lock:
            # By identity: two equal observations are still two ticks.
            for i, held in enumerate(self.residual_buffer):
                if held is obs:
                    del self.residual_buffer[i]
                    break
        return result

    def graceful_shutdown(
        self, timeout_seconds: float = 25, *, exit_process: bool = True
    ) -> ShutdownReport:
        """Finish the work within ``timeout_seconds`` and exit 0 (see the class)."""
        start = time.monotonic()
        self.logger.info("graceful shutdown initiated")
        self.is_accepting_data = False
        with self.input_buffer_lock:
            residual = list(self.residual_buffer)
        processed = 0
        for obs in residual:
            if time.monotonic() - start > timeout_seconds - FINAL_SNAPSHOT_RESERVE_S:
                self.logger.warning(
                    "deadline near: %d residual observations left", len(residual) - processed
                )
                break
            try:
                self._process_observation(obs)
            except Exception as exc:  # one bad tick must not cost the final snapshot
                self.logger.error("residual observation failed: %r", exc)
            processed += 1
        pending = self.predictor.pending_snapshot_future
        if pending is not None and not pending.done():
            remaining = max(1.0, timeout_seconds - (time.monotonic() - start))
            try:
                pending.result(timeout=remaining)
            except Exception as exc:
                self.logger.error("pending snapshot did not finish: %r", exc)
        final: str | None = None
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            path = self.snapshot_dir / f"shutdown_{int(time.time())}.msgpack"
            final = self.predictor.save_snapshot(path).path
        except OSError as exc:
            self.logger.error("final snapshot failed: %r", exc)
        self.predictor.io_executor.shutdown(wait=True, cancel_futures=False)
        self.restore_signal_handlers()
        report = ShutdownReport(
            processed, len(residual) - processed, final, time.monotonic() - start
        )
        self.logger.info("shutdown completed in %.2f s", report.duration_s)
        if exit_process:
            sys.exit(0)
        return report


__all__ = [
    "ShutdownReport",
    "SnapshotExecutor",
    "UniversalPredictor_AsyncIO",
    "UniversalPredictor_GracefulShutdown",
]
