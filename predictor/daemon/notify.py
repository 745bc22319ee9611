"""systemd notification (``sd_notify``) through the ``sdnotify`` package.

``Notifier`` sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``RELOADING=1`` and ``STOPPING=1`` datagrams to ``$NOTIFY_SOCKET``; without
that variable (not under systemd) every call is a no-op. The environment is
read when the notifier is constructed.

``Watchdog`` holds the cadence: with ``$WATCHDOG_USEC`` set (and
``$WATCHDOG_PID``, if set, equal to this process), a ping is due every half
of the interval, as sd_watchdog_enabled(3) recommends. The loop calls
``Watchdog.maybe_ping(now_ns)`` once per iteration, so pings stop by
themselves when the loop stops making progress.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import sdnotify


class Notifier:
    """Datagrams to the service manager; no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self) -> None:
        # sdnotify reads $NOTIFY_SOCKET (an abstract "@name" too) and connects.
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier: sdnotify.SystemdNotifier | None = None
        if self.enabled:
            self._notifier = sdnotify.SystemdNotifier()
            sock: socket.socket | None = getattr(self._notifier, "socket", None)
            if sock is None:
                # sdnotify swallowed a connection error: behave as without systemd.
                self.enabled = False
                self._notifier = None
            else:
                # A full receive queue must never stall the prediction loop.
                sock.setblocking(False)

    def notify(self, state: str) -> None:
        """Send one raw state string (newline-separated ``KEY=VALUE`` lines)."""
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self, status: str | None = None) -> None:
        """``READY=1`` (optionally with a ``STATUS=`` line)."""
        self.notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """``STATUS=<text>`` (newlines replaced by spaces)."""
        self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """``WATCHDOG=1``."""
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (follow with ``ready()``)."""
        self.notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self, status: str | None = None) -> None:
        """``STOPPING=1`` (optionally with a ``STATUS=`` line)."""
        self.notify("STOPPING=1" if status is None else f"STOPPING=1\nSTATUS={_one_line(status)}")

    def close(self) -> None:
        """Close the datagram socket."""
        if self._notifier is not None:
            sock = getattr(self._notifier, "socket", None)
            if sock is not None:
                sock.close()
            self._notifier = None
        self.enabled = False


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def watchdog_interval_ns(environ: Mapping[str, str] | None = None) -> int | None:
    """``$WATCHDOG_USEC`` in ns if the watchdog applies to this process, else None."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    try:
        usec = int(raw)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec * 1000 if usec > 0 else None


class Watchdog:
    """Ping cadence: due every ``interval / 2`` ns of the monotonic clock.

    ``interval_ns`` defaults to ``watchdog_interval_ns()``; ``None`` disables
    the watchdog (``due`` is always False).
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_ns: int | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier
        self.interval_ns = watchdog_interval_ns(environ) if interval_ns is None else interval_ns
        self.period_ns = None if self.interval_ns is None else self.interval_ns // 2
        self.last_ping_ns: int | None = None
        self.pings = 0

    @property
    def enabled(self) -> bool:
        """True when a watchdog interval is configured."""
        return self.period_ns is not None

    def due(self, now_ns: int) -> bool:
        """True if a ping is due at ``now_ns`` (monotonic ns): first one, or half an interval on."""
        if self.period_ns is None:
            return False
        return self.last_ping_ns is None or now_ns - self.last_ping_ns >= self.period_ns

    def maybe_ping(self, now_ns: int | None = None) -> bool:
        """Send ``WATCHDOG=1`` if due (``now_ns`` default: monotonic now); True if sent."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        if not self.due(now):
            return False
        self.notifier.watchdog()
        self.last_ping_ns = now
        self.pings += 1
        return True
