#!/usr/bin/env bash
# Build both images and run one job end to end through them (not run in CI: it needs root,
# Docker and a few minutes). Usage: deploy/image-smoke.sh [base|build|all]   (default: all)
# SKIP_BUILD=1 with `all` reuses the images of an earlier build.
#
#   base   make sure a base image exists (BASE, default python:3.11-slim-bookworm; if it
#          cannot be found or pulled, a local Debian bookworm + python3.11 image built with
#          debootstrap and `docker import`, cached under the tag darkroom-local/bookworm-py311)
#   build  base, then the server image and the CPU generator image
#   all    build, then migrate + Jobs + Events + reconciler + generator containers on the
#          host network against Postgres 127.0.0.1:5432 (user postgres, trust auth; a
#          throwaway database) and Redis 127.0.0.1:6379 (a unique key prefix), submit one job
#          with the host's `darkroom` CLI and check that a PNG comes back; then clean up.
set -euo pipefail

STEP=${1:-all}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
BASE=${BASE:-python:3.11-slim-bookworm}
LOCAL_BASE=darkroom-local/bookworm-py311:1
TAG=${TAG:-smoke}
SERVER_IMAGE=darkroom-server:$TAG
GENERATOR_IMAGE=darkroom-generator:$TAG-cpu
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
RUN_ID=smoke$$
PG=${PG:-postgresql+psycopg://postgres@127.0.0.1:5432}
JOBS_PORT=${JOBS_PORT:-51051}
EVENTS_PORT=${EVENTS_PORT:-51052}
JOBS_HEALTH_PORT=${JOBS_HEALTH_PORT:-51081}
EVENTS_HEALTH_PORT=${EVENTS_HEALTH_PORT:-51082}
GEN_HEALTH_PORT=${GEN_HEALTH_PORT:-51080}
TOKEN=smoke-token-$RUN_ID
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0}  # the legacy builder: no buildx needed

log() { printf '\n== %s  %s\n' "$(date +%T)" "$*"; }
elapsed() { echo $(($(date +%s) - $1)); }

ensure_docker() {
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing docker.io and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io debootstrap >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (no bridge, no iptables: containers use --network host)"
    nohup dockerd --bridge=none --iptables=false >/tmp/darkroom-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null
  fi
}

ensure_base() {
  if docker image inspect "$BASE" >/dev/null 2>&1; then return; fi
  if timeout 60 docker pull "$BASE" >/dev/null 2>&1; then return; fi
  echo "cannot pull $BASE: using the local bookworm image $LOCAL_BASE"
  BASE=$LOCAL_BASE
  if docker image inspect "$BASE" >/dev/null 2>&1; then return; fi
  log "debootstrap bookworm + python3.11 (about 2 minutes; cached as $BASE)"
  local t0 rootfs
  t0=$(date +%s)
  rootfs=$(mktemp -d /tmp/darkroom-rootfs.XXXXXX)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >/tmp/darkroom-debootstrap.log
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  echo "base image built in $(elapsed "$t0") s"
}

