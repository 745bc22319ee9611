"""Process lifecycle of ``predictord``: the runtime lock, signals, and the loop's mailbox.

The shape is a pre-fork server's arbiter (gunicorn's): signal handlers only
set flags and wake the loop; threads (snapshot writers, the start-up
compiler, the I/O pool) never touch the service, they *post* a callable to
the ``Mailbox``, which the loop runs on its own thread at its next turn.
One wake-up descriptor serves both: ``signal.set_wakeup_fd`` writes a byte
to the mailbox's socket pair, and so does ``Mailbox.post``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOCK_NAME = "predictord.lock"


class AlreadyRunningError(RuntimeError):
    """Another predictord holds the runtime directory's lock."""


def acquire_lock(path: Path) -> int:
    """Exclusive ``flock`` on ``path`` holding our pid; the fd stays open for our lifetime."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunningError(f"{path} is locked by pid {holder or '?'}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Mailbox:
    """Callables posted from any thread, run by the loop; a descriptor that wakes it.

    ``post`` never blocks and never raises on a full wake-up pipe (one
    pending byte is enough to wake the loop). ``run_pending`` runs, on the
    calling (loop) thread, what was posted before it started, in order.
    """

    def __init__(self) -> None:
        self._items: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        """Readable when something was posted or a signal arrived."""
        return self._r.fileno()

    @property
    def write_fd(self) -> int:
        """The descriptor ``signal.set_wakeup_fd`` writes to."""
        return self._w.fileno()

    def wake(self) -> None:
        """Make ``fileno()`` readable."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._w.send(b"\0")

    def post(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` for the loop and wake it (any thread)."""
        self._items.put(fn)
        self.wake()

    def pending(self) -> bool:
        """Whether a posted callable waits."""
        return not self._items.empty()

    def clear_wakeups(self) -> None:
        """Consume the wake-up bytes (the loop does this before it looks at its work)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while self._r.recv(4096):
                pass

    def run_pending(self) -> int:
        """Run what is queued now (not what it posts meanwhile); returns how many ran."""
        ran = 0
        for _ in range(self._items.qsize()):
            try:
                fn = self._items.get_nowait()
            except queue.Empty:
                break
            fn()
            ran += 1
        return ran

    def close(self) -> None:
        """Close the socket pair."""
        self._r.close()
        self._w.close()


class Signals:
    """Flags set by SIGTERM/SIGINT (stop) and SIGHUP (reload); the handlers do nothing else."""

    def __init__(self) -> None:
        self.stop_requested = False
        self.stop_reason = ""
        self.reload_requested = False

    def request_stop(self, reason: str) -> None:
        """Ask the loop to drain and exit (a signal, or the admin ``drain`` command)."""
        if not self.stop_requested:
            self.stop_requested = True
            self.stop_reason = reason

    def take_reload(self) -> bool:
        """True once per SIGHUP received since the last call."""
        if self.reload_requested:
            self.reload_requested = False
            return True
        return False

    def install(self, mailbox: Mailbox) -> None:
        """Install the handlers; the signal's arrival wakes the loop through ``mailbox``."""

        def stop(signum: int, _frame: Any) -> None:
            self.request_stop(signal.Signals(signum).name)

        def hup(_signum: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)
        signal.set_wakeup_fd(mailbox.write_fd, warn_on_full_buffer=False)

    @staticmethod
    def uninstall() -> None:
        """Stop writing signal wake-ups (before the mailbox closes)."""
        signal.set_wakeup_fd(-1)
