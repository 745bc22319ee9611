"""predictorctl against a fake admin server and real ZeroMQ sockets.

The fake server speaks the admin protocol (one JSON object per line each way)
on a temporary Unix socket and records every request, so each test checks
both what the client sent and what it printed, and the exit status contract:
0 success, 1 refused (``ok: false``), 2 usage or connection error with one
line on stderr. ``feed`` is checked by a PULL socket bound in the test,
``watch`` by a PUB socket bound in the test.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from bench import processes
from predictor.admin import cli, render
from predictor.admin.client import (
    AdminClient,
    AdminConnectionError,
    AdminProtocolError,
    AdminRefused,
)
from predictor.admin.feed import FeedError, Series, feed
from predictor.ipc.wire import decode_ticks, encode_prediction, encode_rejection

REPO = Path(__file__).resolve().parents[1]

STATUS = {
    "ok": True,
    "uptime_s": 3723.5,
    "version": "0.1.0",
    "pid": 4242,
    "endpoints": {
        "ticks": "ipc:///run/predictor/ticks.sock",
        "predictions": "ipc:///run/predictor/predictions.sock",
        "metrics": "http://127.0.0.1:9108/metrics",
        "shm": None,
        "admin": "/run/predictor/admin.sock",
    },
    "assets": 3,
    "tick_rate": 1523.25,
    "modes": {"Standard": 2, "Robust": 1, "Emergency": 0},
    "shed": {
        "level": 3,
        "depth": 3,
        "pinned": True,
        "refit_interval": 32,
        "refit_level": 1,
        "refit_ladder": [16, 32, 64],
        "jitter_p95_ns": 12_300,
        "jitter_p99_ns": 40_100,
        "ewma_ns": 8_200,
    },
    "snapshot": {"path": "/var/lib/predictor/snap-000042.msgpack", "age_s": 12.25},
    "config": {
        "path": "/etc/predictor/config.toml",
        "sha256": "ab" * 32,
        "sensitivities": {"cusum_h": 8.0, "holder_threshold": 0.4},
    },
    "device": "cpu",
}

REPLIES: dict[str, dict[str, Any]] = {
    "status": STATUS,
    "snapshot": {
        "ok": True,
        "path": "/var/lib/predictor/manual.msgpack",
        "size": 123456,
        "checksum": "cd" * 32,
        "duration_s": 0.0125,
    },
    "reload": {"ok": True, "applied": ["cusum_h"], "requires_reinit": [], "reinitialised": False},
    "vram": {
        "ok": True,
        "devices": [
            {"id": 0, "platform": "cpu", "memory_stats": "not available"},
            {
                "id": 1,
                "platform": "gpu",
                "memory_stats": {
                    "bytes_in_use": 3 << 20,
                    "peak_bytes_in_use": 5 << 20,
                    "bytes_limit": 1 << 30,
                },
            },
        ],
        "nvidia_smi": "not available",
        "rss_bytes": 200 << 20,
    },
    "assets": {
        "ok": True,
        "assets": [
            {
                "asset": "ZZZ",
                "slot": 1,
                "seq": 10,
                "last_ts": 1_700_000_000_123_000_000,
                "mode": "Robust",
                "weights": [0.25, 0.25, 0.25, 0.25],
                "holder_exponent": 0.51234,
            },
            {
                "asset": "AAA",
                "slot": 0,
                "seq": 99,
                "last_ts": 1_700_000_001_000_000_000,
                "mode": "Standard",
                "weights": [0.7, 0.1, 0.1, 0.1],
                "holder_exponent": 0.3,
            },
        ],
    },
    "shed": {"ok": True, "level": 2, "depth": 2, "pinned": True},
    "drain": {"ok": True, "draining": True},
}


class FakeAdmin:
    """A thread serving the admin protocol on ``path``; ``handler`` makes the reply line.

    ``handler(request) -> bytes | None``: the raw bytes to write (a reply line,
    garbage, half a line, ...) or None to close the connection without
    replying; ``close_after_reply`` closes it right after writing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.connections = 0
        self.handler: Callable[[dict[str, Any]], bytes | None] = self.canned
        self.overrides: dict[str, dict[str, Any]] = {}
        self.close_after_reply = False
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(str(path))
        self._srv.listen(16)
        self._srv.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def canned(self, req: dict[str, Any]) -> bytes | None:
        reply = self.overrides.get(req["cmd"]) or REPLIES.get(req["cmd"])
        if reply is None:
            reply = {"ok": False, "error": f"unknown command {req['cmd']!r}"}
        return json.dumps(reply).encode() + b"\n"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    self.requests.append(req)
                    out = self.handler(req)
                    if out is None:
                        return
                    conn.sendall(out)
                    if self.close_after_reply:
                        return

    def close(self) -> None:
        self._stop.set()
        self._srv.close()
        self._thread.join(timeout=2)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary directory (Unix socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="pctl") as d:
        yield Path(d)


