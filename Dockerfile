# The operator's image with Docker: a static ppio-operator, a non-root user (65532) and the
# licence texts, on scratch (no shell, no package manager, no libc, no CA bundle: the binary
# carries the Mozilla roots, and --ppio-ca-file adds more). There is no base image to pin: the
# binaries are built first by the release command, so a Docker build and the release's image
# hold the same files.
#
#   tools/release.sh 0.1.0 --no-push     # target/release/0.1.0/ppio-operator-linux-{amd64,arm64}
#   docker build -t registry.example.com/ppio-operator:0.1.0 .
#   docker push registry.example.com/ppio-operator:0.1.0
#
# arm64: --build-arg ARCH=arm64 --platform linux/arm64. tools/release.sh publishes both
# platforms as one image index, with SBOMs and signatures, without Docker.

ARG ARCH=amd64
FROM --platform=linux/${ARCH} scratch
ARG ARCH=amd64
ARG RELEASE=target/release/0.1.0
LABEL org.opencontainers.image.title="ppio-operator" \
      org.opencontainers.image.description="Mirrors PPIO GPU instances into PpioInstance resources" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
# The user 65532, the binary and the licences: nothing else.
COPY tools/image/passwd /etc/passwd
COPY tools/image/group /etc/group
COPY LICENSE ${RELEASE}/THIRD-PARTY-LICENSES.txt /usr/share/doc/ppio-operator/
COPY ${RELEASE}/ppio-operator-linux-${ARCH} /usr/local/bin/ppio-operator
ENV PATH=/usr/local/bin
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/ppio-operator"]
CMD ["run"]
