"""Admin commands on the loop: a queue fed by the admin server, run a few per iteration.

``AdminServer.poll_once`` (called by the loop) hands every valid request to
``CommandQueue.submit``, which answers with a ``Future``. ``vram`` samples
device memory (``nvidia-smi`` may take a second) on the I/O pool; every
other command is queued and run by the loop through ``run``, at most
``MAX_COMMANDS_PER_ITERATION`` per iteration, and only one while ticks are
waiting: a tick that arrives during a burst of admin requests waits for one
command, not for the whole burst, and an admin request waits for at most
one round of ticks. A handler returns its reply, or None when it answers
the future later itself (a snapshot answers when its file is written).
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, Future
from typing import Any

from structlog.typing import FilteringBoundLogger

from predictor.admin.protocol import PeerCred, Request, error, ok
from predictor.daemon.vram import sample_memory

Reply = Future[dict[str, Any]]
Handler = Callable[[Request, Reply], "dict[str, Any] | None"]

#: Admin commands that change something: logged at info (queries at debug).
MUTATING_COMMANDS = frozenset({"snapshot", "reload", "shed", "forget", "drain"})
#: Admin commands run per loop iteration (the rest wait for the next one).
MAX_COMMANDS_PER_ITERATION = 8


class CommandQueue:
    """Requests waiting for the loop; see the module docstring."""

    def __init__(self, io_pool: Executor, log: FilteringBoundLogger) -> None:
        self.io_pool = io_pool
        self.log = log
        self._queue: queue.SimpleQueue[tuple[Request, Reply]] = queue.SimpleQueue()

    def submit(self, request: Request, cred: PeerCred) -> Reply:
        """From the admin server: audit-log, then queue (``vram``: the I/O pool)."""
        future: Reply = Future()
        audit = self.log.info if request.cmd in MUTATING_COMMANDS else self.log.debug
        audit("admin_command", cmd=request.cmd, peer_uid=cred.uid, peer_pid=cred.pid)
        if request.cmd == "vram":
            self.io_pool.submit(_vram, future)
        else:
            self._queue.put((request, future))
        return future

    def pending(self) -> bool:
        """Whether a command waits."""
        return not self._queue.empty()

    def run(self, handlers: Mapping[str, Handler], ticks_waiting: Callable[[], bool]) -> int:
        """Run queued commands (bounded, see the module docstring); returns how many ran."""
        ran = 0
        while ran < MAX_COMMANDS_PER_ITERATION:
            if ran and ticks_waiting():
                break
            try:
                request, future = self._queue.get_nowait()
            except queue.Empty:
                break
            ran += 1
            handler = handlers.get(request.cmd)
            try:
                reply = (
                    error(f"unknown command {request.cmd!r}")
                    if handler is None
                    else handler(request, future)
                )
            except Exception as exc:
                self.log.exception("admin_command_failed", cmd=request.cmd, error=repr(exc))
                reply = error(f"{request.cmd} failed: {type(exc).__name__}: {exc}")
            if reply is not None:
                future.set_result(reply)
        return ran

    def refuse_all(self, reason: str) -> None:
        """Answer every waiting command with ``reason`` (the loop is going away)."""
        while True:
            try:
                _, future = self._queue.get_nowait()
            except queue.Empty:
                return
            future.set_result(error(reason))


def _vram(future: Reply) -> None:
    try:
        data = sample_memory()
        future.set_result(
            ok(devices=data["devices"], nvidia_smi=data["nvidia_smi"], rss_bytes=data["rss_bytes"])
        )
    except Exception as exc:
        future.set_result(error(f"vram failed: {exc}"))
