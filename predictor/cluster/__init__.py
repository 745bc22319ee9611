"""Multi-host mode: assets sharded over daemons, state and ticks in Redis.

* ``ClusterSettings`` - the ``[cluster]`` config table.
* ``shard_of`` / ``owner_of`` / ``assignment`` - stable hash and rendezvous placement.
* ``ClusterNode`` - a member, driven by the daemon's loop (``poll``,
  ``publish``, ``due``, ``checkpoint``, ``release``, ``close``).
* ``ClusterRouter`` - feed handlers' batching tick producer.
* ``PredictionFollower`` - follow an asset's predictions wherever it runs.
* ``cluster_status`` - members, owners, epochs, lag, checkpoint age.
* ``ClusterStore`` - the underlying Redis operations (fenced by shard epoch).
"""

from predictor.cluster.follow import PredictionFollower
from predictor.cluster.hashing import assignment, owner_of, shard_of, shards_of
from predictor.cluster.node import Batch, ClusterNode
from predictor.cluster.records import (
    AssetCheckpoint,
    Checkpoint,
    CorruptCheckpointError,
    Event,
    Prediction,
    ShardAssigned,
    ShardRevoked,
    StreamTick,
)
from predictor.cluster.router import ClusterRouter
from predictor.cluster.settings import ClusterSettings
from predictor.cluster.status import cluster_status
from predictor.cluster.store import TRANSIENT, ClusterConfigError, ClusterStore, Keys, connect

__all__ = [
    "TRANSIENT",
    "AssetCheckpoint",
    "Batch",
    "Checkpoint",
    "ClusterConfigError",
    "ClusterNode",
    "ClusterRouter",
    "ClusterSettings",
    "ClusterStore",
    "CorruptCheckpointError",
    "Event",
    "Keys",
    "Prediction",
    "PredictionFollower",
    "ShardAssigned",
    "ShardRevoked",
    "StreamTick",
    "assignment",
    "cluster_status",
    "connect",
    "owner_of",
    "shard_of",
    "shards_of",
]
