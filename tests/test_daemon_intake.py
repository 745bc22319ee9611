"""The daemon's tick intake on real ZeroMQ sockets: oversized and multipart messages.

A PUSH feeder sends, on one connection, valid ticks interleaved with
messages above the tick limit (but below libzmq's hard bound) and with
multi-frame messages. ``Intake.receive`` must return every valid tick in
order and count each bad message once under its reason, and the feeder
keeps its connection (ticks sent after the bad messages still arrive).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import structlog
import zmq

from predictor.daemon.intake import MULTIPART, TOO_LARGE, Intake, Received
from predictor.daemon.metrics import DaemonMetrics
from predictor.ipc.endpoints import HARD_LIMIT_FACTOR, make_pull
from predictor.ipc.wire import REJECT_REASONS

LIMIT = 1024


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[Intake, zmq.Socket[bytes], DaemonMetrics]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull = make_pull(ctx, f"ipc://{tmp_path}/ticks.sock", max_msg_size=LIMIT)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"ipc://{tmp_path}/ticks.sock")
    metrics = DaemonMetrics(reasons=(*REJECT_REASONS, MULTIPART))
    intake = Intake(pull, metrics, structlog.get_logger(), max_msg_bytes=LIMIT, max_rounds=10_000)
    try:
        yield intake, push, metrics
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        ctx.term()


def receive_all(intake: Intake, n_messages: int, timeout: float = 60.0) -> list[Received]:
    out: list[Received] = []
    deadline = time.monotonic() + timeout
    while intake.messages < n_messages:
        assert time.monotonic() < deadline, f"{intake.messages} of {n_messages} messages"
        got = intake.receive(256)
        out += got
        if not got:
            time.sleep(0.01)
    return out


def sized(asset: str, size: int) -> bytes:
    """A batch of one good tick and one padded (rejected) element, exactly ``size`` bytes."""
    for n in range(size):
        frame = msgpack.packb([{"asset": asset, "y": 1.0, "ts": 1}, {"pad": [1] * n}])
        if len(frame) == size:
            return frame
    raise AssertionError(f"no padding gives {size} bytes")


def rejects(metrics: DaemonMetrics, reason: str) -> float:
    return metrics.rejects.labels(reason=reason)._value.get()


def test_oversized_and_multipart_messages_are_counted_and_cost_no_tick(
    wired: tuple[Intake, zmq.Socket[bytes], DaemonMetrics],
) -> None:
    intake, push, metrics = wired
    big = msgpack.packb([{"asset": "big", "y": 1.0, "ts": 1}] * 100)
    assert LIMIT < len(big) < HARD_LIMIT_FACTOR * LIMIT
    n_valid, sent, n_big, n_multi = 300, 0, 0, 0
    for i in range(n_valid):
        push.send(msgpack.packb({"asset": "A", "y": float(i), "ts": i + 1}))
        sent += 1
        if i % 3 == 0:
            push.send(big)
            n_big += 1
            sent += 1
        if i % 50 == 0:
            push.send_multipart([msgpack.packb({"asset": "A", "y": 0.0, "ts": 1}), b"x"])
            n_multi += 1
            sent += 1
    # At the limit a message is decoded (its one good tick kept); one byte more, dropped.
    at_limit, over = sized("E", LIMIT), sized("F", LIMIT + 1)
    push.send(at_limit)
    push.send(over)
    sent += 2
    n_big += 1
    got = receive_all(intake, sent)
    valid = [t for t, _ in got if t.asset == "A"]
    assert [t.ts for t in valid] == list(range(1, n_valid + 1))
    assert [t.y for t in valid] == [float(i) for i in range(n_valid)]
    assert not [t for t, _ in got if t.asset == "big"]
    assert rejects(metrics, TOO_LARGE) == n_big
    assert rejects(metrics, MULTIPART) == n_multi
    # The message at the limit counts too: its padded element is refused by the schema.
    assert rejects(metrics, "unknown_key") == 1
    assert intake.malformed == n_big + n_multi + 1
    assert intake.ticks == len(got)
    assert [t.asset for t, _ in got if t.asset in "EF"] == ["E"]
