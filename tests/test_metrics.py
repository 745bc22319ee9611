"""Prometheus metrics over real HTTP (predictor.daemon.metrics)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from predictor.daemon.metrics import LATENCY_BUCKETS_S, DaemonMetrics, MetricsServer, start_http
from predictor.ipc.wire import REJECT_REASONS


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served() -> Iterator[tuple[DaemonMetrics, MetricsServer]]:
    metrics = DaemonMetrics(reasons=REJECT_REASONS)
    server = start_http(metrics.registry, "127.0.0.1", 0)
    yield metrics, server
    server.close()


def test_counters_move_between_scrapes(served: tuple[DaemonMetrics, MetricsServer]) -> None:
    m, srv = served
    assert srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}/metrics"
    before = scrape(srv.url)
    assert before[("predictor_ticks_total", ())] == 0
    for reason in REJECT_REASONS:
        assert before[("predictor_rejects_total", (("reason", reason),))] == 0

    m.ticks.inc(10)
    m.predictions.inc(9)
    m.reject("non_finite")
    m.reject("stale", 3)  # a gate reason, not pre-created
    m.malformed.inc()
    m.regime_changes.inc()
    m.emergency_entries.inc()
    m.mode_predictions.labels(mode="Robust").inc(2)
    m.set_mode_counts({"Standard": 7, "Emergency": 1})
    m.assets.set(8)
    m.set_shedding(1, 2, 150_000.0, 400_000.0, 900_000.0, 32)
    m.snapshot_age.set(12.5)
    m.snapshot_failures.inc()
    m.shutdown_duration.set(1.25)
    m.step_latency.observe(30e-6)
    m.step_latency.observe(3e-3)
    m.e2e_latency.observe(0.2)  # beyond the last bucket

    after = scrape(srv.url)
    expect = {
        ("predictor_ticks_total", ()): 10,
        ("predictor_predictions_total", ()): 9,
        ("predictor_rejects_total", (("reason", "non_finite"),)): 1,
        ("predictor_rejects_total", (("reason", "stale"),)): 3,
        ("predictor_rejects_total", (("reason", "too_large"),)): 0,
        ("predictor_malformed_messages_total", ()): 1,
        ("predictor_regime_changes_total", ()): 1,
        ("predictor_emergency_entries_total", ()): 1,
        ("predictor_mode_predictions_total", (("mode", "Robust"),)): 2,
        ("predictor_assets_by_mode", (("mode", "Standard"),)): 7,
        ("predictor_assets_by_mode", (("mode", "Robust"),)): 0,
        ("predictor_assets_by_mode", (("mode", "Emergency"),)): 1,
        ("predictor_assets", ()): 8,
        ("predictor_shed_level", ()): 1,
        ("predictor_shed_depth", ()): 2,
        ("predictor_refit_interval_ticks", ()): 32,
        ("predictor_jitter_p95_seconds", ()): 150e-6,
        ("predictor_jitter_p99_seconds", ()): 400e-6,
        ("predictor_snapshot_age_seconds", ()): 12.5,
        ("predictor_snapshot_failures_total", ()): 1,
        ("predictor_shutdown_duration_seconds", ()): 1.25,
        ("predictor_step_latency_seconds_count", ()): 2,
        ("predictor_end_to_end_latency_seconds_count", ()): 1,
    }
    for key, value in expect.items():
        assert after[key] == pytest.approx(value), key
    assert after[("predictor_step_latency_seconds_sum", ())] == pytest.approx(3.03e-3)

    m.ticks.inc(5)
    assert scrape(srv.url)[("predictor_ticks_total", ())] == 15


def test_histogram_buckets_25us_to_10s(served: tuple[DaemonMetrics, MetricsServer]) -> None:
    m, srv = served
    m.step_latency.observe(30e-6)
    m.step_latency.observe(3e-3)
    samples = scrape(srv.url)
    les = sorted(
        float(dict(labels)["le"])
        for (name, labels) in samples
        if name == "predictor_step_latency_seconds_bucket"
    )
    assert les[0] == 25e-6 and les[-2] == 10.0 and les[-1] == float("inf")
    assert les[:-1] == list(LATENCY_BUCKETS_S)

    def bucket(le: str) -> float:
        return samples[("predictor_step_latency_seconds_bucket", (("le", le),))]

    assert (bucket("2.5e-05"), bucket("5e-05"), bucket("0.0025"), bucket("0.005")) == (0, 1, 1, 2)


def test_dedicated_registry() -> None:
    a, b = DaemonMetrics(), DaemonMetrics()  # no duplicate-name error: separate registries
    a.ticks.inc()
    assert a.registry.get_sample_value("predictor_ticks_total") == 1
    assert b.registry.get_sample_value("predictor_ticks_total") == 0
    assert REGISTRY.get_sample_value("predictor_ticks_total") is None


def test_server_close_releases_port() -> None:
    m = DaemonMetrics()
    srv = start_http(m.registry, "127.0.0.1", 0)
    port = srv.port
    srv.close()
    again = start_http(m.registry, "127.0.0.1", port)
    assert again.port == port
    again.close()
