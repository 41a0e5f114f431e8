#!/usr/bin/env bash
# Builds the CPU image with podman (or docker when a daemon answers) and
# smoke-tests it: the binaries run as the non-root user, the baked-in
# weights load (`farmctl weights path` and a 1-iteration 32x24 render
# inside), and the coordinator's health check answers from inside.
#
#   deploy/images.sh                          # compile inside (the README's path)
#   deploy/images.sh --binaries target/release   # the runtime from host binaries
#   deploy/images.sh --binaries DIR --tag stylefarm:test --no-smoke
#
# Base images come from a registry when one is reachable; where none is
# (this project's CI), `debian:bookworm-slim` is made locally once with
# debootstrap (`--variant=minbase`, from DEBIAN_MIRROR) and kept in
# podman's store, so later runs reuse it. Builds never pull (`--pull=never`).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
TAG=stylefarm:cpu
BINARIES=
SMOKE=1
while [ $# -gt 0 ]; do
  case $1 in
    --binaries) BINARIES=$(cd "$2" && pwd); shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --no-smoke) SMOKE=; shift ;;
    *) echo "images.sh: unknown argument $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
done
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker info >/dev/null 2>&1; then
  ENGINE=docker
elif command -v podman >/dev/null; then
  ENGINE=podman
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$REPO/deploy/podman/containers.conf}
else
  echo "images.sh: neither a Docker daemon nor podman is available (apt-get install podman runc debootstrap)" >&2
  exit 3
fi
log() { echo "images.sh: $*" >&2; }

# debian:bookworm-slim, made locally when no registry has it for us.
ensure_base() {
  local name=docker.io/library/debian:bookworm-slim
  $ENGINE image inspect "$name" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null || { log "no $name and no debootstrap to make it (apt-get install debootstrap)"; exit 3; }
  log "making $name with debootstrap from $DEBIAN_MIRROR (once; kept in $ENGINE's store)"
  local rootfs; rootfs=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
  # The host's CA bundle, so TLS works from inside before ca-certificates is installed.
  mkdir -p "$rootfs/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/" 2>/dev/null || true
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | $ENGINE import - "$name" >/dev/null
  rm -rf "$rootfs"
}
ensure_base

if [ -n "$BINARIES" ]; then
  # A context holding only what the `prebuilt` target copies.
  CONTEXT=$(mktemp -d); trap 'rm -rf "$CONTEXT"' EXIT
  for b in farmctl farm-coordinator farm-worker; do
    [ -x "$BINARIES/$b" ] || { log "$BINARIES/$b is missing: cargo build --bins first"; exit 2; }
    objcopy --strip-debug "$BINARIES/$b" "$CONTEXT/$b"
  done
  WEIGHTS=$("$BINARIES/farmctl" weights path)
  [ -s "$WEIGHTS" ] || { log "no weights at $WEIGHTS: run farmctl weights fetch first"; exit 2; }
  cp "$WEIGHTS" "$CONTEXT/vgg19.safetensors"
  log "building $TAG from the binaries in $BINARIES"
  $ENGINE build --pull=never -q -f "$REPO/deploy/docker/Dockerfile.cpu" --target prebuilt -t "$TAG" "$CONTEXT" >/dev/null
else
  log "building $TAG, compiling inside (needs rust:1.95-bookworm from a registry or the local store)"
  $ENGINE build --pull=never -f "$REPO/deploy/docker/Dockerfile.cpu" -t "$TAG" "$REPO"
fi
log "$TAG: $($ENGINE image inspect "$TAG" --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

[ -n "$SMOKE" ] || exit 0
run() { $ENGINE run --rm --network host "$@"; }
uid=$(run "$TAG" id -u)
[ "$uid" = 10001 ] || { log "the image runs as uid $uid, not 10001"; exit 1; }
weights=$(run "$TAG" farmctl weights path)
[ "$weights" = /opt/stylefarm/vgg19.safetensors ] || { log "weights at $weights"; exit 1; }
run -v "$REPO/tests/fixtures:/in:ro" "$TAG" \
  farmctl render --content /in/content.png --style /in/style.png --size 32x24 --iters 1 -o /tmp/out.png --no-extras -q >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
NAME=stylefarm-smoke-$$
$ENGINE run -d --rm --name "$NAME" --network host "$TAG" farm-coordinator --listen "127.0.0.1:$PORT" --data-dir /tmp/data >/dev/null
trap '$ENGINE rm -f "$NAME" >/dev/null 2>&1 || true; [ -n "${CONTEXT:-}" ] && rm -rf "$CONTEXT"' EXIT
for _ in $(seq 50); do
  $ENGINE exec "$NAME" farmctl --wait 1 --coordinator "http://127.0.0.1:$PORT" health >/dev/null 2>&1 && break
  sleep 0.2
done
health=$($ENGINE exec "$NAME" farmctl --coordinator "http://127.0.0.1:$PORT" health)
[ "$health" = SERVING ] || { log "the coordinator's health check said: $health"; exit 1; }
log "$TAG: runs as uid 10001, weights load (1-iteration render), coordinator health SERVING"
