#!/bin/sh
# Staging load: `resync-hierarchy bench` against the compose Redis, over and
# over, exposing the bench process's live metrics on $METRICS_PORT for
# Prometheus. A failed SLA check (exit 1) does not stop the loop: the point is
# to watch it on the dashboard. Tune with the variables below.
set -u

REDIS_URL="${REDIS_URL:-redis://redis:6379/0}"
METRICS_PORT="${METRICS_PORT:-9108}"
METRICS_ADDR="${METRICS_ADDR:-0.0.0.0}"  # reachable by Prometheus on the compose network
BENCH_NAMESPACE="${BENCH_NAMESPACE:-bench}"
BENCH_DURATION="${BENCH_DURATION:-300}"
BENCH_RATE="${BENCH_RATE:-1000}"
BENCH_CONCURRENCY="${BENCH_CONCURRENCY:-100}"
BENCH_KEYSPACE="${BENCH_KEYSPACE:-50000}"
BENCH_PAUSE="${BENCH_PAUSE:-2}"

run=0
while :; do
  run=$((run + 1))
  echo "bench-loop: run ${run}: ${BENCH_DURATION}s at ${BENCH_RATE} req/s on ${BENCH_NAMESPACE}"
  resync-hierarchy bench \
    --redis-url "${REDIS_URL}" \
    --namespace "${BENCH_NAMESPACE}" \
    --metrics-port "${METRICS_PORT}" \
    --metrics-addr "${METRICS_ADDR}" \
    --duration "${BENCH_DURATION}" \
    --warmup 2 \
    --rate "${BENCH_RATE}" \
    --concurrency "${BENCH_CONCURRENCY}" \
    --keyspace "${BENCH_KEYSPACE}" \
    --no-progress
  echo "bench-loop: run ${run} exited with $?"
  sleep "${BENCH_PAUSE}"
done
