"""Admin socket server and protocol, in process with a stand-in handler.

The daemon's own commands are exercised against the real daemon in
``test_daemon_e2e.py``; here the server's contract: framing, validation,
limits, ordering, concurrency, socket mode and the peer-credential check
(unit test of the rule, and a real refusal of another uid via ``setpriv``).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from predictor.admin.protocol import (
    MAX_REQUEST_BYTES,
    PeerCred,
    ProtocolError,
    Request,
    encode_reply,
    ok,
    parse_request,
    peer_allowed,
)
from predictor.admin.server import AdminServer


class RecordingLog:
    """Stand-in for a structlog logger: keeps (level, event, fields)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._add("error", event, **kw)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.records if e == name]


def echo_handler(request: Request, cred: PeerCred) -> Future[dict[str, Any]]:
    """Replies at once, or from another thread after a delay (``args.delay``)."""
    future: Future[dict[str, Any]] = Future()
    path = request.args.get("path", "")
    if request.cmd == "snapshot" and path.startswith("delay:"):
        delay = float(path.split(":")[1])

        def later() -> None:
            time.sleep(delay)
            future.set_result(ok(cmd=request.cmd, path=path, uid=cred.uid))

        threading.Thread(target=later, daemon=True).start()
    elif request.cmd == "snapshot" and path == "boom":
        raise RuntimeError("handler exploded")
    else:
        future.set_result(ok(cmd=request.cmd, args=dict(request.args), uid=cred.uid))
    return future


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[AdminServer, RecordingLog]]:
    log = RecordingLog()
    srv = AdminServer(
        tmp_path / "admin.sock",
        echo_handler,  # type: ignore[arg-type]
        log=log,  # type: ignore[arg-type]
        idle_timeout_s=1.0,
        request_timeout_s=1.0,
    )
    srv.start()
    yield srv, log
    srv.close()


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(path))
    return s


def read_lines(s: socket.socket, n: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [json.loads(line) for line in buf.split(b"\n") if line]


def ask(path: Path, request: Any) -> dict[str, Any]:
    with connect(path) as s:
        s.sendall((request if isinstance(request, bytes) else json.dumps(request).encode()) + b"\n")
        return read_lines(s, 1)[0]


# --- protocol ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", "JSON object"),
        (b'{"nocmd": 1}', "string 'cmd'"),
        (b'{"cmd": 5}', "string 'cmd'"),
        (b'{"cmd": "format_disk"}', "unknown command"),
        (b'{"cmd": "status", "x": 1}', "unknown argument"),
        (b'{"cmd": "shed"}', "'level' is required"),
        (b'{"cmd": "shed", "level": "fast"}', "'auto' or an integer"),
        (b'{"cmd": "shed", "level": true}', "'auto' or an integer"),
        (b'{"cmd": "reload", "reinit": "yes"}', "true or false"),
        (b'{"cmd": "snapshot", "path": 3}', "non-empty string"),
        (b'{"cmd": "snapshot", "path": "../../../../tmp/x"}', "leaves the snapshot directory"),
        (b'{"cmd": "snapshot", "path": "a/../../x"}', "leaves the snapshot directory"),
        (b'{"cmd": "snapshot", "path": "."}', "leaves the snapshot directory"),
        (b"[" * 50_000, "nested too deeply"),
        (b"x" * (MAX_REQUEST_BYTES + 1), "too large"),
    ],
)
def test_parse_request_refuses_with_a_reason(line: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        parse_request(line)


def test_parse_request_accepts_each_command() -> None:
    for line, cmd in [
        (b'{"cmd": "status"}', "status"),
        (b'{"cmd": "snapshot", "path": "/tmp/x"}', "snapshot"),
        (b'{"cmd": "snapshot", "path": "a/../b.snapshot"}', "snapshot"),
        (b'{"cmd": "reload", "reinit": true}', "reload"),
        (b'{"cmd": "vram"}', "vram"),
        (b'{"cmd": "assets"}', "assets"),
        (b'{"cmd": "shed", "level": 3}', "shed"),
        (b'{"cmd": "shed", "level": "auto"}', "shed"),
        (b'{"cmd": "drain"}', "drain"),
    ]:
        assert parse_request(line).cmd == cmd


def test_replies_are_strict_json_lines() -> None:
    line = encode_reply(ok(x=float("nan"), y=[float("inf"), 1.5], z={"w": -float("inf")}))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"ok": True, "x": None, "y": [None, 1.5], "z": {"w": None}}


# --- peer credentials ----------------------------------------------------------


