#!/usr/bin/env bash
# Builds the pinned upstream programs the tests and the demo run (kube-apiserver, kubectl,
# etcd, helm, and Prometheus and promtool for the alerting rules and the dashboard) and
# ppio-health (tools/health: the PpioInstance health read by kstatus, Argo CD's Lua runtime and
# Flux's healthCheckExprs evaluator) from the Go module proxy into a cache folder outside the
# clone; for the test node (crates/testenv/src/node.rs) also the kubelet,
# kube-controller-manager, kube-scheduler and kube-proxy (tools/kubernetes-node, the same
# Kubernetes version) and the pod sandbox image (`pause`: tools/node/pause.c, gcc -static,
# packed by tools/oci-archive.sh into pause.oci.tar); for the release (tools/release.sh) and
# its test the CNCF distribution registry, crane and cosign (Go modules under tools/), zig
# (the ziglang wheel from PyPI) and the cargo subcommands cargo-auditable, cargo-zigbuild,
# cargo-about and cargo-cyclonedx, and cargo-deny for CI's dependency policy (crates.io, each
# with its own Cargo.lock); and, when asked, the operator's image (`image`: tools/image.sh, into
# target/image/ppio-operator.oci.tar).
#
#   tools/build.sh [kube-apiserver|kubectl|etcd|helm|health|prometheus|promtool|kubelet|
#                   kube-controller-manager|kube-scheduler|kube-proxy|pause|registry|crane|
#                   cosign|zig|cargo-auditable|cargo-zigbuild|cargo-about|cargo-cyclonedx|
#                   cargo-deny|image ...]   (default: all but image)
#
# A program is rebuilt only when it is missing or when its pinned module (tools/*/go.mod or
# go.sum) or version changed; ppio-health also when tools/health/main.go is newer than its last
# build; the pause image when its source changed. The image is always rebuilt (cargo is
# incremental).
# The output folder is $PPIO_TOOLS_BIN (default: ~/.cache/ppio-operator/bin, outside the clone,
# so every clone on the machine reuses it). Each build is kept under
# ~/.cache/ppio-operator/store/NAME-KEY, KEY a hash of its pinned module and the Go version (of
# the version and rustc's, for the cargo subcommands), and linked into the output folder:
# clones pinning different versions do not rebuild each other's programs. The system packages
# the test node needs (containerd, runc, CNI plugins, iptables, conntrack, qemu-user-static)
# come from apt: tools/node-packages.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ppio-operator
bin=${PPIO_TOOLS_BIN:-$cache/bin}
store=$cache/store
mkdir -p "$bin" "$store"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

command -v go >/dev/null || { echo "tools/build.sh: 'go' is not on PATH; install Go 1.26 or newer" >&2; exit 1; }

k8s_version=v1.37.2
k8s_ldflags() {
  local v=$k8s_version major minor date
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  # A fixed build date: the same pins give the same binary (and the same cache key).
  date=1970-01-01T00:00:00Z
  local out="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    out+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    out+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$out"
}