# The build context: the files git knows (tracked, plus untracked ones it does not ignore),
# so .venv, .darkroom, node_modules and caches never reach the daemon. Local wheels from
# /opt/wheels (the vetted CPU torch) go into .wheels/, which the Dockerfiles offer to pip.
make_context() {
  CTX=$(mktemp -d /tmp/darkroom-ctx.XXXXXX)
  git ls-files -z --cached --others --exclude-standard \
    | grep -zv -E '^(node_modules|third_party|clients/typescript)/' \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -c | tar -x -C "$CTX"
  # darkroom/services is a link to services/: keep it a link.
  mkdir -p "$CTX/.wheels"
  if compgen -G "/opt/wheels/*.whl" >/dev/null; then cp /opt/wheels/*.whl "$CTX/.wheels/"; fi
  # This machine's CA bundle, for a TLS-inspecting proxy between pip and the index.
  CA_ARGS=()
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$CTX/.build-ca.pem"
    CA_ARGS=(--build-arg PIP_CERT=/src/.build-ca.pem)
  fi
}

build_images() {
  make_context
  local t0
  t0=$(date +%s)
  log "building $SERVER_IMAGE (BASE=$BASE)"
  docker build --network host "${CA_ARGS[@]}" --build-arg "BASE=$BASE" -f "$CTX/deploy/images/server.Dockerfile" \
    -t "$SERVER_IMAGE" "$CTX"
  SERVER_BUILD_S=$(elapsed "$t0")
  t0=$(date +%s)
  log "building $GENERATOR_IMAGE (TORCH_VARIANT=cpu, torch==$TORCH_VERSION)"
  docker build --network host "${CA_ARGS[@]}" --build-arg "BASE=$BASE" --build-arg TORCH_VARIANT=cpu \
    --build-arg "TORCH_VERSION=$TORCH_VERSION" -f "$CTX/deploy/images/generator.Dockerfile" \
    -t "$GENERATOR_IMAGE" "$CTX"
  GENERATOR_BUILD_S=$(elapsed "$t0")
  rm -rf "$CTX"
  log "built: server ${SERVER_BUILD_S} s, generator ${GENERATOR_BUILD_S} s"
  docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^darkroom-(server|generator)'
}

CONTAINERS=()
cleanup() {
  local c
  for c in "${CONTAINERS[@]}"; do
    docker rm -f "$c" >/dev/null 2>&1 || true
  done
  if [ -n "${DB:-}" ]; then
    psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  fi
  if [ -n "${STORE:-}" ]; then rm -rf "$STORE"; fi
  # The run's Redis keys (its prefix is its own), some of which have no expiry.
  if [ -n "${RUN_ID:-}" ]; then
    .venv/bin/python - "$RUN_ID" <<'PY' || true
import sys
import redis

client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
keys = list(client.scan_iter(f"{sys.argv[1]}:*", count=1000))
if keys:
    client.delete(*keys)
PY
  fi
}

run_stack() {
  trap cleanup EXIT
  make tiny-model >/dev/null
  DB=darkroom_$RUN_ID
  psql -h 127.0.0.1 -U postgres -q -c "CREATE DATABASE $DB"
  STORE=$(mktemp -d /tmp/darkroom-store.XXXXXX)
  chmod 0777 "$STORE"
  # The containers run as uid 10001: give them a world-readable copy of the model (the
  # build writes some weights 0600), as an init container would fill a volume in Kubernetes.
  # Outputs go to a folder at the same path inside and outside the containers, so the
  # file:// URIs the CLI gets back are readable here.
  mkdir -m 0777 "$STORE/storage"
  mkdir "$STORE/models" && cp -r "$ROOT/.darkroom/models/tiny-sd" "$STORE/models/"
  chmod -R a+rX "$STORE/models"
  local env_file=/tmp/darkroom-$RUN_ID.env
  cat >"$env_file" <<ENV
DARKROOM_DATABASE_URL=$PG/$DB
DARKROOM_REDIS_URL=redis://127.0.0.1:6379/0
DARKROOM_KEY_PREFIX=$RUN_ID
DARKROOM_ALLOW_INSECURE=true
DARKROOM_LOG_JSON=true
DARKROOM_MODELS=["tiny-sd"]
DARKROOM_AUTH_TOKENS={"$TOKEN": "smoke"}
DARKROOM_JOBS_ADDRESS=127.0.0.1:$JOBS_PORT
DARKROOM_EVENTS_ADDRESS=127.0.0.1:$EVENTS_PORT
DARKROOM_JOBS_HEALTH_ADDRESS=127.0.0.1:$JOBS_HEALTH_PORT
DARKROOM_EVENTS_HEALTH_ADDRESS=127.0.0.1:$EVENTS_HEALTH_PORT
DARKROOM_GENERATOR_HEALTH_ADDRESS=127.0.0.1:$GEN_HEALTH_PORT
DARKROOM_GENERATOR_MODEL=tiny-sd
DARKROOM_GENERATOR_MODEL_PATH=/models/tiny-sd
DARKROOM_GENERATOR_DEVICE=cpu
DARKROOM_STORAGE_URL=$STORE/storage
ENV
  # The images' root filesystems are read-only here as in Kubernetes: /tmp is a tmpfs.
  local common=(--network host --env-file "$env_file" --read-only --tmpfs /tmp
    --cap-drop ALL --security-opt no-new-privileges -v "$STORE/storage:$STORE/storage")
  local t0
  t0=$(date +%s)
  log "migrate"
  if docker run --rm --entrypoint /bin/sh "$SERVER_IMAGE" -c 'command -v darkroom-migrate'; then
    docker run --rm "${common[@]}" "$SERVER_IMAGE" darkroom-migrate
  else  # an image from before the darkroom-migrate entry point: what `make migrate` runs
    echo "no darkroom-migrate in the image: migrating with darkroom.db.migrate instead"
    docker run --rm "${common[@]}" "$SERVER_IMAGE" python -c \
      'from darkroom.config import load_settings; from darkroom.db import migrate; migrate(load_settings("migrate").database_url)'
  fi
  echo "migrate took $(elapsed "$t0") s"
  local name
  for svc in jobs events reconciler; do
    name=darkroom-$RUN_ID-$svc
    CONTAINERS+=("$name")
    docker run -d --name "$name" "${common[@]}" "$SERVER_IMAGE" "darkroom-$svc" >/dev/null
  done
  name=darkroom-$RUN_ID-generator
  CONTAINERS+=("$name")
  docker run -d --name "$name" "${common[@]}" \
    -v "$STORE/models/tiny-sd:/models/tiny-sd:ro" "$GENERATOR_IMAGE" >/dev/null
  t0=$(date +%s)
  log "submitting one job"
  local out=/tmp/darkroom-$RUN_ID.png rc=0
  for _ in $(seq 30); do  # the servers need a moment to listen
    if python3 - "$JOBS_PORT" "$EVENTS_PORT" 2>/dev/null <<'PY'
import socket, sys
for port in sys.argv[1:]:
    socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
PY
    then break; fi
    sleep 1
  done
  DARKROOM_JOBS_TARGET=127.0.0.1:$JOBS_PORT DARKROOM_EVENTS_TARGET=127.0.0.1:$EVENTS_PORT \
    DARKROOM_TOKEN=$TOKEN timeout 300 "$ROOT/.venv/bin/darkroom" --timeout 30 generate \
    "a lighthouse" --width 64 --height 64 --steps 4 -o "$out" || rc=$?
  local job_s
  job_s=$(elapsed "$t0")
  # What the kubelet's grpc probes call: the plaintext, health-only ports (no reflection).
  local port
  for port in "$JOBS_HEALTH_PORT" "$EVENTS_HEALTH_PORT"; do
    "$ROOT/.venv/bin/python" - "$port" <<'PY' || true
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

port = sys.argv[1]
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
print(f"health 127.0.0.1:{port}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")
PY
  done
  if curl -fsS "http://127.0.0.1:$GEN_HEALTH_PORT/readyz" >/dev/null 2>&1; then
    echo "generator /readyz: 200"
  else
    echo "generator /readyz: not answering (DARKROOM_GENERATOR_HEALTH_ADDRESS)"
  fi
  if [ "$rc" -ne 0 ] || ! head -c 8 "$out" | od -An -c | grep -q 'P   N   G'; then
    for c in "${CONTAINERS[@]}"; do echo "--- logs of $c"; docker logs --tail 40 "$c" 2>&1; done
    echo "SMOKE FAILED: darkroom generate exited $rc after $job_s s"
    exit 1
  fi
  echo "SMOKE PASSED: a $(stat -c %s "$out")-byte PNG came back in $job_s s"
  rm -f "$out" "$env_file"
}

ensure_docker
ensure_base
case $STEP in
  base) ;;
  build) build_images ;;
  all) if [ "${SKIP_BUILD:-0}" != 1 ]; then build_images; fi; run_stack ;;
  *) echo "usage: $0 [base|build|all]" >&2; exit 2 ;;
esac
