#!/usr/bin/env bash
# Packs folders into a container image without a daemon or a registry: an OCI image layout,
# in a tar (`oci-archive`, --output) or a folder (--layout). `ctr images import`,
# `skopeo copy oci-archive:FILE docker://...`, `podman load` and `docker load` (25+) read the
# tar; `crane push DIR REF` pushes the folder.
#
#   tools/oci-archive.sh --rootfs [ARCH=]DIR... --name REF (--output FILE | --layout DIR)
#       [--user UID:GID] [--entrypoint PATH] [--cmd ARG]... [--env K=V]... [--label K=V]...
#       [--port 8080/tcp]
#   tools/oci-archive.sh --qualify REF    # prints REF as the layout would name it
#
# One --rootfs gives a one-layer image for linux/ARCH (default amd64); several give one image
# per platform under an image index (e.g. --rootfs amd64=DIR1 --rootfs arm64=DIR2), each with
# the same config but its architecture. REF is NAME[:TAG]; the layout names it fully qualified
# (ppio-operator:0.1.0 becomes docker.io/library/ppio-operator:0.1.0, the name the kubelet asks
# containerd for). The same inputs give the same bytes: sorted entries owned by root, file
# times SOURCE_DATE_EPOCH (default 0), gzip without names or times. Prints the digest of the
# image (its manifest, or its index when there are several platforms).
set -euo pipefail

name="" output="" layout="" user="" entrypoint="" qualify_only=""
rootfs=() cmd=() envs=() labels=() ports=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --rootfs) rootfs+=("${2:?}"); shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --output) output=${2:?}; shift 2 ;;
    --layout) layout=${2:?}; shift 2 ;;
    --qualify) qualify_only=${2:?}; shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    --entrypoint) entrypoint=${2:?}; shift 2 ;;
    --cmd) cmd+=("${2:?}"); shift 2 ;;
    --env) envs+=("${2:?}"); shift 2 ;;
    --label) labels+=("${2:?}"); shift 2 ;;
    --port) ports+=("${2:?}"); shift 2 ;;
    *) echo "tools/oci-archive.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -n $qualify_only || ( ${#rootfs[@]} -gt 0 && -n $name && ( -n $output || -n $layout ) ) ]] || {
  echo "tools/oci-archive.sh: --rootfs DIR, --name REF and --output FILE or --layout DIR are required" >&2
  exit 2
}
archs=() dirs=()
for r in "${rootfs[@]}"; do
  if [[ $r == *=* ]]; then archs+=("${r%%=*}"); dirs+=("${r#*=}"); else archs+=(amd64); dirs+=("$r"); fi
  [[ -d ${dirs[-1]} ]] || { echo "tools/oci-archive.sh: ${dirs[-1]} is not a folder" >&2; exit 2; }
  case ${archs[-1]} in
    amd64 | arm64 | arm | ppc64le | s390x | riscv64) ;;
    *) echo "tools/oci-archive.sh: unknown architecture '${archs[-1]}'" >&2; exit 2 ;;
  esac
done
for tool in tar gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "tools/oci-archive.sh: '$tool' is required" >&2; exit 1; }
done

