"""Helpers of the daemon tests: a real ``predictord`` subprocess and its sockets.

Every daemon of the test session shares one small test config (event clock,
two signature depths, buckets (1, 16)) and one persistent JAX compilation
cache, so only the first daemon of a session compiles its graphs; the
offline reference (``FunctionalPredictor`` in the test process) uses the
same config.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import tomli_w
import zmq

from predictor.config import PredictorConfig
from predictor.core.gate import REJECT_NAMES
from predictor.ipc.wire import decode_prediction

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

#: The predictor table of every daemon test (the offline reference uses it too).
PREDICTOR_TABLE: dict[str, Any] = {"clock": "event", "shed_ladder": [3, 2]}
TEST_CFG = PredictorConfig.from_dict(PREDICTOR_TABLE)
BUCKETS = [16]
#: A model made cheap for daemons whose test measures the service, not the forecast:
#: the DGM network evaluated without training (``dgm_train_steps = 0``, the smallest
#: network), a 32-point window with 4 scales, one signature depth (2).
CHEAP_MODEL: dict[str, Any] = {
    "dgm_solver": "dgm",
    "dgm_train_steps": 0,
    "dgm_width_size": 2,
    "dgm_depth": 1,
    "dgm_collocation_points": 4,
    "wtmm_buffer_size": 32,
    "wtmm_num_scales": 4,
    "wiener_order": 2,
    "signature_window": 8,
    "levy_substeps": 1,
    "sinkhorn_max_iter": 20,
    "shed_ladder": [2],
    "log_sig_depth": 2,
}
#: Persistent XLA compilation cache shared by the session's processes.
JAX_CACHE = Path(__file__).resolve().parent.parent / "build" / "test-jax-cache"
#: Size limit of the shared cache (it also turns on the cache's file lock).
CACHE_MAX_BYTES = 8 << 30
#: Generous: the first daemon of a session compiles every graph on a busy CPU.
READY_TIMEOUT_S = 900.0


def jax_cache_env() -> dict[str, str]:
    """Environment that points JAX at the shared compilation cache."""
    return {
        "JAX_COMPILATION_CACHE_DIR": str(JAX_CACHE),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        # A size limit turns on the cache's file lock (see tests/conftest.py).
        "JAX_COMPILATION_CACHE_MAX_SIZE": str(CACHE_MAX_BYTES),
    }


def enable_cache_in_process() -> None:
    """Use the shared compilation cache in the test process too."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(JAX_CACHE))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)


def write_config(
    path: Path,
    *,
    predictor: Mapping[str, Any] | None = None,
    daemon: Mapping[str, Any] | None = None,
) -> Path:
    """A config.toml with the test predictor table (plus overrides) and a daemon table."""
    doc = {"predictor": {**PREDICTOR_TABLE, **(predictor or {})}, "daemon": dict(daemon or {})}
    path.write_text(tomli_w.dumps(doc))
    return path


def base_daemon_table(tmp: Path, shm_name: str) -> dict[str, Any]:
    """Daemon settings of a test daemon living in ``tmp``."""
    return {
        "metrics_port": 0,
        "snapshot_dir": str(tmp / "state"),
        "snapshot_interval_s": 3600.0,
        "batch_buckets": BUCKETS,
        "initial_capacity": 16,
        "shm_name": shm_name,
        "drain_budget_s": 25.0,
    }


