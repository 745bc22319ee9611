"""Daemon benchmark: predictord end to end over ipc, as deployed.

    .venv/bin/python -m bench.daemon [--quick] [--solver dgm|fd] [--buckets 1,8,64,512]

Starts a real ``predictord`` subprocess (shipped ``[predictor]`` config,
optionally with another kernel-B solver; ``[daemon]`` with the given batch
buckets, metrics on a free port, state in a temporary directory) and drives
it over its ipc sockets from this process:

1. **latency**: one asset at an offered 1,000 ticks/s (paced sends) for a
   few seconds; end-to-end latency tick -> prediction measured in this
   process (send to receipt of the prediction, ``time.perf_counter_ns``)
   and as the daemon reports it (``latency_ns``: receipt to publication);
   p50 / p99 / max, the achieved rate and the backlog left when the
   sending stopped;
2. **throughput**: 1,000 assets, fed in a closed loop that keeps at most two
   rounds (2,000 ticks) in flight, so the backlog cannot grow; sustained
   ticks/s over the measurement window;
3. the daemon's own view from its Prometheus metrics: mean batched step
   time and batch size, the step time over the wall time (summed over the
   step worker threads, so up to 200% with two), the shed level;
4. **admin abuse**: the single-asset latency at the comfortable
   rate in alternating windows, quiet and with 50 abusive admin clients
   (status requests, random garbage, oversized and half-written requests,
   bad arguments; about 500 connections/s in all) running in *another
   process* (``abuse_process``), and control windows where the same clients
   hit a trivial server in their own process (same CPU load, no admin work
   in the daemon), so that the p99 quiet, abused and under the same load
   without admin work are measured in one run;
5. the drain time of a SIGTERM.

Prints markdown tables on stdout, progress on stderr. Compiled graphs come
from the JAX persistent compilation cache (``JAX_COMPILATION_CACHE_DIR``,
default ``build/jax-cache``): the first run compiles every bucket x depth.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import tomli_w
import zmq
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
#: The latency phase stops offering ticks when this many are unanswered.
MAX_BACKLOG = 500
CACHE_DIR = ROOT / "build" / "jax-cache"


def progress(msg: str) -> None:
    print(f"[bench.daemon] {msg}", file=sys.stderr, flush=True)


class Daemon:
    """A predictord subprocess in a temporary directory."""

    def __init__(self, tmp: Path, predictor: dict[str, Any], buckets: list[int]) -> None:
        self.tmp = tmp
        self.config = tmp / "config.toml"
        doc = {
            "predictor": predictor,
            "daemon": {
                "metrics_port": 0,
                "snapshot_dir": str(tmp / "state"),
                "snapshot_interval_s": 3600.0,
                **({"batch_buckets": buckets} if buckets else {}),
                "initial_capacity": 1024,
                "shm_name": f"predictor-bench-{os.getpid()}",
            },
        }
        self.config.write_text(tomli_w.dumps(doc))
        self.rundir = tmp / "run"
        self.log = tmp / "daemon.log"
        env = {
            **os.environ,
            "RUNTIME_DIRECTORY": str(self.rundir),
            "JAX_PLATFORMS": "cpu",
        }
        env.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))
        env.pop("NOTIFY_SOCKET", None)
        self.log_fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "predictor.daemon.main", "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=self.log_fh,
            stderr=subprocess.STDOUT,
        )
        self.status: dict[str, Any] = {}

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and obj.get("event") == name:
                out.append(obj)
        return out

    def wait_ready(self, timeout: float) -> None:
        start = time.monotonic()
        while not self.events("ready"):
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text()[-3000:])
            if time.monotonic() - start > timeout:
                raise TimeoutError("predictord not ready")
            time.sleep(0.5)
        self.status = self.admin("status")

    def admin(self, cmd: str, **args: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(str(self.rundir / "admin.sock"))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        assert isinstance(reply, dict)
        return reply

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(self.status["endpoints"]["metrics"], timeout=30).read()
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(text.decode()):
            for s in fam.samples:
                label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{label}}}" if label else s.name] = s.value
        return out

    def stop(self) -> float:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self.log_fh.close()
        return time.monotonic() - start


class Subscriber:
    """Receipt times (perf_counter_ns) and bodies of every prediction, on a thread."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.got: list[tuple[int, dict[str, Any]]] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        time.sleep(0.5)

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(20):
                continue
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                now = time.perf_counter_ns()
                self.got.append((now, msgpack.unpackb(frames[1], raw=False)))
                self.count += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def percentiles(values_ms: Sequence[float]) -> tuple[float, float, float]:
    a = np.asarray(values_ms, dtype=np.float64)
    if a.size == 0:
        return (float("nan"),) * 3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99)), float(a.max())