@pytest.fixture
def admin(short_dir: Path) -> Iterator[FakeAdmin]:
    server = FakeAdmin(short_dir / "admin.sock")
    yield server
    server.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- admin commands: output and requests -----------------------------------


def test_status_table_shows_every_section(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "--socket", str(admin.path), "status")
    assert (code, err) == (0, "")
    assert admin.requests == [{"cmd": "status"}]
    first = out.splitlines()[0]
    assert "pid 4242" in first and "up 1h02m03s" in first and "device cpu" in first
    assert "ipc:///run/predictor/ticks.sock" in out
    assert "http://127.0.0.1:9108/metrics" in out
    assert "1523.2 ticks/s" in out or "1523.3 ticks/s" in out
    assert "Standard 2  Robust 1  Emergency 0" in out
    assert "3 (depth 3, pinned)" in out
    assert "refit" in out and "every 32 ticks (ladder 16 -> 32 -> 64)" in out
    assert "refit_level" not in out  # shown as part of the refit line
    assert "12.3 us" in out and "40.1 us" in out
    assert "snap-000042.msgpack" in out and "12.2s" in out
    assert "cusum_h" in out and "holder_threshold" in out and "ab" * 32 in out


def test_status_shows_the_warm_up(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]) -> None:
    starting = {**STATUS, "state": "warming up: 3/8 graphs", "shed": None, "assets": 0}
    starting["warmup"] = {"graphs": 3, "total": 8, "ready": False}
    admin.overrides["status"] = starting
    code, out, err = run(capsys, "--socket", str(admin.path), "status")
    assert (code, err) == (0, "")
    assert "warming up: 3/8 graphs" in out and "(serving)" not in out
    assert "shed  -" in out  # no shedder before the engine is built
    serving = {**starting, "warmup": {"graphs": 6, "total": 8, "ready": True}}
    admin.overrides["status"] = {**serving, "state": "warming up: 6/8 graphs"}
    code, out, _ = run(capsys, "--socket", str(admin.path), "status")
    assert code == 0 and "warming up: 6/8 graphs (serving)" in out
    assert "warmup" not in out  # shown as the state line, not as raw JSON


@pytest.mark.parametrize(
    "layout",
    [
        ("--json", "--socket", "{s}", "status"),
        ("status", "--json", "--socket", "{s}"),
        ("--socket", "{s}", "status", "--json"),
        ("--json", "status", "--socket", "{s}"),
    ],
)
def test_global_options_before_or_after_the_subcommand(
    admin: FakeAdmin, capsys: pytest.CaptureFixture[str], layout: tuple[str, ...]
):
    argv = [a.format(s=admin.path) for a in layout]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert json.loads(out) == STATUS


def test_socket_default_follows_the_environment(
    admin: FakeAdmin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("PREDICTOR_ADMIN_SOCKET", str(admin.path))
    code, out, _ = run(capsys, "drain", "--no-wait")
    assert code == 0 and "draining" in out
    monkeypatch.delenv("PREDICTOR_ADMIN_SOCKET")
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(admin.path.parent))
    code, _, _ = run(capsys, "drain", "--json", "--no-wait")
    assert code == 0
    assert admin.requests == [{"cmd": "drain"}, {"cmd": "drain"}]


