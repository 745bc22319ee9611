"""Publication of one batched step: PUB messages, sequence numbers, shared memory, metrics.

For each real lane of a step, in order: the asset's sequence number is
advanced (``AssetTable.seq``, contiguous per asset, 1 for its first tick)
and its last timestamp recorded; then either

* a gate rejection: ``{"asset", "ts", "seq", "rejected": reason}``
  (``wire.encode_rejection``), ``reason`` the gate's name for it
  (``core.gate.REJECT_NAMES``: ``non_finite``, ``outlier``,
  ``out_of_order``), counted in ``predictor_rejects_total`` with the label
  ``reason="gate_<reason>"``; the shared-memory record keeps the asset's
  last prediction; or
* a prediction: every ``PredictionResult`` field but ``rejected`` and
  ``reject_reason`` (a prediction has no ``rejected`` key), plus ``asset``,
  ``ts``, ``seq`` and ``latency_ns`` (receipt of the tick's message to this
  publication, ns), the body of ``wire.encode_prediction``, packed once;
  the shared-memory record of the asset's slot is rewritten and the
  end-to-end latency histogram, mode counts and the table's last mode are
  updated.

A tick refused by the wire schema before any step (``publish_rejects``)
whose asset can be read is answered the same way, ``rejected`` the schema's
reason (``wire.RejectReason``: ``wrong_type``, ``missing_field``,
``implausible_ts`` ...), ``ts`` the tick's (0 when it had no integer ``ts``),
``seq`` the asset's next sequence number, or 0 for an asset the daemon holds
no state for (the table is left unchanged: a refused tick admits nothing).

The host copy of the step's outputs is turned into Python values column by
column (``ndarray.tolist``), so a lane costs one dict and one msgpack call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import zmq

from predictor.core.gate import REJECT_NAMES, REJECT_NONE, REJECT_OUT_OF_ORDER
from predictor.core.state import StepOutput
from predictor.core.types import MODES
from predictor.daemon.assets import AssetTable, StepResult
from predictor.daemon.intake import Received
from predictor.daemon.metrics import DaemonMetrics
from predictor.ipc.shm import LatestWriter
from predictor.ipc.wire import Reject, encode_rejection

#: Reject labels the publisher counts (``gate_`` + the reason's name), every
#: reject code of the gate but ``REJECT_NONE``.
GATE_LABELS = tuple(f"gate_{name}" for code, name in enumerate(REJECT_NAMES) if code != REJECT_NONE)

#: PredictionResult fields that are one scalar per lane (weights and mode apart).
RESULT_SCALARS = (
    "predicted_next",
    "holder_exponent",
    "cusum_drift",
    "distance_to_collapse",
    "free_energy",
    "kurtosis",
    "dgm_entropy",
    "adaptive_threshold",
    "sinkhorn_converged",
    "degraded_inference_mode",
    "emergency_mode",
    "regime_change_detected",
    "mode_collapse_warning",
    "predicted_value",
    "interval_lower",
    "interval_upper",
    "warming_up",
)


@dataclass(frozen=True)
class Emergency:
    """A lane whose asset entered Emergency mode in this step."""

    lane: int
    asset: str
    slot: int
    ts: int
    result: dict[str, Any]


def row_dict(out: StepOutput, i: int) -> dict[str, Any]:
    """``PredictionResult.to_dict()`` of lane ``i`` of a host step output, as published.

    The rejection fields are left out, as in a prediction message.
    """
    row = {name: np.asarray(getattr(out, name))[i].item() for name in RESULT_SCALARS}
    row["weights"] = np.asarray(out.weights)[i].tolist()
    row["mode"] = MODES[int(np.asarray(out.mode)[i])]
    return row


class Publisher:
    """Publishes steps on the PUB socket (see the module docstring)."""

    def __init__(
        self, sock: zmq.Socket[bytes], shm: LatestWriter | None, metrics: DaemonMetrics
    ) -> None:
        self.sock = sock
        self.shm = shm
        self.metrics = metrics
        self.predictions = 0
        self.rejections = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def publish_rejects(self, rejects: Sequence[Reject], table: AssetTable) -> None:
        """Answer schema rejects that name an asset on its topic (see the module docstring)."""
        ids, seq_arr = table.ids, table.seq
        for rej in rejects:
            if rej.asset is None:
                continue
            slot = ids.get(rej.asset)
            seq = 0
            if slot is not None:
                seq = int(seq_arr[slot]) + 1
                seq_arr[slot] = seq
            self.sock.send_multipart(encode_rejection(rej.asset, seq, rej.ts, str(rej.reason)))
            self.rejections += 1

    def publish(
        self, received: Sequence[Received], slots: Sequence[int], res: StepResult, table: AssetTable
    ) -> list[Emergency]:
        """Publish the ``res.n`` lanes of a step; returns the lanes that entered Emergency."""
        out, n = res.out, res.n
        cols = {name: np.asarray(getattr(out, name))[:n].tolist() for name in RESULT_SCALARS}
        weights = np.asarray(out.weights)[:n].tolist()
        modes = np.asarray(out.mode)[:n].tolist()
        rejected = np.asarray(out.rejected)[:n].tolist()
        reasons = np.asarray(out.reject_reason)[:n].tolist()
        sock, shm, metrics, pack = self.sock, self.shm, self.metrics, self._pack
        seq_arr, ts_arr, mode_arr = table.seq, table.last_ts, table.last_mode
        e2e = metrics.e2e_latency.observe
        clock = time.perf_counter_ns
        published = 0
        mode_counts = [0] * len(MODES)
        bodies: list[dict[str, Any] | None] = []
        for j in range(n):
            tick, t_recv = received[j]
            slot = slots[j]
            seq = int(seq_arr[slot]) + 1
            seq_arr[slot] = seq
            if rejected[j]:
                reason = REJECT_NAMES[reasons[j]]
                if reasons[j] != REJECT_OUT_OF_ORDER:  # the gate's clock moved (``rejected_gate``)
                    ts_arr[slot] = tick.ts
                sock.send_multipart(encode_rejection(tick.asset, seq, tick.ts, reason))
                metrics.reject("gate_" + reason)
                self.rejections += 1
                bodies.append(None)
                continue
            ts_arr[slot] = tick.ts
            body = {name: col[j] for name, col in cols.items()}
            body["weights"] = weights[j]
            mode = modes[j]
            body["mode"] = MODES[mode]
            latency = clock() - t_recv
            body["asset"] = tick.asset
            body["ts"] = tick.ts
            body["seq"] = seq
            body["latency_ns"] = latency
            sock.send_multipart([tick.asset.encode(), pack(body)])
            mode_arr[slot] = mode
            mode_counts[mode] += 1
            if shm is not None:
                shm.write_result(
                    slot, tick.asset, seq=seq, ts=tick.ts, latency_ns=latency, result=body
                )
            e2e(latency * 1e-9)
            published += 1
            bodies.append(body)
        self.predictions += published
        metrics.predictions.inc(published)
        for code, count in enumerate(mode_counts):
            if count:
                metrics.mode_predictions.labels(mode=MODES[code]).inc(count)
        regimes = int(np.count_nonzero(np.asarray(out.regime_change_detected)[:n]))
        if regimes:
            metrics.regime_changes.inc(regimes)
        entered = np.flatnonzero(np.asarray(out.emergency_entered)[:n]).tolist()
        if entered:
            metrics.emergency_entries.inc(len(entered))
        emergencies = []
        for j in entered:
            sent = bodies[j]
            if sent is not None:
                tick = received[j][0]
                emergencies.append(Emergency(j, tick.asset, slots[j], tick.ts, _result(sent)))
        return emergencies


def _result(body: dict[str, Any]) -> dict[str, Any]:
    """The PredictionResult part of a published body."""
    return {k: v for k, v in body.items() if k not in ("asset", "ts", "seq", "latency_ns")}
