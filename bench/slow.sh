#!/usr/bin/env bash
# bench/slow.sh: the slow-subscriber benchmark of issue 19, in one run.
#
# Builds herald, the hub baseline and herald-bench, starts Herald (a
# conflate namespace "px" and a disconnect namespace "tk", queues of
# $QUEUE messages (default 1024), socket send buffers of $SNDBUF bytes
# (default 65536)) and the hub on free loopback ports, runs
# `herald-bench slow` against the three, and stops both servers by pid.
# Extra arguments go to herald-bench slow (e.g. -rate 1000 -duration 5s).
#
#   bench/slow.sh [OUT_DIR] [herald-bench slow flags...]
#
# Writes OUT_DIR/slow.md (the table) and OUT_DIR/slow.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/herald-slow}
shift || true
queue=${QUEUE:-1024}
mkdir -p "$out/bin"
go build -o "$out/bin/herald" ./cmd/herald
go build -o "$out/bin/hub" ./bench/baseline/hub
go build -o "$out/bin/herald-bench" ./bench/cmd/herald-bench

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

cat >"$out/herald.yaml" <<EOF
max_queue_messages: $queue
socket_send_buffer: ${SNDBUF:-65536}
namespaces:
  - name: px
    overflow: conflate
  - name: tk
EOF

# start NAME LOG CMD...: sets pid and addr once the server logs its address.
start() {
  local log=$2
  shift 2
  "$@" 2>"$log" &
  pid=$!
  pids+=("$pid")
  addr=""
  for _ in $(seq 200); do
    addr=$(grep -o 'msg=listening addr=[0-9.:]*' "$log" | head -1 | cut -d= -f3 || true)
    [[ -n "$addr" ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "server did not start; log:" >&2
  cat "$log" >&2
  exit 1
}

start herald "$out/herald.log" "$out/bin/herald" serve --addr 127.0.0.1:0 --config "$out/herald.yaml"
herald_addr=$addr herald_pid=$pid
start hub "$out/hub.log" "$out/bin/hub" -addr 127.0.0.1:0
hub_addr=$addr hub_pid=$pid

timeout 900 "$out/bin/herald-bench" slow \
  -conflate "ws://$herald_addr/ws#px:ticks" -disconnect "ws://$herald_addr/ws#tk:ticks" -server-pid "$herald_pid" \
  -hub-url "ws://$hub_addr/ws" -hub-pid "$hub_pid" -json "$out/slow.jsonl" "$@" | tee "$out/slow.md"
