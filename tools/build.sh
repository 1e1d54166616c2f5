#!/usr/bin/env bash
# Builds the pinned upstream programs the tests and the demo run (kube-apiserver, kubectl,
# etcd, helm) and ppio-health (tools/health: the PpioInstance health read by kstatus, Argo CD's
# Lua runtime and Flux's healthCheckExprs evaluator) from the Go module proxy into a git-ignored
# cache folder; for the test node (crates/testenv/src/node.rs) also the kubelet,
# kube-controller-manager, kube-scheduler and kube-proxy (tools/kubernetes-node, the same
# Kubernetes version) and the pod sandbox image (`pause`: tools/node/pause.c, gcc -static,
# packed by tools/oci-archive.sh into pause.oci.tar); and, when asked, the operator's image
# (`image`: tools/image.sh, into target/image/ppio-operator.oci.tar).
#
#   tools/build.sh [kube-apiserver|kubectl|etcd|helm|health|kubelet|kube-controller-manager|
#                   kube-scheduler|kube-proxy|pause|image ...]   (default: all but image)
#
# A program is rebuilt only when it is missing or when its pinned module (tools/*/go.mod or
# go.sum) changed; ppio-health also when tools/health/main.go is newer than its last build;
# the pause image when its source changed. The image is always rebuilt (cargo is incremental).
# The output folder is $PPIO_TOOLS_BIN (default: <repo>/.tools/bin). The system packages the
# test node needs (containerd, runc, CNI plugins, iptables, conntrack) come from apt:
# tools/node-packages.sh.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${PPIO_TOOLS_BIN:-$root/.tools/bin}
mkdir -p "$bin"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

command -v go >/dev/null || { echo "tools/build.sh: 'go' is not on PATH; install Go 1.26 or newer" >&2; exit 1; }

k8s_version=v1.37.2
k8s_ldflags() {
  local v=$k8s_version major minor date
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local out="-s -w"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    out+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    out+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$out"
}

# build NAME MODULE_DIR PACKAGE TAGS LDFLAGS
build() {
  local name=$1 dir=$root/tools/$2 pkg=$3 tags=$4 ldflags=$5
  local stamp="$bin/.$name.stamp" want
  want=$(cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -c1-16)
  if [[ -x $bin/$name && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  echo "==> building $name ($pkg) into $bin; a cold build takes several minutes" >&2
  local start=$SECONDS
  (cd "$dir" && go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo "$want" >"$stamp"
  echo "==> built $name in $((SECONDS - start))s" >&2
}

# The pod sandbox image of the test node: a static C program that waits for a signal.
build_pause() {
  local stamp="$bin/.pause.stamp" want work
  want=$(cat "$root/tools/node/pause.c" "$root/tools/oci-archive.sh" | sha256sum | cut -c1-16)
  if [[ -f $bin/pause.oci.tar && -f $stamp && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  command -v gcc >/dev/null || {
    echo "tools/build.sh: 'gcc' is needed for the pause image (apt-get install gcc libc6-dev)" >&2
    exit 1
  }
  echo "==> building the pause image into $bin/pause.oci.tar" >&2
  work=$(mktemp -d)
  mkdir -p "$work/rootfs"
  gcc -static -Os -s -o "$work/rootfs/pause" "$root/tools/node/pause.c"
  "$root/tools/oci-archive.sh" --rootfs "$work/rootfs" --name localhost/ppio-testenv/pause:1 \
    --output "$bin/pause.oci.tar" --user 65535:65535 --entrypoint /pause >/dev/null
  rm -rf "$work"
  echo "$want" >"$stamp"
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(etcd kube-apiserver kubectl helm health kubelet
  kube-controller-manager kube-scheduler kube-proxy pause)
for t in "${targets[@]}"; do
  case $t in
    kube-apiserver) build kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver selinux,notest "$(k8s_ldflags)" ;;
    kubectl) build kubectl kubernetes k8s.io/kubernetes/cmd/kubectl selinux,notest "$(k8s_ldflags)" ;;
    etcd) build etcd etcd go.etcd.io/etcd/server/v3 "" "-s -w" ;;
    helm) build helm helm helm.sh/helm/v3/cmd/helm "" "-s -w -X helm.sh/helm/v3/internal/version.version=v3.22.0" ;;
    health)
      # Its source is ours, not only pinned: a newer main.go voids the stamp.
      [[ ! $root/tools/health/main.go -nt $bin/.ppio-health.stamp ]] || rm -f "$bin/.ppio-health.stamp"
      build ppio-health health ppio-operator/tools/health "" "-s -w" ;;
    kubelet | kube-controller-manager | kube-scheduler | kube-proxy)
      build "$t" kubernetes-node "k8s.io/kubernetes/cmd/$t" selinux,notest "$(k8s_ldflags)" ;;
    pause) build_pause ;;
    image) "$root/tools/image.sh" >/dev/null ;;
    *) echo "tools/build.sh: unknown program '$t' (expected kube-apiserver, kubectl, etcd, helm, health, kubelet, kube-controller-manager, kube-scheduler, kube-proxy, pause or image)" >&2; exit 2 ;;
  esac
done
