"""PredictionFollower: read one asset's predictions without knowing its owner.

The asset's shard is ``shard_of(asset, shards)``; whichever member owns it
appends to ``<prefix>:pred:<shard>``. The follower ``XREAD``s those streams
and keeps the followed assets' entries. After a takeover a prediction may
appear twice: both copies carry the same ``seq``, so ``dedupe`` (on by
default) keeps only predictions whose ``seq`` is above the asset's highest
seen so far.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

import redis

from predictor.cluster.hashing import shard_of
from predictor.cluster.records import Prediction, decode_prediction
from predictor.cluster.store import Keys, connect


class PredictionFollower:
    """Follows assets' predictions streams from ``start`` ('0' = from the oldest kept)."""

    def __init__(
        self,
        redis_url: str,
        shards: int,
        assets: Iterable[str],
        *,
        prefix: str = "predictor",
        start: str = "$",
        dedupe: bool = True,
        timeout_ms: int = 2_000,
    ) -> None:
        self.r: redis.Redis = connect(redis_url, timeout_ms)
        self.keys = Keys(prefix)
        self.assets = frozenset(assets)
        self._last: dict[str, str] = {
            self.keys.pred(shard_of(a, shards)): start for a in self.assets
        }
        self._seen: dict[str, int] = {}
        self.dedupe = dedupe

    def read(self, block_ms: int = 100, count: int = 10_000) -> list[Prediction]:
        """New predictions of the followed assets (raises ``RedisError``)."""
        streams: dict[Any, Any] = dict(self._last)
        res = cast(list[Any], self.r.xread(streams, count=count, block=block_ms) or [])
        out: list[Prediction] = []
        for key, entries in res:
            name = key.decode() if isinstance(key, bytes) else str(key)
            for entry_id, fields in entries:
                self._last[name] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                p = decode_prediction(fields)
                if p is None or p.asset not in self.assets:
                    continue
                if self.dedupe:
                    if p.seq <= self._seen.get(p.asset, -1):
                        continue
                    self._seen[p.asset] = p.seq
                out.append(p)
        return out

    def close(self) -> None:
        self.r.close()
