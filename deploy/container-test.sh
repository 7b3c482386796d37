#!/usr/bin/env bash
# Builds deploy/Dockerfile and runs the image once: the container must turn
# healthy (its HEALTHCHECK, herald probe on /readyz), answer the probe, and
# stop cleanly on docker stop (SIGTERM: drain, then exit 0).
#
#   bash deploy/container-test.sh
#
# It uses the Docker daemon at $DOCKER_HOST (or the default socket). With
# none answering, it starts dockerd itself, in the background, with its own
# data root under $WORK, no bridge and no iptables rules, and stops it (by
# PID) at the end. Containers run with --network none: the probe and the
# health check run inside the container, so nothing but the container's own
# loopback is needed. Where the builder image (GO_IMAGE) cannot be pulled, it
# makes a local one from this machine's Go toolchain (docker import), and
# builds with the host's network, which only reaches the Go module proxy.
#
# WORK (a new folder under /tmp unless set) keeps dockerd's data between runs,
# so a second run reuses the layers: WORK=/tmp/herald-container-... to reuse,
# rm -rf it when done.
#
# CI runs it (.ci/run installs Debian's docker.io when missing): about 100 s
# here, most of it the build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORK="${WORK:-$(mktemp -d /tmp/herald-container-XXXXXX)}"
IMAGE="${IMAGE:-herald:container-test}"
GO_IMAGE="${GO_IMAGE:-golang:1.26-bookworm}"
NAME="herald-container-test-$$"
DOCKERD_PID=""

log() { printf '=== %s\n' "$*"; }

cleanup() {
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  if [[ -n "$DOCKERD_PID" ]]; then
    log "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    # What dockerd mounted under its folders (its network namespace file)
    # outlives it: unmount, so that $WORK can be removed.
    awk -v w="$WORK/" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l 2>/dev/null || true
  fi
}
trap cleanup EXIT

command -v docker >/dev/null || { echo "no docker client on the PATH" >&2; exit 1; }

if ! timeout 10 docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { echo "no Docker daemon answers and there is no dockerd (apt-get install docker.io)" >&2; exit 1; }
  log "starting dockerd (data in $WORK/docker)"
  mkdir -p "$WORK/docker"
  export DOCKER_HOST="unix://$WORK/docker/docker.sock"
  dockerd --data-root "$WORK/docker/data" --exec-root "$WORK/docker/exec" \
    --pidfile "$WORK/docker/dockerd.pid" -H "$DOCKER_HOST" \
    --bridge none --iptables=false --ip6tables=false >"$WORK/docker/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 150); do timeout 5 docker info >/dev/null 2>&1 && break; sleep 0.2; done
  if ! timeout 5 docker info >/dev/null 2>&1; then
    echo "dockerd did not start within 30s; its log:" >&2
    tail -n 30 "$WORK/docker/dockerd.log" >&2
    exit 1
  fi
fi
docker version --format 'docker client {{.Client.Version}}, daemon {{.Server.Version}}'

if ! docker image inspect "$GO_IMAGE" >/dev/null 2>&1 && ! timeout 120 docker pull "$GO_IMAGE" >/dev/null 2>&1; then
  GO_IMAGE="herald-local-go:$(go env GOVERSION)"
  log "no registry image; making $GO_IMAGE from $(go env GOROOT)"
  if ! docker image inspect "$GO_IMAGE" >/dev/null 2>&1; then
    root="$WORK/go-rootfs"
    mkdir -p "$root/usr/local" "$root/etc/ssl/certs" "$root/tmp" "$root/root"
    cp -a "$(go env GOROOT)" "$root/usr/local/go"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    cp /etc/resolv.conf "$root/etc/" 2>/dev/null || true
    chmod 1777 "$root/tmp"
    tar -C "$root" -c . | docker import \
      --change 'ENV PATH=/usr/local/go/bin:/usr/bin:/bin' \
      --change 'ENV HOME=/root' --change 'ENV GOPATH=/root/go' \
      --change "ENV GOPROXY=$(go env GOPROXY)" \
      - "$GO_IMAGE" >/dev/null
  fi
fi

log "building $IMAGE (builder $GO_IMAGE)"
start=$(date +%s)
DOCKER_BUILDKIT=0 timeout 900 docker build --network host -f deploy/Dockerfile \
  --build-arg GO_IMAGE="$GO_IMAGE" --build-arg VERSION=container-test -t "$IMAGE" .
log "built in $(( $(date +%s) - start ))s; size $(docker image inspect "$IMAGE" --format '{{.Size}}') bytes"
docker image inspect "$IMAGE" --format 'user {{.Config.User}}, healthcheck {{.Config.Healthcheck.Test}}'

log "running it"
docker run -d --name "$NAME" --network none "$IMAGE" serve --drain-window 2s --shutdown-timeout 5s >/dev/null
status=""
for _ in $(seq 60); do
  status=$(docker inspect "$NAME" --format '{{.State.Health.Status}}')
  [[ "$status" == healthy ]] && break
  sleep 0.5
done
if [[ "$status" != healthy ]]; then
  echo "the container is $status, not healthy, after 30s; its log:" >&2
  docker logs "$NAME" >&2
  exit 1
fi
log "healthy after $(docker inspect "$NAME" --format '{{len .State.Health.Log}}') health check(s)"
docker exec "$NAME" /usr/local/bin/herald version
docker exec "$NAME" /usr/local/bin/herald probe http://127.0.0.1:8080/readyz
uid=$(docker top "$NAME" -o pid,uid | awk 'NR == 2 { print $2 }')
[[ "$uid" == 65532 ]] || { echo "herald runs as uid $uid, want 65532" >&2; exit 1; }

log "docker stop (SIGTERM: drain, then exit)"
docker stop -t 30 "$NAME" >/dev/null
code=$(docker inspect "$NAME" --format '{{.State.ExitCode}}')
docker logs "$NAME" 2>&1 | tail -n 4
[[ "$code" == 0 ]] || { echo "herald exited with $code after docker stop, want 0" >&2; exit 1; }
log "ok: the image builds, turns healthy, runs as uid 65532 and stops with exit 0"
