# A statically linked ppio-operator on a minimal, non-root base image.
#
#   docker build -t registry.example.com/ppio-operator:0.1.0 .
#   docker push registry.example.com/ppio-operator:0.1.0

FROM rust:1.95-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
# The workspace's manifests must all be present for cargo to resolve it; only the operator's
# crate is built.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY crates ./crates
# On Alpine the target is x86_64/aarch64-unknown-linux-musl: the binary is static.
RUN cargo build --release --locked --bin ppio-operator \
    && cp target/release/ppio-operator /ppio-operator

# distroless/static: no shell, no package manager; CA certificates included; user 65532.
FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="ppio-operator" \
      org.opencontainers.image.description="Mirrors PPIO GPU instances into PpioInstance resources" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=build /ppio-operator /usr/local/bin/ppio-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ppio-operator"]
CMD ["run"]
