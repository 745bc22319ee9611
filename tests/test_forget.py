"""Forgetting an asset: ``AssetTable.forget``, the ``forget`` command, ``predictorctl forget``.

* The table, on a tiny stand-in predictor whose state is a running sum, a
  tick count and the refit phase: the freed slot is refilled by the last
  slot's asset (row, phase, seq, last_ts, last mode kept), the last slot
  turns cold with its own phase and is the next new asset's slot, the pad
  row is never written, nothing compiles, and a random sequence of adds,
  steps and forgets matches a plain dict model of the assets. A snapshot
  taken after a forget holds the other assets only and restores into a
  table that steps on from where they were.
* The protocol and the client: ``asset`` is validated; ``predictorctl
  forget`` renders both answers, exits 1 for an unknown asset and prints
  the reply with ``--json``.
* A real daemon: ticks for A and B, ``forget A`` over the admin socket:
  ``assets`` lists B only, A's shared-memory record is gone and B's moved
  with it, B's next prediction continues its seq, a new tick for A is
  answered with seq 1 from a cold state, and a snapshot taken afterwards
  holds B and the new A, never A's old state.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import structlog
import zmq

from predictor.admin import cli, render
from predictor.admin.protocol import ProtocolError, parse_request
from predictor.daemon.assets import AssetTable
from predictor.ipc.shm import LatestReader, segment_path
from predictor.snapshots import build_payload, load_snapshot, pack, restore_assets, unpack
from tests.daemon_harness import (
    CHEAP_MODEL,
    Collector,
    Daemon,
    Feeder,
    base_daemon_table,
    result_fields,
    same_bits,
    write_config,
)

# --- the table ------------------------------------------------------------------------


class Out(NamedTuple):
    total: jax.Array
    mode: jax.Array
    refit_due: jax.Array


class State(NamedTuple):
    total: jax.Array  # sum of the y seen
    count: jax.Array  # ticks seen
    phase: jax.Array  # refit phase, set by cold_rows as the real predictor does
    last_output: Out


def _step(s: State, y: jax.Array, depth: int) -> tuple[State, Out]:
    out = Out(s.total + y, jnp.asarray(depth % 3, jnp.int64), jnp.asarray(False))
    return State(out.total, s.count + 1, s.phase, out), out


class PhasedPredictor:
    """The FunctionalPredictor interface the table uses, on a running-sum state."""

    depths = (2,)

    def __init__(self) -> None:
        self._batch = jax.jit(jax.vmap(functools.partial(_step, depth=2)))

    def cold_rows(self, n: int, first_phase: int = 0) -> State:
        z = np.zeros(n, np.float64)
        i = np.zeros(n, np.int64)
        phase = first_phase + np.arange(n, dtype=np.int64)
        return State(z, i, phase, Out(z.copy(), np.full(n, -1, np.int64), np.zeros(n, bool)))

    def tick_batch(self, states: State, obs: Any, now_ns: int, depth: int) -> tuple[State, Out]:
        del now_ns, depth
        return self._batch(states, obs.y)  # type: ignore[no-any-return]

    def output(self, rows: Out) -> Out:
        return jax.tree.map(np.asarray, rows)  # type: ignore[no-any-return]

    def refit_batch(self, states: State, due: Any, depth: int, *, donate: bool = False) -> State:
        del due, depth, donate
        return states

    def view(self, rows: State) -> Any:
        class View(NamedTuple):
            fast: State

        return View(rows)


def make_table(capacity: int = 4, buckets: tuple[int, ...] = (2, 8)) -> AssetTable:
    return AssetTable(
        PhasedPredictor(),  # type: ignore[arg-type]
        capacity=capacity,
        max_assets=1000,
        buckets=buckets,
        log=structlog.get_logger(),
    )


def rows(t: AssetTable) -> dict[str, np.ndarray[Any, Any]]:
    host = jax.device_get(t.stacked)
    return {
        "total": np.asarray(host.total),
        "count": np.asarray(host.count),
        "phase": np.asarray(host.phase),
    }


def feed(t: AssetTable, ticks: dict[str, float], ts: int) -> None:
    """One step of ``ticks`` (adding new assets), metadata as the publisher sets it."""
    slots = [t.ids[a] if a in t.ids else t.add(a) for a in ticks]
    t.step(slots, list(ticks.values()), list(ticks.values()), [ts] * len(slots), 0, 2)
    for s in slots:
        t.seq[s] += 1
        t.last_ts[s] = ts
        t.last_mode[s] = 2


def test_forget_moves_the_last_asset_into_the_freed_slot() -> None:
    t = make_table()
    feed(t, {"a": 1.0, "b": 2.0, "c": 3.0}, ts=10)
    feed(t, {"b": 20.0, "c": 30.0}, ts=11)
    t.seq[2] = 7  # c: a distinct seq that must travel with it
    assert t.forget("a") is True
    assert t.names == ["c", "b"] and t.ids == {"c": 0, "b": 1} and len(t) == 2
    r = rows(t)
    # c's row moved whole: its sum, its count and the refit phase of its first slot.
    assert (r["total"][0], r["count"][0], r["phase"][0]) == (33.0, 2, 2)
    assert (r["total"][1], r["count"][1], r["phase"][1]) == (22.0, 2, 1)
    # The freed last slot is a new asset's cold state there, phase included.
    assert (r["total"][2], r["count"][2], r["phase"][2]) == (0.0, 0, 2)
    assert r["total"][t.pad_row] == 0.0 and r["phase"][t.pad_row] == t.pad_row
    assert t.seq[:3].tolist() == [7, 2, 0]
    assert t.last_ts[:3].tolist() == [11, 11, 0]
    assert t.last_mode[:3].tolist() == [2, 2, -1]
    assert t.forget("a") is False and t.forget("nobody") is False
    assert t.names == ["c", "b"]


def test_the_freed_slot_is_the_next_new_assets_and_starts_cold() -> None:
    t = make_table()
    feed(t, {"a": 1.0, "b": 2.0}, ts=1)
    assert t.forget("b") is True  # the last slot: nothing moves
    assert t.names == ["a"] and t.ids == {"a": 0}
    assert rows(t)["total"][:2].tolist() == [1.0, 0.0]
    capacity = t.capacity
    feed(t, {"b": 5.0}, ts=2)
    assert t.slot_of("b") == 1 and t.capacity == capacity  # reused, no growth
    assert rows(t)["total"][1] == 5.0  # a cold start: its old sum is gone
    assert t.seq[1] == 1
    assert t.forget("a") and t.forget("b") and len(t) == 0
    assert not rows(t)["count"].any()
    feed(t, {"z": 4.0}, ts=3)
    assert t.names == ["z"] and rows(t)["total"][0] == 4.0


def test_forget_compiles_nothing() -> None:
    events: list[str] = []

    def listener(event: str, duration_secs: float, **_: Any) -> None:
        del duration_secs
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    t = make_table(capacity=13, buckets=(1, 4))  # shapes no other test uses
    t.warm_gather_scatter()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for a in "abcdef":
            t.add(a)
        for a in "bfa":
            assert t.forget(a)
        assert events == []
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert t.names == ["d", "e", "c"]  # b <- f, then f (now 1) <- e, then a <- d


def test_random_adds_steps_and_forgets_match_a_dict_of_assets() -> None:
    """Against an independent model: asset -> (sum of its ticks since admission, count)."""
    rng = np.random.default_rng(7)
    t = make_table(capacity=2)
    model: dict[str, tuple[float, int]] = {}
    names = [f"x{i}" for i in range(12)]
    for k in range(60):
        if model and rng.random() < 0.3:
            victim = str(rng.choice(sorted(model)))
            assert t.forget(victim) is True
            del model[victim]
            assert t.forget(victim) is False
        picked = sorted({str(a) for a in rng.choice(names, size=int(rng.integers(1, 6)))})
        ticks = {a: float(rng.integers(1, 100)) for a in picked}
        feed(t, ticks, ts=k + 1)
        for a, y in ticks.items():
            total, count = model.get(a, (0.0, 0))
            model[a] = (total + y, count + 1)
        assert sorted(t.names) == sorted(model) and len(t) == len(model)
        assert sorted(t.ids.values()) == list(range(len(t)))  # contiguous
        r = rows(t)
        for a, (total, count) in model.items():
            s = t.ids[a]
            assert t.names[s] == a
            assert (r["total"][s], r["count"][s], int(t.seq[s])) == (total, count, count)
        n = len(t)
        assert not r["count"][n : t.capacity].any()  # free slots are cold
        assert t.seq[n:].tolist() == [0] * (t.capacity - n)
        assert r["total"][t.pad_row] == 0.0


def test_a_snapshot_after_forget_holds_only_the_others_and_restores() -> None:
    t = make_table()
    feed(t, {"a": 1.0, "b": 2.0, "c": 3.0}, ts=5)
    assert t.forget("b")
    batch = t.to_batch()
    assert list(batch.ids) == ["a", "c"] and batch.slots.tolist() == [0, 1]
    assert batch.seq.tolist() == [1, 1] and batch.last_ts_ns.tolist() == [5, 5]
    payload = build_payload(
        config={"schema_version": "1.0"},
        global_state=None,
        telemetry={},
        flags={},
        kernels={"A": None, "B": None, "C": None, "D": None},
        assets=batch,
    )
    template = jax.tree.map(lambda x: x[0], PhasedPredictor().cold_rows(1))
    back = restore_assets(unpack(pack(payload), "1.0"), template)
    assert back.ids == ("a", "c")
    u = make_table(capacity=2)
    u.restore(back)
    assert u.names == ["a", "c"] and "b" not in u.ids
    feed(u, {"c": 10.0, "b": 1.5}, ts=6)
    r = rows(u)
    assert r["total"][u.ids["c"]] == 13.0 and r["total"][u.ids["b"]] == 1.5


# --- protocol and client --------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_obj", "message"),
    [
        ({"cmd": "forget"}, "'asset' must be"),
        ({"cmd": "forget", "asset": ""}, "'asset' must be"),
        ({"cmd": "forget", "asset": 5}, "'asset' must be"),
        ({"cmd": "forget", "asset": "x" * 65}, "1 to 64 UTF-8 bytes"),
        ({"cmd": "forget", "asset": "\ud800"}, "'asset' must be"),
        ({"cmd": "forget", "asset": "A", "all": True}, "unknown argument 'all'"),
    ],
)
def test_forget_requests_are_validated(request_obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_request(json.dumps(request_obj).encode())


def test_a_valid_forget_request_parses() -> None:
    req = parse_request(b'{"cmd": "forget", "asset": "EURUSD"}')
    assert req.cmd == "forget" and req.args == {"asset": "EURUSD"}


def test_render_forget() -> None:
    assert render.render_forget({"ok": True, "asset": "A", "forgotten": True}).startswith(
        "forgot A:"
    )
    assert "no asset A" in render.render_forget({"ok": True, "asset": "A", "forgotten": False})


# --- a real daemon --------------------------------------------------------------------


def _ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _predictions(collector: Collector, asset: str, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = [m for m in collector.messages if m["asset"] == asset]
        if len(got) >= n:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{asset}: {len(got)} of {n} predictions")


def test_forget_on_a_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shm_name = f"predictor-test-forget-{os.getpid()}"
    table = base_daemon_table(tmp_path, shm_name)
    config = write_config(tmp_path / "config.toml", predictor=CHEAP_MODEL, daemon=table)
    daemon = Daemon(tmp_path, config)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = str(daemon.admin_path)
    try:
        daemon.start()
        feeder = Feeder(ctx, daemon.ticks_endpoint)
        collector = Collector(ctx, daemon.predictions_endpoint)
        try:
            # A first, so that it holds slot 0 and B moves into it when A goes.
            feeder.send_ticks([("A", 100.0, 1)])
            _predictions(collector, "A", 1)
            for k in range(2, 5):
                feeder.send_ticks([("A", 100.0 + k, k), ("B", 50.0 - k, k)])
            assert [m["seq"] for m in _predictions(collector, "A", 4)] == [1, 2, 3, 4]
            assert [m["seq"] for m in _predictions(collector, "B", 3)] == [1, 2, 3]
            before = {r["asset"]: r for r in daemon.admin("assets")["assets"]}
            assert (before["A"]["slot"], before["B"]["slot"]) == (0, 1)
            reader = LatestReader(shm_name)
            assert reader.get("A") is not None and reader.get("B") is not None
            b_record = reader.get("B")

            code, out, err = _ctl(capsys, "forget", "A", "--socket", sock)
            assert (code, err) == (0, "") and out.startswith("forgot A:")
            code, out, err = _ctl(capsys, "--json", "forget", "A", "--socket", sock)
            assert code == 1 and json.loads(out) == {"ok": True, "asset": "A", "forgotten": False}
            assert "holds no asset 'A'" in err
            code, out, err = _ctl(capsys, "forget", "nobody", "--socket", sock)
            assert code == 1 and out == "" and "holds no asset 'nobody'" in err

            after = daemon.admin("assets")["assets"]
            assert [(r["asset"], r["slot"], r["seq"]) for r in after] == [("B", 0, 3)]
            assert after[0]["last_ts"] == before["B"]["last_ts"]
            assert daemon.admin("status")["assets"] == 1
            # Shared memory: A's record is gone; B's moved with it, unchanged.
            assert reader.get("A") is None and reader.assets() == ["B"]
            moved = reader.get("B")
            assert moved is not None and b_record is not None and moved["slot"] == 0
            assert {k: v for k, v in moved.items() if k != "slot"} == {
                k: v for k, v in b_record.items() if k != "slot"
            }
            (line,) = daemon.events("asset_forgotten")
            assert (line["asset"], line["slot"], line["moved"], line["moved_from"]) == (
                "A",
                0,
                "B",
                1,
            )

            # B continues; A comes back cold: its first tick again (a timestamp a
            # kept state's gate would refuse as out of order) gives seq 1 and,
            # bit for bit, the prediction it gave the first time.
            feeder.send_ticks([("B", 47.0, 5), ("A", 100.0, 1)])
            b_msgs = _predictions(collector, "B", 4)
            a_msgs = _predictions(collector, "A", 5)
            assert b_msgs[-1]["seq"] == 4 and "rejected" not in b_msgs[-1]
            assert a_msgs[-1]["seq"] == 1 and "rejected" not in a_msgs[-1]
            first, again = result_fields(a_msgs[0]), result_fields(a_msgs[-1])
            assert first.keys() == again.keys()
            assert all(same_bits(first[k], again[k]) for k in first), (first, again)
            rows_now = {r["asset"]: r for r in daemon.admin("assets")["assets"]}
            assert rows_now["A"]["slot"] == 1 and rows_now["A"]["seq"] == 1
            # ``records`` rescans the segment: A is back in the slot it freed.
            recs = {a: (r["slot"], r["seq"]) for a, r in reader.records().items()}
            assert recs == {"B": (0, 4), "A": (1, 1)}
            reader.close()

            reply = daemon.admin("snapshot")
            assert reply["ok"] is True, reply
            payload = load_snapshot(Path(reply["path"]), None)
            assets = payload["assets"]
            held = dict(zip(assets["ids"], np.asarray(assets["seq"]).tolist(), strict=True))
            assert held == {"B": 4, "A": 1}
        finally:
            feeder.close()
            collector.close()
        assert daemon.stop() == 0
    finally:
        daemon.kill()
        ctx.term()
        segment_path(shm_name).unlink(missing_ok=True)  # left behind if the daemon was killed


def test_predictorctl_forget_usage(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _ctl(capsys, "forget", "--help")
    assert code == 0 and "ASSET" in out and "Exit 1" in out
    code, _, err = _ctl(capsys, "forget")
    assert code == 2 and "ASSET" in err
