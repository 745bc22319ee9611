"""JSON-lines logging with secret redaction (predictor.daemon.logging)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from predictor.daemon.logging import REDACTED, configure, get_logger, is_secret_key

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure(buf, level="debug")
    yield buf
    structlog.reset_defaults()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    text = buf.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_one_json_object_per_line(stream: io.StringIO) -> None:
    log = get_logger("predictor.test", pid=123)
    log.info("asset_added", asset="EURUSD", slot=3)
    log.warning("snapshot_failed", error="disk full\nsecond line")
    log.debug("tick_rejected", reason="non_finite", value=float("nan"))
    out = lines(stream)
    assert [o["event"] for o in out] == ["asset_added", "snapshot_failed", "tick_rejected"]
    assert [o["level"] for o in out] == ["info", "warning", "debug"]
    assert all(o["logger"] == "predictor.test" and o["pid"] == 123 for o in out)
    assert out[0]["asset"] == "EURUSD" and out[0]["slot"] == 3
    assert out[1]["error"] == "disk full\nsecond line"  # escaped inside one line
    now = datetime.now(UTC)
    for o in out:
        ts = datetime.fromisoformat(o["timestamp"])
        assert ts.utcoffset() == timedelta(0)
        assert abs(now - ts) < timedelta(minutes=1)


def test_level_filter() -> None:
    buf = io.StringIO()
    configure(buf, level="warning")
    try:
        log = get_logger("x")
        log.info("quiet")
        log.error("loud")
        assert [o["event"] for o in lines(buf)] == ["loud"]
        with pytest.raises(ValueError, match="level"):
            configure(buf, level="chatty")
    finally:
        structlog.reset_defaults()


def test_exception_rendered_in_line(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger("x").exception("loop_error")
    (o,) = lines(stream)
    assert o["event"] == "loop_error" and "RuntimeError: boom" in o["exception"]


def test_secrets_redacted(stream: io.StringIO) -> None:
    get_logger("x").info(
        "config_loaded",
        password="hunter2",
        api_key="AKIA123",
        authToken="t0k",
        db={"user": "svc", "Secret": "s3", "nested": [{"private_key": "pk"}, "ok"]},
        cert=PEM,
        key="latency_budget_ns",
        layout_keys=["wtmm_buffer_size"],
        tokens_seen=5,
    )
    (o,) = lines(stream)
    raw = stream.getvalue()
    for secret in ("hunter2", "AKIA123", "t0k", "s3", '"pk"', "MIIEow"):
        assert secret not in raw
    assert o["password"] == o["api_key"] == o["authToken"] == o["cert"] == REDACTED
    assert o["db"] == {
        "user": "svc",
        "Secret": REDACTED,
        "nested": [{"private_key": REDACTED}, "ok"],
    }
    # Config field names are not secrets.
    assert o["key"] == "latency_budget_ns"
    assert o["layout_keys"] == ["wtmm_buffer_size"]
    assert o["tokens_seen"] == 5


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("DB_PASSWORD", True),
        ("client-secret", True),
        ("accessKey", True),
        ("bearer.token", True),
        ("credentials", True),
        ("Authorization", True),
        ("key_material", True),
        ("key", False),
        ("asset", False),
        ("keys", False),
        ("author", False),
        ("tokens_seen", False),
        ("passthrough", False),
    ],
)
def test_secret_key_names(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_default_stream_is_stdout() -> None:
    code = (
        "from predictor.daemon.logging import configure, get_logger\n"
        "configure()\n"
        "get_logger('p').info('started', token='abc')\n"
        "get_logger('p').info('stopped')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    out = [json.loads(line) for line in res.stdout.splitlines()]
    assert [o["event"] for o in out] == ["started", "stopped"]
    assert out[0]["token"] == REDACTED
