"""Runtime-directory rule and ZeroMQ socket factories (predictor.ipc.endpoints)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from predictor.ipc.endpoints import (
    Endpoints,
    admin_socket_path,
    bound_endpoint,
    check_endpoint,
    default_endpoints,
    ipc_endpoint,
    ipc_path,
    make_pub,
    make_pull,
    runtime_dir,
)
from predictor.ipc.wire import decode_prediction, decode_ticks, encode_rejection, encode_tick


def test_runtime_dir_from_systemd_env(tmp_path: Path) -> None:
    env = {"RUNTIME_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
    assert runtime_dir(env) == tmp_path / "a"
    assert not (tmp_path / "a").exists()  # systemd creates it, not us


def test_default_runtime_dir_created_0750(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    old = os.umask(0)
    try:
        path = runtime_dir({})
    finally:
        os.umask(old)
    assert path == tmp_path / "run"
    assert stat.S_IMODE(path.stat().st_mode) == 0o750


def test_admin_socket_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert admin_socket_path({}) == tmp_path / "run" / "admin.sock"
    assert not (tmp_path / "run").exists()  # the client creates nothing
    assert admin_socket_path({"RUNTIME_DIRECTORY": "/rt"}) == Path("/rt/admin.sock")
    env = {"RUNTIME_DIRECTORY": "/rt", "PREDICTOR_ADMIN_SOCKET": "/x/y.sock"}
    assert admin_socket_path(env) == Path("/x/y.sock")


def test_default_endpoints(tmp_path: Path) -> None:
    eps = default_endpoints({"RUNTIME_DIRECTORY": str(tmp_path)})
    assert eps == Endpoints(
        ticks=f"ipc://{tmp_path}/ticks.sock",
        predictions=f"ipc://{tmp_path}/predictions.sock",
        admin=tmp_path / "admin.sock",
    )
    assert ipc_path(eps.ticks) == tmp_path / "ticks.sock"
    assert ipc_path("tcp://127.0.0.1:5555") is None


def test_endpoint_checks() -> None:
    assert check_endpoint("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"
    with pytest.raises(ValueError, match="expected one of"):
        check_endpoint("udp://127.0.0.1:1")
    with pytest.raises(ValueError, match="longer than"):
        check_endpoint("ipc:///" + "d" * 120)
    with pytest.raises(ValueError, match="longer than"):
        ipc_endpoint("/" + "d" * 120)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte Unix socket path limit.
    path = Path(tempfile.mkdtemp(prefix="pz", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def _endpoint(transport: str, short_dir: Path) -> str:
    return ipc_endpoint(short_dir / "ticks.sock") if transport == "ipc" else "tcp://127.0.0.1:*"


def _drain(sock: zmq.Socket[bytes], want: int, timeout_s: float) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        if sock.poll(50):
            got.append(sock.recv())
    return got


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_oversized_message_dropped_later_ones_arrive(
    transport: str, short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    limit = 1024
    pull = make_pull(ctx, _endpoint(transport, short_dir), max_msg_size=limit, rcvhwm=1000)
    endpoint = bound_endpoint(pull)
    assert pull.getsockopt(zmq.MAXMSGSIZE) == limit
    assert pull.getsockopt(zmq.RCVHWM) == 1000
    assert pull.getsockopt(zmq.LINGER) == 0

    bad = ctx.socket(zmq.PUSH)
    bad.setsockopt(zmq.LINGER, 0)
    bad.connect(endpoint)
    bad.send(b"\x00" * (4 * limit))
    # Give libzmq time to read the oversized header and reset that connection.
    assert _drain(pull, 1, 0.5) == []

    good = ctx.socket(zmq.PUSH)
    good.setsockopt(zmq.LINGER, 0)
    good.connect(endpoint)
    msgs = [encode_tick("A", float(i), i + 1) for i in range(20)]
    edge = b"\x01" * limit  # exactly at the limit: delivered
    for m in [*msgs, edge]:
        good.send(m)
    got = _drain(pull, len(msgs) + 1, 10.0)
    assert got == [*msgs, edge]
    assert _drain(pull, 1, 0.3) == []  # the oversized one never shows up
    ticks = [decode_ticks(m)[0][0] for m in got[:-1]]
    assert [t.ts for t in ticks] == list(range(1, 21))
    bad.close()
    good.close()
    pull.close()


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_pub_sub_two_frames(
    transport: str, short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    ep = ipc_endpoint(short_dir / "pred.sock") if transport == "ipc" else "tcp://127.0.0.1:*"
    pub = make_pub(ctx, ep, sndhwm=500, linger_ms=0)
    assert pub.getsockopt(zmq.SNDHWM) == 500
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"EUR")
    sub.connect(bound_endpoint(pub))
    frames = encode_rejection("EURUSD", 3, 77, "stale")
    other = encode_rejection("BTC", 1, 1, "stale")
    received = None
    deadline = time.monotonic() + 10.0
    while received is None and time.monotonic() < deadline:
        pub.send_multipart(other)  # filtered out by the subscription
        pub.send_multipart(frames)  # repeated until the subscription has propagated
        if sub.poll(50):
            received = sub.recv_multipart()
    assert received is not None
    assert decode_prediction(received)["seq"] == 3
    sub.close()
    pub.close()


def test_connect_mode(short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    push_side = ctx.socket(zmq.PUSH)
    push_side.setsockopt(zmq.LINGER, 0)
    ep = ipc_endpoint(short_dir / "c.sock")
    push_side.bind(ep)
    pull = make_pull(ctx, ep, max_msg_size=64, bind=False)
    push_side.send(b"hello")
    assert _drain(pull, 1, 5.0) == [b"hello"]
    push_side.close()
    pull.close()
