#!/usr/bin/env bash
# Builds the operator's container image without a daemon and without a registry: an OCI image
# layout in a tar (`oci-archive`), which `ctr images import`, `skopeo copy oci-archive:...`,
# `podman load` and `docker load` (Docker 25+) read.
#
#   tools/image.sh [--name REF] [--output FILE] [--binary FILE]
#
#   --name REF     the image's name in the archive (default ppio-operator:<version>; e.g.
#                  registry.example.com/ppio-operator:0.1.0)
#   --output FILE  the archive (default $CARGO_TARGET_DIR/image/ppio-operator.oci.tar, the
#                  target dir being ./target unless CARGO_TARGET_DIR says otherwise)
#   --binary FILE  package this static binary instead of building it
#
# The image holds nothing but the static binary (/usr/local/bin/ppio-operator) and /etc/passwd
# and /etc/group naming the non-root user 65532 (tools/image/); no shell, no libc, no CA bundle
# (the binary carries the Mozilla roots; more are added with --ppio-ca-file). It runs as
# 65532:65532 with entrypoint ppio-operator and command `run`, like the Dockerfile's image.
#
# The binary is a static glibc build, checked with `file` and `ldd`:
#   RUSTFLAGS='-C target-feature=+crt-static' \
#     cargo build --release --locked --bin ppio-operator --target x86_64-unknown-linux-gnu
# The same binary gives the same archive, byte for byte (tools/oci-archive.sh).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

name=""
target_dir=${CARGO_TARGET_DIR:-$root/target}
output=$target_dir/image/ppio-operator.oci.tar
binary=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --output) output=${2:?--output needs a value}; shift 2 ;;
    --binary) binary=${2:?--binary needs a value}; shift 2 ;;
    -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tools/image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || { echo "tools/image.sh: no version in Cargo.toml" >&2; exit 1; }
name=${name:-ppio-operator:$version}
target=x86_64-unknown-linux-gnu

command -v file >/dev/null || { echo "tools/image.sh: 'file' is required (apt-get install file)" >&2; exit 1; }

if [[ -z $binary ]]; then
  echo "==> building a static ppio-operator ($target, release)" >&2
  start=$SECONDS
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --bin ppio-operator --target "$target"
  binary=$target_dir/$target/release/ppio-operator
  echo "==> built in $((SECONDS - start))s" >&2
fi
[[ -x $binary ]] || { echo "tools/image.sh: $binary is not an executable" >&2; exit 1; }

# A scratch image has no loader and no libc: the binary must need neither.
desc=$(file -L "$binary")
if [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]] || [[ $desc == *interpreter* ]]; then
  echo "tools/image.sh: $binary is not statically linked: $desc" >&2
  exit 1
fi
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "tools/image.sh: $binary loads shared libraries: $(ldd "$binary" 2>&1)" >&2
  exit 1
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc"
install -m 0755 "$binary" "$rootfs/usr/local/bin/ppio-operator"
install -m 0644 tools/image/passwd "$rootfs/etc/passwd"
install -m 0644 tools/image/group "$rootfs/etc/group"
find "$rootfs" -type d -exec chmod 0755 {} +

digest=$(tools/oci-archive.sh --rootfs "$rootfs" --name "$name" --output "$output" \
  --user 65532:65532 --entrypoint /usr/local/bin/ppio-operator --cmd run \
  --env PATH=/usr/local/bin \
  --port 8080/tcp \
  --label org.opencontainers.image.title=ppio-operator \
  --label "org.opencontainers.image.description=Mirrors PPIO GPU instances into PpioInstance resources" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version")
echo "==> $output: $name $digest ($(du -h "$output" | cut -f1))" >&2
echo "$output"