def test_snapshot_sends_the_path_and_prints_size_and_checksum(
    admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
):
    code, out, _ = run(capsys, "snapshot", "--socket", str(admin.path))
    assert code == 0
    code, out2, _ = run(capsys, "--socket", str(admin.path), "snapshot", "manual.msgpack")
    assert code == 0
    assert admin.requests == [{"cmd": "snapshot"}, {"cmd": "snapshot", "path": "manual.msgpack"}]
    assert "123,456 bytes" in out2 and "cd" * 32 in out2 and "0.013 s" in out2
    assert out == out2


def test_reload_flags_and_reinit_advice(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]):
    admin.overrides["reload"] = {
        "ok": True,
        "applied": ["cusum_h"],
        "requires_reinit": ["wtmm_buffer_size"],
        "reinitialised": False,
    }
    code, out, _ = run(capsys, "--socket", str(admin.path), "reload")
    assert code == 0
    assert "applied: cusum_h" in out
    assert "wtmm_buffer_size" in out and "--reinit" in out
    admin.overrides["reload"] = dict(
        admin.overrides["reload"], reinitialised=True, requires_restart=["device"]
    )
    code, out, _ = run(capsys, "--socket", str(admin.path), "reload", "--reinit")
    assert code == 0 and "re-initialised for: wtmm_buffer_size" in out
    assert "requires a daemon restart (not applied): device" in out
    assert admin.requests == [
        {"cmd": "reload", "reinit": False},
        {"cmd": "reload", "reinit": True},
    ]


def test_refused_command_exits_1_with_one_line(
    admin: FakeAdmin, capsys: pytest.CaptureFixture[str]
):
    reason = "config.toml: cusum_h = -1.0: must be > 0 (running config kept)"
    admin.overrides["reload"] = {"ok": False, "error": reason}
    code, out, err = run(capsys, "--socket", str(admin.path), "reload")
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and reason in err
    code, out, err = run(capsys, "--socket", str(admin.path), "reload", "--json")
    assert code == 1
    assert json.loads(out) == {"ok": False, "error": reason}
    assert err.count("\n") == 1


def test_vram_table_and_not_available(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "--socket", str(admin.path), "vram")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["device", "platform", "in", "use", "peak", "limit"]
    assert "not available" in lines[1]
    assert lines[2].split() == ["1", "gpu", "3.0", "MiB", "5.0", "MiB", "1024.0", "MiB"]
    assert "nvidia-smi  not available" in out and "process RSS  200.0 MiB" in out
    admin.overrides["vram"] = dict(REPLIES["vram"], nvidia_smi={"used_mib": 512, "total_mib": 2048})
    code, out, _ = run(capsys, "--socket", str(admin.path), "vram")
    assert "512 of 2048 MiB (25.0%)" in out


def test_assets_table_sorted_with_utc_times(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "--socket", str(admin.path), "assets")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["asset", "slot", "seq"]
    assert lines[1].startswith("AAA") and lines[2].startswith("ZZZ")
    assert "2023-11-14 22:13:20.123" in lines[2]
    assert "0.700 0.100 0.100 0.100" in lines[1] and "0.512" in lines[2]
    admin.overrides["assets"] = {"ok": True, "assets": []}
    code, out, _ = run(capsys, "--socket", str(admin.path), "assets")
    assert (code, out.strip()) == (0, "no assets yet")


def test_shed_query_pin_and_auto(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]):
    sock = str(admin.path)
    code, out, _ = run(capsys, "--socket", sock, "shed")
    assert code == 0 and "3 (depth 3, pinned)" in out
    code, out, _ = run(capsys, "--socket", sock, "shed", "--json")
    assert json.loads(out) == {"ok": True, **STATUS["shed"]}  # type: ignore[dict-item]
    code, out, _ = run(capsys, "--socket", sock, "shed", "2")
    assert code == 0 and out.splitlines() == ["level  2 (depth 2, pinned)"]
    assert run(capsys, "shed", "auto", "--socket", sock)[0] == 0
    assert admin.requests == [
        {"cmd": "status"},
        {"cmd": "status"},
        {"cmd": "shed", "level": 2},
        {"cmd": "shed", "level": "auto"},
    ]


