"""Admin connections: their state, their deadlines, and who yields to a newcomer.

Deadlines are absolute, never extended by a received byte:

* a request must be complete (its newline received) within
  ``request_timeout_s`` of its first byte;
* a connection with no request in progress is closed ``idle_timeout_s``
  after its last reply (or its accept);
* no connection lives longer than ``max_connection_s`` (closed between
  requests, or with an error reply if a request is half received).

Admission: at most ``max_per_uid`` connections per peer uid
(``SO_PEERCRED``) and ``max_clients`` in all. A newcomer over a bound takes
the place of an *unproductive* connection of the same uid (per-uid bound) or
of any uid (total bound): one that has no request being handled and no reply
pending, and that has either sat on a half-received request or sat idle for
at least ``evict_after_s``. Half-received requests go first (the oldest
first), then idle connections (the longest idle first). With none to evict,
the newcomer is refused with a reply saying which bound it hit. So clients
that send one byte a second, or connect and say nothing, cannot lock out a
client that sends its request at once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass

from predictor.admin.protocol import PeerCred


@dataclass(frozen=True)
class ConnectionLimits:
    """Bounds of the admin server (seconds, counts); see the module docstring."""

    max_clients: int = 256
    max_per_uid: int = 64
    request_timeout_s: float = 5.0
    idle_timeout_s: float = 30.0
    max_connection_s: float = 600.0
    evict_after_s: float = 0.05
    #: A refused or evicted socket stays open this long (or until the peer
    #: closes) after its reply, so that a client still writing its request
    #: does not get EPIPE before it reads the reply.
    linger_s: float = 5.0
    max_lingering: int = 256

    def __post_init__(self) -> None:
        if self.max_clients < 1 or self.max_per_uid < 1 or self.max_lingering < 0:
            raise ValueError("max_clients and max_per_uid must be >= 1, max_lingering >= 0")
        if min(self.request_timeout_s, self.idle_timeout_s, self.max_connection_s) <= 0:
            raise ValueError("timeouts must be > 0")


class Conn:
    """One client connection's buffers, state and clocks (``time.monotonic``)."""

    __slots__ = (
        "accepted",
        "busy",
        "closing",
        "closing_after_error",
        "cred",
        "id",
        "idle_since",
        "inbuf",
        "lines",
        "outbuf",
        "request_started",
        "sock",
    )

    def __init__(self, cid: int, sock: socket.socket, cred: PeerCred, now: float) -> None:
        self.id = cid
        self.sock = sock
        self.cred = cred
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.lines: deque[bytes | None] = deque()  # None: an oversized request
        self.closing_after_error = False
        self.busy = False
        self.closing = False
        self.accepted = now
        self.idle_since = now
        self.request_started: float | None = None

    def quiet(self) -> bool:
        """No request handled or queued and no reply pending."""
        return not self.busy and not self.outbuf and not self.lines and not self.closing

    def received(self, had_partial: bool, lines: int, now: float) -> None:
        """Update the request clock after bytes arrived (never extends a deadline)."""
        if not self.inbuf:
            self.request_started = None
        elif lines or not had_partial:
            self.request_started = now  # the first bytes of a new request


def pick_victim(conns: list[Conn], now: float, evict_after_s: float) -> Conn | None:
    """The connection that yields to a newcomer (see the module docstring), if any."""
    best: tuple[int, float] | None = None
    victim = None
    for c in conns:
        if not c.quiet():
            continue
        if c.request_started is not None:
            since, rank = c.request_started, 0
        else:
            since, rank = c.idle_since, 1
        if now - since < evict_after_s:
            continue
        key = (rank, since)
        if best is None or key < best:
            best, victim = key, c
    return victim


def admission(
    conns: list[Conn], cred: PeerCred, limits: ConnectionLimits
) -> tuple[Conn | None, str | None]:
    """``(victim, None)`` to evict, ``(None, reason)`` to refuse, ``(None, None)`` to admit."""
    now = time.monotonic()
    same = [c for c in conns if c.cred.uid == cred.uid]
    if len(same) >= limits.max_per_uid:
        victim = pick_victim(same, now, limits.evict_after_s)
        if victim is None:
            return None, (
                f"too many admin connections for uid {cred.uid} (limit {limits.max_per_uid})"
            )
        return victim, None
    if len(conns) >= limits.max_clients:
        victim = pick_victim(conns, now, limits.evict_after_s)
        return (victim, None) if victim is not None else (None, "too many admin clients")
    return None, None


def close_quietly(sock: socket.socket) -> None:
    """Close after discarding unread input.

    Unread input makes the kernel reset the peer, which may then lose the
    last reply.
    """
    with contextlib.suppress(OSError):
        for _ in range(64):
            if not sock.recv(1 << 16):
                break
    sock.close()


class Lingering:
    """Sockets answered and half-closed, kept until the peer closes or a deadline.

    They are watched by the server's selector (data ``"linger"``); input is
    read and discarded, EOF or the deadline closes them, and beyond
    ``limit`` the oldest is closed at once.
    """

    def __init__(self, sel: selectors.BaseSelector, limit: int) -> None:
        self.sel = sel
        self.limit = limit
        self.socks: dict[int, tuple[socket.socket, float]] = {}

    def add(self, sock: socket.socket, deadline: float) -> None:
        """Keep ``sock`` until ``deadline`` (monotonic seconds)."""
        try:
            self.sel.register(sock, selectors.EVENT_READ, "linger")
        except (KeyError, ValueError, OSError):
            close_quietly(sock)
            return
        self.socks[sock.fileno()] = (sock, deadline)
        while len(self.socks) > self.limit:
            self._close(next(iter(self.socks)))

    def readable(self, sock: socket.socket) -> None:
        """Discard input; close on EOF or error."""
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock.fileno())

    def expire(self, now: float) -> None:
        """Close the sockets past their deadline."""
        for fd in [fd for fd, (_, deadline) in self.socks.items() if now >= deadline]:
            self._close(fd)

    def close_all(self) -> None:
        """Close every socket."""
        for fd in list(self.socks):
            self._close(fd)

    def _close(self, fd: int) -> None:
        entry = self.socks.pop(fd, None)
        if entry is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(entry[0])
        close_quietly(entry[0])
