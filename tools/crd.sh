#!/usr/bin/env bash
# Regenerates both committed copies of the PpioInstance CRD from the Rust types
# (`ppio-operator crd`):
#   crds/ppioinstances.gpus.ppio.com.yaml                       (kubectl apply -f crds/)
#   charts/ppio-operator/files/ppioinstances.gpus.ppio.com.yaml (the Helm chart's copy)
# It runs `ppio-operator crd` once and writes the same bytes to both, each atomically (a temp
# file in the target's folder, then mv), so a failed run leaves both files as they were.
# Run it after changing the CRD types; the tests (tests/crd.rs, tests/chart.rs) fail until you do.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

name=ppioinstances.gpus.ppio.com.yaml
targets=("crds/$name" "charts/ppio-operator/files/$name")

temps=()
cleanup() { rm -f "${temps[@]}"; }
trap cleanup EXIT

for target in "${targets[@]}"; do
  mkdir -p "$(dirname "$target")"
  temps+=("$(mktemp "$(dirname "$target")/.$name.XXXXXX")")
done

cargo run --quiet --locked --bin ppio-operator -- crd >"${temps[0]}"
if [[ ! -s ${temps[0]} ]]; then
  echo "tools/crd.sh: \`ppio-operator crd\` printed nothing" >&2
  exit 1
fi
for i in "${!temps[@]}"; do
  if ((i > 0)); then
    cp "${temps[0]}" "${temps[$i]}"
  fi
  chmod 0644 "${temps[$i]}"
done
for i in "${!targets[@]}"; do
  mv -f "${temps[$i]}" "${targets[$i]}"
  echo "wrote ${targets[$i]}" >&2
done
temps=()
