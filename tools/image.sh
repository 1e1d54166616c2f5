#!/usr/bin/env bash
# Builds the operator's image without a daemon and without a registry: the release's image
# (linux/amd64 and linux/arm64, tools/release.sh) as an OCI image layout in a tar
# (`oci-archive`), which `ctr images import`, `skopeo copy oci-archive:...`, `podman load` and
# `docker load` (Docker 25+) read. To publish to a registry, use tools/release.sh itself.
#
#   tools/image.sh [--name REF] [--output FILE]
#
#   --name REF     the image's name in the archive (default ppio-operator:<version>; e.g.
#                  registry.example.com/ppio-operator:0.1.0)
#   --output FILE  the archive (default $CARGO_TARGET_DIR/image/ppio-operator.oci.tar, the
#                  target dir being ./target unless CARGO_TARGET_DIR says otherwise)
#
# The image holds nothing but the static musl binary (/usr/local/bin/ppio-operator), /etc/passwd
# and /etc/group naming the non-root user 65532 (tools/image/), LICENSE and the third-party
# licence texts (/usr/share/doc/ppio-operator/); no shell, no libc, no CA bundle (the binary
# carries the Mozilla roots; more are added with --ppio-ca-file). It runs as 65532:65532 with
# entrypoint ppio-operator and command `run`. The same commit gives the same bytes.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

name=""
target_dir=${CARGO_TARGET_DIR:-$root/target}
output=$target_dir/image/ppio-operator.oci.tar
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=${2:?--name needs a value}; shift 2 ;;
    --output) output=${2:?--output needs a value}; shift 2 ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "tools/image.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || { echo "tools/image.sh: no version in Cargo.toml" >&2; exit 1; }
name=${name:-ppio-operator:$version}
# The name as containerd and the kubelet spell it (refused now if it is not NAME[:TAG]).
full=$(tools/oci-archive.sh --qualify "$name")
tag=${full##*:}

release=$target_dir/release/$version
tools/release.sh "$version" --no-push --out "$release" >&2
layout=$release/image

# The layout names the image in its index.json: rename it, then pack the layout.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$layout" "$work/oci"
sed -i -E "s#(\"io.containerd.image.name\":)\"[^\"]*\"#\1\"$full\"#; s#(\"org.opencontainers.image.ref.name\":)\"[^\"]*\"#\1\"$tag\"#" "$work/oci/index.json"
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
mkdir -p "$(dirname "$output")"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=posix \
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
  -C "$work/oci" -cf "$output.tmp" oci-layout index.json blobs
mv "$output.tmp" "$output"
digest=$(sed -n 's/^IMAGE_INDEX_DIGEST=//p' "$release/release.env")
echo "==> $output: $full $digest ($(du -h "$output" | cut -f1))" >&2
echo "$output"
