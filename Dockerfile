# syntax=docker/dockerfile:1
# The maas inference server as a small container image (BuildKit, the default builder since
# Docker 23, is needed for the cache mounts below).
#
#   docker build -t maas .
#   docker run --rm -p 8080:8080 -p 8081:8081 -v "$PWD/model.maas:/srv/model.maas:ro" -e MAAS_API_KEY=... maas
#
# The image holds the server only; the model is mounted at /srv/model.maas, or baked into a
# derived image with deploy/model.Dockerfile (what deploy/kubernetes.yaml runs). See deploy/README.md.

ARG RUST_VERSION=1.95
# Where the runtime stage takes the binary from: the build stage below, or an image holding a
# binary built elsewhere at /usr/local/bin/maas. deploy/smoke.sh (CI) passes
# --build-arg BINARY=localhost/maas-binary:smoke, the binary `cargo test` built, since the Rust
# image cannot be pulled there; the runtime stage it tests is the one that ships.
ARG BINARY=build

# ---- build: compile the release binary -------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
# libjpeg-turbo's static library (JPEG photos decoded at a reduced DCT scale), linked into the
# binary (.cargo/config.toml): the runtime stage needs nothing more.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libturbojpeg0-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target folders live in BuildKit cache mounts, so a source change recompiles
# maas alone, not burn and the other dependencies. The binary is copied out of the cache mount in
# the same step, since the mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --features turbojpeg --bin maas \
    && install -m 0755 target/release/maas /usr/local/bin/maas

# ---- binary: the build stage's binary, or the one given with --build-arg BINARY=IMAGE --------
FROM ${BINARY} AS binary

# ---- runtime: the binary, a non-root user, nothing else ---------------------------------------
# maas links only glibc and libgcc (no OpenSSL: HTTPS goes through rustls with bundled roots), so
# the plain slim image is enough and no package is installed.
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 maas \
    && useradd --system --uid 10001 --gid maas --no-create-home --home-dir /srv \
        --shell /usr/sbin/nologin maas
COPY --from=binary /usr/local/bin/maas /usr/local/bin/maas
WORKDIR /srv
# Listen on every interface of the container, on the CPU. maas warns when it listens beyond
# loopback without an API key: pass MAAS_API_KEY (or MAAS_API_KEY_FILE, e.g. a mounted secret).
ENV MAAS_HOST=0.0.0.0 \
    MAAS_PORT=8080 \
    MAAS_GRPC_PORT=8081 \
    MAAS_DEVICE=cpu
USER 10001:10001
# REST (KServe v2), then gRPC (inference.GRPCInferenceService).
EXPOSE 8080 8081
# Healthy once the model is loaded. No curl in the image: bash's /dev/tcp sends the request and
# the status line is checked (hyper answers an HTTP/1.0 request with "HTTP/1.0 200 OK").
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${MAAS_PORT:-8080} && printf 'GET /v2/health/ready HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM (docker stop, Kubernetes) makes maas stop accepting, finish the requests in flight and
# exit 0; give it more than --timeout-ms (30 s by default): docker stop --time 35.
STOPSIGNAL SIGTERM
ENTRYPOINT ["maas"]
CMD ["serve", "--model", "/srv/model.maas"]
