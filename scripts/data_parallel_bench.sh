#!/usr/bin/env bash
# Serving throughput of one engine x 2 threads against --data-parallel-size 2 (x 1 thread each), alternating
# ROUNDS times: `tokenmill bench serve` at 32 concurrent clients x 64 tokens (96 requests) against each server.
set -euo pipefail
PY=${PY:-.venv/bin/python}
ROUNDS=${ROUNDS:-2}
PORT=${PORT:-8391}
run_one() {  # $1: label, rest: serve flags
    local label=$1; shift
    $PY -m tokenmill serve --port "$PORT" --log-level warning "$@" 2>/tmp/dp_bench_server.log &
    local server=$!
    for _ in $(seq 240); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
    echo "== $label"
    $PY -m tokenmill bench serve --url "http://127.0.0.1:$PORT" --num-requests 96 --concurrency 32 \
        --max-tokens 64 --json | $PY -c "import json,sys; r=json.load(sys.stdin); print({k: r[k] for k in r if 'throughput' in k or 'ttft' in k})"
    kill "$server"; wait "$server" 2>/dev/null || true
}
for round in $(seq "$ROUNDS"); do
    run_one "1 engine x 2 threads (round $round)" --threads 2
    run_one "DP=2 x 1 thread (round $round)" --data-parallel-size 2 --threads 1
done
