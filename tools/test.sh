#!/usr/bin/env bash
# Runs the whole test suite: unit, reconcile and end-to-end tests (the latter against a real
# etcd + kube-apiserver on 127.0.0.1, the real kubectl and helm, and the PPIO simulator).
# Builds the pinned upstream programs first when they are missing (tools/build.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PPIO_TOOLS_BIN=${PPIO_TOOLS_BIN:-$root/.tools/bin}
tools/build.sh etcd kube-apiserver kubectl helm health kubelet kube-controller-manager kube-scheduler kube-proxy pause image
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --workspace --all-targets "$@" -- --test-threads=8 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: .*' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '^test result: .*' "$log" | grep -Eo '[0-9]+ failed' | awk '{s+=$1} END {print s+0}')
echo
echo "$passed passed, $failed failed"
exit "$rc"
