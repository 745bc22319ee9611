"""RoundRunner: a long round runs off the loop thread while the admin socket keeps moving.

A real admin server in loop mode on a real Unix socket; the "round" blocks
in ``Event.wait`` (like XLA, it releases the GIL) until the admin client has
its reply, so the test is an ordering, not a race: the reply can only arrive
if the loop thread served the socket during the round.
"""

from __future__ import annotations

import json
import math
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import structlog

from predictor.admin.protocol import PeerCred, Request
from predictor.admin.server import AdminServer
from predictor.daemon.rounds import INLINE_BELOW_NS, RoundRunner


@pytest.fixture
def served() -> Iterator[tuple[AdminServer, list[Request]]]:
    with tempfile.TemporaryDirectory(prefix="rr-") as tmp:
        queued: list[Request] = []

        def handler(request: Request, _cred: PeerCred) -> Future[dict[str, Any]]:
            queued.append(request)  # commands wait for the loop; nothing answers them here
            return Future()

        server = AdminServer(Path(tmp) / "a.sock", handler, log=structlog.get_logger())
        server.start(thread=False)
        try:
            yield server, queued
        finally:
            server.close()


def ask(path: Path, line: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(str(path))
        s.sendall(line)
        return s.recv(65536)


def test_a_long_round_keeps_the_admin_socket_served(
    served: tuple[AdminServer, list[Request]],
) -> None:
    server, queued = served
    runner = RoundRunner(server)
    answered = threading.Event()
    replies: list[bytes] = []
    loop_thread = threading.get_ident()

    def client() -> None:
        replies.append(ask(server.path, b'{"cmd": "no_such_command"}\n'))
        answered.set()
        # A valid command is accepted and queued during the round (run later).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(server.path))
            s.sendall(b'{"cmd": "status"}\n')
            deadline = time.monotonic() + 60
            while not queued and time.monotonic() < deadline:
                time.sleep(0.01)
        replies.append(b"queued")

    def round_step() -> int:
        assert threading.get_ident() != loop_thread
        threading.Thread(target=client, daemon=True).start()
        assert answered.wait(60), "the admin socket was not served during the round"
        deadline = time.monotonic() + 60
        while len(replies) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return 42

    try:
        assert runner.run(round_step, math.nan) == 42
        assert runner.offloaded == 1
        reply = json.loads(replies[0])
        assert reply["ok"] is False and "no_such_command" in reply["error"]
        assert [r.cmd for r in queued] == ["status"] and replies[1] == b"queued"
    finally:
        runner.close()


def test_a_short_round_runs_inline(served: tuple[AdminServer, list[Request]]) -> None:
    server, _ = served
    runner = RoundRunner(server)
    try:
        here = threading.get_ident()
        assert runner.run(threading.get_ident, INLINE_BELOW_NS / 2) == here
        assert runner.offloaded == 0
        assert runner.run(threading.get_ident, 2 * INLINE_BELOW_NS) != here
        assert runner.offloaded == 1
        with pytest.raises(ZeroDivisionError):  # a failing round raises on the loop
            runner.run(lambda: 1 // 0, math.nan)
    finally:
        runner.close()
