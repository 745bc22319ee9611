"""Admin socket server: a Unix stream socket served from one thread.

The server thread multiplexes every client with ``selectors``: it accepts,
checks the peer's ``SO_PEERCRED`` (``protocol.peer_allowed``; a refusal is
answered, audit-logged as ``admin_refused`` and the connection closed),
reads newline-delimited requests, validates them and hands each valid one to
``handler(request, cred)``, which returns a ``Future`` of the reply. The
daemon's handler queues loop commands for its prediction loop, so nothing
here ever blocks prediction. Replies are written when their future
completes (from any thread; a wake-up pipe tells the selector).

Per connection, requests are answered one at a time in order. Limits: a
request line longer than ``MAX_REQUEST_BYTES`` is answered with an error
and the connection closed; every line that does not parse is answered with
the reason; absolute deadlines per request and per connection, at most
``max_per_uid`` connections per peer uid and ``max_clients`` in all, with
unproductive connections yielding to newcomers (``connections``: a flood of
slow or silent clients cannot lock out a client that sends its request at
once); a client that does not read its replies is dropped once
``max_output_bytes`` are pending. A refused client gets a reply saying why,
and its socket stays open (half-closed) for a short while so that a request
it is still writing does not fail with EPIPE before it reads the reply. One
client's garbage never affects another.

Two ways to run it: ``start()`` serves from its own thread; ``start(
thread=False)`` leaves the serving to the caller, who polls ``fileno()``
(the selector's descriptor, readable when there is work) and calls
``poll_once()``, which handles a bounded number of events. The daemon does
the latter from its loop, so no second Python thread competes with
prediction for the GIL.

The socket is created with mode 0600 (umask during ``bind``) and then
chmod'ed to ``mode`` (default 0660), with its group set to the admin group
when one is configured.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from predictor.admin.connections import (
    Conn,
    ConnectionLimits,
    Lingering,
    admission,
    close_quietly,
)
from predictor.admin.protocol import (
    MAX_REQUEST_BYTES,
    PeerCred,
    ProtocolError,
    Request,
    encode_reply,
    error,
    parse_request,
    peer_allowed,
    peer_cred,
)

Handler = Callable[[Request, PeerCred], "Future[dict[str, Any]]"]

SOCKET_MODE = 0o660
_RECV = 65536
#: Events (and accepted connections) served per ``poll_once`` in loop mode.
MAX_EVENTS_PER_POLL = 16
#: Seconds between two sweeps of the deadlines.
SWEEP_INTERVAL_S = 0.05


class AdminServer:
    """The admin socket at ``path``; ``start()`` binds and starts the thread."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        handler: Handler,
        *,
        log: FilteringBoundLogger,
        own_uid: int | None = None,
        admin_gid: int | None = None,
        mode: int = SOCKET_MODE,
        max_clients: int | None = None,
        idle_timeout_s: float | None = None,
        max_output_bytes: int = 16 << 20,
        groups_of: Callable[[int], frozenset[int]] | None = None,
        limits: ConnectionLimits | None = None,
        max_per_uid: int | None = None,
        request_timeout_s: float | None = None,
        max_connection_s: float | None = None,
    ) -> None:
        """``limits`` gives every bound; the keyword bounds override its fields."""
        base = limits if limits is not None else ConnectionLimits()
        overrides: dict[str, Any] = {
            "max_clients": max_clients,
            "idle_timeout_s": idle_timeout_s,
            "max_per_uid": max_per_uid,
            "request_timeout_s": request_timeout_s,
            "max_connection_s": max_connection_s,
        }
        self.limits = dataclasses.replace(
            base, **{k: v for k, v in overrides.items() if v is not None}
        )
        self.path = Path(path)
        self.handler = handler
        self.log = log
        self.own_uid = os.geteuid() if own_uid is None else own_uid
        self.admin_gid = admin_gid
        self.mode = mode
        self.max_clients = self.limits.max_clients
        self.idle_timeout_s = self.limits.idle_timeout_s
        self.max_output_bytes = max_output_bytes
        self._groups_of = groups_of
        self._sel = selectors.DefaultSelector()
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._done: deque[tuple[int, dict[str, Any]]] = deque()
        self._conns: dict[int, Conn] = {}
        self._next_id = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._max_events = MAX_EVENTS_PER_POLL
        self._inode: int | None = None
        self._lingering = Lingering(self._sel, self.limits.max_lingering)
        self._next_sweep = 0.0
        self.served = 0
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0
        self.bad_requests = 0

    # --- lifecycle -------------------------------------------------------------
    def start(self, *, thread: bool = True) -> None:
        """Bind the socket (replacing a stale file); serve from a thread unless ``thread=False``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(os.fspath(self.path))
        finally:
            os.umask(old)
        if self.admin_gid is not None:
            try:
                os.chown(self.path, -1, self.admin_gid)
            except OSError as exc:
                self.log.warning("admin_socket_chown_failed", gid=self.admin_gid, error=str(exc))
        os.chmod(self.path, self.mode)
        self._inode = os.stat(self.path).st_ino
        sock.listen(socket.SOMAXCONN)  # bursts of clients must not see EAGAIN on connect
        sock.setblocking(False)
        self._listener = sock
        self._sel.register(sock, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._started = True
        if thread:
            self._max_events = 1 << 30  # its own thread: serve everything that is ready
            self._thread = threading.Thread(target=self._serve, name="admin_server", daemon=True)
            self._thread.start()
        self.log.info("admin_listening", path=str(self.path), mode=oct(self.mode))

    def fileno(self) -> int:
        """Descriptor that is readable when ``poll_once`` has work (loop mode)."""
        return self._sel.fileno()

    def poll_once(self, timeout: float = 0.0) -> None:
        """Serve what is ready within ``timeout`` s: a bounded number of events."""
        for key, events in self._sel.select(timeout=timeout)[: self._max_events]:
            try:
                self._event(key, events)
            except Exception as exc:  # one connection's failure stays its own
                self.log.error("admin_connection_error", error=repr(exc))
                conn = key.data if isinstance(key.data, Conn) else None
                if conn is not None:
                    self._drop(conn)
        self._flush_done()
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_S
            self._sweep(now)

    def close(self, timeout: float = 2.0) -> None:
        """Flush pending replies (up to ``timeout`` s), stop, unlink the socket."""
        if not self._started:
            return
        self._started = False
        if self._thread is not None:
            self._stop.set()
            self._wake()
            self._thread.join(timeout + 1.0)
            self._thread = None
        else:
            # Loop mode: the caller stopped polling; write out what is answered.
            deadline = time.monotonic() + min(timeout, 1.0)
            self._flush_done()
            while any(c.outbuf for c in self._conns.values()) and time.monotonic() < deadline:
                self.poll_once(0.05)
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._lingering.close_all()
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- completion (any thread) ---------------------------------------------------
    def _complete(self, cid: int, future: Future[dict[str, Any]]) -> None:
        try:
            reply = future.result()
        except Exception as exc:  # a failing handler answers, never kills the server
            reply = error(f"internal error: {type(exc).__name__}: {exc}")
        self._done.append((cid, reply))
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # --- the server thread -------------------------------------------------------------
    def _serve(self) -> None:
        deadline: float | None = None
        while True:
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + 1.0
            if deadline is not None and (
                time.monotonic() > deadline
                or not any(c.outbuf or c.busy for c in self._conns.values())
            ):
                self._flush_done()
                return
            self.poll_once(0.5)

    def _event(self, key: selectors.SelectorKey, events: int) -> None:
        if key.data == "listen":
            self._accept()
        elif key.data == "wake":
            with contextlib.suppress(BlockingIOError):
                while self._wake_r.recv(4096):
                    pass
        elif key.data == "linger":
            self._lingering.readable(key.fileobj)  # type: ignore[arg-type]
        else:
            conn: Conn = key.data
            if events & selectors.EVENT_WRITE:
                self._send(conn)
            if events & selectors.EVENT_READ and conn.id in self._conns:
                self._read(conn)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(self._max_events):  # the rest stay in the backlog for the next poll
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving the others
                self.log.error("admin_accept_failed", error=str(exc))
                return
            sock.setblocking(False)
            try:
                cred = peer_cred(sock)
            except OSError as exc:
                self.log.warning("admin_peercred_failed", error=str(exc))
                sock.close()
                continue
            kwargs: dict[str, Any] = {}
            if self._groups_of is not None:
                kwargs["groups_of"] = self._groups_of
            if not peer_allowed(cred, own_uid=self.own_uid, admin_gid=self.admin_gid, **kwargs):
                self.refused += 1
                self.log.warning(
                    "admin_refused",
                    peer_pid=cred.pid,
                    peer_uid=cred.uid,
                    peer_gid=cred.gid,
                    reason="not the daemon's user, root or the admin group",
                )
                self._retire(sock, error("permission denied"))
                continue
            refusal = self._make_room(cred)
            if refusal is not None:
                self.refused += 1
                self.log.warning("admin_too_many_clients", peer_uid=cred.uid, reason=refusal)
                self._retire(sock, error(refusal))
                continue
            self._next_id += 1
            conn = Conn(self._next_id, sock, cred, time.monotonic())
            self._conns[conn.id] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _make_room(self, cred: PeerCred) -> str | None:
        """Evict for a newcomer where a bound is reached; the refusal reason if none can go."""
        while True:
            victim, refusal = admission(list(self._conns.values()), cred, self.limits)
            if victim is None:
                return refusal
            self._evict(victim)

    def _evict(self, conn: Conn) -> None:
        self.evicted += 1
        self.log.info("admin_evicted", peer_pid=conn.cred.pid, peer_uid=conn.cred.uid)
        partial = conn.request_started is not None
        reply = error("connection closed: the admin connection limit was reached")
        self._release(conn, reply if partial else None)

    def _release(self, conn: Conn, reply: dict[str, Any] | None) -> None:
        """Forget ``conn`` now; answer ``reply`` (if any) and let the socket linger."""
        if self._conns.pop(conn.id, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        self._retire(conn.sock, reply)

    def _retire(self, sock: socket.socket, reply: dict[str, Any] | None) -> None:
        """Send ``reply`` (best effort), half-close and keep ``sock`` until the peer closes."""
        with contextlib.suppress(OSError):
            if reply is not None:
                sock.send(encode_reply(reply))
            sock.shutdown(socket.SHUT_WR)
        self._lingering.add(sock, time.monotonic() + self.limits.linger_s)

    def _read(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            # Peer closed its side: finish what it asked, then close.
            conn.closing = True
            conn.inbuf.clear()
            self._update_interest(conn)
            self._maybe_close(conn)
            return
        had_partial = bool(conn.inbuf)
        conn.inbuf += data
        before = len(conn.lines)
        while True:
            nl = conn.inbuf.find(b"\n")
            if nl < 0:
                break
            line = bytes(conn.inbuf[:nl]).rstrip(b"\r")
            del conn.inbuf[: nl + 1]
            if line.strip():
                conn.lines.append(line)
        if len(conn.inbuf) > MAX_REQUEST_BYTES:
            # Answered in order after the requests before it; then the connection closes.
            self.bad_requests += 1
            conn.inbuf.clear()
            conn.lines.append(None)
        conn.received(had_partial, len(conn.lines) - before, time.monotonic())
        self._dispatch(conn)

    def _dispatch(self, conn: Conn) -> None:
        if conn.id not in self._conns:
            return
        while not conn.busy and conn.lines and not conn.closing_after_error:
            line = conn.lines.popleft()
            if line is None:
                conn.lines.clear()
                conn.closing = conn.closing_after_error = True
                self._reply(conn, error(f"request too large (> {MAX_REQUEST_BYTES} bytes)"))
                return
            try:
                request = parse_request(line)
            except ProtocolError as exc:
                self.bad_requests += 1
                self._reply(conn, error(str(exc)))
                continue
            except Exception as exc:  # every line gets a reply, whatever breaks the parser
                self.bad_requests += 1
                self._reply(conn, error(f"bad request: {type(exc).__name__}"))
                continue
            conn.busy = True
            try:
                future = self.handler(request, conn.cred)
            except Exception as exc:
                conn.busy = False
                self._reply(conn, error(f"internal error: {type(exc).__name__}: {exc}"))
                continue
            future.add_done_callback(self._completer(conn.id))

    def _completer(self, cid: int) -> Callable[[Future[dict[str, Any]]], None]:
        def complete(future: Future[dict[str, Any]]) -> None:
            self._complete(cid, future)

        return complete

    def _flush_done(self) -> None:
        while self._done:
            cid, reply = self._done.popleft()
            conn = self._conns.get(cid)
            if conn is None:
                continue
            conn.busy = False
            self.served += 1
            self._reply(conn, reply)
            self._dispatch(conn)
            self._maybe_close(conn)

    def _reply(self, conn: Conn, reply: dict[str, Any]) -> None:
        conn.idle_since = time.monotonic()
        conn.outbuf += encode_reply(reply)
        if len(conn.outbuf) > self.max_output_bytes:
            self.log.warning("admin_client_not_reading", peer_pid=conn.cred.pid)
            self._drop(conn)
            return
        self._send(conn)

    def _send(self, conn: Conn) -> None:
        if conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._drop(conn)
                return
            del conn.outbuf[:sent]
        self._update_interest(conn)
        self._maybe_close(conn)

    def _update_interest(self, conn: Conn) -> None:
        if conn.id not in self._conns:
            return
        mask = 0 if conn.closing else selectors.EVENT_READ
        if conn.outbuf:
            mask |= selectors.EVENT_WRITE
        try:
            self._sel.get_key(conn.sock)
            registered = True
        except KeyError:
            registered = False
        if mask == 0:
            # Closing and nothing to write yet: stop watching (EOF would fire forever).
            if registered:
                self._sel.unregister(conn.sock)
        elif registered:
            self._sel.modify(conn.sock, mask, conn)
        else:
            self._sel.register(conn.sock, mask, conn)

    def _maybe_close(self, conn: Conn) -> None:
        if conn.closing and not conn.outbuf and not conn.busy and not conn.lines:
            self._drop(conn)

    def _sweep(self, now: float) -> None:
        """Apply the deadlines (``connections``) to every connection and lingering socket."""
        lim = self.limits
        for conn in list(self._conns.values()):
            if not conn.quiet() or conn.id not in self._conns:
                continue
            started = conn.request_started
            if started is not None and now - started > lim.request_timeout_s:
                self.timed_out += 1
                self.bad_requests += 1
                self.log.info("admin_request_timeout", peer_pid=conn.cred.pid)
                reason = f"request not completed within {lim.request_timeout_s:g} s"
                self._release(conn, error(reason))
            elif now - conn.accepted > lim.max_connection_s:
                self.timed_out += 1
                self.log.info("admin_connection_expired", peer_pid=conn.cred.pid)
                reason = f"connection older than {lim.max_connection_s:g} s"
                self._release(conn, error(reason) if started is not None else None)
            elif started is None and now - conn.idle_since > lim.idle_timeout_s:
                self.log.info("admin_idle_closed", peer_pid=conn.cred.pid)
                self._release(conn, None)
        self._lingering.expire(now)

    def _drop(self, conn: Conn) -> None:
        if self._conns.pop(conn.id, None) is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        close_quietly(conn.sock)
