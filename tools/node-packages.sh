#!/usr/bin/env bash
# Installs the Debian packages the test node (crates/testenv/src/node.rs, tests/node/) and
# the image build need, only those that are missing: containerd and runc (the container
# runtime), containernetworking-plugins (the CNI bridge), iptables and conntrack (kube-proxy),
# gcc and libc6-dev (the static pause image), file (tools/image.sh, tools/release.sh),
# qemu-user-static (runs the release's arm64 binary) and ca-certificates (HTTPS downloads).
# Needs root and apt (Debian 12 or Ubuntu); .ci/run runs it on a fresh machine.
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables conntrack iproute2 util-linux gcc libc6-dev file
  qemu-user-static ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[[ ${#missing[@]} -gt 0 ]] || exit 0
command -v apt-get >/dev/null || {
  echo "tools/node-packages.sh: no apt-get; install ${missing[*]} with your package manager" >&2
  exit 1
}
[[ $(id -u) -eq 0 ]] || {
  echo "tools/node-packages.sh: installing ${missing[*]} needs root" >&2
  exit 1
}
echo "==> apt-get install ${missing[*]}" >&2
apt-get update -qq
# Debian's containerd does not start a daemon without systemd; the test node runs its own.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
