"""Where the daemon's sockets live, and how its ZeroMQ sockets are made.

Runtime directory: ``$RUNTIME_DIRECTORY`` when set (systemd's
``RuntimeDirectory=``; with several entries, colon-separated, the first), else
``./run`` relative to the working directory, created with mode 0750.

Default endpoints in that directory: ``ipc://<rundir>/ticks.sock`` (PULL),
``ipc://<rundir>/predictions.sock`` (PUB) and the admin Unix socket
``<rundir>/admin.sock``. ``predictorctl`` finds the admin socket by the same
rule, with ``$PREDICTOR_ADMIN_SOCKET`` taking precedence.

Socket files: libzmq creates an ``ipc://`` socket file with the process
umask (0750 under systemd's ``UMask=0027``: a feeder in the socket's group
could not connect, since connecting needs write permission). ``make_pull``
and ``make_pub`` set the mode explicitly after binding, 0660 by default
(owner and group read and write, like the admin socket).

Oversized messages: libzmq's ``ZMQ_MAXMSGSIZE`` drops the sender's whole
connection, losing the valid ticks queued behind the oversized one. So the
tick limit is applied by the application: ``make_pull`` sets
``ZMQ_MAXMSGSIZE`` only to a hard bound far above it (``hard_max_msg_size``,
default ``HARD_LIMIT_FACTOR`` times the tick limit), and ``recv_message``
discards a message above the tick limit after receiving it, reporting it so
that the intake counts it as ``too_large``; the connection and every other
tick on it are kept. Worst case buffered in libzmq per connected feeder:
``rcvhwm`` messages of at most the hard bound (plus the kernel's socket
buffer); only a message above the hard bound still costs its sender the
connection.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import zmq

from predictor.ipc.wire import MAX_FRAME_BYTES

RUNTIME_ENV = "RUNTIME_DIRECTORY"
ADMIN_SOCKET_ENV = "PREDICTOR_ADMIN_SOCKET"
DEFAULT_RUNDIR = Path("run")
RUNDIR_MODE = 0o750

#: Mode of the ipc socket files (connecting needs write permission).
IPC_SOCKET_MODE = 0o660
#: ``ZMQ_MAXMSGSIZE`` = this many times the tick limit, unless given.
HARD_LIMIT_FACTOR = 16

TICKS_SOCK = "ticks.sock"
PREDICTIONS_SOCK = "predictions.sock"
ADMIN_SOCK = "admin.sock"

#: Largest path of a Unix socket (``sizeof(sun_path) - 1`` on Linux).
UNIX_PATH_MAX = 107

_SCHEMES = ("ipc://", "tcp://", "inproc://")


def runtime_dir(environ: Mapping[str, str] | None = None, *, create: bool = True) -> Path:
    """The runtime directory (see the module docstring); created 0750 if ``create``.

    Only the default ``./run`` is created (systemd creates its own); an
    existing directory's mode is left as it is.
    """
    env = os.environ if environ is None else environ
    value = env.get(RUNTIME_ENV, "")
    if value:
        return Path(value.split(":")[0])
    path = DEFAULT_RUNDIR.absolute()
    if create and not path.is_dir():
        path.mkdir(mode=RUNDIR_MODE, parents=True, exist_ok=True)
        # mkdir applies the umask; the mode is part of the contract.
        path.chmod(RUNDIR_MODE)
    return path


def admin_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """Admin socket: ``$PREDICTOR_ADMIN_SOCKET``, else ``<runtime dir>/admin.sock``.

    The runtime directory rule gives ``$RUNTIME_DIRECTORY/admin.sock`` else
    ``./run/admin.sock``.

    Creates nothing (the client must not create directories).
    """
    env = os.environ if environ is None else environ
    explicit = env.get(ADMIN_SOCKET_ENV, "")
    if explicit:
        return Path(explicit)
    return runtime_dir(env, create=False) / ADMIN_SOCK


def ipc_endpoint(path: str | os.PathLike[str]) -> str:
    """``ipc://`` URL of a filesystem path (absolute); checks the Unix path limit."""
    p = os.path.abspath(os.fspath(path))
    if len(p.encode()) > UNIX_PATH_MAX:
        raise ValueError(f"ipc path longer than {UNIX_PATH_MAX} bytes: {p}")
    return "ipc://" + p


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint, ``None`` for other transports."""
    return Path(endpoint[len("ipc://") :]) if endpoint.startswith("ipc://") else None


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if its transport is ipc, tcp or inproc, else ``ValueError``."""
    if not endpoint.startswith(_SCHEMES):
        raise ValueError(f"endpoint {endpoint!r}: expected one of {', '.join(_SCHEMES)}")
    path = ipc_path(endpoint)
    if path is not None and len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ValueError(f"ipc path longer than {UNIX_PATH_MAX} bytes: {path}")
    return endpoint