def latency_phase(
    d: Daemon, ctx: Any, seconds: float, rate: float, *, warm: int = 0
) -> dict[str, Any]:
    """Asset ``lat`` at ``rate`` ticks/s for ``seconds`` (after ``warm`` untimed ticks)."""
    sub = Subscriber(ctx, d.status["endpoints"]["predictions"])
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.connect(d.status["endpoints"]["ticks"])
    rng = np.random.default_rng(int(rate))
    # Warm the asset (its first ticks only fill the window) without timing.
    base_ts = time.time_ns()
    for k in range(warm):
        push.send(msgpack.packb({"asset": "lat", "y": 100.0 + k * 0.01, "ts": base_ts + k}))
    while sub.count < warm:
        time.sleep(0.01)
    n = int(seconds * rate)
    sent_at: dict[int, int] = {}
    y = 100.0
    start = time.perf_counter()
    sent = 0
    gave_up = False
    for k in range(n):
        target = start + k / rate
        while (now := time.perf_counter()) < target:
            if target - now > 0.002:
                time.sleep(0.0005)
        if k - (sub.count - warm) > MAX_BACKLOG:
            gave_up = True  # the daemon cannot keep up: stop offering
            break
        y += float(rng.normal()) * 0.1
        ts = time.time_ns()
        sent_at[ts] = time.perf_counter_ns()
        push.send(msgpack.packb({"asset": "lat", "y": y, "ts": ts}))
        sent += 1
    send_s = time.perf_counter() - start
    answered_at_end = sub.count - warm
    deadline = time.monotonic() + 600
    while sub.count < warm + sent and time.monotonic() < deadline:
        time.sleep(0.01)
    push.close()
    sub.close()
    e2e, daemon_side = [], []
    for recv_ns, body in sub.got[warm:]:
        t_sent = sent_at.get(body["ts"])
        if t_sent is not None:
            e2e.append((recv_ns - t_sent) / 1e6)
        if "latency_ns" in body:
            daemon_side.append(body["latency_ns"] / 1e6)
    last = sub.got[-1][0] if sub.got else 0
    first = sub.got[warm][0] if len(sub.got) > warm else 0
    return {
        "offered": rate,
        "sent": sent,
        "gave_up": gave_up,
        "send_s": send_s,
        "answered": len(sub.got) - warm,
        "backlog_at_end": sent - answered_at_end,
        "achieved": (len(sub.got) - warm - 1) / ((last - first) / 1e9) if last > first else 0.0,
        "e2e": percentiles(e2e),
        "daemon": percentiles(daemon_side),
    }


ABUSE_CLIENTS = 50


def _abuse_client(path: str, stop: threading.Event, kind: int, counts: list[int]) -> None:
    """One abusive admin client: a new connection every 0.1 s, misbehaving by ``kind``."""
    while not stop.is_set():
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(path)
            if kind == 0:
                s.sendall(b'{"cmd": "status"}\n')
                s.recv(65536)
            elif kind == 1:
                s.sendall(os.urandom(512).replace(b"\n", b"") + b"\n")
                s.recv(65536)
            elif kind == 2:
                s.sendall(b"{" * 200_000)
            elif kind == 3:
                s.sendall(b'{"cmd": "assets"')  # half-written, then hang up
            else:
                s.sendall(b'{"cmd": "shed", "level": "sideways"}\n')
                s.recv(65536)
            counts[kind] += 1
        time.sleep(0.1)


