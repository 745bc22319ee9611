"""``predictorctl watch``: subscribe to the daemon's prediction PUB socket.

A SUB socket connects to the predictions endpoint and subscribes to one
asset id (the topic frame) or to all. ZeroMQ topic filters match prefixes,
so the asset id is also compared exactly: watching ``BTC`` never shows
``BTC-EUR``. Each message is decoded with ``predictor.ipc.wire.decode_prediction``
and handed to a callback; undecodable messages are counted, not fatal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from predictor.ipc.endpoints import check_endpoint, ipc_path
from predictor.ipc.wire import decode_prediction


class WatchError(Exception):
    """The endpoint is unusable (one-line reason)."""


@dataclass(frozen=True)
class WatchResult:
    """Messages shown, undecodable messages skipped, and whether the wait timed out."""

    received: int
    malformed: int
    timed_out: bool


def watch(
    endpoint: str,
    on_message: Callable[[dict[str, Any]], None],
    *,
    asset: str | None = None,
    count: int | None = None,
    idle_timeout_s: float | None = None,
    poll_ms: int = 100,
) -> WatchResult:
    """Call ``on_message`` for each prediction (of ``asset``, or of every asset).

    Stops after ``count`` messages, or after ``idle_timeout_s`` seconds with
    no message (``timed_out`` then true), or on ``KeyboardInterrupt`` (a
    normal way to leave a live view: the result is returned, not raised).
    Raises ``WatchError`` for a bad endpoint or a missing ``ipc://`` socket file.
    """
    if asset is not None and not asset:
        raise WatchError("asset id must not be empty")
    if count is not None and count < 1:
        raise WatchError(f"--count must be positive, got {count}")
    try:
        check_endpoint(endpoint)
    except ValueError as exc:
        raise WatchError(str(exc)) from exc
    sock_path = ipc_path(endpoint)
    if sock_path is not None and not sock_path.exists():
        raise WatchError(
            f"no prediction socket at {sock_path}: is predictord running? (--endpoint)"
        )

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    topic = asset.encode("utf-8") if asset is not None else b""
    received = malformed = 0
    timed_out = False
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, topic)
        sock.connect(endpoint)
        last = time.monotonic()
        while count is None or received < count:
            if not sock.poll(poll_ms, zmq.POLLIN):
                if idle_timeout_s is not None and time.monotonic() - last >= idle_timeout_s:
                    timed_out = True
                    break
                continue
            frames = sock.recv_multipart()
            last = time.monotonic()
            if asset is not None and frames[0] != topic:
                continue
            try:
                msg = decode_prediction(frames)
            except Exception:  # msgpack's unpack errors share no narrower base
                malformed += 1
                continue
            received += 1
            on_message(msg)
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        ctx.term()
    return WatchResult(received, malformed, timed_out)
