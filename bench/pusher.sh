#!/usr/bin/env bash
# Issue 17's benchmark: S2 and S3 through the Pusher endpoint beside
# Herald's own protocol, against ONE `herald serve` (one Pusher app, the
# HTTP API on), interleaved: each round runs s2 and s3 with both protocols,
# the order of the two swapped every other round. Both protocols publish
# the same way, through the HTTP API (-publish api, 1 request in flight
# per channel) to the same Herald channels (pusher-1001:bench.N, the app's
# public channels bench.N); only the subscribers' protocol differs:
# herald.v1 at /ws, or Pusher protocol 7 at /app/bench-key.
#
#   bench/pusher.sh OUTDIR
#
# Environment: ROUNDS (default 3); S2_ARGS, S3_ARGS (more herald-bench
# flags for that scenario, e.g. S2_ARGS="-step 2s -drain 2s"); HERALD_BIN.
# Writes OUTDIR/SC-PROTO-N.{jsonl,txt}, OUTDIR/load.log (uptime before
# every run) and OUTDIR/ratios.md: per round and as medians, pusher over
# herald for the highest passing rate (S2), and the server's CPU seconds
# per million deliveries and the latency p99 at the highest rate both
# passed (S2) and at 100/s (S3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=${1:?usage: bench/pusher.sh OUTDIR}
rounds=${ROUNDS:-3}
read -r -a s2args <<<"${S2_ARGS:-}"
read -r -a s3args <<<"${S3_ARGS:-}"
mkdir -p "$out/bin"
if [[ -n "${HERALD_BIN:-}" ]]; then cp "$HERALD_BIN" "$out/bin/herald"; else go build -o "$out/bin/herald" ./cmd/herald; fi
go build -o "$out/bin/herald-bench" ./bench/cmd/herald-bench

export HERALD_API_KEY="bench-api-key-$(date +%s)-$$"
pid=""
stop() {
  [[ -n "$pid" ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
}
trap stop EXIT
trap 'exit 130' INT TERM

HERALD_PUSHER_APP_ID=1001 HERALD_PUSHER_APP_KEY=bench-key HERALD_PUSHER_APP_SECRET="bench-secret-$(date +%s)-0123456789" \
  "$out/bin/herald" serve --addr 127.0.0.1:0 2>"$out/server.log" &
pid=$!
addr=""
for _ in $(seq 100); do
  addr=$(grep -o 'msg=listening addr=[0-9.:]*' "$out/server.log" | head -1 | cut -d= -f3 || true)
  [[ -n "$addr" ]] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$addr" ]] || { echo "herald did not start:" >&2; cat "$out/server.log" >&2; exit 1; }
sleep 1

run() { # SC PROTO N
  local sc=$1 proto=$2 n=$3 url="ws://$addr/ws" args=()
  [[ $proto == pusher ]] && url="ws://$addr/app/bench-key"
  [[ $sc == s2 ]] && args=("${s2args[@]}")
  [[ $sc == s3 ]] && args=("${s3args[@]}")
  local base="$out/$sc-$proto-$n"
  echo "$(date -u +%FT%TZ) $sc $proto #$n: $(uptime)" | tee -a "$out/load.log"
  "$out/bin/herald-bench" -scenario "$sc" "${args[@]}" -proto "$proto" -url "$url" -publish api \
    -channel-prefix pusher-1001:bench. -server-pid "$pid" -label "$sc-$proto" -json "$base.jsonl" -progress off |
    tee "$base.txt" || echo "run failed: $base" | tee -a "$out/load.log"
}

for n in $(seq "$rounds"); do
  order=(herald pusher)
  ((n % 2 == 0)) && order=(pusher herald)
  for sc in s2 s3; do
    for proto in "${order[@]}"; do run "$sc" "$proto" "$n"; done
  done
done
stop

# ratios N: one round's figures as "name herald pusher" lines.
ratios() {
  local n=$1 h p
  for sc in s2 s3; do
    h="$out/$sc-herald-$n.jsonl" p="$out/$sc-pusher-$n.jsonl"
    [[ -s $h && -s $p ]] || continue
    jq -rs --slurpfile p "$p" --arg sc "$sc" '
      def steps: map(select(.type == "step"));
      def best: [steps[] | select(.pass) | .target_rate] | max // 0;
      (steps) as $h | ($p | steps) as $q |
      ([$h[] | select(.pass) | .target_rate] | map(. as $r | select([$q[] | select(.pass and .target_rate == $r)] | length > 0)) | max) as $common |
      if $common == null then "\($sc) no-common-passing-rate 0 0" else
      ($h[] | select(.target_rate == $common)) as $a | ($q[] | select(.target_rate == $common)) as $b |
      (if $sc == "s2" then "\($sc) best-rate \(. | best) \($p | best)\n" else "" end) +
      "\($sc) cpu-s-per-M@\($common) \($a.server_cpu_s_per_m_deliveries) \($b.server_cpu_s_per_m_deliveries)\n" +
      "\($sc) p99-ms@\($common) \($a.latency.p99_ms) \($b.latency.p99_ms)" end' "$h"
  done
}
{
  echo "# Pusher endpoint / Herald protocol, same server, same publish path ($(date -u +%FT%TZ))"
  echo
  echo "| round | figure | herald | pusher | pusher / herald |"
  echo "|---|---|---|---|---|"
  for n in $(seq "$rounds"); do
    ratios "$n" | awk -v n="$n" '{r = "n/a"; if ($3 > 0) r = sprintf("%.2f", $4 / $3); printf "| %s | %s %s | %.3g | %.3g | %s |\n", n, $1, $2, $3, $4, r}'
  done
  echo
  echo "Over the rounds (figure names without the rate; the lower middle for an even count):"
  echo "the median of each round's ratio, and the ratio of the medians (pusher's median / herald's)."
  echo
  echo "| figure | median ratio (each round's) | median herald | median pusher | ratio of medians |"
  echo "|---|---|---|---|---|"
  for n in $(seq "$rounds"); do ratios "$n"; done |
    awk '{k = $1 " " $2; sub(/@.*/, "", k); sub(/ /, "-", k); r = ($3 > 0 ? $4 / $3 : "n/a"); print k, $3, $4, r}' |
    awk 'function med(s,   a, m, i, j, t) {
           m = split(s, a, " ")
           for (i = 2; i <= m; i++) for (j = i; j > 1 && a[j - 1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
           return a[int((m + 1) / 2)]
         }
         {h[$1] = h[$1] " " $2; p[$1] = p[$1] " " $3; r[$1] = r[$1] " " sprintf("%.2f", $4)}
         END {
           for (k in h) {
             mh = med(h[k]); mp = med(p[k])
             printf "| %s | %.2f (%s) | %.3g | %.3g | %s |\n", k, med(r[k]), substr(r[k], 2), mh, mp, (mh > 0 ? sprintf("%.2f", mp / mh) : "n/a")
           }
         }' | sort
} | tee "$out/ratios.md"
