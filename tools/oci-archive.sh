#!/usr/bin/env bash
# Packs a folder into a one-layer container image: an OCI image layout in a tar
# (`oci-archive`), without a daemon or a registry. `ctr images import`,
# `skopeo copy oci-archive:FILE docker://...`, `podman load` and `docker load` (25+) read it.
#
#   tools/oci-archive.sh --rootfs DIR --name REF --output FILE [--user UID:GID]
#       [--entrypoint PATH] [--cmd ARG]... [--env K=V]... [--label K=V]... [--port 8080/tcp]
#
# REF is NAME[:TAG]; the archive names it fully qualified (ppio-operator:0.1.0 becomes
# docker.io/library/ppio-operator:0.1.0, the name the kubelet asks containerd for). The same
# inputs give the same archive byte for byte: sorted entries owned by root, file times
# SOURCE_DATE_EPOCH (default 0), gzip without names or times. Prints the manifest digest.
set -euo pipefail

rootfs="" name="" output="" user="" entrypoint=""
cmd=() envs=() labels=() ports=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --rootfs) rootfs=${2:?}; shift 2 ;;
    --name) name=${2:?}; shift 2 ;;
    --output) output=${2:?}; shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    --entrypoint) entrypoint=${2:?}; shift 2 ;;
    --cmd) cmd+=("${2:?}"); shift 2 ;;
    --env) envs+=("${2:?}"); shift 2 ;;
    --label) labels+=("${2:?}"); shift 2 ;;
    --port) ports+=("${2:?}"); shift 2 ;;
    *) echo "tools/oci-archive.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[[ -d $rootfs && -n $name && -n $output ]] || {
  echo "tools/oci-archive.sh: --rootfs DIR, --name REF and --output FILE are required" >&2
  exit 2
}
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

# One layer: sorted entries, owned by root, fixed times, no atime/ctime records.
reproducible=(--sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=posix
  --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime)
mapfile -t entries < <(cd "$rootfs" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | sort)
[[ ${#entries[@]} -gt 0 ]] || { echo "tools/oci-archive.sh: $rootfs is empty" >&2; exit 1; }
tar "${reproducible[@]}" -C "$rootfs" -cf "$work/layer.tar" "${entries[@]}"
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -9 -n -c "$work/layer.tar" >"$work/layer.tar.gz"

# blob FILE: moves FILE into the layout's blobs; prints "<sha256> <size>".
blob() {
  local sum size
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$oci/blobs/sha256/$sum"
  echo "$sum $size"
}
read -r layer_sum layer_size < <(blob "$work/layer.tar.gz")

config="{"
[[ -z $user ]] || config+="\"User\":$(json_str "$user"),"
config+="\"Env\":$(json_list "${envs[@]}")"
[[ -z $entrypoint ]] || config+=",\"Entrypoint\":$(json_list "$entrypoint")"
[[ ${#cmd[@]} -eq 0 ]] || config+=",\"Cmd\":$(json_list "${cmd[@]}")"
if [[ ${#ports[@]} -gt 0 ]]; then
  exposed=""
  for p in "${ports[@]}"; do exposed+=${exposed:+,}$(json_str "$p"):{}; done
  config+=",\"ExposedPorts\":{$exposed}"
fi
config+=",\"Labels\":$(json_map "${labels[@]}")}"
printf '%s' "{\"created\":\"$created\",\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":$config,\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$diff_id\"]},\"history\":[{\"created\":\"$created\",\"created_by\":\"tools/oci-archive.sh\"}]}" >"$work/config.json"
read -r config_sum config_size < <(blob "$work/config.json")

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"sha256:$config_sum\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_sum\",\"size\":$layer_size}]}" >"$work/manifest.json"
read -r manifest_sum manifest_size < <(blob "$work/manifest.json")

printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$oci/oci-layout"
# io.containerd.image.name: the name `ctr images import` gives the image;
# org.opencontainers.image.ref.name: its tag (skopeo copy oci-archive:FILE:TAG ...).
printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$manifest_sum\",\"size\":$manifest_size,\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":$(json_str "$fullname"),\"org.opencontainers.image.ref.name\":$(json_str "$tag")}}]}" >"$oci/index.json"

mkdir -p "$(dirname "$output")"
tar "${reproducible[@]}" -C "$oci" -cf "$output.tmp" oci-layout index.json blobs
mv "$output.tmp" "$output"
echo "sha256:$manifest_sum"