# The fully qualified reference, as containerd and the kubelet name images.
qualify() {
  local ref=$1 first=${1%%/*}
  [[ $ref != *@* ]] || { echo "tools/oci-archive.sh: --name takes NAME[:TAG], not a digest" >&2; exit 2; }
  [[ $ref == *:* && ${ref##*:} != */* ]] || ref=$ref:latest
  if [[ $ref != */* ]]; then
    ref=docker.io/library/$ref
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    ref=docker.io/$ref
  fi
  echo "$ref"
}
if [[ -n $qualify_only ]]; then
  qualify "$qualify_only"
  exit 0
fi
fullname=$(qualify "$name")
tag=${fullname##*:}

json_str() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}
json_list() {
  local out="" item
  for item in "$@"; do out+=${out:+,}$(json_str "$item"); done
  printf '[%s]' "$out"
}
json_map() {
  local out="" item
  for item in "$@"; do out+=${out:+,}$(json_str "${item%%=*}"):$(json_str "${item#*=}"); done
  printf '{%s}' "$out"
}

epoch=${SOURCE_DATE_EPOCH:-0}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
oci=$work/oci
mkdir -p "$oci/blobs/sha256"

reproducible=(--sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)

# blob FILE: moves FILE into the layout's blobs; prints "<sha256> <size>".
blob() {
  local sum size
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$oci/blobs/sha256/$sum"
  echo "$sum $size"
}

config_body="{"
[[ -z $user ]] || config_body+="\"User\":$(json_str "$user"),"
config_body+="\"Env\":$(json_list "${envs[@]}")"
[[ -z $entrypoint ]] || config_body+=",\"Entrypoint\":$(json_list "$entrypoint")"
[[ ${#cmd[@]} -eq 0 ]] || config_body+=",\"Cmd\":$(json_list "${cmd[@]}")"
if [[ ${#ports[@]} -gt 0 ]]; then
  exposed=""
  for p in "${ports[@]}"; do exposed+=${exposed:+,}$(json_str "$p"):{}; done
  config_body+=",\"ExposedPorts\":{$exposed}"
fi
config_body+=",\"Labels\":$(json_map "${labels[@]}")}"

# image ARCH DIR: one layer (sorted entries, owned by root, fixed times, no atime/ctime
# records), its config and its manifest; prints the manifest's "<sha256> <size>".
image() {
  local arch=$1 dir=$2 entries diff_id layer_sum layer_size config_sum config_size
  mapfile -t entries < <(cd "$dir" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
  [[ ${#entries[@]} -gt 0 ]] || { echo "tools/oci-archive.sh: $dir is empty" >&2; exit 1; }
  tar "${reproducible[@]}" -C "$dir" -cf "$work/layer.tar" "${entries[@]}"
  diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  gzip -9 -n -c "$work/layer.tar" >"$work/layer.tar.gz"
  rm -f "$work/layer.tar"
  read -r layer_sum layer_size < <(blob "$work/layer.tar.gz")
  printf '%s' "{\"created\":\"$created\",\"architecture\":\"$arch\",\"os\":\"linux\",\"config\":$config_body,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"$created\",\"created_by\":\"tools/oci-archive.sh\"}]}" >"$work/config.json"
  read -r config_sum config_size < <(blob "$work/config.json")
  printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_sum\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_sum\",\"size\":$layer_size}]}" >"$work/manifest.json"
  blob "$work/manifest.json"
}

# io.containerd.image.name: the name `ctr images import` gives the image;
# org.opencontainers.image.ref.name: its tag (skopeo copy oci-archive:FILE:TAG ...).
names="\"annotations\":{\"io.containerd.image.name\":$(json_str "$fullname"),\"org.opencontainers.image.ref.name\":$(json_str "$tag")}"
if [[ ${#archs[@]} -eq 1 ]]; then
  read -r top_sum top_size < <(image "${archs[0]}" "${dirs[0]}")
  top="{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$top_sum\",\"size\":$top_size,\"platform\":{\"architecture\":\"${archs[0]}\",\"os\":\"linux\"},$names}"
else
  platforms=""
  for i in "${!archs[@]}"; do
    read -r m_sum m_size < <(image "${archs[$i]}" "${dirs[$i]}")
    platforms+=${platforms:+,}"{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$m_sum\",\"size\":$m_size,\"platform\":{\"architecture\":\"${archs[$i]}\",\"os\":\"linux\"}}"
  done
  printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$platforms]}" >"$work/index.json"
  read -r top_sum top_size < <(blob "$work/index.json")
  top="{\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"digest\":\"sha256:$top_sum\",\"size\":$top_size,$names}"
fi

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[$top]}" >"$oci/index.json"

if [[ -n $output ]]; then
  mkdir -p "$(dirname "$output")"
  tar "${reproducible[@]}" -C "$oci" -cf "$output.tmp" oci-layout index.json blobs
  mv "$output.tmp" "$output"
fi
if [[ -n $layout ]]; then
  rm -rf "$layout"
  mkdir -p "$(dirname "$layout")"
  cp -r "$oci" "$layout"
fi
echo "sha256:$top_sum"
