"""Rounds that keep the admin socket moving: a long step runs off the loop thread.

A jitted step releases the GIL while XLA computes, but the loop thread
waiting for it serves nothing. On a loaded machine a round can take
hundreds of milliseconds, while admin clients keep connecting: unread
connections pile up until the admin server's connection bounds refuse
newcomers. So a round expected to be long (the shedder's step-latency EWMA
above ``INLINE_BELOW_NS``, or unknown) runs on the round thread, and the
loop serves the admin socket meanwhile: accepts, reads, parses, queues
commands and writes the replies that are ready. Commands themselves still
run between rounds, on the loop (a command must not see a table in the
middle of a step), so an admin request waits at most for the round in
flight. Short rounds run inline: a thread hand-off would cost more than it
saves.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import zmq

from predictor.admin.server import AdminServer

T = TypeVar("T")

#: Rounds whose expected duration (ns) is below this run on the loop thread.
INLINE_BELOW_NS = 2_000_000
#: Longest wait (ms) between two looks at the round in flight (a safety net:
#: the round thread wakes the loop when it is done).
WAIT_SLICE_MS = 50


class RoundRunner:
    """Runs a round's step inline or on the round thread (see the module docstring)."""

    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="round")
        self._done_r, self._done_w = socket.socketpair()
        self._done_r.setblocking(False)
        self._done_w.setblocking(False)
        self._poller = zmq.Poller()
        self._poller.register(admin.fileno(), zmq.POLLIN)
        self._poller.register(self._done_r.fileno(), zmq.POLLIN)
        self.offloaded = 0

    def run(self, step: Callable[[], T], expected_ns: float) -> T:
        """``step()``, serving the admin socket meanwhile if it is expected to be long."""
        if math.isfinite(expected_ns) and expected_ns < INLINE_BELOW_NS:
            return step()
        self.offloaded += 1
        future: Future[T] = self._pool.submit(step)
        future.add_done_callback(self._wake)
        admin_fd = self.admin.fileno()
        while not future.done():
            events = dict(self._poller.poll(WAIT_SLICE_MS))
            if admin_fd in events:
                self.admin.poll_once(0.0)
            if self._done_r.fileno() in events:
                self._drain_wakeups()
        self._drain_wakeups()
        return future.result()

    def _wake(self, _future: Future[T]) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._done_w.send(b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._done_r.recv(4096):
                pass

    def close(self) -> None:
        """Stop the round thread."""
        self._pool.shutdown(wait=True)
        self._done_r.close()
        self._done_w.close()