# --- usage and connection errors --------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["tune"],
        ["shed", "fast"],
        ["shed", "0"],
        ["status", "--timeout", "-1"],
        ["feed", "--synthetic", "brownian"],
        ["feed", "--synthetic", "nope", "--asset", "A"],
        ["watch", "--count", "0"],
    ],
)
def test_usage_errors_exit_2_with_one_line(
    admin: FakeAdmin, capsys: pytest.CaptureFixture[str], argv: list[str]
):
    code, out, err = run(capsys, "--socket", str(admin.path), *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and "error" in err
    assert admin.requests == []


def test_feed_needs_exactly_one_source(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    code, _, err = run(capsys, "feed", "--asset", "A", "--endpoint", "tcp://127.0.0.1:1")
    assert code == 2 and "exactly one" in err
    csv = tmp_path / "x.csv"
    csv.write_text("y\n1\n")
    code, _, err = run(capsys, "feed", str(csv), "--synthetic", "ar1", "--asset", "A")
    assert code == 2 and err.count("\n") == 1


def test_help_for_every_subcommand(capsys: pytest.CaptureFixture[str]):
    parser = cli.build_parser()
    names = [
        name
        for action in parser._actions
        if isinstance(action, type(parser._subparsers._group_actions[0]))  # type: ignore[union-attr]
        for name in action.choices  # type: ignore[union-attr]
    ]
    assert set(names) == {
        "forget",
        "status",
        "snapshot",
        "reload",
        "vram",
        "assets",
        "shed",
        "drain",
        "feed",
        "watch",
        "tune",
    }
    for name in [*names, None]:
        argv = ["--help"] if name is None else [name, "--help"]
        code, out, _ = run(capsys, *argv)
        assert code == 0
        assert out.startswith("usage: predictorctl")
        assert "--json" in out and "--socket" in out


def test_missing_socket_exits_2(short_dir: Path, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "--socket", str(short_dir / "none.sock"), "status")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "no admin socket" in err


def test_socket_nobody_listens_on_exits_2(short_dir: Path, capsys: pytest.CaptureFixture[str]):
    path = short_dir / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # bound, never listened: the file stays, connects are refused
    code, _, err = run(capsys, "--socket", str(path), "status")
    assert code == 2 and "nothing is listening" in err


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"this is not json\n", "not JSON"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'{"status": "fine"}\n', "no boolean 'ok'"),
        (None, "closed the connection"),
        (b'{"ok": tr', "closed the connection"),
    ],
)
def test_broken_replies_exit_2(
    admin: FakeAdmin, capsys: pytest.CaptureFixture[str], raw: bytes | None, reason: str
):
    admin.handler = lambda _req: raw
    admin.close_after_reply = True
    code, out, err = run(capsys, "--socket", str(admin.path), "--timeout", "5", "status")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and reason in err


def test_reply_timeout_exits_2(admin: FakeAdmin, capsys: pytest.CaptureFixture[str]):
    gate = threading.Event()

    def stall(_req: dict[str, Any]) -> bytes | None:
        gate.wait(5)
        return None

    admin.handler = stall
    code, _, err = run(capsys, "--socket", str(admin.path), "--timeout", "0.3", "status")
    gate.set()
    assert code == 2 and "no reply to 'status' within 0.3 s" in err


# --- the client class --------------------------------------------------------


def test_client_reuses_one_connection_and_call_raises(admin: FakeAdmin):
    admin.overrides["drain"] = {"ok": False, "error": "already draining"}
    with AdminClient(admin.path, timeout=5) as client:
        assert client.request("status") == STATUS
        assert client.request("shed", level="auto")["level"] == 2
        with pytest.raises(AdminRefused) as info:
            client.call("drain")
    assert info.value.error == "already draining"
    assert info.value.reply == {"ok": False, "error": "already draining"}
    assert admin.connections == 1
    assert [r["cmd"] for r in admin.requests] == ["status", "shed", "drain"]


