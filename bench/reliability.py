"""Reliability soak: snapshot kills, admin slowloris, oversized tick messages.

    .venv/bin/python -m bench.reliability [--quick] [--only NAME] [--json]

* ``snapshot-kill``: a writer process (forked, so it starts at once) saves
  snapshots of a 1,000-asset table in a loop, into a store (retention 3)
  and over one fixed path; it is SIGKILLed at a random moment; then every
  snapshot file visible under a snapshot name is loaded and restored. A
  *corrupt load* is a file that loads but whose content is not one whole
  generation; a *refused* file is a visible snapshot that does not load (an
  atomicity failure). Both must be 0. 1,000 trials (200 with ``--quick``,
  which is what ``tests/test_reliability_snapshots.py`` runs).
* ``admin-slowloris``: the admin server served from a loop (as in the
  daemon); ``status`` latency over fresh connections, quiet and while 128
  slowloris connections (one byte a second, or silent, reconnecting when
  closed) hold the socket.
* ``oversize``: 2,000 valid ticks and 40 oversized messages on one
  connection, with libzmq's ``ZMQ_MAXMSGSIZE`` at the tick limit (the old
  setting) and with the limit applied by ``recv_message``: ticks lost.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import select
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import structlog
import zmq

from predictor.admin.protocol import PeerCred, Request, ok
from predictor.admin.server import AdminServer
from predictor.ipc.endpoints import bound_endpoint, ipc_endpoint, make_pull, recv_message
from predictor.ipc.wire import decode_ticks, encode_tick
from predictor.snapshots import (
    SnapshotStore,
    build_payload,
    is_temp_name,
    list_snapshots,
    load_snapshot,
    make_asset_batch,
    restore_assets,
    save_snapshot,
)

SCHEMA = "reliability-1"


class Row(NamedTuple):
    values: Any
    count: Any


def _payload(gen: int, n: int, width: int) -> dict[str, Any]:
    capacity = n + n // 4
    values = np.zeros((capacity, width))
    values[:n] = float(gen)
    count = np.zeros(capacity, np.int64)
    count[:n] = gen
    batch = make_asset_batch(
        Row(values, count),
        [f"asset-{i}" for i in range(n)],
        seq=np.full(n, gen),
        last_ts_ns=np.full(n, gen),
    )
    return build_payload(
        config={"schema_version": SCHEMA},
        global_state={"gen": gen},
        telemetry={},
        flags={},
        kernels=dict.fromkeys("ABCD"),
        assets=batch,
    )


def _writer(directory: Path, fixed: Path, gen: int, n: int, width: int) -> None:
    store = SnapshotStore(directory, keep=3)
    while True:
        gen += 1
        payload = _payload(gen, n, width)
        store.save(payload)
        save_snapshot(fixed, payload, record_bytes=64 << 10)


def _check(path: Path, width: int) -> tuple[str, int]:
    """("ok" | "refused" | "corrupt", generation) of one visible snapshot."""
    try:
        payload = load_snapshot(path, SCHEMA)
        batch = restore_assets(payload, Row(np.zeros(width), np.int64(0)))
    except Exception:
        return "refused", -1
    gen = payload["global"]["gen"]
    n = len(batch.ids)
    whole = (
        n > 0
        and bool((np.asarray(batch.state.values)[:n] == gen).all())
        and bool((np.asarray(batch.state.count)[:n] == gen).all())
        and bool((batch.seq == gen).all())
    )
    return ("ok" if whole else "corrupt"), gen


def snapshot_kill(
    trials: int, *, n: int = 1000, width: int = 64, seed: int = 1, span: float = 4.0
) -> dict[str, Any]:
    """SIGKILL a snapshot writer at random moments; load whatever is visible."""
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="reliability-"))
    directory, fixed = root / "store", root / "fixed.snapshot"
    t0 = time.perf_counter()
    save_snapshot(root / "probe", _payload(0, n, width))
    write_s = time.perf_counter() - t0
    counts = {"loads": 0, "ok": 0, "corrupt": 0, "refused": 0, "temp_left": 0, "empty": 0}
    gen = 0
    for _ in range(trials):
        pid = os.fork()
        if pid == 0:  # the writer: never returns
            try:
                _writer(directory, fixed, gen, n, width)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.0, span * write_s))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        names = os.listdir(directory) if directory.exists() else []
        counts["temp_left"] += any(is_temp_name(x) for x in names)
        visible = list_snapshots(directory) + ([fixed] if fixed.exists() else [])
        counts["empty"] += not visible
        for path in visible:
            verdict, g = _check(path, width)
            counts["loads"] += 1
            counts[verdict] += 1
            gen = max(gen, g)
    return {"trials": trials, "write_s": round(write_s, 4), **counts}


def _status_handler(request: Request, cred: PeerCred) -> Future[dict[str, Any]]:
    future: Future[dict[str, Any]] = Future()
    future.set_result(ok(cmd=request.cmd))
    return future


class _Log:
    def __getattr__(self, _name: str) -> Any:
        return lambda *a, **k: None


def _status_latencies(path: Path, count: int) -> tuple[list[float], int]:
    out, failed = [], 0
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(10)
                s.connect(str(path))
                s.sendall(b'{"cmd": "status"}\n')
                reply = s.recv(4096)
            if b'"ok":true' not in reply:
                failed += 1
                continue
        except OSError:
            failed += 1
            continue
        out.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return out, failed


def admin_slowloris(requests: int, attackers: int = 128) -> dict[str, Any]:
    """``status`` latency quiet and under ``attackers`` slowloris connections."""
    path = Path(tempfile.mkdtemp(prefix="adm", dir="/tmp")) / "admin.sock"
    srv = AdminServer(path, _status_handler, log=_Log())  # type: ignore[arg-type]
    srv.start(thread=False)
    stop = threading.Event()

    def loop() -> None:  # the daemon's loop: poll the admin socket between steps
        while not stop.is_set():
            select.select([srv.fileno()], [], [], 0.01)
            srv.poll_once(0.0)

    def slowloris() -> None:
        socks: list[socket.socket | None] = [None] * attackers
        while not stop.is_set():
            for i in range(attackers):
                s = socks[i]
                try:
                    if s is None:
                        s = socks[i] = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        s.setblocking(False)
                        s.connect(str(path))
                    elif select.select([s], [], [], 0)[0]:
                        raise ConnectionResetError  # answered or closed: start over
                    s.send(b"{" if i % 2 else b"")
                except OSError:
                    if s is not None:
                        s.close()
                    socks[i] = None
            stop.wait(1.0)
        for s in socks:
            if s is not None:
                s.close()

    server = threading.Thread(target=loop, daemon=True)
    server.start()
    quiet, quiet_failed = _status_latencies(path, requests)
    attack = threading.Thread(target=slowloris, daemon=True)
    attack.start()
    time.sleep(3.0)
    held = len(srv._conns)
    abused, abused_failed = _status_latencies(path, requests)
    stop.set()
    attack.join(10)
    server.join(10)
    srv.close()

    def pct(xs: list[float], q: float) -> float:
        return round(1000 * float(np.percentile(xs, q)), 2) if xs else float("nan")

    return {
        "requests": requests,
        "attackers": attackers,
        "held_at_start": held,
        "quiet_p50_ms": pct(quiet, 50),
        "quiet_p99_ms": pct(quiet, 99),
        "slowloris_p50_ms": pct(abused, 50),
        "slowloris_p99_ms": pct(abused, 99),
        "slowloris_max_ms": pct(abused, 100),
        "failed": quiet_failed + abused_failed,
        "evicted": srv.evicted,
        "timed_out": srv.timed_out,
    }


def oversize(valid: int = 2000, big_every: int = 50, limit: int = 1 << 20) -> dict[str, Any]:
    """Ticks lost to oversized messages on the same connection: old vs new setting."""
    out: dict[str, Any] = {"valid_sent": valid}
    for label, hard in (("maxmsgsize_at_limit", limit), ("recv_message", None)):
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        d = Path(tempfile.mkdtemp(prefix="ovs", dir="/tmp"))
        pull = make_pull(
            ctx, ipc_endpoint(d / "t.sock"), max_msg_size=limit, hard_max_msg_size=hard
        )
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(bound_endpoint(pull))
        push.send(encode_tick("warm", 0.0, 1))  # connected before the stream starts
        pull.poll(10_000)
        recv_message(pull, limit)
        big = 0

        def send(sock: zmq.Socket[bytes]) -> None:
            nonlocal big
            for i in range(valid):
                if i % big_every == big_every // 2:
                    sock.send(b"\0" * (2 * limit))
                    big += 1
                sock.send(encode_tick("A", float(i), i + 1))

        sender = threading.Thread(target=send, args=(push,))
        sender.start()  # the receiver drains while the feeder streams, as in the daemon
        got, too_large = 0, 0
        while pull.poll(2000):
            msg = recv_message(pull, limit)
            if msg.too_large:
                too_large += 1
            elif msg.data is not None and decode_ticks(msg.data)[0]:
                got += 1
        sender.join()
        out[label] = {
            "oversized_sent": big,
            "received": got,
            "lost": valid - got,
            "too_large": too_large,
        }
        push.close()
        pull.close()
        ctx.term()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["snapshot-kill", "admin-slowloris", "oversize"])
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--assets", type=int, default=1000, help="table size (snapshot-kill)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results: dict[str, Any] = {}
    if args.only in (None, "snapshot-kill"):
        trials = args.trials or (200 if args.quick else 1000)
        results["snapshot_kill"] = snapshot_kill(trials, n=args.assets)
    if args.only in (None, "admin-slowloris"):
        results["admin_slowloris"] = admin_slowloris(100 if args.quick else 500)
    if args.only in (None, "oversize"):
        results["oversize"] = oversize()
    if args.json:
        print(json.dumps(results))
    else:
        for name, figures in results.items():
            print(f"\n{name}")
            for key, value in figures.items():
                print(f"  {key:<22} {value}")
    return results


if __name__ == "__main__":
    main()
