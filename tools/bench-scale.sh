#!/usr/bin/env bash
# The scale benchmark: a real etcd + kube-apiserver on 127.0.0.1, the PPIO simulator with N
# instances, and the release operator binary at its default settings, with N PpioInstances
# on one API key. Prints fill time, create->Synced p50/p99, PPIO requests per instance per
# interval, status writes, Secret reads at the API server, CPU, RSS and the age of the oldest
# observation. Asserts nothing.
#
#   tools/bench-scale.sh N [STEADY_SECONDS] [SETTLE_SECONDS]
#
# Defaults: 1000 instances, 60 s of steady state measured right after every PpioInstance was
# fetched in full. SETTLE_SECONDS waits that long first: full GETs run at their steady rate
# from half a full-refresh period (15 min at the defaults) after the last first GET.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
n=${1:-1000}
steady=${2:-60}
settle=${3:-0}
export PPIO_TOOLS_BIN=${PPIO_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/ppio-operator/bin}
tools/build.sh etcd kube-apiserver
cargo build --locked --release --bin ppio-operator
cargo build --locked --release -p ppio-testenv --bin bench-scale
target_dir=${CARGO_TARGET_DIR:-$root/target}
exec "$target_dir/release/bench-scale" "$n" "$target_dir/release/ppio-operator" "$steady" "$settle"
