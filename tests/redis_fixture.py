"""Real redis-server processes for the cluster tests, and a counting member.

``RedisServer`` runs ``redis-server`` on a Unix socket in a private
directory with AOF persistence (``appendfsync always``: a write Redis
acknowledged survives a SIGKILL), and can be killed, restarted on the same
files, or snapshotted (``SAVE``) to seed another server.

``CountingMember`` is a minimal daemon loop on ``ClusterNode``: an asset's
state is ``{"n": ticks applied, "sum": sum of y}`` and every tick yields a
prediction with ``seq = n``. Its final state equals the ticks sent exactly
when every tick was applied once. ``python -m tests.redis_fixture URL ID
SETTINGS_JSON`` runs one in its own process (so a test can SIGKILL it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from predictor.cluster import (
    AssetCheckpoint,
    ClusterNode,
    ClusterSettings,
    Prediction,
    ShardAssigned,
    ShardRevoked,
    connect,
)

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """One redis-server process on ``<dir>/redis.sock`` (see the module doc)."""

    def __init__(self, directory: Path | None = None, *, aof: bool = True) -> None:
        # Short path: a Unix socket name is limited to about 100 bytes.
        self.dir = directory or Path(tempfile.mkdtemp(prefix="rds-", dir="/tmp"))
        self.sock = self.dir / "redis.sock"
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self, timeout_s: float = 20.0) -> None:
        assert REDIS_SERVER is not None
        args = [
            REDIS_SERVER,
            "--port", "0",
            "--unixsocket", str(self.sock),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server exited {self.proc.returncode}: {log}")
            try:
                c = connect(self.url, 500)
                c.ping()
                c.close()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server at {self.sock} did not answer in {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost host would stop it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return connect(self.url, 5_000)

    def save(self) -> Path:
        """Write an RDB snapshot (``SAVE``) and return its path."""
        c = self.client()
        c.save()
        c.close()
        return self.dir / "dump.rdb"

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server (skips when Debian's redis-server is not installed)."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


class CountingMember:
    """A member whose per-asset state counts and sums ticks (see the module doc)."""

    def __init__(self, settings: ClusterSettings, member_id: str) -> None:
        self.node = ClusterNode(settings, member_id)
        self.lock = threading.Lock()
        self.state: dict[str, dict[str, Any]] = {}
        self.assigned: list[ShardAssigned] = []
        self.revoked: list[ShardRevoked] = []
        self.replayed: list[tuple[str, str]] = []
        #: When false the loop stores no checkpoint (as a process about to crash).
        self.autosave = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ckpt(self, asset: str) -> AssetCheckpoint:
        st = self.state[asset]
        return AssetCheckpoint(asset, {"n": st["n"], "sum": st["sum"]}, st["last"], st["n"])

    def step(self, timeout_s: float = 0.02) -> int:
        batch = self.node.poll(timeout_s=timeout_s)
        with self.lock:
            for ev in batch.events:
                if isinstance(ev, ShardAssigned):
                    self.assigned.append(ev)
                    for a, c in ev.checkpoints.items():
                        st = c.state
                        self.state[a] = {
                            "n": int(st["n"]),
                            "sum": float(st["sum"]),
                            "last": c.entry_id,
                        }
                elif isinstance(ev, ShardRevoked):
                    self.revoked.append(ev)
                    mine = [a for a in self.state if self._shard(a) == ev.shard]
                    if ev.handoff:
                        self.node.release(ev.shard, [self._ckpt(a) for a in mine])
                    for a in mine:
                        del self.state[a]
            preds = []
            for t in batch.ticks:
                st = self.state.setdefault(t.asset, {"n": 0, "sum": 0.0, "last": "0-0"})
                st["n"] += 1
                st["sum"] += t.y
                st["last"] = t.entry_id
                if t.replay:
                    self.replayed.append((t.asset, t.entry_id))
                body = msgpack.packb({"sum": st["sum"]})
                preds.append(Prediction(t.asset, st["n"], t.ts, body))
            self.node.publish(preds)
            if self.autosave:
                self.node.checkpoint([self._ckpt(a) for a in self.node.due() if a in self.state])
        return len(batch.ticks)

    def _shard(self, asset: str) -> int:
        from predictor.cluster import shard_of

        return shard_of(asset, self.node.settings.shards)

    def counts(self) -> dict[str, tuple[int, float]]:
        with self.lock:
            return {a: (s["n"], s["sum"]) for a, s in self.state.items()}

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def start(self) -> None:
        self.node.start()
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()

    def stop(self, final: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self.lock:
            items = [self._ckpt(a) for a in self.state] if final else []
        self.node.close(items)


def wait_for(predicate: Any, timeout_s: float, what: str, step_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def spawn_member(url: str, member_id: str, settings: ClusterSettings) -> subprocess.Popen[bytes]:
    """A ``CountingMember`` in its own process (killable with SIGKILL)."""
    data = settings.model_dump() | {"redis_url": url}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.redis_fixture", member_id, json.dumps(data)],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _main(argv: list[str]) -> None:
    member_id, raw = argv
    member = CountingMember(ClusterSettings(**json.loads(raw)), member_id)
    member.node.start()
    signal.signal(signal.SIGTERM, lambda *_: member._stop.set())
    member.run()
    member.stop()


if __name__ == "__main__":
    _main(sys.argv[1:])
