#!/usr/bin/env bash
# Publishes a release of the operator to an OCI registry: the multi-arch image, its SBOMs and
# the Helm chart, signed when given a key. No Docker daemon is involved.
#
#   tools/release.sh VERSION REGISTRY [--key FILE] [--ca-file FILE] [--plain-http] [--out DIR]
#   tools/release.sh VERSION --no-push [--out DIR]
#
#   VERSION        the crate's version (Cargo.toml); the chart's version and appVersion must
#                  equal it
#   REGISTRY       host[:port][/path]: the image goes to REGISTRY/ppio-operator:VERSION, the
#                  chart to oci://REGISTRY/charts/ppio-operator at VERSION
#   --key FILE     a cosign private key (cosign generate-key-pair; its password in
#                  COSIGN_PASSWORD): signs the image and the chart, offline (no transparency
#                  log), and prints how to verify them
#   --ca-file FILE trust the registry's certificate through this CA bundle (PEM)
#   --plain-http   talk HTTP, not HTTPS: only for a registry on a loopback address
#   --out DIR      where the artefacts go (default: $CARGO_TARGET_DIR or ./target, /release/VERSION)
#   --no-push      build and assemble only (no registry)
#
# What it does:
#   1. builds ppio-operator for linux/amd64 and linux/arm64 as static musl binaries (zig as
#      the C compiler and linker, cargo-zigbuild), with `cargo auditable` dependency data
#      embedded, the paths of this machine remapped, jemalloc kept (the musl allocator is
#      slower under the operator's many threads); each binary runs its --version (arm64 under
#      qemu-aarch64-static when installed)
#   2. writes the third-party licence texts (cargo about: every crate of the normal dependency
#      tree of both platforms) and a CycloneDX SBOM per platform (cargo cyclonedx, from
#      Cargo.lock; the commit's time, and a serial number made from its content)
#   3. assembles the image index (tools/oci-archive.sh: one layer per platform with the binary,
#      user 65532, LICENSE and the licence texts); the same commit gives the same digests
#   4. packages the chart with image.repository set to REGISTRY/ppio-operator
#   5. pushes the image (crane), attaches each platform's SBOM (cosign attach sbom), pushes
#      the chart (helm push), and signs image and chart when --key is given (cosign sign)
#
# Its programs (cargo-auditable, cargo-zigbuild, zig, cargo-about, cargo-cyclonedx, crane,
# cosign, helm) come from tools/build.sh, which builds the missing ones into
# ~/.cache/ppio-operator. The release builds in a target folder of its own
# (~/.cache/ppio-operator/release-target, or $RELEASE_TARGET_DIR), so it neither waits for nor
# disturbs a development build. Files written to --out: ppio-operator-linux-{amd64,arm64}
# (the binaries), THIRD-PARTY-LICENSES.txt, sbom-linux-{amd64,arm64}.cdx.json, image/ (the
# OCI image layout), ppio-operator-VERSION.tgz (the chart) and release.env (the references
# and digests pushed).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ppio-operator
export PPIO_TOOLS_BIN=${PPIO_TOOLS_BIN:-$cache/bin}
export PATH=$PPIO_TOOLS_BIN:$PATH

usage() { sed -n '2,42p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tools/release.sh: $*" >&2; exit 2; }
step() { echo "==> $*" >&2; }
# quiet CMD...: runs CMD, showing its output only when it fails (cosign is chatty).
quiet() {
  local said
  said=$("$@" 2>&1) || { echo "$said" >&2; echo "tools/release.sh: failed: $*" >&2; exit 1; }
}

version="" registry="" key="" ca_file="" plain_http=0 out="" push=1
positional=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --key) key=${2:?--key needs a file}; shift 2 ;;
    --ca-file) ca_file=${2:?--ca-file needs a file}; shift 2 ;;
    --plain-http) plain_http=1; shift ;;
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --no-push) push=0; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) positional+=("$1"); shift ;;
  esac