def test_client_bounds_the_reply_size(admin: FakeAdmin):
    admin.overrides["assets"] = {"ok": True, "assets": [{"asset": "x" * 50}] * 100}
    with (
        AdminClient(admin.path, timeout=5, max_reply_bytes=1000) as client,
        pytest.raises(AdminProtocolError, match="longer than 1000 bytes"),
    ):
        client.request("assets")
    with AdminClient(admin.path, timeout=5) as client:
        assert len(client.request("assets")["assets"]) == 100


def test_client_errors_are_one_line(short_dir: Path):
    with pytest.raises(AdminConnectionError) as info:
        AdminClient(short_dir / "x" / ("y" * 120), timeout=1).request("status")
    assert "longer than 107 bytes" in str(info.value)
    with pytest.raises(ValueError, match="not plain JSON"):
        AdminClient(short_dir / "a.sock").request("status", when=object())


# --- the real command in a subprocess ----------------------------------------


def test_console_script_exit_statuses(admin: FakeAdmin):
    admin.overrides["drain"] = {"ok": False, "error": "refused for the test"}
    env = dict(os.environ, PREDICTOR_ADMIN_SOCKET=str(admin.path))

    def ctl(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "predictor.admin.cli", *argv]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)

    ok, refused, usage = ctl("status", "--json"), ctl("drain"), ctl("shed", "x")
    env["PREDICTOR_ADMIN_SOCKET"] = str(admin.path) + ".missing"
    down = ctl("status")
    assert (ok.returncode, json.loads(ok.stdout)) == (0, STATUS)
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "predictorctl: daemon refused drain: refused for the test",
    )
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1
    assert down.returncode == 2 and down.stderr.count("\n") == 1


# --- feed: a real PULL socket --------------------------------------------------


