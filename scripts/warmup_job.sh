#!/usr/bin/env bash
# Scheduled dump and warm-up of a resync-hierarchy namespace, for cron, systemd
# timers, Kubernetes Jobs and initContainers.
#
#   warmup_job.sh dump     write $DUMP_DIR/<namespace>-<UTC time>.<ext>, point
#                          <namespace>-latest.<ext> at it, keep the newest $KEEP
#   warmup_job.sh warmup   load the newest dump (or $WARMUP_FILE) into the cache,
#                          resumable: a run that is killed continues where it
#                          stopped the next time (state in $STATE_DIR)
#   warmup_job.sh copy     load another Redis/namespace ($FROM_URL, $FROM_NAMESPACE)
#
# Settings (environment):
#   REDIS_URL        target (warmup, copy) or source (dump) Redis     (required)
#   NAMESPACE        cache namespace                                  (required)
#   DUMP_DIR         where dumps live                 (default /var/lib/resync/dumps)
#   STATE_DIR        warm-up checkpoints              (default $DUMP_DIR/.state)
#   FORMAT           jsonl | msgpack (msgpack keeps bytes and datetimes; default jsonl)
#   KEEP             dumps kept by `dump`             (default 7)
#   RATE             warm-up keys per second          (default: unlimited)
#   CONCURRENCY      warm-up batches in flight        (default 4)
#   SKIP_EXISTING    1: never replace a value already in Redis (default 1 for warmup)
#   WARMUP_FILE      load this file instead of the newest dump
#   FROM_URL, FROM_NAMESPACE   source of `copy`
#   RESYNC_HIERARCHY the command to run               (default: resync-hierarchy)
#
# Exit status is the command's: 0 everything dumped/loaded, 1 bad lines or
# failed batches (see the JSON report on stdout, also in the job's log), 64
# usage errors. The report is one JSON document, so a log pipeline can alert
# on "failed" or "bad_lines".
#
# Nightly dump at 03:15 (crontab):
#   15 3 * * *  REDIS_URL=redis://cache:6379/0 NAMESPACE=llm /opt/resync/warmup_job.sh dump
#
# Pre-deploy warm-up (CI/CD step before traffic is switched):
#   REDIS_URL=redis://new-cache:6379/0 NAMESPACE=llm RATE=20000 ./warmup_job.sh warmup
#
# Kubernetes: a Job that warms a new Redis from the shared dump volume:
#   apiVersion: batch/v1
#   kind: Job
#   metadata: {name: llm-cache-warmup}
#   spec:
#     backoffLimit: 3            # each retry resumes from the checkpoint
#     template:
#       spec:
#         restartPolicy: OnFailure
#         containers:
#           - name: warmup
#             image: registry.example/resync-hierarchy:latest
#             command: ["/opt/resync/warmup_job.sh", "warmup"]
#             env:
#               - {name: REDIS_URL, valueFrom: {secretKeyRef: {name: cache, key: url}}}
#               - {name: NAMESPACE, value: llm}
#               - {name: RATE, value: "20000"}
#             volumeMounts: [{name: dumps, mountPath: /var/lib/resync/dumps}]
#         volumes: [{name: dumps, persistentVolumeClaim: {claimName: cache-dumps}}]
#
# Or as an initContainer of the application's Deployment, so Redis is warm
# before the first pod takes traffic (SKIP_EXISTING=1 keeps it harmless when
# Redis is already warm). The application's own L1 is filled at start() from
# its hot-key snapshot (HierarchyConfig.hot_keys_snapshot), not by this job.
#   initContainers:
#     - name: cache-warmup
#       image: registry.example/resync-hierarchy:latest
#       command: ["/opt/resync/warmup_job.sh", "warmup"]
#       env: [{name: REDIS_URL, value: "redis://cache:6379/0"}, {name: NAMESPACE, value: llm}]

set -euo pipefail

mode="${1:-}"
: "${REDIS_URL:?set REDIS_URL (the Redis of the cache)}"
: "${NAMESPACE:?set NAMESPACE (the cache namespace)}"
DUMP_DIR="${DUMP_DIR:-/var/lib/resync/dumps}"
STATE_DIR="${STATE_DIR:-$DUMP_DIR/.state}"
FORMAT="${FORMAT:-jsonl}"
KEEP="${KEEP:-7}"
CONCURRENCY="${CONCURRENCY:-4}"
SKIP_EXISTING="${SKIP_EXISTING:-1}"
CLI="${RESYNC_HIERARCHY:-resync-hierarchy}"
export REDIS_URL

case "$FORMAT" in
  jsonl) ext=jsonl ;;
  msgpack) ext=msgpack ;;
  *) echo "warmup_job.sh: FORMAT must be jsonl or msgpack, got '$FORMAT'" >&2; exit 64 ;;
esac
# A file-name-safe form of the namespace (it may contain any character).
safe_ns="$(printf '%s' "$NAMESPACE" | tr -c 'A-Za-z0-9_.-' '_')"

warmup_options=(--namespace "$NAMESPACE" --json --concurrency "$CONCURRENCY")
if [[ -n "${RATE:-}" ]]; then warmup_options+=(--rate "$RATE"); fi
if [[ "$SKIP_EXISTING" == "1" ]]; then warmup_options+=(--skip-existing); fi

case "$mode" in
  dump)
    mkdir -p "$DUMP_DIR"
    stamp="$(date -u +%Y%m%dT%H%M%S.%6NZ)"
    file="$DUMP_DIR/$safe_ns-$stamp.$ext"
    # dump writes to a temporary file and renames it only when complete.
    status=0
    "$CLI" dump --namespace "$NAMESPACE" --format "$FORMAT" --output "$file" --json \
      --no-progress || status=$?
    if [[ -f "$file" ]]; then
      ln -sfn "$(basename "$file")" "$DUMP_DIR/$safe_ns-latest.$ext"
      # Keep the newest $KEEP dumps of this namespace.
      find "$DUMP_DIR" -maxdepth 1 -type f -name "$safe_ns-*.$ext" -printf '%f\n' \
        | sort -r | tail -n "+$((KEEP + 1))" \
        | while read -r old; do rm -f -- "$DUMP_DIR/$old"; done
    fi
    exit "$status"
    ;;
  warmup)
    file="${WARMUP_FILE:-$DUMP_DIR/$safe_ns-latest.$ext}"
    if [[ ! -e "$file" ]]; then
      echo "warmup_job.sh: no dump to load at $file (run '$0 dump' first or set WARMUP_FILE)" >&2
      exit 64
    fi
    mkdir -p "$STATE_DIR"
    # One checkpoint per dump file: a new dump starts a new load.
    real="$(readlink -f "$file")"
    state="$STATE_DIR/$safe_ns-$(basename "$real").state.json"
    exec "$CLI" warmup "$real" --resume "$state" --no-progress "${warmup_options[@]}"
    ;;
  copy)
    : "${FROM_URL:?set FROM_URL (the Redis to copy from)}"
    mkdir -p "$STATE_DIR"
    from_ns="${FROM_NAMESPACE:-$NAMESPACE}"
    safe_from="$(printf '%s' "$from_ns" | tr -c 'A-Za-z0-9_.-' '_')"
    state="$STATE_DIR/$safe_ns-copy-from-$safe_from.state.json"
    exec "$CLI" warmup --from-url "$FROM_URL" --from-namespace "$from_ns" \
      --resume "$state" --no-progress "${warmup_options[@]}"
    ;;
  *)
    echo "usage: $0 dump|warmup|copy   (settings in the environment; see the header)" >&2
    exit 64
    ;;
esac