class Daemon:
    """One ``predictord`` subprocess with its runtime directory and log file."""

    def __init__(self, tmp: Path, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.tmp = tmp
        self.config = config
        self.rundir = tmp / "run"
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.status: dict[str, Any] = {}

    @property
    def admin_path(self) -> Path:
        return self.rundir / "admin.sock"

    def start(self, *, wait: bool = True) -> Daemon:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.update(jax_cache_env())
        env.update({"RUNTIME_DIRECTORY": str(self.rundir), "JAX_PLATFORMS": "cpu"})
        env.update(self.extra_env)
        self.log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "predictor.daemon.main", "--config", str(self.config)],
            cwd=REPO,
            env=env,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Block until the ``ready`` log line; returns the status reply."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            if any(e.get("event") == "ready" for e in self.events()):
                self.status = self.admin("status")
                return self.status
            time.sleep(0.2)
        raise TimeoutError(f"daemon not ready after {timeout} s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Parsed JSON log lines (optionally only those with ``event == name``)."""
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict) and (name is None or obj.get("event") == name):
                    out.append(obj)
        return out

    def admin(self, cmd: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        """One admin request over the Unix socket (raw: no client library)."""
        return admin_request(self.admin_path, {"cmd": cmd, **args}, timeout=timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log_file.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        with contextlib.suppress(Exception):
            self.log_file.close()

    @property
    def ticks_endpoint(self) -> str:
        return str(self.status["endpoints"]["ticks"])

    @property
    def predictions_endpoint(self) -> str:
        return str(self.status["endpoints"]["predictions"])


def admin_request(path: Path, request: Mapping[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """Send one JSON line, read one JSON line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        return read_reply(sock)


def read_reply(sock: socket.socket) -> dict[str, Any]:
    """One reply line from ``sock``."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"admin socket closed after {buf[:200]!r}")
        buf += chunk
    reply = json.loads(buf)
    assert isinstance(reply, dict)
    return reply


# --- ticks in, predictions out -------------------------------------------------------


class Feeder:
    """A PUSH socket connected to the daemon's tick endpoint."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 5000)
        self.sock.connect(endpoint)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def send_ticks(self, ticks: Sequence[tuple[str, float, int]]) -> None:
        """One batch message of ``(asset, y, ts)`` ticks."""
        self.sock.send(
            msgpack.packb([{"asset": a, "y": y, "ts": ts} for a, y, ts in ticks], use_bin_type=True)
        )

    def close(self) -> None:
        self.sock.close()


class Collector:
    """A SUB socket on a thread, collecting every decoded prediction."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.messages: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.5)  # let the subscription reach the publisher

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(50):
                while True:
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self.messages.append(decode_prediction(frames))

    def wait_for(self, n: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# --- offline reference -----------------------------------------------------------------


def random_walks(n_assets: int, n_ticks: int, seed: int) -> np.ndarray[Any, Any]:
    """Scaled random walks, one row per asset."""
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(n_assets, n_ticks)) * rng.uniform(0.5, 2.0, (n_assets, 1))
    return np.cumsum(steps, axis=1) + 100.0


def offline_messages(
    cfg: PredictorConfig,
    series: np.ndarray[Any, Any],
    ts: np.ndarray[Any, Any],
    *,
    depth: int,
    lanes: int = 16,
    slots: Sequence[int] | None = None,
) -> list[list[dict[str, Any]]]:
    """Per asset, what the daemon must publish for each tick (without wire metadata).

    ``FunctionalPredictor.step_batch`` run offline: one asset per lane of a
    ``lanes``-wide batch (the daemon's buckets hold 2 or more lanes, all of
    which round identically), cold states as the daemon builds them, ``depth``
    fixed. The daemon's slot ``s`` refits on the ticks of phase ``s``: asset a
    gets the phase of its slot, ``slots[a]`` (default: a, the a-th asset the
    daemon saw). A gate rejection is ``{"rejected": reason}``.
    """
    import jax

    from predictor.core.functional import FunctionalPredictor, make_obs
    from predictor.core.types import MODES

    n_assets, n_ticks = series.shape
    assert n_assets <= lanes
    fp = FunctionalPredictor(cfg, warmup=False)
    phases = list(range(n_assets)) if slots is None else list(slots)
    phases += range(len(phases), lanes)  # padding lanes: any phase
    cold = [jax.device_get(fp.init_state(phase=p)) for p in phases]
    states = jax.device_put(jax.tree.map(lambda *rows: np.stack(rows), *cold))
    out: list[list[dict[str, Any]]] = [[] for _ in range(n_assets)]
    for k in range(n_ticks):
        y = np.zeros(lanes)
        y[:n_assets] = series[:, k]
        t = np.ones(lanes, np.int64)
        t[:n_assets] = ts[:, k]
        states, o = fp.step_batch(states, make_obs(y, y, t), 0, depth)
        h = jax.device_get(o)
        for a in range(n_assets):
            if bool(h.rejected[a]):
                out[a].append({"rejected": REJECT_NAMES[int(h.reject_reason[a])]})
                continue
            row = {
                name: np.asarray(getattr(h, name))[a].item()
                for name in h._fields
                if name not in NOT_PUBLISHED and name not in ("weights", "mode")
            }
            row["weights"] = np.asarray(h.weights)[a].tolist()
            row["mode"] = MODES[int(h.mode[a])]
            out[a].append(row)
    return out


#: StepOutput fields that are gate and scheduling diagnostics, not PredictionResult fields.
NOT_PUBLISHED = frozenset(
    {"rejected", "reject_reason", "stale", "frequency_warning", "emergency_entered", "refit_due"}
)


def result_fields(message: Mapping[str, Any]) -> dict[str, Any]:
    """The PredictionResult part of a published message."""
    return {k: v for k, v in message.items() if k not in ("asset", "ts", "seq", "latency_ns")}


def same_bits(a: Any, b: Any) -> bool:
    """Bit-for-bit equality of result values (floats compared by their bytes)."""
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.float64(a).tobytes() == np.float64(b).tobytes())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


# --- shared-memory reader in another process -------------------------------------

SHM_READER = """
import json, os, sys, time
from predictor.ipc.shm import LatestReader, ShmReadError, payload_checksum, stored_checksum
from predictor.ipc.shm import unpack_record
name, stop_file, out_file = sys.argv[1:4]
reader = LatestReader(name)
open(out_file + ".started", "w").close()
copies = torn = regressions = changes = 0
last_seq = {}
while not os.path.exists(stop_file):
    for asset in reader.assets():
        slot = reader.slot_of(asset)
        if slot is None:
            continue
        try:
            raw = reader.read_raw(slot)
        except (IndexError, ShmReadError):
            continue
        copies += 1
        if payload_checksum(raw) != stored_checksum(raw):
            torn += 1
            continue
        rec = unpack_record(raw)
        if rec is None or rec["asset"] != asset:
            continue
        if rec["seq"] < last_seq.get(asset, 0):
            regressions += 1
        elif rec["seq"] > last_seq.get(asset, 0):
            changes += 1
        last_seq[asset] = rec["seq"]
final = {a: {k: r[k] for k in ("seq", "ts", "predicted_value", "mode")}
         for a, r in reader.records().items()}
with open(out_file, "w") as fh:
    json.dump({"copies": copies, "torn": torn, "regressions": regressions,
               "changes": changes, "lock_retries": reader.lock_retries,
               "checksum_failures": reader.checksum_failures, "final": final}, fh)
"""


class ShmReaderProcess:
    """``SHM_READER`` in a subprocess: polls until ``finish()``; returns its report.

    Report keys: ``copies`` (records copied under the sequence lock),
    ``torn`` (copies whose checksum field disagrees with their payload),
    ``regressions`` (copies whose seq is below one seen before for the asset),
    ``changes`` (copies showing a newer seq than the previous copy: updates
    observed while the writer ran), ``lock_retries`` and ``checksum_failures``
    (``LatestReader`` counters), ``final`` (seq, ts, predicted_value, mode of
    every asset, read after the stop request).
    """

    def __init__(self, name: str, tmp: Path) -> None:
        self.stop_file = tmp / f"shm-stop-{name}"
        self.out_file = tmp / f"shm-report-{name}.json"
        self.proc = subprocess.Popen(
            [PYTHON, "-c", SHM_READER, name, str(self.stop_file), str(self.out_file)],
            cwd=REPO,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
        )
        deadline = time.monotonic() + 60
        started = Path(str(self.out_file) + ".started")
        while not started.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("shared-memory reader did not start")
            time.sleep(0.05)

    def finish(self) -> dict[str, Any]:
        self.stop_file.touch()
        self.proc.wait(60)
        report = json.loads(self.out_file.read_text())
        assert isinstance(report, dict)
        return report
