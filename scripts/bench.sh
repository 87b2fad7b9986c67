#!/usr/bin/env bash
# Benchmarks a fresh release stack on this machine and prints the report (see docs/benchmarks.md).
#
#   scripts/bench.sh                       # every section but the soak (a few minutes)
#   scripts/bench.sh --only soak --soak-secs 600
#
# It builds the release binaries, starts one api and one worker against a new database
# (`conveyor_bench`) and their own RabbitMQ queues (`conveyor-bench.*`), runs `conveyor-bench`
# with the arguments given here, and stops the stack. Postgres and RabbitMQ must be up
# (scripts/ensure-services.sh). Run it on an otherwise idle machine: every figure is relative to
# what the cores can do.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/conveyor-target}"
# CONVEYOR_BENCH_BIN_DIR runs binaries built elsewhere (e.g. to compare two versions).
if [ -n "${CONVEYOR_BENCH_BIN_DIR:-}" ]; then
    bin="$CONVEYOR_BENCH_BIN_DIR"
else
    cargo build --release --quiet -p conveyor-api -p conveyor-worker -p conveyor-bench
    bin="$CARGO_TARGET_DIR/release"
fi

db="${CONVEYOR_BENCH_DB:-conveyor_bench}"
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
# Stale messages from an earlier run would only be dead-lettered, but they would cost time.
for q in default transactions integrations dead-letter; do
    rabbitmqctl -q delete_queue "conveyor-bench.$q" >/dev/null 2>&1 || true
done

# Plain connections over loopback, as in docker-compose.yml (whose Postgres has no TLS); with
# sslmode left at its default (prefer), this machine's TLS-enabled Postgres would be used over TLS.
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db?sslmode=disable"
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export CONVEYOR_QUEUE_PREFIX=conveyor-bench
export CONVEYOR_BOOTSTRAP_TOKEN=bench-token
export CONVEYOR_BENCH_TOKEN=bench-token
export CONVEYOR_API_ADDR=127.0.0.1:18080
export CONVEYOR_BENCH_API_URL=http://127.0.0.1:18080
export CONVEYOR_WORKER_ADDR=127.0.0.1:19101
# The benchmark is one client sending as fast as it can: per-key limits would measure themselves.
export CONVEYOR_RATE_LIMIT_RPS=0
export CONVEYOR_LOG_FORMAT=json
export RUST_LOG="${RUST_LOG:-warn}"

logs="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_ready() {
    local url=$1 name=$2
    for _ in $(seq 1 300); do
        if curl -fs "$url" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "$name did not become ready; its log:" >&2
    cat "$logs/$name.log" >&2
    exit 1
}

"$bin/conveyor-api" >"$logs/api.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:18080/readyz api
"$bin/conveyor-worker" >"$logs/worker.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:19101/readyz worker
# Let both settle so "RSS before the run" is memory at rest.
sleep 2
"$bin/conveyor-bench" "$@"
echo "logs: $logs"
