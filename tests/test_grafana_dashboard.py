"""The Grafana dashboard against a real daemon's scrape, and the metric naming conventions.

* ``deployment/grafana-dashboard.json`` is a current-schema dashboard whose
  every query goes through the ``DS_PROMETHEUS`` datasource variable, with
  non-overlapping panels; counters and histogram buckets are only read
  through ``rate()``/``increase()``, and quantiles through
  ``histogram_quantile`` over a ``_bucket`` series summed ``by (le)``.
* Every metric name its PromQL (panels and template variables) references
  is a series in the ``/metrics`` scrape of a real ``predictord``
  subprocess (histograms as ``_bucket``/``_sum``/``_count``).
* The same scrape follows the Prometheus naming guide: counters end in
  ``_total``, nothing else does; no non-base units (``_ms``,
  ``_milliseconds``, ``_ns``, ``_percent``, ...); a gauge holding a Unix time
  (value within a day of now) ends in ``_timestamp_seconds``; durations and
  latencies end in ``_seconds``; fractions in 0..1 end in ``_ratio``.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.daemon_harness import CHEAP_MODEL, REPO, Daemon, base_daemon_table, write_config

DASHBOARD = REPO / "deployment" / "grafana-dashboard.json"

#: PromQL words that are not metric names (functions are recognised by their ``(``).
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "atan2", "inf", "nan"}
)
#: Counting functions a counter or a bucket series may be read through.
RATE_FUNCTIONS = ("rate", "increase", "irate")
#: Unit spellings the naming guide replaces by base units.
NON_BASE_UNITS = (
    "_ms",
    "_milliseconds",
    "_us",
    "_microseconds",
    "_ns",
    "_nanoseconds",
    "_minutes",
    "_hours",
    "_days",
    "_kb",
    "_kib",
    "_mb",
    "_mib",
    "_gb",
    "_gib",
    "_kilobytes",
    "_megabytes",
    "_percent",
    "_pct",
)
#: Families of the standard process collector: their names are fixed by Prometheus's
#: client libraries (``process_start_time_seconds`` predates ``_timestamp_seconds``).
STANDARD_FAMILIES = frozenset({"process_start_time_seconds"})


# --- the dashboard -------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash, dict)
    return dash


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dash: dict[str, Any]) -> list[str]:
    """The PromQL of every panel target and every query template variable."""
    out = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append(query["query"] if isinstance(query, dict) else query)
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names referenced in one PromQL expression (or ``label_values`` query).

    Strings, label matchers ``{...}``, ranges ``[...]`` and the label lists of
    ``by``/``without``/``on``/``ignoring``/``group_*`` are removed first; what is
    left are numbers, operators, function names (followed by ``(``) and metric names.
    """
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call is None and word.lower() not in PROMQL_WORDS:
            names.add(word)
    if text.lstrip().startswith("label_values"):
        # label_values(metric, label): the label is the last argument, not a metric.
        names.discard(text.rsplit(",", 1)[-1].strip(" )"))
    return names


def call_arguments(expr: str, function: str) -> list[str]:
    """The text inside every ``function(...)`` call of ``expr`` (balanced parentheses)."""
    out = []
    for m in re.finditer(rf"\b{function}\s*\(", expr):
        depth, start = 1, m.end()
        for i in range(start, len(expr)):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            if depth == 0:
                out.append(expr[start:i])
                break
        else:
            raise AssertionError(f"unbalanced parentheses in {expr!r}")
    return out


