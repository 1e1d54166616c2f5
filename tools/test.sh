#!/usr/bin/env bash
# Runs the test suite, by tier (tests/README.md):
#   unit     no external program: the operator's pieces against the fake PPIO and a mocked
#            Kubernetes API, the CRD, the status, the simulator, the fuzz corpus, the command line
#   cluster  a real etcd + kube-apiserver on 127.0.0.1, the real kubectl and helm, the real
#            health evaluators (kstatus, Argo CD's Lua, Flux's CEL), the PPIO simulator
#   node     the release published to a real registry, then its image and chart on a real
#            kubelet node (containerd pulling from the registry, runc, kube-proxy, CNI);
#            needs root
#
#   tools/test.sh [unit|cluster|node|all ...] [--no-node] [-- ARGS for the test binaries]
#
# Default: all. It does its own set-up: the Debian packages of the test node
# (tools/node-packages.sh, when missing and root), the pinned upstream programs
# (tools/build.sh, kept in ~/.cache/ppio-operator) and the release (tools/release.sh --no-push), each only for the
# tiers asked. Without root the node tier cannot run: the command stops before building
# anything and says what to run, unless the node tier is left out (--no-node, or naming the
# tiers). Under CI=true nothing may be left out.
#
# The tiers run side by side, each tier's output printed whole when it ends. Every test binary
# runs even when an earlier one fails (--no-fail-fast), and the closing line counts what did not
# run: "N passed, N failed, N skipped", where skipped counts tests of the binaries that ran but
# did not report them (a crash) plus the tests of the tiers left out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PPIO_TOOLS_BIN=${PPIO_TOOLS_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/ppio-operator/bin}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tools/test.sh: $*" >&2; exit 2; }

want_unit=0 want_cluster=0 want_node=0 no_node=0 named=0
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    unit) want_unit=1; named=1 ;;
    cluster) want_cluster=1; named=1 ;;
    node) want_node=1; named=1 ;;
    all) want_unit=1; want_cluster=1; want_node=1; named=1 ;;
    --no-node) no_node=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown argument '$1' (tiers: unit, cluster, node, all; or --no-node; see --help)" ;;
  esac
  shift
done
if [[ $named -eq 0 ]]; then want_unit=1 want_cluster=1 want_node=1; fi
if [[ $no_node -eq 1 ]]; then want_node=0; fi

