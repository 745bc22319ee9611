"""The daemon's tick intake: the PULL socket, decoding, validation, reject counts.

``Intake.receive(budget)`` takes queued messages without blocking and
returns the valid ticks with their receipt time (``time.perf_counter_ns``
of the message). It stops at ``budget`` messages, at ``budget`` ticks, or
when one asset has ``max_rounds`` ticks in hand: each tick of one asset is
one batched step of the loop, so this bounds the time until the loop's next
turn (admin commands, watchdog pings).

Messages are taken whole by ``predictor.ipc.endpoints.recv_message``: one
above ``max_msg_bytes`` is received and dropped (``too_large``) rather
than refused by libzmq, which would drop the sender's connection and every
valid tick queued behind it on that connection.

A message that fails the wire schema (``predictor.ipc.wire.decode_ticks``),
is above ``max_msg_bytes`` (``too_large``) or carries more than one frame
(``multipart``), touches nothing: its rejects are counted by reason
(``predictor_rejects_total{reason}``), the message in
``predictor_malformed_messages_total``, and it is logged as
``tick_malformed``, at most ``log_per_s`` lines a second (the rest are
summarised by a ``tick_malformed_suppressed`` line). Each reject that names
a readable asset is handed to ``on_reject`` (the publisher answers it on
the asset's topic, ``Publisher.publish_rejects``).

With ``clock = "wall"`` a tick's ``ts`` is Unix time, so one before
2000-01-01 or more than ``max_future_skew_s`` ahead of the daemon's clock is
refused as ``implausible_ts`` (``wire.plausible_window``); with the event
clock ``ts`` is the series' own time and only ``0 < ts < 2**63`` is asked.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq
from structlog.typing import FilteringBoundLogger

from predictor.daemon.metrics import DaemonMetrics
from predictor.ipc.endpoints import recv_message
from predictor.ipc.wire import Reject, RejectReason, Tick, decode_ticks, plausible_window

#: A tick and its receipt time (``time.perf_counter_ns``).
Received = tuple[Tick, int]
#: One reject of a message: reason label, batch position, detail for the log.
RejectNote = tuple[str, int | None, str]

#: Reject label of a tick message with more than one frame (ticks are one frame).
MULTIPART = "multipart"
#: Reject label of a message above ``max_msg_bytes``.
TOO_LARGE = str(RejectReason.TOO_LARGE)


class Intake:
    """Reader of the tick socket; see the module docstring."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        metrics: DaemonMetrics,
        log: FilteringBoundLogger,
        *,
        max_msg_bytes: int,
        max_rounds: int,
        log_per_s: int = 20,
        clock: str = "event",
        max_future_skew_s: float = 300.0,
        on_reject: Callable[[list[Reject]], None] | None = None,
    ) -> None:
        self.sock = sock
        self.metrics = metrics
        self.log = log
        self.max_msg_bytes = max_msg_bytes
        self.max_rounds = max_rounds
        self.log_per_s = log_per_s
        self.wall_clock = clock == "wall"
        self.max_future_skew_ns = int(max_future_skew_s * 1e9)
        self.on_reject = on_reject
        self.messages = 0
        self.ticks = 0
        self.malformed = 0
        self._window = (0.0, 0, 0)  # (start, lines logged, messages suppressed)

    def receive(self, budget: int) -> list[Received]:
        """Queued valid ticks in arrival order (see the module docstring)."""
        sock = self.sock
        out: list[Received] = []
        messages = 0
        deepest = 0
        per_asset: dict[str, int] = {}
        clock = time.perf_counter_ns
        limit = self.max_msg_bytes
        window = (
            plausible_window(time.time_ns(), self.max_future_skew_ns) if self.wall_clock else None
        )
        while messages < budget and len(out) < budget and deepest < self.max_rounds:
            try:
                msg = recv_message(sock, limit)
            except zmq.Again:
                break
            t = clock()
            messages += 1
            frame = msg.data
            if frame is None:
                if msg.too_large:
                    note = (TOO_LARGE, None, f"{msg.size} bytes > {limit}")
                else:
                    note = (MULTIPART, None, f"{msg.parts} frames")
                self._reject([note], msg.size)
                continue
            ticks, rejects = decode_ticks(frame, max_frame_bytes=limit, ts_window=window)
            for tick in ticks:
                out.append((tick, t))
                depth = per_asset.get(tick.asset, 0) + 1
                per_asset[tick.asset] = depth
                deepest = max(deepest, depth)
            if rejects:
                self._reject([(str(r.reason), r.position, r.detail) for r in rejects], len(frame))
                named = [r for r in rejects if r.asset is not None]
                if named and self.on_reject is not None:
                    self.on_reject(named)
        if messages:
            self.messages += messages
            self.metrics.messages.inc(messages)
        if out:
            self.ticks += len(out)
            self.metrics.ticks.inc(len(out))
        return out

    def has_more(self) -> bool:
        """Whether a message is waiting in the socket."""
        events = self.sock.getsockopt(zmq.EVENTS)
        return isinstance(events, int) and bool(events & zmq.POLLIN)

    def _reject(self, rejects: list[RejectNote], size: int) -> None:
        """Count one malformed message and its rejects; log it within the rate limit."""
        self.malformed += 1
        self.metrics.malformed.inc()
        for reason, _, _ in rejects:
            self.metrics.reject(reason)
        now = time.monotonic()
        start, logged, suppressed = self._window
        if now - start >= 1.0:
            if suppressed:
                self.log.warning("tick_malformed_suppressed", messages=suppressed)
            start, logged, suppressed = now, 0, 0
        if logged < self.log_per_s:
            reason, position, detail = rejects[0]
            self.log.warning(
                "tick_malformed",
                reason=reason,
                rejects=len(rejects),
                position=position,
                detail=detail,
                bytes=size,
            )
            logged += 1
        else:
            suppressed += 1
        self._window = (start, logged, suppressed)
