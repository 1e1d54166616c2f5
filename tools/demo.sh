#!/usr/bin/env bash
# The demo: a throw-away local control plane (etcd + kube-apiserver on 127.0.0.1), the PPIO
# simulator with sample instances, and the operator; prints the PpioInstances and runs until
# Ctrl-C, then cleans up. Builds what it needs on first use (the upstream programs take
# several minutes to compile once).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PPIO_TOOLS_BIN=${PPIO_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/ppio-operator/bin}
tools/build.sh etcd kube-apiserver kubectl
echo "==> building the demo" >&2
cargo build --locked -p ppio-testenv --bin ppio-demo
exec "${CARGO_TARGET_DIR:-$root/target}/debug/ppio-demo" "$@"
