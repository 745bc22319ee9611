"""Asynchronous snapshot writes on a thread pool.

The caller builds the payload (``build_payload``: the device -> host copy,
on its own thread, so the snapshot is a consistent cut of the state) and
submits it; msgpack packing, SHA-256 hashing and the atomic write run on
the pool. ``hashlib`` and ``os.write`` release the GIL, so the caller keeps
computing while a large snapshot is written.

Per target key (the path, or a store's directory) at most one write is in
flight and at most one waits: a request arriving while another still waits
replaces it, and the replaced request's future resolves with status
``"superseded"``. Futures never raise: a failed write resolves with status
``"failed"`` and the error.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from predictor.snapshots.files import SnapshotResult, save_snapshot

log = structlog.get_logger(__name__)

OnSuccess = Callable[[SnapshotResult], None]


@dataclass
class _Request:
    path: Path
    payload: Mapping[str, Any]
    future: Future[SnapshotResult]
    on_success: OnSuccess | None


@dataclass
class _Slot:
    pending: _Request | None = None
    scheduled: bool = False
    running: bool = False


def _resolve(future: Future[SnapshotResult], result: SnapshotResult) -> None:
    # A future the caller cancelled while it waited stays cancelled.
    if future.set_running_or_notify_cancel():
        future.set_result(result)


class AsyncSnapshotWriter:
    """Thread pool writing snapshots; see the module docstring."""

    def __init__(self, max_workers: int = 2, *, thread_name_prefix: str = "snapshot_io") -> None:
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
        self._cond = threading.Condition()
        self._slots: dict[str, _Slot] = {}
        self._closed = False

    def submit(
        self,
        path: str | os.PathLike[str],
        payload: Mapping[str, Any],
        *,
        key: str | None = None,
        on_success: OnSuccess | None = None,
    ) -> Future[SnapshotResult]:
        """Queue a write of ``payload`` (from ``build_payload``) to ``path``.

        ``key`` groups requests that supersede each other (default: the
        path). ``on_success`` runs on the pool after a durable write (e.g.
        retention); its failure is logged, the result stays a success.
        """
        future: Future[SnapshotResult] = Future()
        request = _Request(Path(path), payload, future, on_success)
        slot_key = os.fspath(path) if key is None else key
        with self._cond:
            if self._closed:
                raise RuntimeError("AsyncSnapshotWriter is closed")
            slot = self._slots.setdefault(slot_key, _Slot())
            replaced, slot.pending = slot.pending, request
            if not (slot.scheduled or slot.running):
                slot.scheduled = True
                self._executor.submit(self._drain, slot_key)
        if replaced is not None:
            log.info("snapshot_superseded", path=str(replaced.path), by=str(request.path))
            _resolve(replaced.future, SnapshotResult("superseded", str(replaced.path)))
        return future

    def _drain(self, slot_key: str) -> None:
        with self._cond:
            slot = self._slots[slot_key]
            request, slot.pending = slot.pending, None
            slot.scheduled, slot.running = False, True
        try:
            if request is not None and request.future.set_running_or_notify_cancel():
                request.future.set_result(self._write(request))
        finally:
            with self._cond:
                slot.running = False
                if slot.pending is not None:
                    slot.scheduled = True
                    self._executor.submit(self._drain, slot_key)
                else:
                    del self._slots[slot_key]
                self._cond.notify_all()

    @staticmethod
    def _write(request: _Request) -> SnapshotResult:
        start = time.perf_counter()
        try:
            result = save_snapshot(request.path, request.payload)
        except Exception as exc:
            log.error("snapshot_write_failed", path=str(request.path), error=repr(exc))
            return SnapshotResult(
                "failed",
                str(request.path),
                duration_s=time.perf_counter() - start,
                error=f"{type(exc).__name__}: {exc}",
            )
        log.info(
            "snapshot_written",
            path=result.path,
            size=result.size,
            duration_s=round(result.duration_s, 6),
        )
        if request.on_success is not None:
            try:
                request.on_success(result)
            except Exception as exc:
                log.error("snapshot_post_write_failed", path=result.path, error=repr(exc))
        return result

    def pending(self) -> int:
        """Number of targets with a write running or waiting."""
        with self._cond:
            return len(self._slots)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted write finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._slots, timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new requests, drain the pending ones, stop the pool.

        Returns False if writes were still running after ``timeout``
        seconds (their threads finish them before the interpreter exits).
        """
        with self._cond:
            self._closed = True
        drained = self.wait(timeout)
        self._executor.shutdown(wait=drained)
        return drained

    def __enter__(self) -> AsyncSnapshotWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