@pytest.fixture
def pull(short_dir: Path) -> Iterator[tuple[str, zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{short_dir}/ticks.sock"
    sock.bind(endpoint)
    yield endpoint, sock
    sock.close()
    ctx.term()


def receive_ticks(sock: zmq.Socket[bytes], n: int) -> list[Any]:
    ticks = []
    while len(ticks) < n:
        assert sock.poll(5000), f"only {len(ticks)} of {n} ticks arrived"
        good, bad = decode_ticks(sock.recv())
        assert bad == []
        ticks.extend(good)
    assert not sock.poll(100), "more ticks than sent"
    return ticks


def test_feed_synthetic_sends_the_seeded_process(
    pull: tuple[str, zmq.Socket[bytes]], capsys: pytest.CaptureFixture[str]
):
    endpoint, sock = pull
    before = time.time_ns()
    code, out, err = run(
        capsys, "feed", "--synthetic", "ar1", "--asset", "BTC", "--count", "50",
        "--rate", "0", "--seed", "7", "--endpoint", endpoint, "--json",
    )  # fmt: skip
    assert (code, err) == (0, "")
    summary = json.loads(out)
    assert summary["sent"] == 50 and summary["endpoint"] == endpoint
    ticks = receive_ticks(sock, 50)
    expected = processes.ar1(np.random.default_rng(7), 50, phi=0.9)
    assert [t.asset for t in ticks] == ["BTC"] * 50
    np.testing.assert_array_equal([t.y for t in ticks], expected)
    assert [t.ref for t in ticks] == [t.y for t in ticks]
    stamps = [t.ts for t in ticks]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    assert before <= stamps[0] <= stamps[-1] <= time.time_ns()


def test_feed_csv_columns_and_file_timestamps(
    pull: tuple[str, zmq.Socket[bytes]], capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    endpoint, sock = pull
    csv = tmp_path / "series.csv"
    csv.write_text("ts,price,ref\n1000,1.5,1.25\n\n2000,2.5,2.0\n3000,-3,0\n")
    code, out, _ = run(
        capsys, "feed", str(csv), "--asset", "EUR", "--column", "price", "--use-ts",
        "--rate", "0", "--endpoint", endpoint,
    )  # fmt: skip
    assert code == 0 and out.startswith("sent 3 ticks of EUR")
    ticks = receive_ticks(sock, 3)
    assert [(t.y, t.ref, t.ts) for t in ticks] == [
        (1.5, 1.25, 1000),
        (2.5, 2.0, 2000),
        (-3.0, 0.0, 3000),
    ]
    code, _, _ = run(
        capsys, "feed", str(csv), "--asset", "EUR", "--column", "price", "--count", "2",
        "--rate", "0", "--endpoint", endpoint,
    )  # fmt: skip
    assert code == 0
    ticks = receive_ticks(sock, 2)
    assert [t.y for t in ticks] == [1.5, 2.5]
    assert ticks[0].ts > 10**18  # stamped with the wall clock, not the file's ts


def test_feed_bundled_nile_series(
    pull: tuple[str, zmq.Socket[bytes]], capsys: pytest.CaptureFixture[str]
):
    import statsmodels.api as sm

    endpoint, sock = pull
    code, _, _ = run(
        capsys, "feed", str(REPO / "bench" / "data" / "nile.csv"), "--column", "volume",
        "--asset", "nile", "--rate", "0", "--endpoint", endpoint,
    )  # fmt: skip
    assert code == 0
    nile = sm.datasets.nile.load_pandas().data["volume"].to_numpy()
    np.testing.assert_array_equal([t.y for t in receive_ticks(sock, 100)], nile)


@pytest.mark.parametrize(
    ("content", "args", "reason"),
    [
        ("y\n1\nabc\n", [], "x.csv:3: column 'y': not a number: 'abc'"),
        ("value\n1\n", [], "no column 'y' (columns: value)"),
        ("y\n1\n", ["--use-ts"], "needs a 'ts' column"),
        ("y\n", [], "no data rows"),
    ],
)
def test_feed_bad_csv_exits_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    content: str,
    args: list[str],
    reason: str,
):
    csv = tmp_path / "x.csv"
    csv.write_text(content)
    code, out, err = run(
        capsys, "feed", str(csv), "--asset", "A", "--endpoint", "tcp://127.0.0.1:1", *args
    )
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and reason in err


def test_feed_paces_at_the_requested_rate(pull: tuple[str, zmq.Socket[bytes]]):
    endpoint, sock = pull
    stamps: list[float] = []
    result = feed(
        endpoint,
        "A",
        Series(np.arange(11, dtype=np.float64)),
        rate=100.0,
        on_sent=lambda _i: stamps.append(time.monotonic()),
    )
    receive_ticks(sock, 11)
    # Tick i leaves no earlier than start + i / rate: a lower bound, not a speed claim.
    assert result.sent == 11
    assert stamps[-1] - stamps[0] >= 0.1 - 0.011


def test_feed_without_a_daemon_fails_cleanly(short_dir: Path, capsys: pytest.CaptureFixture[str]):
    code, _, err = run(
        capsys, "feed", "--synthetic", "brownian", "--asset", "A", "--count", "3",
        "--endpoint", f"ipc://{short_dir}/absent.sock",
    )  # fmt: skip
    assert code == 2 and "no tick socket at" in err
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(FeedError, match="no daemon took tick 0"):
        feed(f"tcp://127.0.0.1:{port}", "A", Series(np.ones(3)), send_timeout_s=0.2)


def test_feed_asks_the_daemon_for_its_endpoint(
    admin: FakeAdmin, pull: tuple[str, zmq.Socket[bytes]], capsys: pytest.CaptureFixture[str]
):
    endpoint, sock = pull
    admin.overrides["status"] = dict(STATUS, endpoints=dict(STATUS["endpoints"], ticks=endpoint))  # type: ignore[arg-type]
    code, out, _ = run(
        capsys, "--socket", str(admin.path), "feed", "--synthetic", "fbm", "--asset", "X",
        "--count", "5", "--rate", "0",
    )  # fmt: skip
    assert code == 0 and endpoint in out
    assert len(receive_ticks(sock, 5)) == 5
    assert admin.requests == [{"cmd": "status"}]


# --- watch: a real PUB socket ---------------------------------------------------


def prediction(asset: str, seq: int) -> dict[str, Any]:
    return {
        "predicted_next": 0.25,
        "holder_exponent": 0.55,
        "cusum_drift": 1.5,
        "distance_to_collapse": 3.0,
        "free_energy": -0.1,
        "kurtosis": 3.2,
        "dgm_entropy": 0.9,
        "adaptive_threshold": 8.0,
        "weights": [0.4, 0.3, 0.2, 0.1],
        "sinkhorn_converged": True,
        "degraded_inference_mode": False,
        "emergency_mode": False,
        "regime_change_detected": seq % 2 == 1,
        "mode_collapse_warning": False,
        "mode": "Standard",
        "predicted_value": 100.0 + seq,
        "interval_lower": 98.0 + seq,
        "interval_upper": 102.0 + seq,
        "warming_up": False,
    }


def watch_against_publisher(
    short_dir: Path, argv: list[str], publish: Callable[[zmq.Socket[bytes], int], None]
) -> int:
    """Run ``predictorctl watch`` in a thread while a PUB socket publishes round after round."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"ipc://{short_dir}/predictions.sock"
    pub.bind(endpoint)
    codes: list[int] = []
    t = threading.Thread(target=lambda: codes.append(cli.main([*argv, "--endpoint", endpoint])))
    t.start()
    try:
        rnd = 0
        deadline = time.monotonic() + 10
        # PUB drops messages until the subscription arrives: keep publishing.
        while t.is_alive() and time.monotonic() < deadline:
            publish(pub, rnd)
            rnd += 1
            time.sleep(0.01)
        t.join(timeout=5)
    finally:
        pub.close()
        ctx.term()
    assert codes, "watch did not finish"
    return codes[0]


def test_watch_prints_one_asset_exactly(short_dir: Path, capsys: pytest.CaptureFixture[str]):
    def publish(pub: zmq.Socket[bytes], i: int) -> None:
        pub.send_multipart(encode_prediction("BTC-EUR", i, 10**18 + i, 1000, prediction("x", i)))
        pub.send_multipart(encode_prediction("BTC", i, 10**18 + i, 2500, prediction("BTC", i)))

    code = watch_against_publisher(short_dir, ["watch", "BTC", "--count", "3"], publish)
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == render.PREDICTION_HEADER
    rows = out[1:]
    assert len(rows) == 3
    assert all(r.split()[1] == "BTC" for r in rows)
    seqs = [int(r.split()[2]) for r in rows]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert all("Standard" in r and "0.40 0.30 0.20 0.10" in r for r in rows)
    assert any(" R " in r for r in rows)  # odd seq: regime-change flag
    assert all(r.rstrip().endswith(" 2.5") for r in rows)  # latency 2500 ns in us


def test_watch_json_lines_and_rejections(short_dir: Path, capsys: pytest.CaptureFixture[str]):
    def publish(pub: zmq.Socket[bytes], i: int) -> None:
        pub.send_multipart([b"A", b"\xc1 not msgpack"])
        pub.send_multipart(encode_rejection("A", i, 10**18 + i, "non_finite"))

    code = watch_against_publisher(short_dir, ["watch", "--count", "2", "--json"], publish)
    captured = capsys.readouterr()
    assert code == 0
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert len(lines) == 2
    assert all(m["rejected"] == "non_finite" and m["asset"] == "A" for m in lines)
    assert lines[1]["seq"] == lines[0]["seq"] + 1
    assert "undecodable" in captured.err


def test_watch_idle_timeout_exits_1(short_dir: Path, capsys: pytest.CaptureFixture[str]):
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    endpoint = f"ipc://{short_dir}/quiet.sock"
    pub.bind(endpoint)
    try:
        code, out, err = run(
            capsys, "watch", "--count", "5", "--idle-timeout", "0.3", "--endpoint", endpoint
        )
    finally:
        pub.close(linger=0)
        ctx.term()
    assert code == 1
    assert out.splitlines() == [render.PREDICTION_HEADER]
    assert "got 0 of 5" in err


def test_rejection_row_and_prediction_flags():
    row = render.prediction_row(
        {"asset": "A", "seq": 4, "ts": 1_700_000_000_000_000_000, "rejected": "stale"}
    )
    assert row.split()[1:] == ["A", "4", "rejected:", "stale"]
    msg = dict(prediction("A", 2), asset="A", seq=2, ts=1, latency_ns=None)
    msg.update(emergency_mode=True, warming_up=True)
    assert " EW " in render.prediction_row(msg)
