"""ClusterRouter: feed handlers put ticks on the shards' streams.

``send`` validates and buffers; a buffer of ``batch`` ticks (or one older
than ``max_delay_ms``) goes out as one MULTI/EXEC pipeline of ``XADD
<prefix>:ticks:<shard> MAXLEN ~ maxlen`` (one round trip, all or nothing).
When Redis is away the ticks stay buffered (at most ``max_buffer``, the
oldest dropped beyond it, counted) and ``degraded`` is true; the next
``send`` or ``flush`` after the back-off retries. Nothing here raises for
Redis trouble. A tick is in Redis once a flush returned ``True``.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import redis

from predictor.cluster.hashing import shard_of
from predictor.cluster.records import tick_fields, validate_tick
from predictor.cluster.settings import ClusterSettings
from predictor.cluster.store import ClusterConfigError, Keys, connect


class ClusterRouter:
    """Batching tick producer for the cluster (see the module doc)."""

    def __init__(
        self,
        redis_url: str,
        shards: int,
        *,
        prefix: str = "predictor",
        maxlen: int = 1_000_000,
        batch: int = 256,
        max_delay_ms: float = 5.0,
        max_buffer: int = 1_000_000,
        timeout_ms: int = 2_000,
    ) -> None:
        if shards < 1 or batch < 1 or max_buffer < batch:
            raise ValueError("need shards >= 1, batch >= 1 and max_buffer >= batch")
        self.shards = shards
        self.keys = Keys(prefix)
        self.maxlen = maxlen
        self.batch = batch
        self.max_delay = max_delay_ms / 1000.0
        self.max_buffer = max_buffer
        self.r = connect(redis_url, timeout_ms)
        self._buf: deque[tuple[str, dict[str, str]]] = deque()
        self._oldest = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._checked = False
        self.degraded = False
        self.sent = 0
        self.dropped = 0
        self.round_trips = 0
        self.last_error = ""

    @classmethod
    def from_settings(cls, settings: ClusterSettings, **kwargs: Any) -> ClusterRouter:
        return cls(
            settings.redis_url,
            settings.shards,
            prefix=settings.prefix,
            maxlen=settings.stream_maxlen,
            timeout_ms=settings.io_timeout_ms,
            **kwargs,
        )

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def send(self, asset: str, y: float, ts: int, ref: float | None = None) -> None:
        """Queue one tick (``ValueError`` if the daemon would refuse it)."""
        validate_tick(asset, y, ts, ref)
        if not self._buf:
            self._oldest = time.monotonic()
        self._buf.append(
            (self.keys.ticks(shard_of(asset, self.shards)), tick_fields(asset, y, ts, ref))
        )
        if len(self._buf) > self.max_buffer:
            self._buf.popleft()
            self.dropped += 1
        if len(self._buf) >= self.batch or time.monotonic() - self._oldest >= self.max_delay:
            self.flush()

    def flush(self) -> bool:
        """Send everything buffered; ``True`` when the buffer is empty afterwards."""
        now = time.monotonic()
        if not self._buf:
            return True
        if now < self._retry_at:
            return False
        try:
            if not self._checked:
                self._check_shards()
            while self._buf:
                n = min(len(self._buf), max(self.batch, 1024))
                pipe = self.r.pipeline(transaction=True)
                for i in range(n):
                    key, fields = self._buf[i]
                    pipe.xadd(key, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.execute()
                self.round_trips += 1
                for _ in range(n):
                    self._buf.popleft()
                self.sent += n
        except redis.RedisError as exc:
            self.degraded = True
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._failures += 1
            self._retry_at = now + min(1.0, 0.05 * 2 ** min(self._failures, 5))
            return False
        self.degraded = False
        self._failures = 0
        self._oldest = time.monotonic()
        return True

    def _check_shards(self) -> None:
        stored = self.r.hget(self.keys.meta, "shards")
        if stored is not None and int(stored) != self.shards:
            raise ClusterConfigError(
                f"the cluster {self.keys.prefix!r} has {int(stored)} shards, "
                f"this router was given {self.shards}"
            )
        self._checked = True

    def stats(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "buffered": len(self._buf),
            "dropped": self.dropped,
            "round_trips": self.round_trips,
            "degraded": self.degraded,
            "last_error": self.last_error,
        }

    def close(self, timeout_s: float = 5.0) -> bool:
        """Flush (retrying up to ``timeout_s``) and close; ``True`` if nothing is left."""
        deadline = time.monotonic() + timeout_s
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(0.05, self._retry_at - time.monotonic())))
        left = not self._buf
        self.r.close()
        return left