def test_peer_allowed_rules() -> None:
    no_groups = lambda pid: frozenset()  # noqa: E731
    own = 1000
    assert peer_allowed(PeerCred(1, own, 1000), own_uid=own, admin_gid=None, groups_of=no_groups)
    assert peer_allowed(PeerCred(1, 0, 0), own_uid=own, admin_gid=None, groups_of=no_groups)
    stranger = PeerCred(7, 2000, 2000)
    assert not peer_allowed(stranger, own_uid=own, admin_gid=None, groups_of=no_groups)
    assert not peer_allowed(stranger, own_uid=own, admin_gid=3000, groups_of=no_groups)
    assert peer_allowed(PeerCred(7, 2000, 3000), own_uid=own, admin_gid=3000, groups_of=no_groups)
    asked: list[int] = []

    def groups(pid: int) -> frozenset[int]:
        asked.append(pid)
        return frozenset({10, 3000})

    assert peer_allowed(stranger, own_uid=own, admin_gid=3000, groups_of=groups)
    assert asked == [7]
    assert not peer_allowed(stranger, own_uid=own, admin_gid=4000, groups_of=groups)


def test_socket_mode_is_0660(server: tuple[AdminServer, RecordingLog]) -> None:
    srv, _ = server
    st = os.stat(srv.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_refusal_is_audited_for_a_stranger(tmp_path: Path) -> None:
    log = RecordingLog()
    srv = AdminServer(
        tmp_path / "admin.sock",
        echo_handler,
        log=log,  # type: ignore[arg-type]
        own_uid=os.geteuid() + 12345,
        groups_of=lambda pid: frozenset(),
    )
    if os.geteuid() == 0:
        pytest.skip("root is always allowed; see the setpriv test")
    srv.start()
    try:
        reply = ask(srv.path, {"cmd": "status"})
    finally:
        srv.close()
    assert reply == {"ok": False, "error": "permission denied"}
    (entry,) = log.events("admin_refused")
    assert entry["peer_uid"] == os.geteuid()


_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"cmd": "status"}\\n')
except OSError:
    pass  # a refused peer may find the socket closed before it writes
