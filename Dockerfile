# The operator's image: a static ppio-operator and a non-root user (65532), on scratch (no
# shell, no package manager, no libc, no CA bundle: the binary carries the Mozilla roots, and
# --ppio-ca-file adds more). There is no base image to pin: the binary is built first, with
# the same command tools/image.sh runs, so a Docker build and the daemonless archive hold the
# same bytes.
#
#   RUSTFLAGS='-C target-feature=+crt-static' \
#     cargo build --release --locked --bin ppio-operator --target x86_64-unknown-linux-gnu
#   docker build -t registry.example.com/ppio-operator:0.1.0 .
#   docker push registry.example.com/ppio-operator:0.1.0
#
# Another target: --build-arg BINARY=target/<target>/release/ppio-operator and the platform
# it runs on, e.g. --build-arg PLATFORM=linux/arm64 (the image says the binary's platform,
# not the build host's).

ARG PLATFORM=linux/amd64
FROM --platform=${PLATFORM} scratch
ARG BINARY=target/x86_64-unknown-linux-gnu/release/ppio-operator
LABEL org.opencontainers.image.title="ppio-operator" \
      org.opencontainers.image.description="Mirrors PPIO GPU instances into PpioInstance resources" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# The user 65532 and the binary: nothing else.
COPY tools/image/passwd /etc/passwd
COPY tools/image/group /etc/group
COPY ${BINARY} /usr/local/bin/ppio-operator
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ppio-operator"]
CMD ["run"]
