"""Where the daemon's sockets live, and how its ZeroMQ sockets are made.

Runtime directory: ``$RUNTIME_DIRECTORY`` when set (systemd's
``RuntimeDirectory=``; with several entries, colon-separated, the first), else
``./run`` relative to the working directory, created with mode 0750.

Default endpoints in that directory: ``ipc://<rundir>/ticks.sock`` (PULL),
``ipc://<rundir>/predictions.sock`` (PUB) and the admin Unix socket
``<rundir>/admin.sock``. ``predictorctl`` finds the admin socket by the same
rule, with ``$PREDICTOR_ADMIN_SOCKET`` taking precedence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import zmq

from predictor.ipc.wire import MAX_FRAME_BYTES

RUNTIME_ENV = "RUNTIME_DIRECTORY"
ADMIN_SOCKET_ENV = "PREDICTOR_ADMIN_SOCKET"
DEFAULT_RUNDIR = Path("run")
RUNDIR_MODE = 0o750

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
    rcvhwm: int = 100_000,
    linger_ms: int = 0,
    bind: bool = True,
) -> zmq.Socket[bytes]:
    """PULL socket for ticks, bound (or connected) to ``endpoint``.

    ``max_msg_size`` (bytes, default the wire's ``MAX_FRAME_BYTES``) sets
    ``ZMQ_MAXMSGSIZE``: a peer sending a larger message is disconnected by
    libzmq and the message never reaches the application. ``rcvhwm`` bounds
    the queued messages per peer; ``linger_ms`` is how long close waits for
    undelivered messages (0: drop them).
    """
    sock = ctx.socket(zmq.PULL)
    try:
        sock.setsockopt(zmq.MAXMSGSIZE, int(max_msg_size))
        sock.setsockopt(zmq.RCVHWM, int(rcvhwm))
        sock.setsockopt(zmq.LINGER, int(linger_ms))
        _attach(sock, check_endpoint(endpoint), bind)
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
) -> zmq.Socket[bytes]:
    """PUB socket for predictions, bound (or connected) to ``endpoint``.

    ``sndhwm`` bounds the queued messages per subscriber (PUB drops beyond it,
    so a slow subscriber never blocks the loop); ``linger_ms`` lets queued
    predictions flush at shutdown.
    """
    sock = ctx.socket(zmq.PUB)
    try:
        sock.setsockopt(zmq.SNDHWM, int(sndhwm))
        sock.setsockopt(zmq.LINGER, int(linger_ms))
        _attach(sock, check_endpoint(endpoint), bind)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock


def bound_endpoint(sock: zmq.Socket[bytes]) -> str:
    """The socket's last bound endpoint (resolves ``tcp://host:*`` / port 0)."""
    value = sock.getsockopt(zmq.LAST_ENDPOINT)
    return value.decode() if isinstance(value, bytes) else str(value)


def _attach(sock: zmq.Socket[bytes], endpoint: str, bind: bool) -> None:
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