# build NAME MODULE_DIR PACKAGE TAGS LDFLAGS [SOURCE_FILE ...]
# SOURCE_FILEs are our own sources built into the program: their content is part of the key.
build() {
  local name=$1 dir=$root/tools/$2 pkg=$3 tags=$4 ldflags=$5
  shift 5
  local want kept
  want=$({ cat "$dir/go.mod" "$dir/go.sum" "$@"; go env GOVERSION; echo "$tags $ldflags"; } | sha256sum | cut -c1-16)
  kept=$store/$name-$want/$name
  if [[ ! -x $kept ]]; then
    echo "==> building $name ($pkg) into $kept; a cold build takes several minutes" >&2
    local start=$SECONDS
    mkdir -p "${kept%/*}"
    (cd "$dir" && go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$kept.tmp" "$pkg")
    mv "$kept.tmp" "$kept"
    echo "==> built $name in $((SECONDS - start))s" >&2
  fi
  ln -sfn "$kept" "$bin/$name"
}

# The pod sandbox image of the test node: a static C program that waits for a signal.
build_pause() {
  local want work kept
  want=$(cat "$root/tools/node/pause.c" "$root/tools/oci-archive.sh" | sha256sum | cut -c1-16)
  kept=$store/pause-$want/pause.oci.tar
  if [[ -f $kept ]]; then
    ln -sfn "$kept" "$bin/pause.oci.tar"
    return 0
  fi
  command -v gcc >/dev/null || {
    echo "tools/build.sh: 'gcc' is needed for the pause image (apt-get install gcc libc6-dev)" >&2
    exit 1
  }
  echo "==> building the pause image into $kept" >&2
  work=$(mktemp -d)
  mkdir -p "$work/rootfs" "${kept%/*}"
  gcc -static -Os -s -o "$work/rootfs/pause" "$root/tools/node/pause.c"
  "$root/tools/oci-archive.sh" --rootfs "$work/rootfs" --name localhost/ppio-testenv/pause:1 \
    --output "$kept.tmp" --user 65535:65535 --entrypoint /pause >/dev/null
  rm -rf "$work"
  mv "$kept.tmp" "$kept"
  ln -sfn "$kept" "$bin/pause.oci.tar"
}

# build_crate NAME VERSION [FEATURES]: a cargo subcommand the release (tools/release.sh) or CI
# runs, from crates.io with its own Cargo.lock (--locked), kept per version and rustc version.
build_crate() {
  local name=$1 version=$2 features=${3:-} want kept
  want=$(echo "$name $version $features $(rustc --version)" | sha256sum | cut -c1-16)
  kept=$store/$name-$want
  if [[ ! -x $kept/bin/$name ]]; then
    echo "==> building $name $version into $kept; a cold build takes a few minutes" >&2
    local start=$SECONDS
    rm -rf "$kept.tmp"
    cargo install --quiet --locked --version "=$version" --root "$kept.tmp" \
      ${features:+--features "$features"} "$name"
    [[ -x $kept.tmp/bin/$name ]] || { echo "tools/build.sh: cargo install $name wrote no $name" >&2; exit 1; }
    rm -rf "$kept"
    mv "$kept.tmp" "$kept"
    echo "==> built $name in $((SECONDS - start))s" >&2
  fi
  ln -sfn "$kept/bin/$name" "$bin/$name"
}

# Zig, the C compiler and linker of the release's cross builds (cargo-zigbuild), from its
# PyPI wheel (which carries the whole toolchain; Python is not needed to run it).
zig_version=0.15.2
build_zig() {
  local kept=$store/zig-$zig_version
  if [[ ! -x $kept/ziglang/zig ]]; then
    echo "==> fetching zig $zig_version (the ziglang wheel) into $kept" >&2
    local work
    work=$(mktemp -d)
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_12_x86_64 \
      --dest "$work" "ziglang==$zig_version"
    rm -rf "$kept.tmp"
    mkdir -p "$kept.tmp"
    python3 -m zipfile -e "$work"/ziglang-*.whl "$kept.tmp"
    chmod +x "$kept.tmp/ziglang/zig"
    rm -rf "$work" "$kept"
    mv "$kept.tmp" "$kept"
  fi
  ln -sfn "$kept/ziglang/zig" "$bin/zig"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(etcd kube-apiserver kubectl helm health prometheus promtool
  kubelet kube-controller-manager kube-scheduler kube-proxy pause registry crane cosign
  zig cargo-auditable cargo-zigbuild cargo-about cargo-cyclonedx cargo-deny)
# One build of a program at a time on this machine: a second caller (CI builds the release's
# tools while this script builds the rest) waits for the first, then finds the program built.
command -v flock >/dev/null || { echo "tools/build.sh: 'flock' is not on PATH (apt-get install util-linux)" >&2; exit 1; }
for t in "${targets[@]}"; do
  exec {lock_fd}>"$store/.lock-$t"
  flock "$lock_fd"
  case $t in
    kube-apiserver) build kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver selinux,notest "$(k8s_ldflags)" ;;
    kubectl) build kubectl kubernetes k8s.io/kubernetes/cmd/kubectl selinux,notest "$(k8s_ldflags)" ;;
    etcd) build etcd etcd go.etcd.io/etcd/server/v3 "" "-s -w" ;;
    helm)
      # The Kubernetes version helm assumes without a cluster (helm template, lint), set as
      # helm's own release builds set it: from the client-go it is built with (v0.37: 1.37).
      build helm helm helm.sh/helm/v3/cmd/helm "" "-s -w -X helm.sh/helm/v3/internal/version.version=v3.22.0
        -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37
        -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37" ;;
    health)
      # Its source is ours, not only pinned: the key covers it.
      build ppio-health health ppio-operator/tools/health "" "-s -w" "$root"/tools/health/*.go ;;
    kubelet | kube-controller-manager | kube-scheduler | kube-proxy)
      build "$t" kubernetes-node "k8s.io/kubernetes/cmd/$t" selinux,notest "$(k8s_ldflags)" ;;
    prometheus | promtool)
      # Static scrape targets only: no service discovery plugins (a much smaller build).
      build "$t" prometheus "github.com/prometheus/prometheus/cmd/$t" remove_all_sd \
        "-s -w -X github.com/prometheus/common/version.Version=3.16.0" ;;
    registry)
      # The CNCF distribution registry the release test pushes to (tools/release.sh).
      build registry registry github.com/distribution/distribution/v3/cmd/registry "" \
        "-s -w -X github.com/distribution/distribution/v3/version.version=v3.1.2" ;;
    crane)
      # Pushes the multi-arch image index (an OCI image layout) to a registry.
      build crane crane github.com/google/go-containerregistry/cmd/crane "" "-s -w" ;;
    cosign)
      # Signs and verifies the release's image and chart with a key, offline.
      build cosign cosign github.com/sigstore/cosign/v2/cmd/cosign "" \
        "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=v2.6.5" ;;
    cargo-auditable) build_crate cargo-auditable 0.7.7 ;;
    cargo-zigbuild) build_crate cargo-zigbuild 0.24.1 ;;
    cargo-cyclonedx) build_crate cargo-cyclonedx 0.5.9 ;;
    cargo-about) build_crate cargo-about 0.9.3 cli ;;
    cargo-deny) build_crate cargo-deny 0.20.2 ;;
    zig) build_zig ;;
    pause) build_pause ;;
    image) "$root/tools/image.sh" >/dev/null ;;
    *) echo "tools/build.sh: unknown program '$t' (expected kube-apiserver, kubectl, etcd, helm, health, kubelet, kube-controller-manager, kube-scheduler, kube-proxy, prometheus, promtool, registry, crane, cosign, cargo-auditable, cargo-zigbuild, cargo-cyclonedx, cargo-about, cargo-deny, zig, pause or image)" >&2; exit 2 ;;
  esac
  exec {lock_fd}>&-
done
