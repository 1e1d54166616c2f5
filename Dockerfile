# The operator's image: a static ppio-operator and a non-root user (65532), on scratch (no
# shell, no package manager, no libc, no CA bundle: the binary carries the Mozilla roots, and
# --ppio-ca-file adds more). tools/image.sh builds the same files without
# a daemon, as an OCI archive.
#
#   docker build -t registry.example.com/ppio-operator:0.1.0 .
#   docker push registry.example.com/ppio-operator:0.1.0

FROM rust:1.95-bookworm AS build
WORKDIR /src
# The workspace's manifests must all be present for cargo to resolve it; only the operator's
# crate is built.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY crates ./crates
# A static glibc build (as tools/image.sh makes): the binary needs no loader and no libc.
RUN target="$(uname -m)-unknown-linux-gnu" \
    && RUSTFLAGS='-C target-feature=+crt-static' \
       cargo build --release --locked --bin ppio-operator --target "$target" \
    && cp "target/$target/release/ppio-operator" /ppio-operator \
    && if ldd /ppio-operator 2>&1 | grep -q '=>'; then echo "not static" >&2; exit 1; fi

FROM scratch
LABEL org.opencontainers.image.title="ppio-operator" \
      org.opencontainers.image.description="Mirrors PPIO GPU instances into PpioInstance resources" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# The user 65532 and the binary: nothing else.
COPY tools/image/passwd /etc/passwd
COPY tools/image/group /etc/group
COPY --from=build /ppio-operator /usr/local/bin/ppio-operator
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ppio-operator"]
CMD ["run"]
