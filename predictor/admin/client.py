"""AdminClient: the client side of the admin socket (docs/admin.md).

The protocol is newline-delimited JSON over a Unix stream socket: the client
writes one object ``{"cmd": name, ...args}`` followed by ``\\n``; the daemon
answers with one object on one line, ``{"ok": true, ...}`` or
``{"ok": false, "error": reason}``. Several requests may share a connection.

Every failure is one of three exceptions, so callers (``predictorctl``) can
map them to exit statuses without inspecting messages:

* ``AdminConnectionError``: no socket, nothing listening, permission denied,
  timeout, connection closed before a complete reply;
* ``AdminProtocolError``: a reply that is not one JSON object with a boolean
  ``ok``, or longer than ``max_reply_bytes``;
* ``AdminRefused`` (raised by ``call`` only): the daemon answered ``ok: false``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from predictor.ipc.endpoints import UNIX_PATH_MAX, admin_socket_path

#: Default seconds for connecting and for each reply (a snapshot reply waits
#: for the file to be written, hence more than an interactive second).
DEFAULT_TIMEOUT_S = 30.0
#: Largest reply accepted, in bytes (an ``assets`` reply for 100,000 assets
#: is about 25 MB).
MAX_REPLY_BYTES = 64 << 20
#: Bytes read per ``recv`` call.
_CHUNK = 1 << 16


class AdminError(Exception):
    """Base of the admin client's errors; ``str()`` is a one-line reason."""


class AdminConnectionError(AdminError):
    """The socket could not be reached, or the exchange broke off."""


class AdminProtocolError(AdminError):
    """The daemon's reply does not follow the protocol."""


class AdminRefused(AdminError):
    """The daemon answered ``{"ok": false, "error": ...}``; ``reply`` holds it whole."""

    def __init__(self, cmd: str, reply: dict[str, Any]) -> None:
        self.cmd = cmd
        self.reply = reply
        self.error = str(reply.get("error", "no reason given"))
        super().__init__(f"{cmd}: {self.error}")


class AdminClient:
    """One connection to the daemon's admin socket.

    ``path`` defaults to ``predictor.ipc.endpoints.admin_socket_path()``
    (``$PREDICTOR_ADMIN_SOCKET``, else ``$RUNTIME_DIRECTORY/admin.sock``, else
    ``./run/admin.sock``). ``timeout`` (seconds) bounds the connect and each
    reply. The connection opens on the first request (or ``connect()``) and is
    kept for the next ones; use the client as a context manager or call
    ``close()``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if max_reply_bytes < 2:
            raise ValueError(f"max_reply_bytes too small: {max_reply_bytes}")
        self.path = Path(path) if path is not None else admin_socket_path()
        self.timeout = float(timeout)
        self.max_reply_bytes = int(max_reply_bytes)
        self._sock: socket.socket | None = None
        self._buf = bytearray()

    # --- connection -------------------------------------------------------

    def connect(self) -> None:
        """Open the connection (no-op when open); raises ``AdminConnectionError``."""
        if self._sock is not None:
            return
        raw = os.fsencode(self.path)
        if len(raw) > UNIX_PATH_MAX:
            raise AdminConnectionError(
                f"admin socket path longer than {UNIX_PATH_MAX} bytes: {self.path}"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(raw)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, OSError):
                raise AdminConnectionError(self._connect_reason(exc)) from exc
            raise
        self._sock = sock
        self._buf.clear()

    def _connect_reason(self, exc: OSError) -> str:
        where = str(self.path)
        if isinstance(exc, TimeoutError | socket.timeout):
            return f"timed out after {self.timeout:g} s connecting to {where}"
        if exc.errno == errno.ENOENT:
            return (
                f"no admin socket at {where}: is predictord running? "
                "(under systemd: --socket /run/predictor/admin.sock)"
            )
        if exc.errno == errno.ECONNREFUSED:
            return f"nothing is listening on {where} (a stale socket from a stopped daemon?)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (
                f"permission denied on {where}: run as the daemon's user, root, "
                "or a member of its admin group"
            )
        if exc.errno == errno.ENOTSOCK:
            return f"{where} is not a socket"
        return f"cannot connect to {where}: {exc.strerror or exc}"

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- requests ---------------------------------------------------------

    def request(self, cmd: str, /, **args: Any) -> dict[str, Any]:
        """Send ``{"cmd": cmd, **args}`` and return the reply object as it came.

        The reply is returned whether ``ok`` is true or false (see ``call``
        for the raising variant). Raises ``AdminConnectionError`` or
        ``AdminProtocolError``; a failed exchange closes the connection, so
        the next request reconnects.
        """
        payload = {"cmd": cmd, **args}
        try:
            line = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"request arguments are not plain JSON: {exc}") from exc
        self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(line + b"\n")
            raw = self._read_line()
        except AdminError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            if isinstance(exc, TimeoutError | socket.timeout):
                raise AdminConnectionError(
                    f"no reply to {cmd!r} within {self.timeout:g} s from {self.path}"
                ) from exc
            raise AdminConnectionError(
                f"connection to {self.path} failed during {cmd!r}: {exc.strerror or exc}"
            ) from exc
        return _parse_reply(cmd, raw)

    def call(self, cmd: str, /, **args: Any) -> dict[str, Any]:
        """``request``, raising ``AdminRefused`` when the reply has ``ok: false``."""
        reply = self.request(cmd, **args)
        if reply["ok"] is not True:
            raise AdminRefused(cmd, reply)
        return reply

    def _read_line(self) -> bytes:
        """Bytes up to (without) the next ``\\n``; bounded by ``max_reply_bytes``."""
        assert self._sock is not None
        while True:
            nl = self._buf.find(b"\n", 0, self.max_reply_bytes + 1)
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.max_reply_bytes:
                raise AdminProtocolError(f"reply longer than {self.max_reply_bytes} bytes")
            chunk = self._sock.recv(_CHUNK)
            if not chunk:
                detail = f" ({len(self._buf)} bytes of a partial reply)" if self._buf else ""
                raise AdminConnectionError(
                    f"the daemon closed the connection before replying{detail}"
                )
            self._buf += chunk


def _parse_reply(cmd: str, raw: bytes) -> dict[str, Any]:
    """One reply line as a dict with a boolean ``ok``, else ``AdminProtocolError``."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdminProtocolError(f"reply to {cmd!r} is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise AdminProtocolError(f"reply to {cmd!r} is not a JSON object")
    if not isinstance(obj.get("ok"), bool):
        raise AdminProtocolError(f"reply to {cmd!r} has no boolean 'ok'")
    return obj
