# syntax=docker/dockerfile:1.7
# Multi-stage build for both services: `--target producer` or `--target consumer`.
# The builder compiles librdkafka from source (rdkafka's bundled build), hence the C toolchain.

FROM rust:1-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake perl python3 pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build artifacts between builds; the binaries are copied
# out because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin producer --bin consumer \
    && mkdir -p /out && cp target/release/producer target/release/consumer /out/

# The dashboard's chart library, from the npm registry as the lockfile pins it.
FROM node:20-bookworm-slim AS dashboard
WORKDIR /dashboard
COPY producer/dashboard/package.json producer/dashboard/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin orderflow
USER 10001
ENV LOG_FORMAT=json RUST_LOG=info

FROM runtime AS producer
COPY --from=builder /out/producer /usr/local/bin/producer
COPY --from=dashboard /dashboard/node_modules/uplot/dist /usr/share/orderflow/dashboard
ENV DASHBOARD_ASSETS_DIR=/usr/share/orderflow/dashboard
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD curl -fsS http://127.0.0.1:8080/ready || exit 1
ENTRYPOINT ["/usr/local/bin/producer"]

FROM runtime AS consumer
COPY --from=builder /out/consumer /usr/local/bin/consumer
EXPOSE 8081
HEALTHCHECK --interval=5s --timeout=3s --retries=12 CMD curl -fsS http://127.0.0.1:8081/ready || exit 1
ENTRYPOINT ["/usr/local/bin/consumer"]
