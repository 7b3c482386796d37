#!/usr/bin/env bash
# The benchmark suite of docs/benchmarks.md: every scenario against
# `herald serve` (default settings), the hub baseline and the naive baseline,
# one after the other, each on a fresh server, REPEAT times.
#
#   bench/suite.sh OUTDIR [SCENARIO...]     scenarios: s1 s1-19k s2 s3 s4 s5 (default: all)
#
# Environment: REPEAT (default 3), SERVERS (default "herald hub naive"),
# HERALD_BIN (a herald binary to use instead of building ./cmd/herald).
# Writes OUTDIR/SCENARIO-SERVER-N.{jsonl,txt,svg}, OUTDIR/load.log (uptime
# before every run) and OUTDIR/SCENARIO-N.svg (the servers side by side).
# Every run is bounded by herald bench's own timeout; servers are stopped
# with SIGTERM (SIGKILL after 15 s).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=${1:?usage: bench/suite.sh OUTDIR [SCENARIO...]}
shift
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(s1 s1-19k s2 s3 s4 s5)
repeat=${REPEAT:-3}
read -r -a servers <<<"${SERVERS:-herald hub naive}"
mkdir -p "$out/bin"

if [[ -n "${HERALD_BIN:-}" ]]; then
  cp "$HERALD_BIN" "$out/bin/herald"
else
  go build -o "$out/bin/herald" ./cmd/herald
fi
go build -o "$out/bin/hub" ./bench/baseline/hub
go build -o "$out/bin/naive" ./bench/baseline/naive
go build -o "$out/bin/herald-bench" ./bench/cmd/herald-bench

pid=""
stop_server() {
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap stop_server EXIT

# start_server NAME LOG: starts it on a free loopback port; sets pid and addr.
start_server() {
  local name=$1 log=$2
  case $name in
    herald) "$out/bin/herald" serve --addr 127.0.0.1:0 2>"$log" & ;;
    hub | naive) "$out/bin/$name" -addr 127.0.0.1:0 2>"$log" & ;;
    *) echo "unknown server $name" >&2; return 1 ;;
  esac
  pid=$!
  addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'msg=listening addr=[0-9.:]*' "$log" | head -1 | cut -d= -f3 || true)
    [[ -n "$addr" ]] && return 0
    sleep 0.1
  done
  echo "$name did not start:" >&2
  cat "$log" >&2
  return 1
}

for n in $(seq "$repeat"); do
  for sc in "${scenarios[@]}"; do
    args=(-scenario "$sc")
    [[ $sc == s1-19k ]] && args=(-scenario s1 -subs 190)
    jsonls=()
    for srv in "${servers[@]}"; do
      base="$out/$sc-$srv-$n"
      start_server "$srv" "$base.server.log"
      sleep 1 # let it settle before the RSS baseline
      echo "$(date -u +%FT%TZ) $sc $srv #$n: $(uptime)" | tee -a "$out/load.log"
      "$out/bin/herald-bench" "${args[@]}" -url "ws://$addr/ws" -server-pid "$pid" -label "$srv" \
        -json "$base.jsonl" -svg "$base.svg" -progress off | tee "$base.txt" || echo "run failed: $base" | tee -a "$out/load.log"
      stop_server
      jsonls+=("$base.jsonl")
    done
    if [[ $sc != s1* ]]; then
      "$out/bin/herald-bench" plot -o "$out/$sc-$n.svg" -title "$sc, run $n" "${jsonls[@]}" || true
    fi
  done
done
