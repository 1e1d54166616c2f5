#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (cargo fuzz, libFuzzer) over what PPIO sends:
#   decode_status  the GET and LIST decoders and compute_status: no panic, a bounded status,
#                  no secret of the instance object (passwords, env values, command) in it
#   retry_after    Retry-After parsing against the response's Date: no panic, capped
#   duration       the duration grammar and refresh bounds: no panic, round trip
#
#   tools/fuzz.sh [SECONDS] [TARGET ...]     (default: 60 seconds each, all targets)
#
# Needs the nightly toolchain and cargo-fuzz (installed on first use from crates.io). Seeds
# come from fuzz/corpus/TARGET (the fixtures); inputs found on the way go to a temporary
# folder, and a crashing input is kept in fuzz/artifacts/TARGET, which the failure names: once
# fixed, copy it to fuzz/regressions/TARGET/, where the unit tier replays it on every run
# (tests/unit/fuzz_corpus.rs; what each target checks is fuzz/checks.rs). The build goes to
# ~/.cache/ppio-operator/fuzz-target (outside the clone: every clone reuses it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
seconds=${1:-60}
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(decode_status retry_after duration)

rustup run nightly rustc --version >/dev/null 2>&1 || {
  echo "tools/fuzz.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
  exit 1
}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
target_dir=${XDG_CACHE_HOME:-$HOME/.cache}/ppio-operator/fuzz-target
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  echo "==> fuzzing $t for ${seconds}s" >&2
  mkdir -p "$work/$t"
  # No AddressSanitizer: the code under test has no unsafe; coverage guidance stays.
  cargo +nightly fuzz run --sanitizer none --target-dir "$target_dir" "$t" "$work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
done
