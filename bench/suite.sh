#!/usr/bin/env bash
# The benchmark suite of docs/benchmarks.md: every scenario against
# `herald serve` (default settings), the hub baseline and the centrifuge
# baseline, one after the other, each on a fresh server, REPEAT times.
#
#   bench/suite.sh OUTDIR [SCENARIO...]     scenarios: s1 s1-19k s2 s3 s4 s5 rooms churn churn-tls
#                                           (default: all of these)
#                                           history: two nodes through a broker (see below)
#                                           cross-node: s2-redis s3-redis s2-nats s3-nats (cross: all four)
#
# Environment: REPEAT (default 3), SERVERS (default "herald hub centrifuge";
# also naive, the seed's recipe, and floor, the probe of bench/baseline/floor:
# what one write per delivery costs with nothing else; s3 always adds floor),
# HERALD_BIN (a herald binary to use instead of building ./cmd/herald),
# BENCH_ARGS (more herald-bench flags for every run, after the scenario's:
# e.g. BENCH_ARGS="-step 2s -drain 2s" for a smoke run).
# Writes OUTDIR/SCENARIO-SERVER-N.{jsonl,txt,svg}, OUTDIR/load.log (uptime
# before every run) and OUTDIR/SCENARIO-N.svg (the servers side by side).
# Every run is bounded by herald-bench's own timeout; servers are stopped
# with SIGTERM (SIGKILL after 15 s).
#
# Cross-node scenarios (S2 or S3 through a broker; SERVERS does not apply):
# each pass runs the scenario against one `herald serve` on its own (label
# herald-1n: the single-node reference), then against two `herald serve
# --broker redis|nats` nodes with subscribers on node B and the publisher
# on node A (label herald-BROKER-2n; -server-pid gets both pids, node A's
# first), and prints the cross-node p99 over the reference's, step by step
# (herald-bench summary -cross-only; also in OUTDIR/SCENARIO-N.cross.md).
# With BROKER_1N=1 a third run puts publisher and subscribers on one node
# with the broker (label herald-BROKER-1n): the broker's share without the
# second node. Every broker run uses its own prefix (--broker-prefix
# hb_RUNID_...), removed from the broker afterwards (bench/cmd/broker-clean).
# Environment: REDIS_URL (default redis://127.0.0.1:6379/0), NATS_URL
# (default nats://127.0.0.1:4222; JetStream on).
#
# churn and churn-tls start every server with a JWT secret (and churn-tls
# with a self-signed ECDSA P-256 certificate for 127.0.0.1 made with
# openssl in OUTDIR/tls); the generator connects each cycle with a token.
#
# history: for each of herald through one Redis, herald through NATS, and
# centrifuge's Redis engine on the same Redis, two nodes (subscribers on
# both, publishers on the first), channels chat:N (history on by default in
# both), each run under its own prefix, removed afterwards. With
# HISTORY_SHARDS=1 also through Redis servers the suite starts itself: one
# (herald-own1), three shards (herald-shards3: --redis-url with three URLs)
# and a three-master Redis Cluster (herald-cluster: --redis-cluster), with
# each one's CPU during the run in OUTDIR/history-KIND-2n-N.redis-cpu.txt
# (HISTORY_FLAGS_SHARDS3 / HISTORY_FLAGS_CLUSTER replace the herald flags;
# HISTORY_KINDS, e.g. "herald-own1 herald-shards3 herald-cluster", picks the runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out=${1:?usage: bench/suite.sh OUTDIR [SCENARIO...]}
shift
scenarios=()
for sc in "$@"; do
  if [[ $sc == cross ]]; then scenarios+=(s2-redis s3-redis s2-nats s3-nats); else scenarios+=("$sc"); fi
