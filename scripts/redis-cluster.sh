#!/usr/bin/env bash
# Starts or stops a Redis Cluster of N masters (no replicas) from Debian's
# redis-server and redis-cli, on loopback, for benchmarks and manual tests
# (the Go tests use internal/testserver.RedisCluster instead).
#
#   scripts/redis-cluster.sh start BASE N DIR   # ports BASE..BASE+N-1, bus ports +10000
#   scripts/redis-cluster.sh stop DIR           # kills the servers it started (by PID)
#
# Each server keeps its nodes.conf, log and pid file in DIR/PORT; nothing is
# persisted (no RDB, no AOF). The servers run with
# cluster-require-full-coverage no, so a master that is down fails only its
# own slots. start returns once every node reports cluster_state:ok (30 s at
# most) and prints the URL to give `herald serve --broker redis
# --redis-cluster --redis-url`.
set -euo pipefail

start() {
  local base=$1 n=$2 dir=$3 addrs=() port
  for ((port = base; port < base + n; port++)); do
    mkdir -p "$dir/$port"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/$port" --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
      --cluster-require-full-coverage no --daemonize yes \
      --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log"
    addrs+=("127.0.0.1:$port")
  done
  for ((port = base; port < base + n; port++)); do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  timeout 30 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log"
  for ((port = base; port < base + n; port++)); do
    for _ in $(seq 300); do
      redis-cli -p "$port" cluster info | grep -q 'cluster_state:ok' && continue 2
      sleep 0.1
    done
    echo "redis-cluster: 127.0.0.1:$port not cluster_state:ok within 30s (see $dir/$port/redis.log)" >&2
    exit 1
  done
  echo "redis://127.0.0.1:$base"
}

stop() {
  local dir=$1 pidfile
  for pidfile in "$dir"/*/redis.pid; do
    [[ -e "$pidfile" ]] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) [[ $# -eq 4 ]] || { echo "usage: $0 start BASE N DIR" >&2; exit 2; }; start "$2" "$3" "$4" ;;
  stop) [[ $# -eq 2 ]] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 start BASE N DIR | stop DIR" >&2; exit 2 ;;
esac