left_out=()
[[ $want_unit -eq 1 ]] || left_out+=(unit)
[[ $want_cluster -eq 1 ]] || left_out+=(cluster)
[[ $want_node -eq 1 ]] || left_out+=(node)
if [[ ${CI:-} == true && ${#left_out[@]} -gt 0 ]]; then
  die "under CI=true every tier runs; not run here: ${left_out[*]}"
fi

# The node tier's needs, checked before anything is built.
if [[ $want_node -eq 1 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    cat >&2 <<EOF
tools/test.sh: the node tier needs root: it runs a kubelet, containerd and kube-proxy, and
installs their Debian packages when they are missing. Either run the whole suite as root:

    sudo -E env "PATH=\$PATH" tools/test.sh

or leave the node tier out (the summary then says it was not run):

    tools/test.sh --no-node
EOF
    exit 2
  fi
  command -v gcc >/dev/null && command -v containerd >/dev/null && command -v runc >/dev/null \
    && command -v conntrack >/dev/null && command -v iptables >/dev/null \
    && [[ -x /usr/lib/cni/bridge || -x /opt/cni/bin/bridge ]] || tools/node-packages.sh
fi

# The upstream programs, and the image (built beside the Go programs: the two overlap).
programs=()
[[ $want_cluster -eq 0 && $want_node -eq 0 ]] || programs+=(etcd kube-apiserver kubectl helm health prometheus promtool)
[[ $want_node -eq 0 ]] || programs+=(kubelet kube-controller-manager kube-scheduler kube-proxy pause
  registry crane cosign)
image_pid=""
image_log=$(mktemp)
log=$(mktemp)
go_log=$(mktemp)
# The tiers still running, by pid: "TIER LOG".
declare -A tier_of=()
tier_logs=()
trap 'rm -f "$log" "$go_log" "$image_log" "${tier_logs[@]}"; kill "${!tier_of[@]}" $image_pid 2>/dev/null || true' EXIT
if [[ $want_node -eq 1 ]]; then
  # The release's binaries, licences, SBOMs and image layout; the node tier publishes them to
  # a registry of its own (tools/release.sh again, which then finds them built).
  version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
  echo "==> building the release (tools/release.sh $version --no-push) beside the upstream programs and the tests" >&2
  tools/release.sh "$version" --no-push >"$image_log" 2>&1 &
  image_pid=$!
fi
[[ ${#programs[@]} -eq 0 ]] || tools/build.sh "${programs[@]}"

# The test binaries of the tiers asked (tier_targets TIER: a tier's cargo test targets).
tier_targets() {
  case $1 in
    unit) echo --lib --bins --benches --test unit --test unit-leak --test unit-scheduler ;;
    cluster) echo --test cluster --test cluster-demo ;;
    node) echo --test node ;;
  esac
}
targets=() not_run=()
for tier in unit cluster node; do
  want=want_$tier
  read -ra more <<<"$(tier_targets "$tier")"
  if [[ ${!want} -eq 1 ]]; then targets+=("${more[@]}"); else not_run+=("${more[@]}"); fi
done
cargo_test_cmd=(cargo test --locked --workspace --no-fail-fast)
cargo_test=("${cargo_test_cmd[@]}" "${targets[@]}")

echo "==> ${cargo_test[*]}" >&2
"${cargo_test[@]}" --no-run

# What each binary holds, to count what a crash leaves unreported and what the tiers left out
# hold (their binaries are built, not run).
list_tests() {
  local n=0 exe
  while IFS= read -r exe; do
    n=$((n + $("$exe" --list --format terse 2>/dev/null | grep -c ': test$' || true)))
  done < <(cargo test --locked --workspace "$@" --no-run --message-format json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    # A bench without the libtest harness has no list to give.
    if m.get("executable") and "bench" not in m["target"]["kind"]:
        print(m["executable"])')
  echo "$n"
}
listed=$(list_tests "${targets[@]}")
left_out_tests=0
[[ ${#not_run[@]} -eq 0 ]] || left_out_tests=$(list_tests "${not_run[@]}")

# The node tier publishes the release built beside the tests' build.
if [[ -n $image_pid ]]; then
  if ! wait "$image_pid"; then
    image_pid=""
    cat "$image_log" >&2
    die "the release did not build (tools/release.sh --no-push)"
  fi
  image_pid=""
  grep -E '^==> (built|image index)' "$image_log" >&2 || true
fi

# The tiers run side by side (each has its own servers: the cluster tier's control planes on
# 127.0.0.1, the node's on the node's address; most of their time is spent waiting on them), so
# the suite takes about as long as its longest tier. Each tier's output is printed whole when
# it ends; the summary below counts them all.
run_tier() {
  local tier=$1 targets
  read -ra targets <<<"$(tier_targets "$tier")"
  # The cluster tier also checks the health evaluators it runs against hand-written objects.
  if [[ $tier == cluster ]]; then
    echo "==> (cd tools/health && go test ./...)"
    (cd tools/health && GOTOOLCHAIN=local GOFLAGS=-mod=mod go test -count=1 -v ./... 2>&1) | tee "$go_log"
    local go_rc=${PIPESTATUS[0]}
  fi
  echo "==> ${cargo_test_cmd[*]} ${targets[*]}"
  "${cargo_test_cmd[@]}" "${targets[@]}" -- --test-threads=8 "${extra[@]}" 2>&1
  local cargo_rc=$?
  [[ ${go_rc:-0} -eq 0 ]] || return "$go_rc"
  return "$cargo_rc"
}
set +e
rc=0
tiers=()
for tier in unit cluster node; do
  want=want_$tier
  [[ ${!want} -eq 1 ]] || continue
  tiers+=("$tier")
  tier_log=$(mktemp)
  tier_logs+=("$tier_log")
  run_tier "$tier" >"$tier_log" 2>&1 &
  tier_of[$!]="$tier $tier_log"
done
echo "==> running the tiers side by side: ${tiers[*]}; each one's output follows when it ends" >&2
while [[ ${#tier_of[@]} -gt 0 ]]; do
  wait -n -p done_pid "${!tier_of[@]}"
  tier_rc=$?
  read -r tier tier_log <<<"${tier_of[$done_pid]}"
  unset "tier_of[$done_pid]"
  echo "==> the $tier tier ended (exit $tier_rc):"
  cat "$tier_log"
  cat "$tier_log" >>"$log"
  ((tier_rc == 0)) || rc=$tier_rc
done
set -e

count() { grep -E '^test result: ' "$log" | grep -Eo "[0-9]+ $1" | awk '{s+=$1} END {print s+0}'; }
go_count() { grep -Ec "^ *--- $1: " "$go_log" || true; }
passed=$(($(count passed) + $(go_count PASS)))
failed=$(($(count failed) + $(go_count FAIL)))
ignored=$(($(count ignored) + $(go_count SKIP)))
filtered=$(count 'filtered out')
unreported=$((listed - passed - failed - ignored - filtered))
((unreported >= 0)) || unreported=0
skipped=$((ignored + unreported + left_out_tests))

echo
for t in "${left_out[@]}"; do
  echo "tools/test.sh: $t tier not run (left out; tools/test.sh --help)"
done
((left_out_tests == 0)) || echo "tools/test.sh: $left_out_tests tests of the tiers left out not run"
((unreported == 0)) || echo "tools/test.sh: $unreported tests did not report (a test binary crashed or was killed); see above"
((ignored == 0)) || echo "tools/test.sh: $ignored tests ignored"
if [[ ${CI:-} == true && $skipped -gt 0 && $rc -eq 0 ]]; then
  echo "tools/test.sh: under CI=true no test may be skipped"
  rc=1
fi
if [[ $rc -eq 0 && $failed -eq 0 && $unreported -gt 0 ]]; then rc=1; fi
echo "$passed passed, $failed failed, $skipped skipped"
exit "$rc"