def test_metric_name_extraction_skips_labels_functions_and_variables() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(a_seconds_bucket{instance=~"$x",'
        ' le!="+Inf"}[$__rate_interval]))) / on (instance) group_left (version) b_info'
        " > 0 and c_total offset 5m"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_info", "c_total"}
    assert metric_names('label_values(d_info{job=~"$job"}, instance)') == {"d_info"}
    assert metric_names("time() - e_timestamp_seconds") == {"e_timestamp_seconds"}
    assert call_arguments("rate(x[1m]) + rate(sum(y)[5m:])", "rate") == ["x[1m]", "sum(y)[5m:]"]


def test_dashboard_structure_and_datasource_variable() -> None:
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 36  # Grafana 9 and later
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dash):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_reads_counters_through_rates_and_quantiles_over_buckets() -> None:
    exprs = expressions(load_dashboard())
    for expr in exprs:
        rated = [a for f in RATE_FUNCTIONS for a in call_arguments(expr, f)]
        inside_rates = set().union(*map(metric_names, rated))
        for name in metric_names(expr):
            # Counters and histogram parts only make sense as rates of increase.
            cumulative = name.endswith(("_total", "_bucket", "_sum", "_count"))
            if cumulative and not expr.startswith("label_values"):
                assert name in inside_rates, f"{name} read without rate() in {expr!r}"
        for args in call_arguments(expr, "histogram_quantile"):
            q, _, inner = args.partition(",")
            assert 0.0 < float(q) < 1.0
            assert all(n.endswith("_bucket") for n in metric_names(inner)), args
            assert re.search(r"by \((le|le, \w+|\w+, le)\)", inner), args
    quantiles = {
        (float(a.partition(",")[0]), n)
        for e in exprs
        for a in call_arguments(e, "histogram_quantile")
        for n in metric_names(a)
    }
    for hist in ("predictor_end_to_end_latency_seconds", "predictor_step_latency_seconds"):
        assert {(0.5, f"{hist}_bucket"), (0.99, f"{hist}_bucket")} <= quantiles
    wanted = {
        "predictor_ticks_total",
        "predictor_predictions_total",
        "predictor_rejects_total",
        "predictor_emergency_entries_total",
        "predictor_regime_changes_total",
        "predictor_shed_level",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    }
    assert wanted <= set().union(*map(metric_names, exprs))


# --- a real scrape -------------------------------------------------------------------


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The exposition text of a freshly started daemon (cheap model), then stopped."""
    tmp = tmp_path_factory.mktemp("grafana")
    table = base_daemon_table(tmp, f"predictor-test-grafana-{os.getpid()}")
    config = write_config(tmp / "config.toml", predictor=CHEAP_MODEL, daemon=table)
    daemon = Daemon(tmp, config)
    try:
        daemon.start()
        url = daemon.status["endpoints"]["metrics"]
        text: str = urllib.request.urlopen(url, timeout=30).read().decode()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    return text


def families(text: str) -> list[Any]:
    return list(text_string_to_metric_families(text))


def series_names(text: str) -> set[str]:
    """Names a PromQL query can select: every sample name, and every family's."""
    out = set()
    for fam in families(text):
        out.add(fam.name)
        out.update(s.name for s in fam.samples)
        if fam.type == "histogram":  # a family declared without samples yet
            out.update(f"{fam.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        if fam.type == "counter":
            out.add(f"{fam.name}_total")
    return out


def test_every_dashboard_metric_is_in_a_real_scrape(scrape: str) -> None:
    names = series_names(scrape)
    assert "predictor_ticks_total" in names and "predictor_batch_size_bucket" in names
    referenced = set().union(*map(metric_names, expressions(load_dashboard())))
    assert len(referenced) >= 20
    missing = sorted(referenced - names)
    assert not missing, f"dashboard metrics absent from /metrics: {missing}"


def is_created(sample: Sample) -> bool:
    """``prometheus_client``'s ``<counter>_created`` series (a standard OpenMetrics part)."""
    return sample.name.endswith("_created")


def test_scraped_metric_names_follow_the_naming_guide(scrape: str) -> None:
    now = time.time()
    fams = families(scrape)
    assert len(fams) >= 30
    checked = 0
    for fam in fams:
        name, samples = fam.name, fam.samples
        if name.endswith("_created") or name in STANDARD_FAMILIES:
            continue
        checked += 1
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), name
        assert name.startswith(("predictor_", "process_")), name
        for unit in NON_BASE_UNITS:
            assert f"{unit}_" not in f"{name}_", f"{name}: non-base unit {unit}"
        if fam.type == "counter":
            for s in samples:
                assert s.name.endswith("_total") or is_created(s), s.name
        else:
            assert not name.endswith("_total"), f"{name}: _total on a {fam.type}"
        if re.search(r"(latency|duration|jitter|_age)(_|$)", name):
            assert name.endswith("_seconds"), name
        help_text = fam.documentation.lower()
        if "unix time" in help_text or "timestamp" in help_text:
            assert name.endswith("_timestamp_seconds"), name
        if fam.type == "gauge":
            for s in samples:
                if abs(s.value - now) < 86400:  # holds a point in time
                    assert name.endswith("_timestamp_seconds"), f"{name} = {s.value}"
        if name.endswith("_ratio"):
            assert all(0.0 <= s.value <= 1.0 for s in samples), name
        if "0..1" in help_text or "fraction" in help_text:
            assert name.endswith("_ratio"), name
        if re.search(r"memory|rss", name) and not name.endswith("_ratio"):
            assert name.endswith("_bytes"), name
    assert checked >= 25
    # The daemon's own start time is exported under the timestamp convention.
    start = [s.value for f in fams for s in f.samples if s.name.endswith("start_timestamp_seconds")]
    assert len(start) == 1 and now - 3600 < start[0] <= now


def test_documented_metric_names_are_scraped(scrape: str) -> None:
    """Every ``predictor_*`` name in docs/operations.md is a series of the scrape."""
    docs = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`(predictor_[a-z0-9_]+)", docs))
    assert "predictor_refit_interval_ticks" in documented
    names = series_names(scrape)
    missing = sorted(n for n in documented if n not in names)
    assert not missing, f"documented but not exported: {missing}"
