"""Operator papercuts of predictord, against real processes where the behaviour is theirs:
``--version``, ``PREDICTOR_DAEMON_<FIELD>`` overrides, bind failures as one log line,
the per-instance systemd template (two daemons side by side) and the log rendering.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import pty
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from predictor.config import check_env_names
from predictor.daemon.logging import choose_renderer, configure, get_logger
from predictor.daemon.main import check_binds
from predictor.daemon.settings import DaemonSettings, describe_field, env_names, env_overrides
from predictor.errors import ConfigError
from predictor.ipc.shm import segment_path
from tests.daemon_harness import BUCKETS, CHEAP_MODEL, Collector, Daemon, Feeder, write_config

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "systemd" / "predictord@.service"
ANALYZE = shutil.which("systemd-analyze")


def run_daemon(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``predictord ARGS`` in a subprocess with stdout/stderr captured (not a TTY)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("PREDICTOR_")}
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "predictor.daemon.main", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object (the non-TTY rendering)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- 1. --version ---------------------------------------------------------------------


def test_version_of_both_programs() -> None:
    version = importlib.metadata.version("predictor")
    daemon = run_daemon(["--version"])
    assert daemon.returncode == 0, daemon.stderr
    assert daemon.stdout.strip() == f"predictord {version}"
    ctl = subprocess.run(
        [sys.executable, "-m", "predictor.admin.cli", "--version"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ctl.returncode == 0, ctl.stderr
    assert ctl.stdout.strip() == f"predictorctl {version}"


# --- 2. PREDICTOR_DAEMON_<FIELD> ------------------------------------------------------


def test_every_field_has_a_typed_environment_override() -> None:
    defaults = DaemonSettings()
    for name, info in DaemonSettings.model_fields.items():
        var = "PREDICTOR_DAEMON_" + name.upper()
        assert var in env_names()
        default = getattr(defaults, name)
        # A value other than the default, in range, as the text an operator writes.
        if info.annotation is bool:
            raw, value = str(not default).lower(), not default
        elif info.annotation is int:
            raw, value = str(default + 1), default + 1
        elif info.annotation is float:
            raw, value = repr(default / 2), default / 2
        elif info.annotation is str:
            raw, value = "inst-1", "inst-1"
        else:
            continue
        got = DaemonSettings.from_mapping({}, environ={var: raw})
        assert getattr(got, name) == value, name
    env = {
        "PREDICTOR_DAEMON_BATCH_BUCKETS": "1, 8 64",
        "PREDICTOR_DAEMON_SHED": "3",
        "PREDICTOR_DAEMON_DEVICE": "auto",
        "PREDICTOR_DAEMON_LOG_LEVEL": "warning",
    }
    got = DaemonSettings.from_mapping({"max_drain": 9, "shed": "auto"}, environ=env)
    assert got.batch_buckets == (1, 8, 64) and got.shed == 3 and got.device == "auto"
    assert got.log_level == "warning" and got.max_drain == 9  # the table stays under the env
    assert DaemonSettings.from_mapping({"shed": 2}, environ={}).shed == 2
    assert DaemonSettings.from_mapping({}, env=False, environ=env) == DaemonSettings()


@pytest.mark.parametrize(
    ("var", "raw", "allowed"),
    [
        ("PREDICTOR_DAEMON_METRICS_PORT", "70000", "int in [-1, 65535]"),
        ("PREDICTOR_DAEMON_METRICS_PORT", "http", "int in [-1, 65535]"),
        ("PREDICTOR_DAEMON_SNAPSHOT_INTERVAL_S", "0", "float in (0.0, 86400.0]"),
        ("PREDICTOR_DAEMON_RESTORE", "maybe", "true or false"),
        ("PREDICTOR_DAEMON_DEVICE", "tpu", "one of 'cpu', 'gpu', 'auto'"),
        ("PREDICTOR_DAEMON_BATCH_BUCKETS", "8 4", "increasing ints"),
        ("PREDICTOR_DAEMON_SHM_NAME", "a/b", "a string"),
        ("PREDICTOR_DAEMON_METRICS_PROT", "1", "did you mean 'PREDICTOR_DAEMON_METRICS_PORT'?"),
    ],
)
def test_bad_environment_values_name_the_variable_value_and_range(
    var: str, raw: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        DaemonSettings.from_mapping({}, environ={var: raw})
    assert info.value.field == var and info.value.value == raw
    assert allowed in info.value.allowed


def test_a_misspelt_prefix_is_refused_with_the_daemon_name_suggested() -> None:
    with pytest.raises(ConfigError) as info:
        check_env_names({"PREDICTOR_DEAMON_METRICS_PORT": "1"})
    assert "PREDICTOR_DAEMON_METRICS_PORT" in info.value.allowed
    assert env_overrides({"PREDICTOR_CUSUM_H": "3", "HOME": "/"}) == {}
    assert describe_field("rcvhwm") == "int >= 1"


def test_environment_overrides_reach_the_daemon(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[daemon]\nmax_drain = 5\nmetrics_port = 0\n")
    env = {"PREDICTOR_DAEMON_MAX_DRAIN": "77", "PREDICTOR_DAEMON_LOG_LEVEL": "debug"}
    for args in (["--config", str(cfg)], []):
        ok = run_daemon([*args, "--check-config"], env)
        assert ok.returncode == 0, ok.stderr
        daemon = json.loads(ok.stdout)["daemon"]
        assert daemon["max_drain"] == 77 and daemon["log_level"] == "debug"
    bad = run_daemon(["--config", str(cfg)], {"PREDICTOR_DAEMON_MAX_DRAIN": "0"})
    assert bad.returncode == 2
    assert "PREDICTOR_DAEMON_MAX_DRAIN" in bad.stderr and "int in [1, 1000000]" in bad.stderr
    typo = run_daemon(["--config", str(cfg)], {"PREDICTOR_DAEMON_MAX_DRIAN": "7"})
    assert typo.returncode == 2 and "did you mean 'PREDICTOR_DAEMON_MAX_DRAIN'" in typo.stderr
    assert "Traceback" not in bad.stderr + typo.stderr


# --- 3. bind failures -----------------------------------------------------------------


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _bind_failure(tmp_path: Path, daemon: dict[str, Any]) -> dict[str, Any]:
    cfg = write_config(tmp_path / "c.toml", daemon={"snapshot_dir": str(tmp_path), **daemon})
    proc = run_daemon(["--config", str(cfg)], {"RUNTIME_DIRECTORY": str(tmp_path / "run")})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = json_lines(proc.stdout)  # one line, JSON: stdout is not a terminal
    assert line["event"] == "bind_failed" and line["level"] == "error"
    return line


def test_bind_failures_exit_with_one_line_naming_setting_and_address(tmp_path: Path) -> None:
    with _listening() as busy:
        port = busy.getsockname()[1]
        line = _bind_failure(tmp_path, {"ticks_endpoint": f"tcp://127.0.0.1:{port}"})
        assert line["setting"] == "daemon.ticks_endpoint"
        assert line["address"] == f"tcp://127.0.0.1:{port}"
        assert "in use" in line["reason"]
        line = _bind_failure(
            tmp_path, {"predictions_endpoint": f"tcp://127.0.0.1:{port}", "metrics_port": -1}
        )
        assert line["setting"] == "daemon.predictions_endpoint"
        line = _bind_failure(tmp_path, {"metrics_port": port})
        assert line["setting"] == "daemon.metrics_port"
        assert line["address"] == f"127.0.0.1:{port}" and "in use" in line["reason"]
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    line = _bind_failure(tmp_path, {"admin_socket": str(blocker / "admin.sock"), "metrics_port": 0})
    assert line["setting"] == "daemon.admin_socket"
    assert line["address"] == str(blocker / "admin.sock")
    line = _bind_failure(
        tmp_path, {"ticks_endpoint": f"ipc://{tmp_path}/missing/t.sock", "metrics_port": 0}
    )
    assert line["setting"] == "daemon.ticks_endpoint" and "does not exist" in line["reason"]


def test_free_addresses_pass_the_check(tmp_path: Path) -> None:
    env = {"RUNTIME_DIRECTORY": str(tmp_path / "run")}
    (tmp_path / "run").mkdir()
    assert check_binds(DaemonSettings(metrics_port=0), env) is None
    same = DaemonSettings(
        ticks_endpoint="tcp://127.0.0.1:5991", predictions_endpoint="tcp://127.0.0.1:5991"
    )
    problem = check_binds(same, env)
    assert problem is not None and problem.setting == "predictions_endpoint"


# --- 5. logs --------------------------------------------------------------------------


def test_log_level_filters_and_renderer_follows_the_stream() -> None:
    buf = io.StringIO()
    try:
        configure(buf, level="warning", renderer="auto")
        log = get_logger("t")
        log.debug("d_event")
        log.info("i_event")
        log.warning("w_event", n=1)
        log.error("e_event")
        events = [e["event"] for e in json_lines(buf.getvalue())]
        assert events == ["w_event", "e_event"]
        # A None level keeps the previous one: the service reconfigures without one.
        buf2 = io.StringIO()
        configure(buf2)
        get_logger("t").info("still_filtered")
        assert buf2.getvalue() == ""
        primary, secondary = pty.openpty()
        with open(secondary, "w", closefd=True) as tty, os.fdopen(primary, "rb") as reader:
            assert choose_renderer(tty) == "console"
            assert choose_renderer(tty, "json") == "json"
            configure(tty, level="info")
            get_logger("t").info("human_event", answer=42)
            tty.flush()
            text = reader.read1(4096).decode()
        assert "human_event" in text and "answer=42" in text
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.strip().splitlines()[-1])
        with pytest.raises(ValueError, match="unknown log level"):
            configure(buf, level="chatty")
    finally:
        configure(sys.stdout, level="info", renderer="auto")


def test_daemon_logs_are_human_readable_on_a_terminal(tmp_path: Path) -> None:
    with _listening() as busy:
        port = busy.getsockname()[1]
        cfg = write_config(tmp_path / "c.toml", daemon={"metrics_port": port})
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREDICTOR_")}
        env["RUNTIME_DIRECTORY"] = str(tmp_path / "run")
        primary, secondary = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "predictor.daemon.main", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=secondary,
            stderr=secondary,
        )
        os.close(secondary)
        chunks = []
        with contextlib.suppress(OSError):  # EIO once the child has gone
            while chunk := os.read(primary, 4096):
                chunks.append(chunk)
        os.close(primary)
        assert proc.wait(60) == 1
    text = b"".join(chunks).decode(errors="replace")
    assert "bind_failed" in text and "daemon.metrics_port" in text and f"{port}" in text
    assert not text.lstrip().startswith("{")  # console rendering, not JSON
    assert "Traceback" not in text


# --- 4. the systemd template: two daemons on one host -----------------------------------


def template_environment(instance: str) -> dict[str, str]:
    """The template's ``Environment=`` values for ``instance`` (``%i`` substituted)."""
    out = {}
    for raw in TEMPLATE.read_text().splitlines():
        if raw.startswith("Environment="):
            key, _, value = raw[len("Environment=") :].partition("=")
            out[key] = value.replace("%i", instance)
    return out


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")
def test_template_unit_verifies(tmp_path: Path) -> None:
    text = TEMPLATE.read_text().replace(
        "/opt/predictor/venv/bin/", f"{Path(sys.executable).parent}/"
    )
    unit = tmp_path / "predictord@9200.service"
    unit.write_text(text)
    proc = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    env = template_environment("9200")
    assert env["PREDICTOR_DAEMON_METRICS_PORT"] == "9200"
    assert env["PREDICTOR_DAEMON_SHM_NAME"] == "predictor-9200"
    assert "RuntimeDirectory=predictor/%i" in text and "StateDirectory=predictor/%i" in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_template_instances_run_side_by_side(tmp_path: Path) -> None:
    import zmq

    shared = write_config(
        tmp_path / "config.toml",
        predictor=CHEAP_MODEL,
        daemon={"batch_buckets": BUCKETS, "initial_capacity": 16, "snapshot_interval_s": 3600.0},
    )
    instances = [str(_free_port()), str(_free_port())]
    daemons = []
    for name in instances:
        home = tmp_path / name
        home.mkdir()
        # What systemd gives instance %i: RuntimeDirectory=predictor/%i, StateDirectory=...
        env = {"STATE_DIRECTORY": str(home / "state"), **template_environment(name)}
        daemons.append(Daemon(home, shared, env))
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        for d in daemons:
            d.start(wait=False)
        statuses = [d.wait_ready() for d in daemons]
        collectors = [Collector(ctx, d.predictions_endpoint) for d in daemons]
        feeders = [Feeder(ctx, d.ticks_endpoint) for d in daemons]
        for k in range(1, 4):
            for i, feeder in enumerate(feeders):
                feeder.send(msgpack.packb({"asset": f"inst{i}", "y": 100.0 + k, "ts": k}))
        got = [c.wait_for(3, 120) for c in collectors]
        time.sleep(0.3)  # anything misrouted would have arrived by now
        for f in feeders:
            f.close()
        for c in collectors:
            c.close()
        codes = [d.stop() for d in daemons]
    finally:
        ctx.destroy(linger=0)
        for d in daemons:
            d.kill()
        for name in instances:
            segment_path(f"predictor-{name}").unlink(missing_ok=True)
    assert codes == [0, 0]
    for i, (status, messages, name) in enumerate(zip(statuses, got, instances, strict=True)):
        eps = status["endpoints"]
        assert eps["shm"] == f"predictor-{name}"
        assert eps["metrics"].endswith(f":{name}/metrics") or f":{name}" in eps["metrics"]
        assert eps["ticks"].startswith(f"ipc://{tmp_path / name / 'run'}")
        assert eps["admin"] == str(tmp_path / name / "run" / "admin.sock")
        assert [m["asset"] for m in messages] == [f"inst{i}"] * 3
        assert [m["seq"] for m in messages] == [1, 2, 3]
        assert any((tmp_path / name / "state").iterdir())  # its own final snapshot
