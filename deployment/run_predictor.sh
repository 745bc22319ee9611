#!/usr/bin/env bash
# deployment/run_predictor.sh - start predictord with the XLA memory settings
# of the API specification (section 7), for hosts and containers without
# systemd. The daemon replaces this shell (exec), so SIGTERM/SIGINT/SIGHUP
# sent to this script's PID reach predictord itself: SIGTERM drains and
# exits 0, SIGHUP reloads the config.
#
# usage: run_predictor.sh [--config PATH] [--device cpu|gpu|auto]
#                         [--mem-fraction F] [--allocator platform|bfc|default]
#                         [--no-growth] [-- EXTRA PREDICTORD ARGS]
#
#   --config PATH      config file (default: $PREDICTOR_CONFIG, else the
#                      config.toml beside this script)
#   --device D         JAX platform: cpu, gpu or auto (default: the config's
#                      [daemon] device)
#   --mem-fraction F   XLA_PYTHON_CLIENT_MEM_FRACTION: the share of GPU memory
#                      the BFC allocator may take (config default 0.7)
#   --allocator A      XLA_PYTHON_CLIENT_ALLOCATOR (config default platform:
#                      allocate on demand and free, no preallocated pool
#                      that fragments over weeks)
#   --no-growth        TF_FORCE_GPU_ALLOW_GROWTH=false (config default true)
#
# predictord applies the [daemon] keys xla_mem_fraction, xla_allocator and
# gpu_allow_growth before it imports JAX, unless the variable is already in
# the environment: an option here exports the variable, so it overrides the
# config; without options the config (or an inherited variable) decides.
# The predictord binary: $PREDICTORD, else `predictord` on PATH, else the
# repository's .venv/bin/predictord. Log lines of this script go to stderr;
# stdout stays the daemon's JSON log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

die() {
    echo "run_predictor.sh: $*" >&2
    exit 2
}

config="${PREDICTOR_CONFIG:-$here/config.toml}"
device=""
mem_fraction=""
allocator=""
growth=""
extra=()

while (($# > 0)); do
    case "$1" in
        --config) (($# >= 2)) || die "--config needs a path"; config="$2"; shift 2 ;;
        --config=*) config="${1#*=}"; shift ;;
        --device) (($# >= 2)) || die "--device needs cpu, gpu or auto"; device="$2"; shift 2 ;;
        --device=*) device="${1#*=}"; shift ;;
        --mem-fraction) (($# >= 2)) || die "--mem-fraction needs a value"; mem_fraction="$2"; shift 2 ;;
        --mem-fraction=*) mem_fraction="${1#*=}"; shift ;;
        --allocator) (($# >= 2)) || die "--allocator needs a value"; allocator="$2"; shift 2 ;;
        --allocator=*) allocator="${1#*=}"; shift ;;
        --no-growth) growth=false; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

case "$device" in
    "" | cpu | gpu | auto) ;;
    *) die "--device must be cpu, gpu or auto, not '$device'" ;;
esac
case "$allocator" in
    "" | platform | bfc | default) ;;
    *) die "--allocator must be platform, bfc or default, not '$allocator'" ;;
esac
if [[ -n "$mem_fraction" ]]; then
    [[ "$mem_fraction" =~ ^(0?\.[0-9]+|0|1|1\.0*)$ && ! "$mem_fraction" =~ ^0?\.?0*$ ]] \
        || die "--mem-fraction must be in (0, 1], not '$mem_fraction'"
fi
[[ -r "$config" ]] || die "config file not readable: $config"

if [[ -n "${PREDICTORD:-}" ]]; then
    daemon="$PREDICTORD"
elif command -v predictord >/dev/null 2>&1; then
    daemon="$(command -v predictord)"
elif [[ -x "$here/../.venv/bin/predictord" ]]; then
    daemon="$here/../.venv/bin/predictord"
else
    die "predictord not found: install the package, put it on PATH or set PREDICTORD"
fi

[[ -n "$mem_fraction" ]] && export XLA_PYTHON_CLIENT_MEM_FRACTION="$mem_fraction"
[[ -n "$allocator" ]] && export XLA_PYTHON_CLIENT_ALLOCATOR="$allocator"
[[ -n "$growth" ]] && export TF_FORCE_GPU_ALLOW_GROWTH="$growth"
export PYTHONUNBUFFERED=1

from_config="from the config's [daemon] table"
echo "[INFO] XLA memory fraction: ${XLA_PYTHON_CLIENT_MEM_FRACTION:-$from_config}" >&2
echo "[INFO] XLA allocator: ${XLA_PYTHON_CLIENT_ALLOCATOR:-$from_config}" >&2
echo "[INFO] GPU memory growth: ${TF_FORCE_GPU_ALLOW_GROWTH:-$from_config}" >&2
echo "[INFO] config: $config; device: ${device:-$from_config}; daemon: $daemon" >&2

args=(--config "$config")
[[ -n "$device" ]] && args+=(--device "$device")
exec "$daemon" "${args[@]}" "${extra[@]}"
