#!/usr/bin/env bash
# The whole test suite, as CI runs it: services up, formatting, lints, then every test
# (unit and integration, against the real PostgreSQL and RabbitMQ on 127.0.0.1, and the
# dashboard in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh
scripts/ensure-browser.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