done
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(s1 s1-19k s2 s3 s4 s5 rooms churn churn-tls)
repeat=${REPEAT:-3}
read -r -a servers <<<"${SERVERS:-herald hub centrifuge}"
read -r -a extra <<<"${BENCH_ARGS:-}"
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}
nats_url=${NATS_URL:-nats://127.0.0.1:4222}
runid="$(date +%s)_$$"
mkdir -p "$out/bin"

if [[ -n "${HERALD_BIN:-}" ]]; then
  cp "$HERALD_BIN" "$out/bin/herald"
else
  go build -o "$out/bin/herald" ./cmd/herald
fi
go build -o "$out/bin/hub" ./bench/baseline/hub
go build -o "$out/bin/naive" ./bench/baseline/naive
go build -o "$out/bin/floor" ./bench/baseline/floor
go build -o "$out/bin/centrifuge" ./bench/baseline/centrifuge
go build -o "$out/bin/herald-bench" ./bench/cmd/herald-bench
go build -o "$out/bin/broker-clean" ./bench/cmd/broker-clean

pids=()         # every server running
pid=""          # the last one started
broker_clean=() # the broker-clean arguments of the run in progress
stop_server() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  pids=()
  pid=""
  if [[ ${#broker_clean[@]} -gt 0 ]]; then
    timeout 60 "$out/bin/broker-clean" "${broker_clean[@]}" || echo "broker cleanup failed: ${broker_clean[*]}" >&2
    broker_clean=()
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# start_server NAME LOG [SERVER FLAGS...]: starts it on a free loopback
# port; sets pid and addr, and adds pid to pids.
start_server() {
  local name=$1 log=$2
  shift 2
  case $name in
    herald) "$out/bin/herald" serve --addr 127.0.0.1:0 "$@" 2>"$log" & ;;
    hub | naive | floor | centrifuge) "$out/bin/$name" -addr 127.0.0.1:0 "$@" 2>"$log" & ;;
    *) echo "unknown server $name" >&2; return 1 ;;
  esac
  pid=$!
  pids+=("$pid")
  addr=""
  for _ in $(seq 100); do
    addr=$(grep -o 'msg=listening addr=[0-9.:]*' "$log" | head -1 | cut -d= -f3 || true)
    [[ -n "$addr" ]] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$name did not start:" >&2
  cat "$log" >&2
  return 1
}

# bench_run BASE LABEL ARGS...: one generator run, logged like the others.
bench_run() {
  local base=$1 label=$2
  shift 2
  echo "$(date -u +%FT%TZ) $(basename "$base") #$n: $(uptime)" | tee -a "$out/load.log"
  "$out/bin/herald-bench" "$@" "${extra[@]}" -label "$label" -json "$base.jsonl" -svg "$base.svg" -progress off |
    tee "$base.txt" || echo "run failed: $base" | tee -a "$out/load.log"
}

# cross_node SC N: the single-node reference, then two nodes through the
# broker (and with BROKER_1N=1 one node through the broker).
cross_node() {
  local sc=$1 n=$2 scen=${1%%-*} broker=${1#*-}
  local burl bflags=() jsonls=()
  case $broker in
    redis) burl=$redis_url; bflags=(--broker redis --redis-url "$burl") ;;
    nats) burl=$nats_url; bflags=(--broker nats --nats-url "$burl") ;;
    *) echo "unknown broker in $sc" >&2; return 1 ;;
  esac

  local base="$out/$sc-herald-1n-$n"
  start_server herald "$base.server.log"
  sleep 1
  bench_run "$base" herald-1n -scenario "$scen" -url "ws://$addr/ws" -server-pid "$pid"
  stop_server
  jsonls+=("$base.jsonl")

  local prefix="hb_${runid}_${sc//-/_}_$n"
  base="$out/$sc-herald-$broker-2n-$n"
  broker_clean=("-$broker" "$burl" -prefix "$prefix")
  start_server herald "$base.node-a.log" "${bflags[@]}" --broker-prefix "$prefix"
  local addr_a=$addr pid_a=$pid
  start_server herald "$base.node-b.log" "${bflags[@]}" --broker-prefix "$prefix"
  local addr_b=$addr pid_b=$pid
  sleep 1
  bench_run "$base" "herald-$broker-2n" -scenario "$scen" -url "ws://$addr_b/ws" -pub-url "ws://$addr_a/ws" \
    -server-pid "$pid_a,$pid_b"
  stop_server
  jsonls+=("$base.jsonl")

  if [[ -n "${BROKER_1N:-}" ]]; then
    prefix="hb_${runid}_${sc//-/_}_1n_$n"
    base="$out/$sc-herald-$broker-1n-$n"
    broker_clean=("-$broker" "$burl" -prefix "$prefix")
    start_server herald "$base.server.log" "${bflags[@]}" --broker-prefix "$prefix"
    sleep 1
    bench_run "$base" "herald-$broker-1n" -scenario "$scen" -url "ws://$addr/ws" -server-pid "$pid"
    stop_server
    jsonls+=("$base.jsonl")
  fi

  "$out/bin/herald-bench" plot -o "$out/$sc-$n.svg" -title "$sc, run $n" "${jsonls[@]}" || true
  echo "# $sc, pass $n: cross-node p99 / single-node p99 (target <= 2 at 100 publications/s)"
  "$out/bin/herald-bench" summary -cross-only "${jsonls[@]}" | tee "$out/$sc-$n.cross.md" || true
}

