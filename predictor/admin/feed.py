"""``predictorctl feed``: push a series to the daemon's tick PULL socket.

Sources: a CSV file with a header row (the value column ``y`` or ``--column``;
an optional ``ref`` column; an optional ``ts`` column in Unix nanoseconds used
with ``use_file_ts``), or a seeded synthetic process from
``predictor.synthetic``. Each value goes out as one tick message
(``predictor.ipc.wire.encode_tick``) stamped, unless the file's timestamps are
asked for, with the wall clock at send time, kept strictly increasing, so a
replay of an old series is not judged stale by the daemon's wall-clock
staleness check.

Pacing: tick ``i`` is sent no earlier than ``start + i / rate`` seconds
(``rate`` in ticks per second; 0 sends as fast as the socket takes them).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
from numpy.typing import NDArray

from predictor import synthetic
from predictor.ipc.endpoints import check_endpoint, ipc_path
from predictor.ipc.wire import encode_tick

FloatArray = NDArray[np.float64]

#: Seconds a send may wait for the daemon to take a tick before feed gives up.
DEFAULT_SEND_TIMEOUT_S = 10.0


class FeedError(Exception):
    """A source that cannot be read or a daemon that cannot be reached (one-line reason)."""


@dataclass(frozen=True)
class Series:
    """Values to send, in series units; ``refs`` and ``ts`` (Unix ns) optional, same length."""

    values: FloatArray
    refs: FloatArray | None = None
    ts: NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])


@dataclass(frozen=True)
class FeedResult:
    """What was pushed: tick count and wall-clock seconds from first to last send."""

    sent: int
    duration_s: float

    @property
    def rate(self) -> float:
        """Achieved ticks per second (0 when fewer than two ticks were sent)."""
        return (self.sent - 1) / self.duration_s if self.sent > 1 and self.duration_s > 0 else 0.0


# --- synthetic processes ---------------------------------------------------


def _brownian(rng: np.random.Generator, n: int) -> FloatArray:
    return np.asarray(synthetic.brownian(rng, n, sigma=1.0), dtype=np.float64)


def _fbm(rng: np.random.Generator, n: int) -> FloatArray:
    return np.asarray(synthetic.fbm(rng, n, h=0.7), dtype=np.float64)


def _fgn(rng: np.random.Generator, n: int) -> FloatArray:
    return np.asarray(synthetic.fgn(rng, n, h=0.7), dtype=np.float64)


def _ar1(rng: np.random.Generator, n: int) -> FloatArray:
    return np.asarray(synthetic.ar1(rng, n, phi=0.9), dtype=np.float64)


def _ou(rng: np.random.Generator, n: int) -> FloatArray:
    return np.asarray(synthetic.ou(rng, n, theta=0.05, mu=0.0, sigma=1.0), dtype=np.float64)


def _merton(rng: np.random.Generator, n: int) -> FloatArray:
    path = synthetic.merton(rng, n, sigma=0.01, lam=0.01, jump_sd=0.05)
    return np.asarray(path.log_price, dtype=np.float64)


def _stable(rng: np.random.Generator, n: int) -> FloatArray:
    return np.cumsum(np.asarray(synthetic.stable_increments(rng, n, alpha=1.7), dtype=np.float64))


def _piecewise(rng: np.random.Generator, n: int) -> FloatArray:
    if n < 2:
        raise FeedError("piecewise needs --count of at least 2")
    out = synthetic.piecewise(rng, n, [n // 2], [0.0, 3.0], [1.0, 1.0])
    return np.asarray(out.series, dtype=np.float64)


_Generator = Callable[[np.random.Generator, int], FloatArray]

#: name -> (generator, one-line description with its fixed parameters).
SYNTHETIC: dict[str, tuple[_Generator, str]] = {
    "brownian": (_brownian, "Brownian motion, sigma 1 per tick"),
    "fbm": (_fbm, "fractional Brownian motion, H 0.7"),
    "fgn": (_fgn, "fractional Gaussian noise, H 0.7"),
    "ar1": (_ar1, "Gaussian AR(1), phi 0.9"),
    "ou": (_ou, "Ornstein-Uhlenbeck, theta 0.05, sigma 1"),
    "merton": (_merton, "Merton jump-diffusion log-price, sigma 0.01, 1 jump per 100 ticks"),
    "stable": (_stable, "Levy flight: cumulative alpha-stable (alpha 1.7) increments"),
    "piecewise": (_piecewise, "Gaussian noise with a mean shift 0 -> 3 half-way"),
}


def synthetic_series(name: str, n: int, seed: int = 0) -> Series:
    """``n`` values of the synthetic process ``name`` (see ``SYNTHETIC``), seeded."""
    if name not in SYNTHETIC:
        raise FeedError(f"unknown process {name!r}; choose from {', '.join(SYNTHETIC)}")
    if n < 1:
        raise FeedError(f"--count must be positive, got {n}")
    gen, _ = SYNTHETIC[name]
    values = gen(np.random.default_rng(seed), n)
    return Series(values)


# --- CSV -------------------------------------------------------------------


def read_csv(
    path: str | Path,
    *,
    column: str = "y",
    use_file_ts: bool = False,
    limit: int | None = None,
) -> Series:
    """The series of a CSV file with a header row.

    ``column`` holds the values; a ``ref`` column, when present, the
    reference values; a ``ts`` column (integer Unix ns) is read only when
    ``use_file_ts``. Blank lines are skipped; at most ``limit`` rows are read.
    Raises ``FeedError`` naming the file, line and column of a bad cell.
    """
    p = Path(path)
    try:
        fh = p.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise FeedError(f"cannot read {p}: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if column not in header:
            have = ", ".join(header) or "no header"
            raise FeedError(f"{p}: no column {column!r} (columns: {have}); use --column")
        if use_file_ts and "ts" not in header:
            raise FeedError(f"{p}: --use-ts needs a 'ts' column (Unix nanoseconds)")
        has_ref = "ref" in header
        values: list[float] = []
        refs: list[float] = []
        stamps: list[int] = []
        for row in reader:
            if limit is not None and len(values) >= limit:
                break
            if all(v is None or not v.strip() for v in row.values()):
                continue
            line = reader.line_num
            values.append(_cell_float(p, line, column, row.get(column)))
            if has_ref:
                refs.append(_cell_float(p, line, "ref", row.get("ref")))
            if use_file_ts:
                stamps.append(_cell_int(p, line, "ts", row.get("ts")))
    if not values:
        raise FeedError(f"{p}: no data rows")
    return Series(
        np.asarray(values, dtype=np.float64),
        np.asarray(refs, dtype=np.float64) if has_ref else None,
        np.asarray(stamps, dtype=np.int64) if use_file_ts else None,
    )


def _cell_float(path: Path, line: int, col: str, cell: str | None) -> float:
    try:
        return float((cell or "").strip())
    except ValueError:
        raise FeedError(f"{path}:{line}: column {col!r}: not a number: {cell!r}") from None


def _cell_int(path: Path, line: int, col: str, cell: str | None) -> int:
    try:
        return int((cell or "").strip())
    except ValueError:
        raise FeedError(f"{path}:{line}: column {col!r}: not an integer: {cell!r}") from None


# --- sending ---------------------------------------------------------------


def feed(
    endpoint: str,
    asset: str,
    series: Series,
    *,
    rate: float = 0.0,
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
    on_sent: Callable[[int], None] | None = None,
    clock_ns: Callable[[], int] = time.time_ns,
) -> FeedResult:
    """Push ``series`` to ``endpoint`` as ticks of ``asset``, paced at ``rate`` ticks/s.

    Connects a PUSH socket that queues only to a connected peer, so a send
    that finds no daemon for ``send_timeout_s`` raises ``FeedError`` instead
    of queueing forever; at the end, waits up to ``send_timeout_s`` for the
    queue to drain. ``on_sent(i)`` is called after tick ``i`` (progress).
    """
    if not asset:
        raise FeedError("--asset must not be empty")
    if rate < 0 or not math.isfinite(rate):
        raise FeedError(f"--rate must be a finite number >= 0, got {rate}")
    try:
        check_endpoint(endpoint)
    except ValueError as exc:
        raise FeedError(str(exc)) from exc
    sock_path = ipc_path(endpoint)
    if sock_path is not None and not sock_path.exists():
        raise FeedError(f"no tick socket at {sock_path}: is predictord running? (--endpoint)")

    timeout_ms = max(1, int(send_timeout_s * 1000))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    try:
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
        sock.setsockopt(zmq.LINGER, timeout_ms)
        sock.connect(endpoint)
        result = _send_all(
            sock,
            asset,
            series,
            rate=rate,
            on_sent=on_sent,
            clock_ns=clock_ns,
            send_timeout_s=send_timeout_s,
            endpoint=endpoint,
        )
    finally:
        sock.close()
        ctx.term()
    return result


def _send_all(
    sock: zmq.Socket[bytes],
    asset: str,
    series: Series,
    *,
    rate: float,
    on_sent: Callable[[int], None] | None,
    clock_ns: Callable[[], int],
    send_timeout_s: float,
    endpoint: str,
) -> FeedResult:
    values: Sequence[float] = series.values.tolist()
    refs: Sequence[float] | None = None if series.refs is None else series.refs.tolist()
    stamps: Sequence[int] | None = None if series.ts is None else series.ts.tolist()
    period = 1.0 / rate if rate > 0 else 0.0
    last_ts = 0
    start = time.monotonic()
    for i, y in enumerate(values):
        if period:
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if stamps is not None:
            ts = stamps[i]
        else:
            ts = max(clock_ns(), last_ts + 1)
            last_ts = ts
        msg = encode_tick(asset, y, ts, None if refs is None else refs[i])
        try:
            sock.send(msg)
        except zmq.Again:
            raise FeedError(
                f"no daemon took tick {i} at {endpoint} within {send_timeout_s:g} s"
            ) from None
        if on_sent is not None:
            on_sent(i)
    return FeedResult(len(values), time.monotonic() - start)
