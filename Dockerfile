# syntax=docker/dockerfile:1
# One image, two binaries: `api` (the default command) and `worker`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and build outputs between builds; the binaries are copied
# out because the target mount does not outlive this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin api --bin worker \
    && mkdir -p /out \
    && cp target/release/api target/release/worker /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app reset
COPY --from=build /out/api /out/worker /usr/local/bin/
COPY templates /app/templates
WORKDIR /app
# The worker's status port stays on loopback unless its deployment opens it (compose and
# the Kubernetes manifest do, for probes and metrics, behind a network policy): its metrics
# count outcomes per account lookup, which must not be readable wherever the image runs.
ENV TEMPLATES_DIR=/app/templates \
    API_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
USER reset
EXPOSE 8080 9090
CMD ["api"]
