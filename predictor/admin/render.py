"""Human-readable text for ``predictorctl``: admin replies and prediction rows.

Every renderer takes a reply object as the daemon sent it and tolerates
missing or extra keys (a missing value prints as ``-``; keys it does not know
are listed at the end), so an older client still shows a newer daemon's
reply. Units: times in seconds unless a column says otherwise, jitter in
microseconds, memory in MiB, timestamps as UTC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_MIB = float(1 << 20)


# --- primitives ------------------------------------------------------------


def fmt(value: Any) -> str:
    """One cell: ``-`` for None, ``yes``/``no``, 6 significant digits, joined lists."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt(v)}" for k, v in value.items()) if value else "-"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; columns in ``right`` right-aligned."""
    body = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    ralign = set(right)

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in ralign else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in body)])


def kv(pairs: Iterable[tuple[str, str]], indent: int = 0) -> str:
    """``key  value`` lines with the keys padded to one width."""
    items = list(pairs)
    if not items:
        return ""
    width = max(len(k) for k, _ in items)
    pad = " " * indent
    return "\n".join(f"{pad}{k.ljust(width)}  {v}".rstrip() for k, v in items)


def duration(seconds: Any) -> str:
    """``3d04h05m06s`` style; sub-minute values with one decimal."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return fmt(seconds)
    s = float(seconds)
    if s < 60:
        return f"{s:.1f}s"
    total = int(s)
    d, rem = divmod(total, 86_400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m{sec:02d}s"
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    return f"{m}m{sec:02d}s"


def utc_ns(ts: Any, *, date: bool = True) -> str:
    """Unix nanoseconds as UTC ``YYYY-MM-DD HH:MM:SS.mmm`` (time only if not ``date``)."""
    if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
        return fmt(ts)
    try:
        when = dt.datetime.fromtimestamp(ts / 1e9, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    text = when.strftime("%Y-%m-%d %H:%M:%S.%f" if date else "%H:%M:%S.%f")
    return text[:-3]


def mib(n: Any) -> str:
    """Bytes as MiB with one decimal."""
    if isinstance(n, int | float) and not isinstance(n, bool):
        return f"{n / _MIB:.1f} MiB"
    return fmt(n)


def micros(ns: Any) -> str:
    """Nanoseconds as microseconds with one decimal."""
    if isinstance(ns, int | float) and not isinstance(ns, bool):
        return f"{ns / 1e3:.1f} us"
    return fmt(ns)


def _rest(reply: Mapping[str, Any], known: Iterable[str]) -> list[tuple[str, str]]:
    skip = {"ok", *known}
    return [(k, fmt(v)) for k, v in reply.items() if k not in skip]


def _section(title: str, pairs: list[tuple[str, str]]) -> str:
    return title + "\n" + kv(pairs, indent=2) if pairs else title + "  -"


def _as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


# --- admin replies ---------------------------------------------------------


def render_status(r: Mapping[str, Any]) -> str:
    """The ``status`` reply: identity, endpoints, load, shed, snapshot, config."""
    head = (
        f"predictord {fmt(r.get('version'))}  pid {fmt(r.get('pid'))}  "
        f"up {duration(r.get('uptime_s'))}  device {fmt(r.get('device'))}"
    )
    ep = _as_map(r.get("endpoints"))
    endpoints = [(k, fmt(ep.get(k))) for k in ("ticks", "predictions", "metrics", "shm", "admin")]
    endpoints += [(k, fmt(v)) for k, v in ep.items() if k not in dict(endpoints)]

    modes = _as_map(r.get("modes"))
    mode_text = "  ".join(f"{k} {fmt(v)}" for k, v in modes.items()) or "-"
    rate = r.get("tick_rate")
    rate_text = f"{rate:.1f} ticks/s" if isinstance(rate, int | float) else fmt(rate)
    load = [("assets", fmt(r.get("assets"))), ("tick rate", rate_text), ("modes", mode_text)]
    if "state" in r:
        load.insert(0, ("state", state_text(r)))

    shed = _as_map(r.get("shed"))
    snap = _as_map(r.get("snapshot"))
    snap_pairs = [("path", fmt(snap.get("path"))), ("age", duration(snap.get("age_s")))]
    cfg = _as_map(r.get("config"))
    cfg_pairs = [("path", fmt(cfg.get("path"))), ("sha256", fmt(cfg.get("sha256")))]
    sens = _as_map(cfg.get("sensitivities"))
    cfg_pairs += [(f"{k}", fmt(v)) for k, v in sorted(sens.items())]

    known = ["version", "pid", "uptime_s", "device", "endpoints", "assets", "tick_rate"]
    known += ["modes", "shed", "snapshot", "config", "state", "warmup"]
    parts = [
        head,
        _section("endpoints", endpoints),
        kv(load),
        _section("shed", shed_pairs(shed)),
        _section("snapshot", snap_pairs),
        _section("config", cfg_pairs),
    ]
    rest = _rest(r, known)
    if rest:
        parts.append(_section("other", rest))
    return "\n".join(parts)


def state_text(r: Mapping[str, Any]) -> str:
    """The daemon's phase: ``running``, ``draining``, ``starting`` or ``warming up: 3/8
    graphs``; while the larger buckets compile after READY, ``(serving)`` is added."""
    state = fmt(r.get("state"))
    warm = _as_map(r.get("warmup"))
    if state.startswith("warming up") and warm.get("ready") is True:
        return f"{state} (serving)"
    return state


def shed_pairs(shed: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Shed state lines: level and depth, pinned or automatic, refit interval, jitter."""
    if not shed:
        return []
    pinned = shed.get("pinned")
    how = "pinned" if pinned is True else ("auto" if pinned is False else fmt(pinned))
    pairs = [
        ("level", f"{fmt(shed.get('level'))} (depth {fmt(shed.get('depth'))}, {how})"),
    ]
    if "refit_interval" in shed:
        refit = f"every {fmt(shed['refit_interval'])} ticks"
        ladder = shed.get("refit_ladder")
        if isinstance(ladder, list) and ladder:
            refit += f" (ladder {' -> '.join(fmt(k) for k in ladder)})"
        pairs.append(("refit", refit))
    for key, label in (
        ("jitter_p95_ns", "jitter p95"),
        ("jitter_p99_ns", "jitter p99"),
        ("ewma_ns", "step EWMA"),
    ):
        if key in shed:
            pairs.append((label, micros(shed[key])))
    known = {"ok", "level", "depth", "pinned", "jitter_p95_ns", "jitter_p99_ns", "ewma_ns"}
    known |= {"refit_interval", "refit_ladder", "refit_level"}
    pairs += [(k, fmt(v)) for k, v in shed.items() if k not in known]
    return pairs


def render_shed(r: Mapping[str, Any]) -> str:
    """The ``shed`` reply (or the ``shed`` part of ``status``)."""
    return kv(shed_pairs(r)) or "-"


def render_snapshot(r: Mapping[str, Any]) -> str:
    """The ``snapshot`` reply: where the file is, its size and checksum, the write time."""
    size = r.get("size")
    size_text = f"{size:,} bytes" if isinstance(size, int) else fmt(size)
    dur = r.get("duration_s")
    dur_text = f"{dur:.3f} s" if isinstance(dur, int | float) else fmt(dur)
    pairs = [
        ("path", fmt(r.get("path"))),
        ("size", size_text),
        ("checksum", fmt(r.get("checksum"))),
        ("duration", dur_text),
    ]
    pairs += _rest(r, ("path", "size", "checksum", "duration_s"))
    return "snapshot written\n" + kv(pairs, indent=2)


def render_reload(r: Mapping[str, Any]) -> str:
    """The ``reload`` reply: keys applied in place, keys needing a re-initialisation."""
    applied = r.get("applied") or []
    pending = r.get("requires_reinit") or []
    reinit = r.get("reinitialised") is True
    lines = [f"applied: {fmt(applied)}" if applied else "applied: no change in place"]
    if pending:
        if reinit:
            lines.append(f"re-initialised for: {fmt(pending)}")
        else:
            lines.append(
                f"requires re-initialisation (not applied): {fmt(pending)}; "
                "run `predictorctl reload --reinit` to apply"
            )
    elif reinit:
        lines.append("re-initialised")
    restart = r.get("requires_restart")
    if restart:
        lines.append(f"requires a daemon restart (not applied): {fmt(restart)}")
    rest = _rest(r, ("applied", "requires_reinit", "reinitialised", "requires_restart"))
    if rest:
        lines.append(kv(rest))
    return "\n".join(lines)


def render_vram(r: Mapping[str, Any]) -> str:
    """The ``vram`` reply: JAX device memory, nvidia-smi, process RSS."""
    rows = []
    for d in r.get("devices") or []:
        dev = _as_map(d)
        stats = dev.get("memory_stats")
        if isinstance(stats, Mapping):
            in_use, peak, limit = (
                stats.get("bytes_in_use"),
                stats.get("peak_bytes_in_use"),
                stats.get("bytes_limit"),
            )
            rows.append([fmt(dev.get("id")), fmt(dev.get("platform")), mib(in_use), mib(peak)])
            rows[-1].append(mib(limit))
        else:
            rows.append([fmt(dev.get("id")), fmt(dev.get("platform")), fmt(stats), "", ""])
    parts = [table(["device", "platform", "in use", "peak", "limit"], rows, right=(2, 3, 4))]
    smi = r.get("nvidia_smi")
    if isinstance(smi, Mapping):
        used, total = smi.get("used_mib"), smi.get("total_mib")
        pct = ""
        if isinstance(used, int | float) and isinstance(total, int | float) and total > 0:
            pct = f" ({100.0 * used / total:.1f}%)"
        extra = [(k, fmt(v)) for k, v in smi.items() if k not in ("used_mib", "total_mib")]
        parts.append(f"nvidia-smi  {fmt(used)} of {fmt(total)} MiB{pct}")
        if extra:
            parts.append(kv(extra, indent=2))
    else:
        parts.append(f"nvidia-smi  {fmt(smi)}")
    parts.append(f"process RSS  {mib(r.get('rss_bytes'))}")
    rest = _rest(r, ("devices", "nvidia_smi", "rss_bytes"))
    if rest:
        parts.append(kv(rest))
    return "\n".join(parts)


def render_assets(r: Mapping[str, Any]) -> str:
    """The ``assets`` reply as a table sorted by asset id."""
    items = [_as_map(a) for a in r.get("assets") or []]
    if not items:
        return "no assets yet"
    rows = []
    for a in sorted(items, key=lambda x: str(x.get("asset"))):
        w = a.get("weights")
        weights = " ".join(f"{x:.3f}" for x in w) if isinstance(w, list) else fmt(w)
        rows.append(
            [
                fmt(a.get("asset")),
                fmt(a.get("slot")),
                fmt(a.get("seq")),
                utc_ns(a.get("last_ts")),
                fmt(a.get("mode")),
                _num(a.get("holder_exponent"), 3),
                weights,
            ]
        )
    headers = ["asset", "slot", "seq", "last tick (UTC)", "mode", "H", "weights A B C D"]
    return table(headers, rows, right=(1, 2, 5))


def render_forget(r: Mapping[str, Any]) -> str:
    """The ``forget`` reply."""
    asset = fmt(r.get("asset"))
    if r.get("forgotten") is True:
        return f"forgot {asset}: its state is dropped; its next tick starts it cold (seq 1)"
    if r.get("forgotten") is False:
        return f"no asset {asset}: nothing to forget"
    return kv([(k, fmt(v)) for k, v in r.items() if k != "ok"])


def render_drain(r: Mapping[str, Any]) -> str:
    """The ``drain`` reply."""
    if r.get("draining") is True:
        return "draining: predictord is finishing received ticks and writing its final snapshot"
    return kv([(k, fmt(v)) for k, v in r.items() if k != "ok"])


def _num(v: Any, digits: int) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:.{digits}f}"
    return fmt(v)


# --- predictions (watch) ---------------------------------------------------

#: Header of the live prediction table; ``prediction_row`` matches its widths.
PREDICTION_HEADER = (
    f"{'time (UTC)':<12}  {'asset':<12}  {'seq':>7}  {'forecast':>11}  "
    f"{'95% interval':>23}  {'z next':>7}  {'H':>5}  {'cusum':>7}  {'h_t':>7}  "
    f"{'mode':<9}  {'weights A B C D':<19}  {'flags':<5}  {'lat us':>7}"
)

_FLAGS = (
    ("regime_change_detected", "R"),
    ("degraded_inference_mode", "D"),
    ("emergency_mode", "E"),
    ("mode_collapse_warning", "C"),
    ("warming_up", "W"),
)


def prediction_row(m: Mapping[str, Any]) -> str:
    """One prediction (or gate rejection) as a line of the live table.

    A rejection shows its reason: the wire's ``"rejected": reason``, or a
    ``PredictionResult.to_dict()`` with ``rejected`` true and its
    ``reject_reason``. Flags: R regime change, D degraded inference,
    E emergency, C mode collapse warning, W warming up.
    """
    when = utc_ns(m.get("ts"), date=False)
    head = f"{when:<12}  {fmt(m.get('asset')):<12}  {fmt(m.get('seq')):>7}"
    reason = rejection_reason(m)
    if reason is not None:
        return f"{head}  rejected: {reason}"
    lo, hi = m.get("interval_lower"), m.get("interval_upper")
    interval = f"[{_g(lo)}, {_g(hi)}]"
    w = m.get("weights")
    weights = " ".join(f"{x:.2f}" for x in w) if isinstance(w, list) else fmt(w)
    flags = "".join(c for k, c in _FLAGS if m.get(k) is True) or "-"
    lat = m.get("latency_ns")
    lat_text = f"{lat / 1e3:.1f}" if isinstance(lat, int | float) else fmt(lat)
    return (
        f"{head}  {_g(m.get('predicted_value')):>11}  {interval:>23}  "
        f"{_num(m.get('predicted_next'), 3):>7}  {_num(m.get('holder_exponent'), 2):>5}  "
        f"{_num(m.get('cusum_drift'), 2):>7}  {_num(m.get('adaptive_threshold'), 2):>7}  "
        f"{fmt(m.get('mode')):<9}  {weights:<19}  {flags:<5}  {lat_text:>7}"
    )


def rejection_reason(m: Mapping[str, Any]) -> str | None:
    """The reason of a gate rejection message or result, or None for a prediction."""
    rejected = m.get("rejected")
    if rejected is None or rejected is False:
        return None
    if rejected is True:
        return fmt(m.get("reject_reason"))
    return fmt(rejected)


def _g(v: Any) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v:.5g}"
    return fmt(v)
