#!/usr/bin/env bash
# `make demo`: start predictord in the background on a temporary runtime and
# state directory, replay the bundled Nile series (bench/data/nile.csv, 100
# annual flows) through it with `predictorctl feed`, show the predictions
# live with `predictorctl watch`, list the assets, take a snapshot, and drain
# the daemon. Exits 0 only if every step worked and predictord exited 0.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${VENV_BIN:-$root/.venv/bin}"
ctl="$bin/predictorctl"
work="$(mktemp -d "${TMPDIR:-/tmp}/predictor-demo.XXXXXX")"
daemon_pid=""
watch_pid=""

cleanup() {
    local rc=$?
    if [[ -n "$watch_pid" ]]; then
        kill "$watch_pid" 2>/dev/null || true
    fi
    if [[ -n "$daemon_pid" ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if ((rc != 0)) && [[ -f "$work/predictord.log" ]]; then
        echo "--- last lines of the daemon's log ---" >&2
        tail -n 20 "$work/predictord.log" >&2
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

# Everything the daemon and predictorctl place goes under $work.
export RUNTIME_DIRECTORY="$work/run"
export STATE_DIRECTORY="$work/state"
unset PREDICTOR_ADMIN_SOCKET PREDICTOR_CONFIG NOTIFY_SOCKET WATCHDOG_USEC
mkdir -m 0750 "$RUNTIME_DIRECTORY" "$STATE_DIRECTORY"

# deployment/config.toml with demo-only service keys: metrics on a free port
# and a shared-memory name of its own, so a running daemon is not disturbed;
# one asset needs one batch bucket and the demo one signature depth (the
# default 3), so warm-up compiles one graph instead of twelve; the 100-value
# series gets a 48-tick window (default 128) so that the window fills (flag W
# clears, the circuit breaker arms) within the series, and a regime detector
# for a short series: cusum_h = 3 (the default 8 is tuned for long streams,
# about 10,000 ticks between false alarms; at 3 it is about 60), which flags
# the drop of the Nile's flow after the Aswan dam works of 1898.
"$bin/python" - "$root/deployment/config.toml" "$work/config.toml" <<'PY'
import os
import sys
import tomllib

import tomli_w

with open(sys.argv[1], "rb") as fh:
    doc = tomllib.load(fh)
doc["predictor"]["shed_ladder"] = [doc["predictor"].get("log_sig_depth", 3)]
doc["predictor"]["wtmm_buffer_size"] = 48
doc["predictor"]["cusum_h"] = 3.0
doc.setdefault("daemon", {}).update(
    batch_buckets=[1],
    metrics_host="127.0.0.1",
    metrics_port=0,
    shm_name=f"predictor-demo-{os.getppid()}",
)
with open(sys.argv[2], "wb") as fh:
    tomli_w.dump(doc, fh)
PY

step "starting predictord (log: JSON lines, kept in $work/predictord.log)"
"$bin/predictord" --config "$work/config.toml" --device cpu >"$work/predictord.log" 2>&1 &
daemon_pid=$!
deadline=$((SECONDS + 600))
# The admin socket answers at once (status shows the warm-up); ticks are
# stepped once the first bucket's graphs are compiled ("ready": true).
until "$ctl" --timeout 2 --json status 2>/dev/null | grep -q '"ready": true'; do
    if ! kill -0 "$daemon_pid" 2>/dev/null; then
        echo "demo: predictord exited during start-up" >&2
        exit 1
    fi
    if ((SECONDS > deadline)); then
        echo "demo: predictord did not answer within 600 s" >&2
        exit 1
    fi
    sleep 0.5
done
"$ctl" status

step "watching predictions of asset 'nile' while feeding bench/data/nile.csv at 50 ticks/s"
"$ctl" watch nile --count 100 --idle-timeout 60 &
watch_pid=$!
# PUB/SUB: give the subscription a moment to reach the daemon before ticks flow.
sleep 1
summary="$("$ctl" feed "$root/bench/data/nile.csv" --column volume --asset nile --rate 50)"
wait "$watch_pid"
watch_pid=""
echo "$summary"

step "assets"
"$ctl" assets

step "snapshot"
"$ctl" snapshot

step "drain"
"$ctl" drain
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=""
if ((rc != 0)); then
    echo "demo: predictord exited with status $rc after drain" >&2
    exit 1
fi
echo "predictord drained and exited 0; snapshots were in $STATE_DIRECTORY:"
ls -l "$STATE_DIRECTORY"