done
version=${positional[0]:-}
registry=${positional[1]:-}
[[ -n $version ]] || die "VERSION is required (see --help)"
[[ ${#positional[@]} -le 2 ]] || die "too many arguments: ${positional[*]:2}"

crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ $version == "$crate_version" ]] ||
  die "VERSION $version is not the crate's version ($crate_version in Cargo.toml): bump Cargo.toml, the chart and CHANGELOG.md together"
chart_version=$(sed -n 's/^version: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/ppio-operator/Chart.yaml)
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/ppio-operator/Chart.yaml)
[[ $chart_version == "$version" && $app_version == "$version" ]] ||
  die "the chart's version ($chart_version) and appVersion ($app_version) must both be $version (charts/ppio-operator/Chart.yaml)"
grep -q "^## \[$version\]" CHANGELOG.md || die "CHANGELOG.md has no section '## [$version]'"

if [[ $push -eq 1 ]]; then
  [[ -n $registry ]] || die "REGISTRY is required (host[:port][/path]), or --no-push"
  [[ $registry =~ ^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$ ]] ||
    die "REGISTRY '$registry' is not host[:port][/path] (lower-case path, no scheme)"
  host=${registry%%/*}
  hostname=${host%:*}
  if [[ $plain_http -eq 1 ]]; then
    case $hostname in
      localhost | 127.* | \[::1\]) ;;
      *) die "--plain-http is only allowed for a registry on a loopback address, not $host" ;;
    esac
  fi
  [[ -z $key || -f $key ]] || die "--key $key: no such file"
  [[ -z $ca_file || -f $ca_file ]] || die "--ca-file $ca_file: no such file"
else
  [[ -z $registry ]] || die "--no-push takes no REGISTRY"
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${out:-$target_dir/release/$version}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The programs, built when missing.
need=(cargo-auditable cargo-zigbuild zig cargo-about cargo-cyclonedx)
[[ $push -eq 0 ]] || need+=(crane helm cosign)
missing=()
for p in "${need[@]}"; do [[ -x $PPIO_TOOLS_BIN/$p ]] || missing+=("$p"); done
[[ ${#missing[@]} -eq 0 ]] || tools/build.sh "${missing[@]}"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t"
done

# Reproducible: the commit's time is the image's time (not the binaries': they hold none, and
# cargo would rebuild them for every commit), and no path of this machine is kept.
if git rev-parse --git-dir >/dev/null 2>&1; then
  epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
  revision=$(git rev-parse HEAD)
  [[ -z $(git status --porcelain --untracked-files=no) ]] || {
    echo "tools/release.sh: warning: the work tree has uncommitted changes; the image is labelled $revision all the same" >&2
  }
else
  epoch=${SOURCE_DATE_EPOCH:-0}
  revision=unknown
fi
cargo_home=${CARGO_HOME:-$HOME/.cargo}
remap="--remap-path-prefix=$root=/build/ppio-operator --remap-path-prefix=$cargo_home=/cargo"
export RELEASE_TARGET_DIR=${RELEASE_TARGET_DIR:-$cache/release-target}

# 1. The binaries. What a calling cargo (a test) sets for its own children is not passed on:
# build scripts that read it would make this build differ from one started from a shell.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^(CARGO_(MANIFEST_|PKG_|CRATE_|PRIMARY_|BIN_|TARGET_TMPDIR)|OUT_DIR$|RUSTC_WRAPPER$|RUSTC_WORKSPACE_WRAPPER$|__CARGO)')
step "building ppio-operator $version for linux/amd64 and linux/arm64 (static, musl, cargo auditable)"
start=$SECONDS
prefix_map="-ffile-prefix-map=$root=/build/ppio-operator -ffile-prefix-map=$cargo_home=/cargo"
# cargo auditable: not `cargo auditable zigbuild`, which sets RUSTC_WORKSPACE_WRAPPER to its own
# absolute path. Cargo hashes that path into the workspace crates' `-C metadata`, hence into
# their symbol names, how their code is split into codegen units and the code itself: the
# binary would depend on where the tools are installed (under $HOME). This does what it does
# (cargo-auditable 0.7.7, src/cargo_auditable.rs) with the wrapper's bare name, found on PATH.
auditable=$(command -v cargo-auditable) || die "cargo-auditable is not on PATH ($PPIO_TOOLS_BIN)"
[[ $(readlink -f "$auditable") == "$(readlink -f "$PPIO_TOOLS_BIN/cargo-auditable")" ]] ||
  die "cargo-auditable on PATH is $auditable, not the pinned $PPIO_TOOLS_BIN/cargo-auditable"
# jemalloc for arm64 is built for pages of up to 64 KiB: it then runs on 4, 16 and 64 KiB kernels.
CARGO_TARGET_DIR=$RELEASE_TARGET_DIR \
  RUSTFLAGS="$remap -C target-feature=+crt-static" \
  CFLAGS_x86_64_unknown_linux_musl="$prefix_map" CFLAGS_aarch64_unknown_linux_musl="$prefix_map" \
  JEMALLOC_SYS_WITH_LG_PAGE=16 \
  RUSTC_WORKSPACE_WRAPPER=cargo-auditable \
  CARGO_AUDITABLE_ORIG_ARGS='{"offline":false,"locked":true,"frozen":false,"config":[]}' \
  env -u SOURCE_DATE_EPOCH cargo zigbuild --release --locked --bin ppio-operator \
  --target x86_64-unknown-linux-musl --target aarch64-unknown-linux-musl
step "built in $((SECONDS - start))s"

arch_of() { case $1 in x86_64-*) echo amd64 ;; aarch64-*) echo arm64 ;; esac; }
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  arch=$(arch_of "$t")
  bin=$out/ppio-operator-linux-$arch
  install -m 0755 "$RELEASE_TARGET_DIR/$t/release/ppio-operator" "$bin"
  desc=$(file -L "$bin")
  if [[ $desc != *"statically linked"* && $desc != *"static-pie linked"* ]] || [[ $desc == *interpreter* ]]; then
    echo "tools/release.sh: $bin is not statically linked: $desc" >&2
    exit 1
  fi
done
said=$("$out/ppio-operator-linux-amd64" --version)
[[ $said == "ppio-operator $version"* ]] || { echo "tools/release.sh: the amd64 binary says '$said'" >&2; exit 1; }
if command -v qemu-aarch64-static >/dev/null; then
  said=$(qemu-aarch64-static "$out/ppio-operator-linux-arm64" --version)
  [[ $said == "ppio-operator $version"* ]] || { echo "tools/release.sh: the arm64 binary says '$said'" >&2; exit 1; }
  step "the arm64 binary runs (qemu-aarch64-static): $said"
else
  echo "tools/release.sh: qemu-aarch64-static is not installed: the arm64 binary was not run (apt-get install qemu-user-static)" >&2
fi

# 2. Licences and SBOMs.
# cargo about reads every licence file of every crate (minutes): its output is kept, keyed by
# what it is made from.
licences_key=$(cat Cargo.lock about.toml tools/release/licenses.hbs "$(command -v cargo-about)" | sha256sum | cut -c1-16)
licences_kept=$RELEASE_TARGET_DIR/licences/THIRD-PARTY-LICENSES-$licences_key.txt
if [[ ! -f $licences_kept ]]; then
  step "the third-party licence texts (cargo about)"
  mkdir -p "${licences_kept%/*}"
  # cargo about reads the metadata of every crate of Cargo.lock, those of other platforms too,
  # which no build here downloaded (a fresh CARGO_HOME): fetch them first.
  cargo fetch --locked --quiet
  cargo about generate --locked --offline --fail -c about.toml tools/release/licenses.hbs \
    -o "$licences_kept.tmp"
  mv "$licences_kept.tmp" "$licences_kept"
fi
cp "$licences_kept" "$out/THIRD-PARTY-LICENSES.txt"
# sbom_reproducible FILE: cargo cyclonedx stamps each SBOM with the time and a random serial
# number; the commit's time, and a serial number made from the content (a name-based UUID),
# make the same commit give the same SBOMs, as it gives the same image.
sbom_reproducible() {
  local file=$1 when hex variant uuid
  when=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
  sed -i -E 's/("timestamp": )"[^"]*"/\1"'"$when"'"/; s/("serialNumber": )"[^"]*"/\1""/' "$file"
  hex=$(sha256sum "$file" | cut -c1-32)
  variant=$(printf %x $(((0x${hex:16:1} & 3) | 8)))
  uuid=${hex:0:8}-${hex:8:4}-5${hex:13:3}-$variant${hex:17:3}-${hex:20:12}
  sed -i -E 's/("serialNumber": )""/\1"urn:uuid:'"$uuid"'"/' "$file"
  grep -q "\"timestamp\": \"$when\"" "$file" && grep -q "\"serialNumber\": \"urn:uuid:$uuid\"" "$file" || {
    echo "tools/release.sh: $file: no timestamp or serialNumber to set (a new cargo cyclonedx?)" >&2
    exit 1
  }
}
step "the SBOMs (cargo cyclonedx, CycloneDX 1.5 JSON)"
for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do
  arch=$(arch_of "$t")
  cargo cyclonedx --format json --spec-version 1.5 --no-build-deps --target "$t" \
    --override-filename "sbom-linux-$arch.cdx" --quiet
  mv "sbom-linux-$arch.cdx.json" "$out/sbom-linux-$arch.cdx.json"
  sbom_reproducible "$out/sbom-linux-$arch.cdx.json"
  # It writes one beside each workspace crate too (the test helpers): not shipped.
  rm -f crates/*/"sbom-linux-$arch.cdx.json"
done

# 3. The image index.
step "the image index (linux/amd64, linux/arm64)"
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
for arch in amd64 arm64; do
  r=$rootfs/$arch
  mkdir -p "$r/usr/local/bin" "$r/etc" "$r/usr/share/doc/ppio-operator"
  install -m 0755 "$out/ppio-operator-linux-$arch" "$r/usr/local/bin/ppio-operator"
  install -m 0644 tools/image/passwd "$r/etc/passwd"
  install -m 0644 tools/image/group "$r/etc/group"
  install -m 0644 LICENSE "$r/usr/share/doc/ppio-operator/LICENSE"
  install -m 0644 "$out/THIRD-PARTY-LICENSES.txt" "$r/usr/share/doc/ppio-operator/THIRD-PARTY-LICENSES.txt"
  find "$r" -type d -exec chmod 0755 {} +
done
image_name=${registry:+$registry/}ppio-operator:$version
index_digest=$(SOURCE_DATE_EPOCH=$epoch tools/oci-archive.sh --rootfs "amd64=$rootfs/amd64" --rootfs "arm64=$rootfs/arm64" \
  --name "$image_name" --layout "$out/image" \
  --user 65532:65532 --entrypoint /usr/local/bin/ppio-operator --cmd run \
  --env PATH=/usr/local/bin --port 8080/tcp \
  --label org.opencontainers.image.title=ppio-operator \
  --label "org.opencontainers.image.description=Mirrors PPIO GPU instances into PpioInstance resources" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision")
step "image index $index_digest"

# 4. The chart, naming this registry's image.
step "the chart"
chart_src=$(mktemp -d)
trap 'rm -rf "$rootfs" "$chart_src"' EXIT
cp -r charts/ppio-operator "$chart_src/ppio-operator"
if [[ -n $registry ]]; then
  sed -i "s|^  repository: ppio-operator$|  repository: $registry/ppio-operator|" "$chart_src/ppio-operator/values.yaml"
  grep -q "^  repository: $registry/ppio-operator$" "$chart_src/ppio-operator/values.yaml" ||
    { echo "tools/release.sh: could not set image.repository in the chart's values.yaml" >&2; exit 1; }
fi
helm package "$chart_src/ppio-operator" --destination "$out" >/dev/null
chart=$out/ppio-operator-$version.tgz
[[ -f $chart ]] || { echo "tools/release.sh: helm package wrote no $chart" >&2; exit 1; }
# helm stamps each file with the time of packaging: packed again, as helm lays it out (files
# only, sorted), with the commit's time, owned by root and gzip without a name or time, so the
# same commit gives the same chart digest too.
repack=$chart_src/repack
mkdir -p "$repack"
tar -xzf "$chart" -C "$repack"
(cd "$repack" && find . -type f -printf '%P\n' | LC_ALL=C sort |
  tar --no-recursion --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --format=ustar -T - -cf -) | gzip -9 -n >"$chart.tmp"
mv "$chart.tmp" "$chart"

cat >"$out/release.env" <<EOF
VERSION=$version
REVISION=$revision
IMAGE_INDEX_DIGEST=$index_digest
EOF
if [[ $push -eq 0 ]]; then
  step "built (not pushed): $out"
  exit 0
fi

# 5. Push, attach, sign.
crane_flags=() helm_flags=() cosign_flags=()
if [[ $plain_http -eq 1 ]]; then
  crane_flags+=(--insecure)
  helm_flags+=(--plain-http)
  cosign_flags+=(--allow-http-registry --allow-insecure-registry)
fi
if [[ -n $ca_file ]]; then
  # crane and cosign read the CA from SSL_CERT_FILE (Go's rule on Linux); helm takes a flag.
  export SSL_CERT_FILE=$ca_file
  helm_flags+=(--ca-file "$ca_file")
fi
image_ref=$registry/ppio-operator
step "pushing $image_ref:$version"
crane push "${crane_flags[@]}" "$out/image" "$image_ref:$version" >/dev/null
pushed=$(crane digest "${crane_flags[@]}" "$image_ref:$version")
[[ $pushed == "$index_digest" ]] ||
  { echo "tools/release.sh: the registry has $pushed for $image_ref:$version, not $index_digest" >&2; exit 1; }

for arch in amd64 arm64; do
  digest=$(crane digest "${crane_flags[@]}" --platform "linux/$arch" "$image_ref:$version")
  step "attaching the linux/$arch SBOM to $image_ref@$digest"
  quiet cosign attach sbom "${cosign_flags[@]}" --sbom "$out/sbom-linux-$arch.cdx.json" \
    --type cyclonedx --input-format json "$image_ref@$digest"
  echo "IMAGE_DIGEST_LINUX_${arch^^}=$digest" >>"$out/release.env"
done

step "pushing oci://$registry/charts/ppio-operator:$version"
chart_out=$(helm push "$chart" "oci://$registry/charts" "${helm_flags[@]}" 2>&1) ||
  { echo "$chart_out" >&2; exit 1; }
chart_digest=$(sed -n 's/^Digest: *//p' <<<"$chart_out")
[[ $chart_digest == sha256:* ]] || { echo "tools/release.sh: helm push said no digest: $chart_out" >&2; exit 1; }

if [[ -n $key ]]; then
  step "signing the image and the chart (cosign, key $key, no transparency log)"
  for ref in "$image_ref@$index_digest" "$registry/charts/ppio-operator@$chart_digest"; do
    COSIGN_PASSWORD=${COSIGN_PASSWORD-} quiet cosign sign "${cosign_flags[@]}" --key "$key" \
      --tlog-upload=false --yes "$ref"
  done
fi

cat >>"$out/release.env" <<EOF
IMAGE=$image_ref:$version
CHART=oci://$registry/charts/ppio-operator
CHART_DIGEST=$chart_digest
SIGNED=$([[ -n $key ]] && echo true || echo false)
EOF
cat >&2 <<EOF
==> released ppio-operator $version
    image  $image_ref:$version  ($index_digest; linux/amd64, linux/arm64)
    chart  oci://$registry/charts/ppio-operator --version $version  ($chart_digest)
    install: helm install ppio-operator oci://$registry/charts/ppio-operator --version $version \\
               --namespace ppio-system --create-namespace --set apiKey.existingSecret=ppio-credentials
EOF
if [[ -n $key ]]; then
  cat >&2 <<EOF
    verify (with the public key of $key):
      cosign verify --key cosign.pub --insecure-ignore-tlog=true $image_ref:$version
      cosign verify --key cosign.pub --insecure-ignore-tlog=true $registry/charts/ppio-operator:$version
EOF
fi
echo "$out/release.env"
