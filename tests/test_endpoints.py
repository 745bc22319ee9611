"""Runtime-directory rule and ZeroMQ socket factories (predictor.ipc.endpoints)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from predictor.ipc.endpoints import (
    HARD_LIMIT_FACTOR,
    Endpoints,
    Message,
    admin_socket_path,
    bound_endpoint,
    check_endpoint,
    default_endpoints,
    ipc_endpoint,
    ipc_path,
    make_pub,
    make_pull,
    recv_message,
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
def test_oversized_messages_are_counted_and_cost_no_other_tick(
    transport: str, short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """2,000 valid ticks with oversized messages among them on ONE connection: none lost."""
    limit = 1024
    pull = make_pull(ctx, _endpoint(transport, short_dir), max_msg_size=limit, rcvhwm=1000)
    assert pull.getsockopt(zmq.MAXMSGSIZE) == HARD_LIMIT_FACTOR * limit
    assert pull.getsockopt(zmq.RCVHWM) == 1000 and pull.getsockopt(zmq.LINGER) == 0
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(bound_endpoint(pull))

    def feed(sock: zmq.Socket[bytes]) -> None:
        # A thread: the queues hold ~1,000 messages each way, so the receiver
        # must drain while the feeder streams (as the daemon does).
        for i in range(2000):
            if i % 50 == 25:
                sock.send(b"\x00" * (4 * limit))  # over the tick limit, under the hard bound
            sock.send(encode_tick("A", float(i), i + 1))
        sock.send(b"\x01" * limit)  # exactly at the limit: delivered

    feeder = threading.Thread(target=feed, args=(push,), daemon=True)
    feeder.start()
    sent_big = 40
    ticks, too_large, edge = [], 0, None
    deadline = time.monotonic() + 60
    while edge is None and time.monotonic() < deadline:
        if not pull.poll(100):
            continue
        msg = recv_message(pull, limit)
        if msg.too_large:
            too_large += 1
            assert msg.data is None and msg.size == 4 * limit
        elif msg.data is not None and msg.data.startswith(b"\x01"):
            edge = msg.data
        else:
            assert msg.data is not None
            ticks.append(decode_ticks(msg.data)[0][0].ts)
    assert ticks == list(range(1, 2001)) and too_large == sent_big == 40
    assert edge == b"\x01" * limit
    feeder.join(60)
    with pytest.raises(zmq.Again):
        recv_message(pull, limit)
    push.close()
    pull.close()


def test_multipart_message_is_reported_and_drained(
    short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    pull = make_pull(ctx, ipc_endpoint(short_dir / "m.sock"))
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(bound_endpoint(pull))
    push.send_multipart([b"ab", b"cde"])
    push.send(encode_tick("A", 1.0, 1))
    assert pull.poll(10_000)
    assert recv_message(pull, 1024) == Message(None, 5, 2, False)
    assert pull.poll(10_000)
    assert recv_message(pull, 1024).data == encode_tick("A", 1.0, 1)
    push.close()
    pull.close()


def test_ipc_socket_files_are_0660_whatever_the_umask(
    short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    old = os.umask(0o027)  # systemd's UMask=0027 would give 0750
    try:
        pull = make_pull(ctx, ipc_endpoint(short_dir / "t.sock"))
        pub = make_pub(ctx, ipc_endpoint(short_dir / "p.sock"))
        narrow = make_pull(ctx, ipc_endpoint(short_dir / "n.sock"), ipc_mode=None)
    finally:
        os.umask(old)
    assert stat.S_IMODE((short_dir / "t.sock").stat().st_mode) == 0o660
    assert stat.S_IMODE((short_dir / "p.sock").stat().st_mode) == 0o660
    assert stat.S_IMODE((short_dir / "n.sock").stat().st_mode) == 0o750
    for s in (pull, pub, narrow):
        s.close()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_a_feeder_of_the_socket_group_can_connect_under_umask_0027(
    short_dir: Path, ctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """Another uid in the socket's group sends a tick through the 0660 socket."""
    gid = 4242
    os.chmod(short_dir, 0o750)
    os.chown(short_dir, -1, gid)
    old = os.umask(0o027)
    try:
        pull = make_pull(ctx, ipc_endpoint(short_dir / "t.sock"))
    finally:
        os.umask(old)
    os.chown(short_dir / "t.sock", -1, gid)
    endpoint = bound_endpoint(pull)
    feeder = (
        "import zmq, sys; c = zmq.Context(); s = c.socket(zmq.PUSH); s.connect(sys.argv[1]);"
        "s.send(b'tick', copy=True); s.close(linger=5000); c.term()"
    )
    cmd = ["setpriv", "--reuid=4343", "--regid", str(gid), "--clear-groups"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [*cmd, sys.executable, "-c", feeder, endpoint],
        check=False,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert pull.poll(30_000) and pull.recv() == b"tick"
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
