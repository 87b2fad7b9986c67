# syntax=docker/dockerfile:1
#
# One image for every Conveyor role: conveyor-api, conveyor-worker, conveyor-scheduler and
# conveyor-sandbox all land in /usr/local/bin; docker-compose.yml picks one per service with `command:`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# sqlx's checked macros read the committed `.sqlx/` data instead of a live database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
# The cache mounts keep the registry and compiled dependencies between builds, so a code change
# recompiles only the workspace crates. The target dir is a cache, so the binaries are copied out
# within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        --bin conveyor-api \
        --bin conveyor-worker \
        --bin conveyor-scheduler \
        --bin conveyor-sandbox \
    && mkdir -p /out \
    && cp target/release/conveyor-api \
          target/release/conveyor-worker \
          target/release/conveyor-scheduler \
          target/release/conveyor-sandbox \
          /out/

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 conveyor \
    && useradd --system --uid 10001 --gid conveyor --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin conveyor
WORKDIR /app
COPY --from=builder /out/ /usr/local/bin/
# The api embeds these at compile time (sqlx::migrate!); the copy is for operators and tooling.
COPY migrations/ /app/migrations/
# Numeric, so orchestrators can verify the user is not root without reading /etc/passwd.
USER 10001:10001
ENV RUST_LOG=info
EXPOSE 8080 8090 9101 9102
CMD ["conveyor-api", "serve"]