# The churn scenarios' secret and certificate (a self-signed one for
# 127.0.0.1, made once per OUTDIR).
jwt_secret="bench-churn-secret-$(date +%s)-0123456789abcdef"
make_cert() {
  [[ -f "$out/tls/cert.pem" ]] && return 0
  mkdir -p "$out/tls"
  timeout 30 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$out/tls/key.pem" -out "$out/tls/cert.pem" -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 2>/dev/null
}

# server_flags SC SRV: the server's flags for scenario SC (sets sflags).
server_flags() {
  local sc=$1 srv=$2
  sflags=()
  case $sc in
    churn | churn-tls)
      if [[ $srv == herald ]]; then sflags=(--jwt-secret "$jwt_secret"); else sflags=(-jwt-secret "$jwt_secret"); fi
      ;;
  esac
  if [[ $sc == churn-tls ]]; then
    if [[ $srv == herald ]]; then
      sflags+=(--tls-cert "$out/tls/cert.pem" --tls-key "$out/tls/key.pem")
    else
      sflags+=(-tls-cert "$out/tls/cert.pem" -tls-key "$out/tls/key.pem")
    fi
  fi
}

# Redis servers of our own for the sharded runs (HISTORY_SHARDS=1): three
# standalone ones on 18001-18003 and a three-master cluster on 18101-18103
# (bus ports +10000), from Debian's redis-server, no persistence, each in
# OUTDIR/redis/PORT, stopped by pid when the suite ends.
redis_pids=()
redis_ports=()
stop_redis() {
  local p
  for p in "${redis_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${redis_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  redis_pids=()
  redis_ports=()
}
start_redis() { # PORT [more redis-server flags]
  local port=$1 dir="$out/redis/$1"
  shift
  mkdir -p "$dir"
  redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no "$@" >"$dir/log" 2>&1 &
  redis_pids+=("$!")
  redis_ports+=("$port")
  for _ in $(seq 50); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  echo "redis-server on $port did not start" >&2
  return 1
}
# redis_cpu: "PORT CPU-SECONDS" of each of our own Redis servers, a line each.
redis_cpu() {
  local i tck
  tck=$(getconf CLK_TCK)
  for i in "${!redis_pids[@]}"; do
    awk -v port="${redis_ports[$i]}" -v tck="$tck" '{printf "%s %.2f\n", port, ($14+$15)/tck}' "/proc/${redis_pids[$i]}/stat" 2>/dev/null ||
      echo "${redis_ports[$i]} 0"
  done
}
start_sharded_redis() {
  [[ ${#redis_pids[@]} -gt 0 ]] && return 0
  local p
  for p in 18001 18002 18003; do start_redis "$p"; done
  for p in 18101 18102 18103; do start_redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf; done
  timeout 60 redis-cli --cluster create 127.0.0.1:18101 127.0.0.1:18102 127.0.0.1:18103 --cluster-replicas 0 --cluster-yes >"$out/redis/cluster-create.log" 2>&1
  for _ in $(seq 100); do
    redis-cli -p 18101 cluster info | grep -q cluster_state:ok && return 0
    sleep 0.1
  done
  echo "the Redis Cluster did not become ok" >&2
  return 1
}
trap 'stop_server; stop_redis' EXIT

# history_run N: history through the broker, two nodes of each server.
history_run() {
  local n=$1 jsonls=() kind prefix base a_addr a_pid
  local kinds=(herald-redis herald-nats centrifuge-redis)
  if [[ -n "${HISTORY_SHARDS:-}" ]]; then
    start_sharded_redis
    kinds+=(herald-own1 herald-shards3 herald-cluster)
  fi
  [[ -n "${HISTORY_KINDS:-}" ]] && read -r -a kinds <<<"$HISTORY_KINDS"
  for kind in "${kinds[@]}"; do
    prefix="hb_${runid}_hist_${kind//-/_}_$n"
    base="$out/history-$kind-2n-$n"
    local srv=${kind%%-*} nflags=() proto=herald
    case $kind in
      herald-redis) nflags=(--broker redis --redis-url "$redis_url" --broker-prefix "$prefix"); broker_clean=(-redis "$redis_url" -prefix "$prefix") ;;
      herald-nats) nflags=(--broker nats --nats-url "$nats_url" --broker-prefix "$prefix"); broker_clean=(-nats "$nats_url" -prefix "$prefix") ;;
      centrifuge-redis) nflags=(-redis "$redis_url" -redis-prefix "$prefix:"); proto=centrifuge; broker_clean=(-redis "$redis_url" -prefix "$prefix") ;;
      herald-shards3 | herald-cluster)
        # R1's flags: HISTORY_FLAGS_SHARDS3 / HISTORY_FLAGS_CLUSTER give them
        # (e.g. "--broker redis --redis-url redis://a,redis://b,redis://c").
        local v="HISTORY_FLAGS_${kind#herald-}"; v=${v^^}
        local def="--broker redis --redis-url redis://127.0.0.1:18001/0,redis://127.0.0.1:18002/0,redis://127.0.0.1:18003/0"
        [[ $kind == herald-cluster ]] && def="--broker redis --redis-cluster --redis-url redis://127.0.0.1:18101/0"
        read -r -a nflags <<<"${!v:-$def}"
        nflags+=(--broker-prefix "$prefix")
        broker_clean=() # our own servers, without persistence: stopped at the end
        ;;
      herald-own1)
        nflags=(--broker redis --redis-url redis://127.0.0.1:18001/0 --broker-prefix "$prefix")
        broker_clean=()
        ;;
    esac
    start_server "$srv" "$base.node-a.log" "${nflags[@]}"
    a_addr=$addr a_pid=$pid
    start_server "$srv" "$base.node-b.log" "${nflags[@]}"
    sleep 1
    local rcpu0
    rcpu0=$(redis_cpu)
    bench_run "$base" "$kind-2n" -scenario history -proto "$proto" -url "ws://$a_addr/ws,ws://$addr/ws" \
      -pub-url "ws://$a_addr/ws" -server-pid "$a_pid,$pid"
    [[ ${#redis_pids[@]} -gt 0 ]] && paste -d' ' <(echo "$rcpu0") <(redis_cpu) |
      awk '{printf "redis %s: %.2f CPU-s during the run\n", $1, $4-$2}' | tee "$base.redis-cpu.txt"
    stop_server
    jsonls+=("$base.jsonl")
  done
  "$out/bin/herald-bench" plot -o "$out/history-$n.svg" -title "history through the broker, run $n" "${jsonls[@]}" || true
}

for n in $(seq "$repeat"); do
  for sc in "${scenarios[@]}"; do
    case $sc in
      s2-redis | s3-redis | s2-nats | s3-nats) cross_node "$sc" "$n"; continue ;;
      history) history_run "$n"; continue ;;
    esac
    args=(-scenario "$sc")
    [[ $sc == s1-19k ]] && args=(-scenario s1 -subs 190)
    scheme=ws
    [[ $sc == churn-tls ]] && { make_cert; args=(-scenario churn -ca "$out/tls/cert.pem"); scheme=wss; }
    [[ $sc == churn* ]] && args+=(-jwt-secret "$jwt_secret")
    run_servers=("${servers[@]}")
    [[ $sc == s3 && " ${servers[*]} " != *" floor "* ]] && run_servers+=(floor)
    jsonls=()
    for srv in "${run_servers[@]}"; do
      [[ $sc == churn* && $srv == floor || $sc == churn* && $srv == naive ]] && continue # no connect command
      base="$out/$sc-$srv-$n"
      server_flags "$sc" "$srv"
      start_server "$srv" "$base.server.log" "${sflags[@]}"
      sleep 1 # let it settle before the RSS baseline
      proto=herald
      [[ $srv == centrifuge ]] && proto=centrifuge
      echo "$(date -u +%FT%TZ) $sc $srv #$n: $(uptime)" | tee -a "$out/load.log"
      "$out/bin/herald-bench" "${args[@]}" "${extra[@]}" -proto "$proto" -url "$scheme://$addr/ws" -server-pid "$pid" -label "$srv" \
        -json "$base.jsonl" -svg "$base.svg" -progress off | tee "$base.txt" || echo "run failed: $base" | tee -a "$out/load.log"
      stop_server
      jsonls+=("$base.jsonl")
    done
    if [[ $sc != s1* && $sc != churn* ]]; then
      "$out/bin/herald-bench" plot -o "$out/$sc-$n.svg" -title "$sc, run $n" "${jsonls[@]}" || true
    fi
  done
done
