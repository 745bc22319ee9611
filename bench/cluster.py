"""Cluster transport: Redis operations per tick and ticks/s, no model step.

    .venv/bin/python -m bench.cluster [--ticks N] [--assets N] [--shards N]

Starts a private ``redis-server`` (Unix socket, no persistence, so the
figures measure the protocol rather than the disk) and measures:

* router: ``ClusterRouter.send`` of N ticks, pipelined MULTI/EXEC XADDs;
* end to end: a router thread -> shard streams -> one ``ClusterNode`` whose
  loop keeps a per-asset counter state, publishes one prediction per tick
  and checkpoints every ``checkpoint_interval`` ticks of an asset (fenced
  Lua write + XACK), with and without the predictions streams.

Redis operations are the server's ``total_commands_processed`` delta
(a Lua script counts its inner calls too, as Redis executes them) divided
by the ticks; the per-command split comes from ``INFO commandstats``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import redis

from predictor.cluster import (
    AssetCheckpoint,
    ClusterNode,
    ClusterRouter,
    ClusterSettings,
    Prediction,
    ShardAssigned,
    connect,
)


def start_redis(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    sock = directory / "redis.sock"
    proc = subprocess.Popen(
        [exe, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(directory / "redis.log")],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"unix://{sock}"
    for _ in range(200):
        try:
            connect(url, 500).ping()
            return proc, url
        except redis.RedisError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def counters(url: str) -> tuple[int, dict[str, int]]:
    c = connect(url, 5000)
    total = int(c.info("stats")["total_commands_processed"])
    per = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in c.info("commandstats").items()}
    c.execute_command("CONFIG", "RESETSTAT")
    c.close()
    return total, per


def bench_router(url: str, shards: int, ticks: int, assets: int) -> dict[str, Any]:
    c = connect(url, 5000)
    c.flushall()
    c.execute_command("CONFIG", "RESETSTAT")
    router = ClusterRouter(url, shards, prefix="bench", batch=256)
    names = [f"asset-{i}" for i in range(assets)]
    t0 = time.perf_counter()
    for i in range(ticks):
        router.send(names[i % assets], float(i), i + 1)
    router.close()
    dt = time.perf_counter() - t0
    total, per = counters(url)
    return {"case": "router only", "ticks": ticks, "seconds": dt, "ops": total, "per": per}


def bench_end_to_end(
    url: str, shards: int, ticks: int, assets: int, interval: int, publish: bool
) -> dict[str, Any]:
    c = connect(url, 5000)
    c.flushall()
    settings = ClusterSettings(
        redis_url=url,
        prefix="bench",
        shards=shards,
        checkpoint_interval=interval,
        publish_predictions=publish,
        heartbeat_ttl_ms=3000,
        block_ms=20,
    )
    node = ClusterNode(settings, "bench-node")
    node.start()
    deadline = time.monotonic() + 30
    owned: set[int] = set()
    while len(owned) < shards and time.monotonic() < deadline:
        b = node.poll(timeout_s=0.05)
        owned |= {e.shard for e in b.events if isinstance(e, ShardAssigned)}
    c.execute_command("CONFIG", "RESETSTAT")
    names = [f"asset-{i}" for i in range(assets)]

    def produce() -> None:
        router = ClusterRouter(url, shards, prefix="bench", batch=256)
        for i in range(ticks):
            router.send(names[i % assets], float(i), i + 1)
        router.close()

    state: dict[str, list[Any]] = {}
    done = 0
    producer = threading.Thread(target=produce)
    t0 = time.perf_counter()
    producer.start()
    while done < ticks and time.perf_counter() - t0 < 300:
        batch = node.poll(max_items=8192, timeout_s=0.05)
        preds = []
        for t in batch.ticks:
            st = state.setdefault(t.asset, [0, 0.0, ""])
            st[0] += 1
            st[1] += t.y
            st[2] = t.entry_id
            preds.append(Prediction(t.asset, st[0], t.ts, msgpack.packb(st[1])))
        done += len(batch.ticks)
        node.publish(preds)
        due = node.due()
        node.checkpoint(
            [AssetCheckpoint(a, {"n": state[a][0], "sum": state[a][1]}, state[a][2], state[a][0])
             for a in due]
        )  # fmt: skip
    final = [AssetCheckpoint(a, {"n": v[0], "sum": v[1]}, v[2], v[0]) for a, v in state.items()]
    node.close(final, timeout_s=30)
    dt = time.perf_counter() - t0
    producer.join()
    total, per = counters(url)
    case = f"e2e ckpt/{interval}" + (" +pred" if publish else "")
    return {"case": case, "ticks": done, "seconds": dt, "ops": total, "per": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=60_000)
    ap.add_argument("--assets", type=int, default=300)
    ap.add_argument("--shards", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="rbench-", dir="/tmp") as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            rows = [
                bench_router(url, args.shards, args.ticks, args.assets),
                bench_end_to_end(url, args.shards, args.ticks, args.assets, 100, False),
                bench_end_to_end(url, args.shards, args.ticks, args.assets, 100, True),
                bench_end_to_end(url, args.shards, args.ticks, args.assets, 10, True),
            ]
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"\ncluster transport: {args.ticks} ticks, {args.assets} assets, {args.shards} shards")
    head = f"{'case':<22}{'ticks/s':>10}{'ops/tick':>10}  top commands (calls per tick)"
    print(head)
    print("-" * len(head))
    for r in rows:
        n = max(1, r["ticks"])
        top = sorted(r["per"].items(), key=lambda kv: -kv[1])[:5]
        split = ", ".join(f"{k} {v / n:.3f}" for k, v in top)
        print(f"{r['case']:<22}{r['ticks'] / r['seconds']:>10.0f}{r['ops'] / n:>10.3f}  {split}")


if __name__ == "__main__":
    main()