buf = b""
while not buf.endswith(b"\\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    buf += chunk
print(buf.decode().strip())
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
@pytest.mark.parametrize("group_allowed", [False, True])
def test_another_uid_is_refused_unless_in_the_admin_group(group_allowed: bool) -> None:
    nobody = 65534
    directory = Path(tempfile.mkdtemp(prefix="admin-peercred-"))
    directory.chmod(0o755)
    log = RecordingLog()
    # Mode 0666 only so that the other uid reaches SO_PEERCRED (0660 would stop it at connect).
    srv = AdminServer(
        directory / "admin.sock",
        echo_handler,
        log=log,  # type: ignore[arg-type]
        mode=0o666,
        admin_gid=nobody if group_allowed else None,
    )
    srv.start()
    try:
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={nobody}",
                f"--regid={nobody}",
                "--clear-groups",
                sys.executable,
                "-I",
                "-c",
                _CLIENT,
                str(srv.path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        srv.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    if group_allowed:
        assert reply["ok"] is True and reply["uid"] == nobody
        assert log.events("admin_refused") == []
    else:
        assert reply == {"ok": False, "error": "permission denied"}
        (entry,) = log.events("admin_refused")
        assert entry["peer_uid"] == nobody and entry["peer_gid"] == nobody


# --- framing, errors, limits ---------------------------------------------------------


def test_each_command_reaches_the_handler(server: tuple[AdminServer, RecordingLog]) -> None:
    srv, _ = server
    reply = ask(srv.path, {"cmd": "shed", "level": 2})
    assert reply == {"ok": True, "cmd": "shed", "args": {"level": 2}, "uid": os.geteuid()}


def test_bad_requests_do_not_close_the_connection(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    srv, _ = server
    with connect(srv.path) as s:
        s.sendall(b'garbage\n{"cmd": "nope"}\n\n[]\n{"cmd": "status"}\n')
        replies = read_lines(s, 4)
    assert [r["ok"] for r in replies] == [False, False, False, True]
    assert "not JSON" in replies[0]["error"]
    assert "unknown command" in replies[1]["error"]
    assert srv.bad_requests == 3


def test_replies_keep_request_order_with_slow_commands(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    srv, _ = server
    with connect(srv.path) as s:
        s.sendall(
            b'{"cmd": "snapshot", "path": "delay:0.3"}\n{"cmd": "status"}\n'
            b'{"cmd": "snapshot", "path": "delay:0.05"}\n'
        )
        replies = read_lines(s, 3)
    assert [r["cmd"] for r in replies] == ["snapshot", "status", "snapshot"]
    assert replies[0]["path"] == "delay:0.3" and replies[2]["path"] == "delay:0.05"


def test_a_failing_handler_answers_an_error(server: tuple[AdminServer, RecordingLog]) -> None:
    srv, _ = server
    reply = ask(srv.path, {"cmd": "snapshot", "path": "boom"})
    assert reply["ok"] is False and "handler exploded" in reply["error"]
    assert ask(srv.path, {"cmd": "status"})["ok"] is True


def test_oversized_request_is_refused_and_closed(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    srv, _ = server
    with connect(srv.path) as s:
        s.sendall(b'{"cmd": "status"}\n')
        # The server may close before the whole blob is written.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(b"x" * (4 * MAX_REQUEST_BYTES))
        replies = read_lines(s, 2)
        assert replies[0]["ok"] is True
        assert replies[1]["ok"] is False and "too large" in replies[1]["error"]
        s.settimeout(5)
        # Closed by the server (a reset: closed while the blob was still unread).
        with contextlib.suppress(ConnectionResetError):
            assert s.recv(10) == b""
    assert ask(srv.path, {"cmd": "status"})["ok"] is True


def test_half_written_request_neither_blocks_others_nor_lives_forever(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    srv, log = server
    with connect(srv.path) as slow:
        slow.sendall(b'{"cmd": "sta')
        for _ in range(5):
            assert ask(srv.path, {"cmd": "assets"})["ok"] is True
        (reply,) = read_lines(slow, 1)  # request deadline (1 s in this fixture)
        assert reply["ok"] is False and "not completed within 1 s" in reply["error"]
        assert slow.recv(10) == b""
    assert log.events("admin_request_timeout")


def test_idle_connection_is_closed_without_a_reply(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    srv, log = server
    with connect(srv.path) as idle:
        assert idle.recv(10) == b""  # idle deadline (1 s in this fixture)
    assert log.events("admin_idle_closed")


def test_trickled_bytes_do_not_extend_the_request_deadline(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    """One byte every 0.1 s forever: answered and closed at the 1 s deadline all the same."""
    srv, _ = server
    with connect(srv.path) as slow:
        slow.setblocking(False)
        got = b""
        deadline = time.monotonic() + 30
        while b"\n" not in got and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                slow.send(b" ")
            if select.select([slow], [], [], 0.1)[0]:
                got += slow.recv(4096)
        reply = json.loads(got.split(b"\n")[0])
    assert reply["ok"] is False and "not completed within" in reply["error"]


def test_deeply_nested_request_is_answered_and_the_connection_kept(
    server: tuple[AdminServer, RecordingLog],
) -> None:
    srv, _ = server
    with connect(srv.path) as s:
        s.sendall(b"[" * 50_000 + b"\n" + b'{"cmd": "status"}\n')
        first, second = read_lines(s, 2)
    assert first["ok"] is False and "nested too deeply" in first["error"]
    assert second["ok"] is True


def test_fifty_concurrent_clients(server: tuple[AdminServer, RecordingLog]) -> None:
    srv, _ = server
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            with connect(srv.path) as s:
                for k in range(20):
                    s.sendall(json.dumps({"cmd": "snapshot", "path": f"c{i}-{k}"}).encode() + b"\n")
                    (reply,) = read_lines(s, 1)
                    if reply.get("args") != {"path": f"c{i}-{k}"}:
                        errors.append(f"client {i} request {k}: {reply}")
        except Exception as exc:
            errors.append(f"client {i}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert srv.served >= 1000


def _busy(path: Path, seconds: float) -> socket.socket:
    """A connection whose request is being handled for ``seconds`` (not evictable)."""
    s = connect(path)
    s.sendall(json.dumps({"cmd": "snapshot", "path": f"delay:{seconds}"}).encode() + b"\n")
    return s


def _wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_too_many_clients_are_told_so(tmp_path: Path) -> None:
    log = RecordingLog()
    srv = AdminServer(tmp_path / "a.sock", echo_handler, log=log, max_clients=2)  # type: ignore[arg-type]
    srv.start()
    try:
        held = [_busy(srv.path, 30), _busy(srv.path, 30)]
        _wait_for(lambda: len(srv._conns) == 2 and all(c.busy for c in srv._conns.values()))
        with connect(srv.path) as late:
            # A client slowed down between connect and write (a busy machine)
            # still writes its request, then reads the refusal: no EPIPE.
            time.sleep(0.5)
            late.sendall(b'{"cmd": "status"}\n')
            assert read_lines(late, 1) == [{"ok": False, "error": "too many admin clients"}]
            assert late.recv(10) == b""
        for s in held:
            s.close()
    finally:
        srv.close()


def test_connections_per_uid_are_bounded_with_a_reason(tmp_path: Path) -> None:
    srv = AdminServer(tmp_path / "u.sock", echo_handler, log=RecordingLog(), max_per_uid=2)  # type: ignore[arg-type]
    srv.start()
    try:
        held = [_busy(srv.path, 30), _busy(srv.path, 30)]
        _wait_for(lambda: len(srv._conns) == 2 and all(c.busy for c in srv._conns.values()))
        reply = ask(srv.path, {"cmd": "status"})
        assert reply == {
            "ok": False,
            "error": f"too many admin connections for uid {os.geteuid()} (limit 2)",
        }
        for s in held:
            s.close()
    finally:
        srv.close()


def test_slow_and_silent_connections_yield_to_a_client_with_a_request(tmp_path: Path) -> None:
    """Every slot held by slowloris or silent clients: a real client is still served."""
    log = RecordingLog()
    srv = AdminServer(
        tmp_path / "s.sock",
        echo_handler,  # type: ignore[arg-type]
        log=log,  # type: ignore[arg-type]
        max_clients=8,
        max_per_uid=8,
    )
    srv.start()
    stop = threading.Event()
    attackers: list[socket.socket] = []

    def slowloris() -> None:
        # Half send a byte every 0.2 s, half say nothing; each reconnects at once
        # when the server closes it, so that every slot stays taken.
        while not stop.is_set():
            for i, s in enumerate(attackers):
                try:
                    if select.select([s], [], [], 0)[0]:
                        s.recv(65536)  # a reply or EOF: evicted or timed out
                        raise ConnectionResetError
                    s.send(b"{" if i % 2 else b"")
                except OSError:
                    s.close()
                    attackers[i] = connect(srv.path)
            stop.wait(0.2)

    try:
        attackers += [connect(srv.path) for _ in range(8)]
        _wait_for(lambda: len(srv._conns) == 8)
        time.sleep(0.2)  # older than the eviction grace (0.05 s)
        thread = threading.Thread(target=slowloris, daemon=True)
        thread.start()
        for _ in range(10):
            _wait_for(lambda: len(srv._conns) == 8)  # every slot taken again
            time.sleep(0.1)
            reply = ask(srv.path, {"cmd": "status"})
            assert reply["ok"] is True, reply
        stop.set()
        thread.join(10)
        assert srv.evicted >= 1  # at least the first request found every slot taken
        assert log.events("admin_evicted")
    finally:
        stop.set()
        for s in attackers:
            s.close()
        srv.close()


def test_connection_lifetime_is_bounded(tmp_path: Path) -> None:
    srv = AdminServer(
        tmp_path / "t.sock",
        echo_handler,  # type: ignore[arg-type]
        log=RecordingLog(),  # type: ignore[arg-type]
        max_connection_s=1.0,
    )
    srv.start()
    try:
        with connect(srv.path) as s:
            served = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    s.sendall(b'{"cmd": "status"}\n')
                    replies = read_lines(s, 1)
                except (BrokenPipeError, ConnectionResetError):
                    break
                if not replies:
                    break
                assert replies[0]["ok"] is True
                served += 1
                time.sleep(0.05)
            assert served >= 1 and time.monotonic() < deadline
    finally:
        srv.close()


def test_close_unlinks_the_socket(tmp_path: Path) -> None:
    srv = AdminServer(tmp_path / "b.sock", echo_handler, log=RecordingLog())  # type: ignore[arg-type]
    srv.start()
    assert srv.path.exists()
    srv.close()
    assert not srv.path.exists()


def test_loop_mode_serves_only_when_polled_and_bounds_each_poll(tmp_path: Path) -> None:
    """``start(thread=False)``: the caller's poll serves, at most MAX_EVENTS_PER_POLL per call."""
    from predictor.admin.server import MAX_EVENTS_PER_POLL

    srv = AdminServer(tmp_path / "l.sock", echo_handler, log=RecordingLog())  # type: ignore[arg-type]
    srv.start(thread=False)
    try:
        socks = [connect(srv.path) for _ in range(2 * MAX_EVENTS_PER_POLL + 3)]
        for s in socks:
            s.settimeout(0.3)
            s.sendall(b'{"cmd": "status"}\n')
        with pytest.raises(TimeoutError):  # nobody polls: nothing is answered
            socks[0].recv(65536)
        srv.poll_once(0.5)
        assert len(srv._conns) == MAX_EVENTS_PER_POLL  # one listen event, bounded accepts
        deadline = time.monotonic() + 20
        while srv.served < len(socks) and time.monotonic() < deadline:
            select.select([srv.fileno()], [], [], 0.1)
            srv.poll_once(0.0)
        for s in socks:
            s.settimeout(5)
            assert read_lines(s, 1)[0]["ok"] is True
            s.close()
    finally:
        srv.close()
    assert not srv.path.exists()
