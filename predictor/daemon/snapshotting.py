"""Snapshots of the daemon: restore at start, periodic and on-demand writes, the final one.

A snapshot is a consistent cut taken on the loop (``payload()`` copies the
state between two rounds), packed, hashed and written on the writer's pool.
The writer's completion never touches the daemon from its thread: it posts
the bookkeeping (last snapshot, metrics, the admin reply) to the loop's
``Mailbox``.

An on-demand snapshot to a given path (admin ``snapshot --path``) goes
where ``predictor.snapshots.resolve_snapshot_path`` says: an absolute path
as given, a relative one inside the snapshot directory, never out of it
(``..`` or a symbolic link leading out is refused with an error reply and
nothing is written).

Periodic snapshots run every ``interval_s`` when ticks arrived since the
last one and no write is pending. The final snapshot (``final``) is written
synchronously after the drain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from predictor.admin.protocol import error, ok
from predictor.daemon.lifecycle import Mailbox
from predictor.daemon.metrics import DaemonMetrics
from predictor.snapshots import (
    AsyncSnapshotWriter,
    SnapshotPathError,
    SnapshotResult,
    SnapshotStore,
    resolve_snapshot_path,
)

Reply = Future[dict[str, Any]]


class Snapshotter:
    """Writes ``payload()`` through ``store`` and ``writer``; see the module docstring.

    ``ticks()`` is the running tick count (a snapshot is due only when it
    moved); ``last`` and ``last_mono`` describe the newest successful write
    (or the snapshot restored at start).
    """

    def __init__(
        self,
        store: SnapshotStore,
        writer: AsyncSnapshotWriter,
        mailbox: Mailbox,
        metrics: DaemonMetrics,
        log: FilteringBoundLogger,
        *,
        payload: Callable[[], dict[str, Any]],
        ticks: Callable[[], int],
        interval_s: float,
        restored: SnapshotResult | None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.mailbox = mailbox
        self.metrics = metrics
        self.log = log
        self.payload = payload
        self.ticks = ticks
        self.interval_s = interval_s
        self.last = restored
        self.last_mono = None if restored is None else time.monotonic()
        self._ticks_at_last = ticks()
        self._next = time.monotonic() + interval_s

    def reschedule(self, interval_s: float) -> None:
        """A new period, counted from now."""
        self.interval_s = interval_s
        self._next = time.monotonic() + interval_s

    def periodic(self, now: float) -> None:
        """Start a periodic snapshot when one is due."""
        if now < self._next:
            return
        self._next = now + self.interval_s
        if self.writer.pending() == 0 and self.ticks() != self._ticks_at_last:
            self.start(None, None)

    def start(self, path: str | None, reply: Reply | None) -> None:
        """Copy the state now (consistent cut); write it on the pool, answer ``reply`` after."""
        target: Path | None = None
        if path is not None:
            try:
                target = resolve_snapshot_path(self.store.directory, path)
            except SnapshotPathError as exc:
                self.log.warning("snapshot_path_refused", path=path, reason=str(exc))
                if reply is not None:
                    reply.set_result(error(f"snapshot refused: {exc}"))
                return
        begin = time.perf_counter()
        try:
            payload = self.payload()
        except Exception as exc:
            self.metrics.snapshot_failures.inc()
            self.log.error("snapshot_payload_failed", error=repr(exc))
            if reply is not None:
                reply.set_result(error(f"snapshot failed: {exc}"))
            return
        copy_s = time.perf_counter() - begin
        self._ticks_at_last = self.ticks()
        if target is None:
            future = self.store.submit(self.writer, payload)
        else:
            future = self.writer.submit(target, payload)
        self.log.info("snapshot_started", copy_s=round(copy_s, 6))

        def done(f: Future[SnapshotResult]) -> None:
            result = f.result()
            self.mailbox.post(lambda: self._finished(result, copy_s, reply))

        future.add_done_callback(done)

    def _finished(self, result: SnapshotResult, copy_s: float, reply: Reply | None) -> None:
        """On the loop: record a finished write and answer its request."""
        if result.status == "success":
            self.last = result
            self.last_mono = time.monotonic()
            self.metrics.snapshots.inc()
            self.metrics.snapshot_duration.set(result.duration_s)
        elif result.status == "failed":
            self.metrics.snapshot_failures.inc()
        if reply is None:
            return
        if result.status == "success":
            reply.set_result(
                ok(
                    path=result.path,
                    size=result.size,
                    checksum=result.checksum,
                    duration_s=result.duration_s + copy_s,
                )
            )
        else:
            reply.set_result(error(f"snapshot {result.status}: {result.error or result.path}"))

    def final(self, wait_s: float) -> bool:
        """Await pending writes (up to ``wait_s``), write the final snapshot; True if saved."""
        if not self.writer.wait(timeout=wait_s):
            self.log.error("snapshot_wait_timeout", timeout_s=round(wait_s, 3))
        try:
            result = self.store.save(self.payload())
        except Exception as exc:
            self.metrics.snapshot_failures.inc()
            self.log.error("final_snapshot_failed", error=repr(exc))
            return False
        self.last = result
        self.log.info("final_snapshot", path=result.path, size=result.size)
        return True

    def status(self) -> dict[str, Any]:
        """The ``snapshot`` part of the ``status`` reply."""
        return {
            "path": None if self.last is None else self.last.path,
            "age_s": None if self.last_mono is None else time.monotonic() - self.last_mono,
        }