@dataclass(frozen=True)
class Endpoints:
    """The daemon's three addresses: tick PULL, prediction PUB, admin socket path."""

    ticks: str
    predictions: str
    admin: Path


def default_endpoints(
    environ: Mapping[str, str] | None = None, *, create: bool = True
) -> Endpoints:
    """Default endpoints in the runtime directory (created 0750 if ``create``)."""
    env = os.environ if environ is None else environ
    rundir = runtime_dir(env, create=create)
    return Endpoints(
        ticks=ipc_endpoint(rundir / TICKS_SOCK),
        predictions=ipc_endpoint(rundir / PREDICTIONS_SOCK),
        admin=admin_socket_path(env),
    )


def make_pull(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    *,
    max_msg_size: int = MAX_FRAME_BYTES,
    hard_max_msg_size: int | None = None,
    rcvhwm: int = 100_000,
    linger_ms: int = 0,
    bind: bool = True,
    ipc_mode: int | None = IPC_SOCKET_MODE,
) -> zmq.Socket[bytes]:
    """PULL socket for ticks, bound (or connected) to ``endpoint``.

    ``max_msg_size`` (bytes, default the wire's ``MAX_FRAME_BYTES``) is the
    tick limit that ``recv_message`` applies (see the module docstring);
    ``ZMQ_MAXMSGSIZE`` is ``hard_max_msg_size`` (default ``HARD_LIMIT_FACTOR
    * max_msg_size``; -1: none). ``rcvhwm`` bounds the queued messages per
    peer; ``linger_ms`` is how long close waits for undelivered messages (0:
    drop them); ``ipc_mode`` is the mode of a bound ipc socket file (None:
    leave libzmq's).
    """
    hard = HARD_LIMIT_FACTOR * max_msg_size if hard_max_msg_size is None else hard_max_msg_size
    if hard != -1 and hard < max_msg_size:
        raise ValueError(f"hard_max_msg_size {hard} is below max_msg_size {max_msg_size}")
    sock = ctx.socket(zmq.PULL)
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, int(hard))
        sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
        sock.setsockopt(zmq.LINGER, int(linger_ms))
        _attach(sock, check_endpoint(endpoint), bind, ipc_mode)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def make_pub(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    *,
    sndhwm: int = 100_000,
    linger_ms: int = 1000,
    bind: bool = True,
    ipc_mode: int | None = IPC_SOCKET_MODE,
) -> zmq.Socket[bytes]:
    """PUB socket for predictions, bound (or connected) to ``endpoint``.

    ``sndhwm`` bounds the queued messages per subscriber (PUB drops beyond it,
    so a slow subscriber never blocks the loop); ``linger_ms`` lets queued
    predictions flush at shutdown; ``ipc_mode`` as for ``make_pull``.
    """
    sock = ctx.socket(zmq.PUB)
    try:
        sock.setsockopt(zmq.SNDHWM, int(sndhwm))
        sock.setsockopt(zmq.LINGER, int(linger_ms))
        _attach(sock, check_endpoint(endpoint), bind, ipc_mode)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


class Message(NamedTuple):
    """One received tick message: ``data`` None when it was discarded.

    ``size`` is the bytes of all its frames, ``parts`` their count;
    ``too_large`` says a single-frame message exceeded the tick limit.
    """

    data: bytes | None
    size: int
    parts: int
    too_large: bool


def recv_message(sock: zmq.Socket[bytes], max_bytes: int, flags: int = zmq.NOBLOCK) -> Message:
    """Receive one whole message; keep its bytes only if it is one frame within ``max_bytes``.

    Raises ``zmq.Again`` when nothing waits (with ``NOBLOCK``). A discarded
    message is dropped at once: it never costs the connection or the ticks
    queued behind it.
    """
    frame = sock.recv(flags)
    size, parts = len(frame), 1
    while sock.getsockopt(zmq.RCVMORE):
        size += len(sock.recv())
        parts += 1
    if parts > 1:
        return Message(None, size, parts, False)
    if size > max_bytes:
        return Message(None, size, 1, True)
    return Message(frame, size, 1, False)


def bound_endpoint(sock: zmq.Socket[bytes]) -> str:
    """The socket's last bound endpoint (resolves ``tcp://host:*`` / port 0)."""
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


def _attach(sock: zmq.Socket[bytes], endpoint: str, bind: bool, ipc_mode: int | None) -> None:
    if not bind:
        sock.connect(endpoint)
        return
    sock.bind(endpoint)
    path = ipc_path(bound_endpoint(sock))
    if path is not None and ipc_mode is not None:
        try:
            os.chmod(path, ipc_mode)
        except BaseException:
            with contextlib.suppress(zmq.ZMQError):
                sock.unbind(endpoint)
            raise
