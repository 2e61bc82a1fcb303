# Berth's container image.
#
#   docker build -t berth .
#
# builds the binary in an official Rust image and puts it in a small Debian runtime, as a
# non-root user, with its data in a volume at /var/lib/berth and the API on 0.0.0.0:5000.
#
# A binary cargo already built can go in instead (the test command does this: no image
# registry is reachable there). The build stage then only copies it, from a build context
# that holds just that file, and the runtime stage is the same one users get:
#
#   docker build -f Dockerfile --build-arg BUILD_IMAGE=debian:bookworm-slim \
#       --build-arg PREBUILT=berth -t berth <a directory holding the binary, named berth>
#
# BUILD_IMAGE and RUNTIME_IMAGE name the base images, for mirrors and air-gapped builds.
ARG BUILD_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
# The path of a prebuilt binary in the build context; empty builds from the sources (with
# make, which jemalloc's build runs and the slim Rust image lacks), without its debug info (the
# release binary is 153 MB with its line tables, 29 MB stripped).
ARG PREBUILT=
WORKDIR /src
COPY . .
RUN set -eu; \
    if [ -n "$PREBUILT" ]; then \
        install -m 0755 "$PREBUILT" /berth; \
    else \
        apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*; \
        CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --bin berth; \
        install -m 0755 target/release/berth /berth; \
    fi

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="Berth" \
      org.opencontainers.image.description="An OCI container registry: stateless replicas, S3 blobs, PostgreSQL metadata, Redis upload sessions" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/berth-registry/berth" \
      org.opencontainers.image.documentation="https://github.com/berth-registry/berth/tree/main/docs"
# CA certificates for S3, OpenTelemetry and other backends over HTTPS; a user of its own, and
# the data directory it owns: the image never runs as root.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && groupadd --system --gid 10001 berth \
    && useradd --system --uid 10001 --gid berth --home-dir /var/lib/berth --shell /usr/sbin/nologin berth \
    && install -d -o berth -g berth -m 0750 /var/lib/berth
COPY --from=build /berth /usr/local/bin/berth
USER 10001:10001
ENV BERTH_LISTEN=0.0.0.0:5000 \
    BERTH_DATA_DIR=/var/lib/berth
VOLUME ["/var/lib/berth"]
EXPOSE 5000
# No curl in the image: Berth asks itself.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["berth", "healthcheck"]
ENTRYPOINT ["berth"]
CMD ["serve"]