def _dummy_server(path: str, stop: threading.Event) -> None:
    """A trivial Unix-socket server that answers one line per connection (control load)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by the previous control window
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(socket.SOMAXCONN)
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), conn:
                conn.settimeout(0.05)
                conn.recv(65536)
                conn.sendall(b'{"ok": false, "error": "control"}\n')


def abuse_process(path: str, seconds: float, conn: Any, control: bool = False) -> None:
    """Run ``ABUSE_CLIENTS`` abusive clients for ``seconds``; send back the connection count.

    With ``control`` the same clients hit a trivial server in this process
    instead of the daemon: the CPU they and their server take is the same,
    but the daemon does no admin work, so the latency of that window is the
    machine's own noise under that load.
    """
    stop = threading.Event()
    if control:
        path = f"{path}.control"
        server = threading.Thread(target=_dummy_server, args=(path, stop), daemon=True)
        server.start()
        time.sleep(0.3)
    counts = [0] * 5
    threads = [
        threading.Thread(target=_abuse_client, args=(path, stop, i % 5, counts), daemon=True)
        for i in range(ABUSE_CLIENTS)
    ]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(15)
    conn.send(sum(counts))


WINDOW_KINDS = ("quiet", "abused", "control")


def abuse_phase(
    d: Daemon, ctx: Any, rate: float, window_s: float, rounds: int
) -> list[dict[str, Any]]:
    """Rounds of quiet, abused and control windows at ``rate`` ticks/s on one asset."""
    mp = multiprocessing.get_context("spawn")
    out = []
    for w in range(len(WINDOW_KINDS) * rounds):
        kind = WINDOW_KINDS[w % len(WINDOW_KINDS)]
        proc, parent = None, None
        if kind != "quiet":
            parent, child = mp.Pipe()
            path = str(d.rundir / "admin.sock")
            proc = mp.Process(
                target=abuse_process, args=(path, window_s + 1.0, child, kind == "control")
            )
            proc.start()
            time.sleep(1.0)  # the clients are connecting before the window starts
        phase = latency_phase(d, ctx, window_s, rate)
        phase["kind"] = kind
        phase["connections"] = 0
        if proc is not None and parent is not None:
            phase["connections"] = parent.recv() if parent.poll(30) else -1
            proc.join(30)
        out.append(phase)
    return out


def throughput_phase(d: Daemon, ctx: Any, n_assets: int, seconds: float) -> dict[str, Any]:
    sub = Subscriber(ctx, d.status["endpoints"]["predictions"])
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.connect(d.status["endpoints"]["ticks"])
    rng = np.random.default_rng(2)
    names = [f"T{i:04d}" for i in range(n_assets)]
    levels = 100.0 + rng.normal(size=n_assets)
    base_ts = time.time_ns()
    rounds_sent = 0

    def send_round() -> None:
        nonlocal rounds_sent, levels
        levels = levels + rng.normal(size=n_assets) * 0.1
        ts = base_ts + rounds_sent
        for lo in range(0, n_assets, 500):
            batch = [
                {"asset": names[i], "y": float(levels[i]), "ts": ts}
                for i in range(lo, min(lo + 500, n_assets))
            ]
            push.send(msgpack.packb(batch))
        rounds_sent += 1

    # Registration and window fill of 1,000 new assets, not timed.
    for _ in range(3):
        send_round()
    while sub.count < 3 * n_assets:
        time.sleep(0.05)
    counted_from = sub.count
    t0 = time.perf_counter()
    in_flight_max = 0
    while time.perf_counter() - t0 < seconds:
        answered = sub.count - counted_from
        in_flight = rounds_sent * n_assets - 3 * n_assets - answered
        in_flight_max = max(in_flight_max, in_flight)
        if in_flight < 2 * n_assets:
            send_round()
        else:
            time.sleep(0.002)
    done = sub.count - counted_from
    elapsed = time.perf_counter() - t0
    push.close()
    sub.close()
    return {
        "assets": n_assets,
        "ticks": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "in_flight_max": in_flight_max,
    }


def step_profile(
    before: dict[str, float], after: dict[str, float], wall_s: float
) -> dict[str, Any]:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    steps = d("predictor_step_latency_seconds_count")
    step_s = d("predictor_step_latency_seconds_sum")
    lanes = d("predictor_batch_size_sum")
    return {
        "steps": steps,
        "mean_step_ms": 1e3 * step_s / steps if steps else float("nan"),
        "mean_batch": lanes / steps if steps else float("nan"),
        "step_share": step_s / wall_s if wall_s else float("nan"),
        "shed_level": after.get("predictor_shed_level", float("nan")),
    }


def _ms(values: tuple[float, float, float]) -> str:
    return " {:.3f} | {:.3f} | {:.3f} |".format(*values)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.daemon", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short phases (about a minute each)")
    p.add_argument("--solver", choices=("dgm", "fd"), default="dgm", help="kernel B solver")
    p.add_argument(
        "--buckets", default="", help="daemon batch buckets (default: the shipped setting)"
    )
    p.add_argument("--assets", type=int, default=1000, help="assets of the throughput phase")
    args = p.parse_args(argv)
    buckets = [int(b) for b in args.buckets.split(",")] if args.buckets else []
    lat_s, thr_s = (3.0, 5.0) if args.quick else (10.0, 30.0)
    predictor = {} if args.solver == "dgm" else {"dgm_solver": args.solver}
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    d = Daemon(tmp, predictor, buckets)
    try:
        progress(
            f"starting predictord (buckets {buckets or 'shipped'}, solver {args.solver}); "
            "the first run compiles every graph"
        )
        t = time.monotonic()
        d.wait_ready(timeout=3600)
        ready_s = time.monotonic() - t
        # READY comes once the first bucket is compiled; the others follow
        # in the background: measure on the fully compiled daemon.
        while not d.events("warmup_done"):
            time.sleep(0.1)
        warm = d.events("warmup_done")[0]
        progress(f"ready after {ready_s:.1f} s; latency phase")
        m0 = d.metrics()
        t = time.monotonic()
        lat = latency_phase(d, ctx, lat_s, 1000.0, warm=200)
        m1 = d.metrics()
        lat_prof = step_profile(m0, m1, time.monotonic() - t)
        easy_rate = max(1.0, round(0.5 * lat["achieved"]))
        progress(f"latency at {easy_rate:.0f} ticks/s (half the single-asset capacity)")
        easy = latency_phase(d, ctx, 2 * lat_s, easy_rate)
        progress(f"admin abuse: {ABUSE_CLIENTS} clients, quiet/abused windows at {easy_rate:.0f}/s")
        abused = abuse_phase(d, ctx, easy_rate, lat_s, rounds=1 if args.quick else 3)
        alive = d.proc.poll() is None
        m1 = d.metrics()
        progress("throughput phase")
        t = time.monotonic()
        thr = throughput_phase(d, ctx, args.assets, thr_s)
        m2 = d.metrics()
        thr_prof = step_profile(m1, m2, time.monotonic() - t)
        progress("drain")
        drain_s = d.stop()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
        ctx.term()
    shutil.rmtree(tmp, ignore_errors=True)

    out = []
    out.append(
        f"## Daemon (predictord over ipc; solver {args.solver}, buckets {warm['buckets']})\n"
    )
    out.append(
        f"Start to READY: {ready_s:.1f} s (warm-up of {len(warm['buckets'])} buckets x "
        f"{len(warm['depths'])} depths: {warm['duration_s']:.1f} s). Drain on SIGTERM: "
        f"{drain_s:.2f} s.\n"
    )
    out.append("| one asset over ipc | offered /s | achieved /s | p50 ms | p99 ms | max ms |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for phase in (lat, easy):
        row = f"| {phase['offered']:.0f} | {phase['achieved']:.0f} |"
        out.append("| tick sent -> prediction received " + row + _ms(phase["e2e"]))
        out.append("| receipt -> publication in the daemon " + row + _ms(phase["daemon"]))
    out.append("")
    out.append(
        f"Sent {lat['sent']} ticks in {lat['send_s']:.2f} s"
        + (f" (stopped: over {MAX_BACKLOG} unanswered)" if lat["gave_up"] else "")
        + f"; answered {lat['answered']}; "
        f"achieved {lat['achieved']:.0f} ticks/s; backlog when sending stopped: "
        f"{lat['backlog_at_end']} ticks. Daemon side: {lat_prof['steps']:.0f} batched steps, "
        f"mean {lat_prof['mean_step_ms']:.2f} ms at {lat_prof['mean_batch']:.1f} lanes, "
        f"step share of wall time {lat_prof['step_share']:.0%}, shed level "
        f"{lat_prof['shed_level']:.0f}.\n"
    )
    out.append(
        f"Admin abuse: {ABUSE_CLIENTS} clients in another process (status, garbage, "
        "oversized, half-written, bad arguments), alternating with quiet windows and control "
        "windows (the same clients against a trivial server in their own process: the same "
        "CPU load, no admin work in the daemon); one asset "
        f"at {easy_rate:.0f} ticks/s. Daemon alive afterwards: {'yes' if alive else 'NO'}.\n"
    )
    out.append(
        "| window | admin connections | answered | daemon p50 ms | daemon p99 ms | "
        "e2e p50 ms | e2e p99 ms |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|")
    for i, ph in enumerate(abused):
        dp, ep = ph["daemon"], ph["e2e"]
        out.append(
            f"| {i + 1}: {ph['kind']} | {ph['connections']} | "
            f"{ph['answered']}/{ph['sent']} | {dp[0]:.2f} | {dp[1]:.2f} | {ep[0]:.2f} | "
            f"{ep[1]:.2f} |"
        )
    out.append("")
    out.append("| throughput, closed loop (<= 2 rounds in flight) | value |")
    out.append("|---|---:|")
    out.append(f"| assets | {thr['assets']} |")
    out.append(f"| ticks answered | {thr['ticks']} in {thr['seconds']:.1f} s |")
    out.append(f"| sustained ticks/s | {thr['rate']:.0f} |")
    out.append(f"| largest backlog (ticks) | {thr['in_flight_max']} |")
    step = f"{thr_prof['mean_step_ms']:.1f} ms at {thr_prof['mean_batch']:.0f} lanes"
    out.append(f"| mean batched step | {step} |")
    out.append(f"| step time / wall time (summed over 2 workers) | {thr_prof['step_share']:.0%} |")
    out.append(f"| shed level at the end | {thr_prof['shed_level']:.0f} |")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
