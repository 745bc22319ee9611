"""AsyncMetaOptimizer: checkpoints and config exports off the optimisation thread.

Writes are fsync-bound (tens to hundreds of milliseconds); here they run on
a two-thread pool. A checkpoint's payload is snapshotted on the calling
thread (the optimiser keeps mutating its history) and only the encoding and
the durable write happen in the pool.

Backpressure: at most ``max_pending`` (5) checkpoints wait; when a sixth
arrives, the oldest one that has not started is cancelled. Checkpoints are
cumulative, so a newer one supersedes it. Writes of one path are applied
in submission order, and a write older than one already on disk is skipped,
so the file never goes back in time.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from predictor.tuning.checkpoint import write_checkpoint
from predictor.tuning.optimizer import BayesianMetaOptimizer
from predictor.tuning.result import Mutation, OptimizationResult

log = structlog.get_logger("predictor.tuning")


class AsyncMetaOptimizer:
    """Wrapper of ``BayesianMetaOptimizer`` with non-blocking checkpoint and export."""

    def __init__(self, optimizer: BayesianMetaOptimizer, max_pending: int = 5) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.optimizer = optimizer
        self.max_pending = max_pending
        self._io_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="meta_io")
        self._checkpoints: collections.deque[Future[None]] = collections.deque()
        self._exports: list[Future[Mutation]] = []
        self._guard = threading.Lock()
        self._write_lock = threading.Lock()
        self._seq = 0
        self._written: dict[str, int] = {}
        self.dropped = 0
        self.failures: list[BaseException] = []

    # --- checkpoints ------------------------------------------------------
    def save_study_async(self, path: str | os.PathLike[str]) -> Future[None]:
        """Snapshot the study now; write it in the background. Returns the future."""
        payload = self.optimizer.checkpoint_payload()
        with self._guard:
            self._seq += 1
            seq = self._seq
            self._reap()
            while len(self._checkpoints) >= self.max_pending:
                oldest = self._checkpoints.popleft()
                if oldest.cancel():
                    self.dropped += 1
                else:
                    # Running: it cannot be dropped; keep tracking it.
                    self._checkpoints.appendleft(oldest)
                    break
            future = self._io_executor.submit(self._write, Path(path), payload, seq)
            self._checkpoints.append(future)
        return future

    def _write(self, path: Path, payload: dict[str, Any], seq: int) -> None:
        key = os.path.abspath(path)
        with self._write_lock:
            if self._written.get(key, 0) > seq:
                return
            write_checkpoint(path, payload)
            self._written[key] = seq

    def _reap(self) -> None:
        """Forget finished checkpoints (keeping their errors)."""
        while self._checkpoints and self._checkpoints[0].done():
            self._collect(self._checkpoints.popleft())

    def _collect(self, future: Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self.failures.append(exc)
            log.error("tuning_io_failed", error=repr(exc))

    # --- export -------------------------------------------------------------
    def export_config_async(
        self,
        result: OptimizationResult,
        path: str | os.PathLike[str] = "config.toml",
        **kwargs: Any,
    ) -> Future[Mutation]:
        """Run ``result.export_to_toml(path, backup=True, ...)`` in the background.

        Do not reload the predictor before ``wait_for_io_completion`` returns True.
        """
        kwargs.setdefault("backup", True)
        future = self._io_executor.submit(result.export_to_toml, path, **kwargs)
        with self._guard:
            self._exports.append(future)
        return future

    # --- completion ---------------------------------------------------------
    def wait_for_io_completion(self, timeout_seconds: float = 60.0) -> bool:
        """Block until every submitted write finished; False on timeout or on a failure."""
        deadline = time.monotonic() + timeout_seconds
        with self._guard:
            pending: list[Future[Any]] = [*self._checkpoints, *self._exports]
        ok = True
        try:
            for future in pending:
                try:
                    future.result(timeout=max(deadline - time.monotonic(), 0.0))
                except CancelledError:
                    continue
                except TimeoutError:
                    return False
                except Exception as exc:
                    self.failures.append(exc)
                    log.error("tuning_io_failed", error=repr(exc))
                    ok = False
        finally:
            with self._guard:
                self._checkpoints = collections.deque(f for f in self._checkpoints if not f.done())
                self._exports = [f for f in self._exports if not f.done()]
        return ok

    def optimize(self, checkpoint_interval: int = 10, early_stopping_patience: int = 50) -> Any:
        """``optimizer.optimize`` with checkpoints written in the background.

        The last checkpoint (end, early stop or stop signal) is awaited
        before returning, so it is durable when this returns.
        """
        with self._async_saver():
            best = self.optimizer.optimize(checkpoint_interval, early_stopping_patience)
        if not self.wait_for_io_completion():
            raise OSError(f"checkpoint writes failed or timed out: {self.failures[-1:]}")
        return best

    @contextmanager
    def _async_saver(self) -> Iterator[None]:
        previous = self.optimizer.checkpoint_writer
        self.optimizer.checkpoint_writer = self.save_study_async
        try:
            yield
        finally:
            self.optimizer.checkpoint_writer = previous

    def shutdown(self, wait: bool = True) -> None:
        """Stop the pool (after the submitted writes when ``wait``)."""
        self._io_executor.shutdown(wait=wait, cancel_futures=not wait)

    def __enter__(self) -> AsyncMetaOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


__all__ = ["AsyncMetaOptimizer"]
