# One image, two binaries: `api` (the default command) and `worker`.
# syntax=docker/dockerfile:1

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
ENV TEMPLATES_DIR=/app/templates \
    API_ADDR=0.0.0.0:8080 \
    WORKER_ADDR=0.0.0.0:9090 \
    LOG_FORMAT=json
USER reset
EXPOSE 8080 9090
CMD ["api"]
