"""UniversalPredictor: the stateful single-asset wrapper of the specification.

It holds one ``AssetState`` and a ``FunctionalPredictor``; each ``step``
is one compiled call and one host transfer of the result. Gate events are
logged through structlog with the specification's warning names
(``DomainError``, ``StalenessWarning``, ``FrequencyWarning``); a rejection's
log line and result name its reason (``predictor.core.gate.REJECT_NAMES``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import jax
import numpy as np
import structlog

from predictor.compat import single_observation
from predictor.config import PredictorConfig
from predictor.core.functional import FunctionalPredictor, fit_verdict, output_to_result
from predictor.core.gate import REJECT_NAMES
from predictor.core.state import AssetState, PackedState, StepOutput
from predictor.core.types import PredictionResult, ProcessState
from predictor.errors import DomainError, FrequencyWarning, StalenessWarning
from predictor.persistence import asset_payload, restore_asset
from predictor.snapshots import AsyncSnapshotWriter, SnapshotResult, load_snapshot, save_snapshot

log = structlog.get_logger("predictor.api")


class UniversalPredictor:
    """One asset, state in local (device) memory.

    ``step`` runs the gate first. A tick it rejects (``non_finite``: NaN or
    inf; ``outlier``: beyond 20 window standard deviations; ``out_of_order``:
    a timestamp not positive or not later than the previous tick's, other
    out-of-order ticks aside)
    leaves the window, the models and the tick count where they were (an
    ``out_of_order`` tick not even the gate's clock) and returns the
    previous valid result with ``rejected=True``
    and ``reject_reason`` set to the reason's name; it is logged as
    ``tick_rejected`` with that reason. When no tick has been accepted yet
    there is no previous result: ``step`` raises ``DomainError`` naming the
    reason. ``fit_history`` bootstraps the state from a history in
    one ``lax.scan``. ``set_depth`` switches among the precompiled
    signature depths without recompiling or losing state.
    ``save_snapshot`` / ``load_snapshot`` / ``save_snapshot_nonblocking``
    persist the state bit-exactly (msgpack + SHA-256, atomic replace).

    >>> from predictor import PredictorConfig, ProcessState
    >>> cfg = PredictorConfig(wtmm_buffer_size=32, shed_ladder=(3,), wiener_order=4,
    ...                       signature_window=8, dgm_width_size=8, dgm_collocation_points=16)
    >>> p = UniversalPredictor(cfg, warmup=False)
    >>> t0 = 1_767_225_600_000_000_000  # ns; one tick per millisecond, "now" = the tick's time
    >>> for k, y in enumerate((100.0, 100.5, 99.8)):
    ...     obs = ProcessState(magnitude=y, reference=y, timestamp_ns=t0 + k * 1_000_000)
    ...     r = p.step(obs, now_ns=obs.timestamp_ns)
    >>> r.warming_up, r.predicted_value, r.interval_lower <= r.predicted_value <= r.interval_upper
    (True, 99.8, True)
    """

    def __init__(self, config: PredictorConfig | None = None, *, warmup: bool = True) -> None:
        self.config = config if config is not None else PredictorConfig()
        self._fp = FunctionalPredictor(self.config, warmup=warmup)
        self._state: PackedState = self._fp.init_state()
        self._depth = self.config.log_sig_depth
        self._last_valid: PredictionResult | None = None
        self._writer: AsyncSnapshotWriter | None = None
        self._writer_lock = threading.Lock()

    @property
    def state(self) -> PackedState:
        """The current device state as packed rows (``functional.view`` reads it)."""
        return self._state

    @property
    def functional(self) -> FunctionalPredictor:
        """The underlying stateless predictor (compiled graphs, sensitivities)."""
        return self._fp

    @property
    def depth(self) -> int:
        """Signature depth of the graph in use."""
        return self._depth

    @property
    def view(self) -> AssetState:
        """Host copy of the state in its readable form (``AssetState``)."""
        return self._fp.view(jax.device_get(self._state))

    @property
    def signal_buffer(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The window: the last ``wtmm_buffer_size`` magnitudes, oldest first (host copy)."""
        view = self.view
        return np.array(view.fast.buffer, dtype=np.float64)

    @property
    def cusum_statistics(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The regime detector's channel statistics and grace counter (host copy)."""
        cusum = self.view.fast.cusum
        return np.asarray([np.asarray(leaf) for leaf in cusum], dtype=np.float64)

    def set_depth(self, depth: int) -> None:
        """Switch to another precompiled depth of ``shed_ladder`` (state kept)."""
        if depth not in self._fp.depths:
            raise ValueError(f"depth {depth} not in shed_ladder {self._fp.depths}")
        self._depth = depth

    def step(self, obs: ProcessState, now_ns: int | None = None) -> PredictionResult:
        """One prediction cycle with domain, staleness and Nyquist checks.

        ``now_ns`` defaults to ``time.time_ns()`` with the wall clock and to
        the tick's own timestamp with the event clock. A rejected tick
        returns the previous valid result marked ``rejected`` (see the
        class), or raises ``DomainError`` when no tick was accepted before.
        """
        obs = single_observation(obs)
        if now_ns is None:
            now_ns = time.time_ns() if self.config.clock == "wall" else int(obs.timestamp_ns)
        self._state, out = self._fp.step(self._state, obs, now_ns, self._depth)
        return self._publish(out, int(obs.timestamp_ns))

    def _publish(self, host: StepOutput, ts: int) -> PredictionResult:
        if bool(host.rejected):
            reason = REJECT_NAMES[int(host.reject_reason)]
            log.error("tick_rejected", error=DomainError.__name__, reason=reason, ts=ts)
            if self._last_valid is None:
                raise DomainError(f"first observation rejected: {reason} (no previous result)")
            return dataclasses.replace(self._last_valid, rejected=True, reject_reason=reason)
        if bool(host.stale):
            log.warning("tick_stale", warning=StalenessWarning.__name__)
        if bool(host.frequency_warning):
            log.warning("tick_sparse", warning=FrequencyWarning.__name__, detail="WTMM may alias")
        result = output_to_result(host)
        self._last_valid = result
        return result

    def fit_history(self, history: Sequence[float] | np.ndarray) -> bool:
        """Cold-start bootstrapping from at least ``min_history`` samples.

        A history shorter than the window leaves a partial window: the
        kernels forecast from it (progressive warm-up) and ``warming_up``
        stays set until the window is full.

        Runs the step over the whole history in one ``lax.scan`` (event
        clock, timestamps 1, 2, ... ns after the gate's last timestamp, so
        that the gate's ordering rule holds on a warm state too; 1, 2, ...
        from a cold one) and returns the specification's
        verdict: True when the last step's Sinkhorn iteration converged and
        its CUSUM drift is below ``cusum_h``; False otherwise (and logged).
        """
        values = np.asarray(history, dtype=np.float64)
        if values.ndim != 1 or values.shape[0] < self.config.min_history:
            raise ValueError(
                f"Insufficient history: {values.shape[0] if values.ndim == 1 else values.shape} "
                f"samples, required at least min_history = {self.config.min_history}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError("history contains non-finite values")
        fast = self.view.fast
        last_ts = int(fast.gate.last_ts) if int(fast.count) > 0 else 0
        ts = np.arange(last_ts + 1, last_ts + 1 + values.shape[0], dtype=np.int64)
        self._state, outs = self._fp.scan(self._state, values, ts=ts, depth=self._depth)
        last: StepOutput = jax.tree.map(lambda x: x[-1], outs)
        self._last_valid = output_to_result(last)
        ok = fit_verdict(last, self.config.cusum_h)
        if not ok:
            log.warning("fit_history_unstable", cusum_drift=self._last_valid.cusum_drift)
        return ok

    # ------------------------------------------------------------ snapshots --
    def save_snapshot(self, filepath: str | os.PathLike[str]) -> SnapshotResult:
        """Write the state to ``filepath`` atomically (temp, fsync, replace, fsync dir).

        The file is the msgpack payload followed by its hex SHA-256; an
        ``OSError`` (full disk, permissions) propagates and leaves any
        previous file at ``filepath`` intact.
        """
        return save_snapshot(filepath, self._payload())

    def save_snapshot_nonblocking(self, filepath: str | os.PathLike[str]) -> Future[SnapshotResult]:
        """Copy the state to the host now; pack, hash and write on a thread pool.

        The returned future resolves to a ``SnapshotResult`` (status
        ``success``, ``failed`` with the error, or ``superseded`` when a
        newer request for the same path replaced this one before it ran).
        Stepping may continue at once: the copy is private.
        """
        payload = self._payload()
        with self._writer_lock:
            if self._writer is None:
                self._writer = AsyncSnapshotWriter(max_workers=1)
            writer = self._writer
        return writer.submit(filepath, payload)

    def wait_for_snapshots(self, timeout: float | None = None) -> bool:
        """Block until queued snapshot writes finish; False on timeout."""
        return self._writer is None or self._writer.wait(timeout)

    def load_snapshot(self, filepath: str | os.PathLike[str]) -> None:
        """Replace the state by the verified snapshot at ``filepath``.

        Raises ``IntegrityError`` (checksum mismatch, truncated or empty
        file), ``SchemaVersionError`` (a ``ValueError`` naming both
        versions), ``LayoutMismatchError`` (the state does not fit this
        config; the message lists the fields that changed) or
        ``SnapshotTooLargeError``. On any error the current state is kept.
        """
        payload = load_snapshot(filepath, self.config.schema_version)
        template = self._fp.view(jax.device_get(self._fp.init_state()))
        state, depth = restore_asset(payload, template, self.config)
        if depth not in self._fp.depths:
            raise ValueError(
                f"{filepath}: snapshot depth {depth} not in shed_ladder {self._fp.depths}"
            )
        self._state, self._depth = jax.device_put(self._fp.pack(state)), depth
        ticks = int(state.fast.count)
        self._last_valid = output_to_result(state.fast.last_output) if ticks > 0 else None
        log.info("snapshot_loaded", path=os.fspath(filepath), ticks=ticks)

    def _payload(self) -> dict[str, Any]:
        return asset_payload(self.config, self.view, self._depth)


class ConfigReloadablePredictor(UniversalPredictor):
    """UniversalPredictor that follows changes of a ``config.toml``.

    ``check_and_reload_config`` re-reads the file when its content hash
    changes. Sensitivities (``predictor.config.DYNAMIC_FIELDS``: thresholds,
    rates, the Sinkhorn and CUSUM parameters, the gate's TTLs) are applied
    in place: state kept, nothing recompiled. Any other change (buffer and
    model sizes, solvers, depths) alters the state layout or the graphs and
    re-initialises the predictor (state lost, graphs recompiled). An invalid
    file raises ``ConfigError`` and the running config stays.
    """

    def __init__(self, config_path: str | Path = "config.toml", *, warmup: bool = True) -> None:
        self.config_path = Path(config_path)
        self._digest = self._file_digest()
        super().__init__(PredictorConfig.from_toml(self.config_path), warmup=warmup)

    def _file_digest(self) -> str:
        return hashlib.sha256(self.config_path.read_bytes()).hexdigest()

    def check_and_reload_config(self) -> bool:
        """Reload when the file changed; True if a new config is now in force."""
        digest = self._file_digest()
        if digest == self._digest:
            return False
        new = PredictorConfig.from_toml(self.config_path)
        self._digest = digest
        if new == self.config:
            return False
        layout = new.layout_changes(self.config)
        if layout:
            log.warning("config_reinitialised", path=str(self.config_path), keys=layout)
            UniversalPredictor.__init__(self, new)
        else:
            self._fp.set_sensitivities(new)
            self.config = new
            log.info("config_reloaded", path=str(self.config_path))
        return True
