#!/usr/bin/env bash
# Fuzzes a running Conveyor api from its own OpenAPI document with Schemathesis (PyPI): every
# operation gets generated valid and invalid requests, and the run fails on any 5xx answer or
# any answer that the document does not declare (status, content type, body schema).
#
#   scripts/fuzz-api.sh http://127.0.0.1:8080 "$TOKEN"
#
# The token should be an admin key (so every operation is reachable). Bounded for CI: at most
# CONVEYOR_FUZZ_EXAMPLES (default 15) cases per operation and phase, with a fixed seed
# (CONVEYOR_FUZZ_SEED) so a failure reproduces. Schemathesis is pinned and installed once into
# a virtualenv under ~/.cache (CONVEYOR_FUZZ_VENV). `api/tests/fuzz.rs` runs this against a test
# api, so `cargo test` runs it too.
set -euo pipefail

BASE_URL=${1:?usage: fuzz-api.sh BASE_URL TOKEN}
TOKEN=${2:?usage: fuzz-api.sh BASE_URL TOKEN}
SCHEMATHESIS_VERSION=4.32.5
VENV=${CONVEYOR_FUZZ_VENV:-$HOME/.cache/conveyor-fuzz-venv}
EXAMPLES=${CONVEYOR_FUZZ_EXAMPLES:-15}
SEED=${CONVEYOR_FUZZ_SEED:-20261125}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

# Schemathesis keeps past failures under ./.schemathesis and replays them first; run from a
# scratch directory so every run is the same bounded, seeded run and the repo stays clean.
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
cd "$SCRATCH"

# Stateful testing (chains of calls through links) is left out: it has no example budget.
"$VENV/bin/schemathesis" run "$BASE_URL/openapi.json" \
  --url "$BASE_URL" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --phases examples,coverage,fuzzing \
  --max-examples "$EXAMPLES" \
  --seed "$SEED" \
  --generation-database none \
  --workers 2 \
  --request-timeout 10 \
  --no-color
