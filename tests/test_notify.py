"""sd_notify wrapper against a real Unix datagram socket (predictor.daemon.notify)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictor.daemon.notify import Notifier, Watchdog, watchdog_interval_ns


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory: Unix socket paths are limited to 107 bytes.
    tmp = Path(tempfile.mkdtemp(prefix="nt", dir="/tmp"))
    path = tmp / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    shutil.rmtree(tmp, ignore_errors=True)


def recv_all(sock: socket.socket) -> list[str]:
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        pass
    return out


def test_lifecycle_datagrams(listener: socket.socket) -> None:
    n = Notifier()
    assert n.enabled
    n.status("warming up\n3 graphs")
    n.ready()
    n.ready(status="assets=10")
    n.watchdog()
    n.reloading()
    n.stopping(status="draining")
    n.stopping()
    got = recv_all(listener)
    assert got[:4] == [
        "STATUS=warming up 3 graphs",
        "READY=1",
        "READY=1\nSTATUS=assets=10",
        "WATCHDOG=1",
    ]
    key, usec = got[4].split("\n")
    assert (
        key == "RELOADING=1" and usec.startswith("MONOTONIC_USEC=") and int(usec.split("=")[1]) > 0
    )
    assert got[5:] == ["STOPPING=1\nSTATUS=draining", "STOPPING=1"]
    n.close()
    n.ready()  # closed: a no-op, not an error
    assert recv_all(listener) == []


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"predictor-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        Notifier().ready()
        sock.settimeout(5.0)
        assert sock.recv(100) == b"READY=1"
    finally:
        sock.close()


def test_no_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    n.ready()
    n.status("x")
    n.stopping()
    w = Watchdog(n, environ={})
    assert not w.enabled and not w.due(10**18) and not w.maybe_ping(10**18)


def test_dead_socket_path_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    n = Notifier()
    assert not n.enabled
    n.ready()


def test_watchdog_interval_from_env() -> None:
    assert watchdog_interval_ns({"WATCHDOG_USEC": "2000000"}) == 2_000_000_000
    assert (
        watchdog_interval_ns({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())})
        == 2 * 10**9
    )
    assert watchdog_interval_ns({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_ns({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_ns({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_ns({}) is None


def test_watchdog_pings_at_half_the_interval(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # 1 s: a ping every 0.5 s
    wd = Watchdog(Notifier())
    assert wd.enabled and wd.period_ns == 500_000_000
    ms = 1_000_000
    t0 = 10_000 * ms
    sent = [t for t in range(t0, t0 + 2001 * ms, 100 * ms) if wd.maybe_ping(t)]
    assert [(t - t0) // ms for t in sent] == [0, 500, 1000, 1500, 2000]
    assert not wd.due(t0 + 2400 * ms) and wd.due(t0 + 2500 * ms)
    assert recv_all(listener) == ["WATCHDOG=1"] * 5
    # A stalled loop calls nothing, so nothing is sent.
    assert recv_all(listener) == []
    assert wd.pings == 5
